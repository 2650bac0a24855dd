"""Built-in backend and embedder: GGUF models run in-process by llama.cpp (llama-cpp-python).

Generation: the chat messages are rendered with the model's own chat template (the
``tokenizer.chat_template`` stored in the GGUF file, rendered by llama-cpp-python's Jinja2
formatter; a model without one gets a plain ``### Role:`` transcript) and tokenized once;
the token list is handed to ``Llama.create_completion``. One ``Llama`` object is kept per
process (``xpkit.core.llm.load``), so llama.cpp's prefix matching keeps the KV state of the
longest common token prefix with the previous call and evaluates only the rest: a shared
system prompt is evaluated once per batch. (A separate ``LlamaRAMCache`` measured no gain
over this and costs time per call.) A JSON schema becomes a GBNF grammar
(``LlamaGrammar.from_json_schema``, compiled once per schema) that constrains sampling.

Token log-probabilities (``LlamaCppModel.token_logprobs``, for the IFD and perplexity
scores of select-data): the same loaded model evaluates prefix + continuation with a batch
that asks for logits only at the positions that predict continuation tokens, and the
log-softmax is computed in ``xpkit.core.token_losses`` (an HTTP server gives no prompt
log-probabilities, so only this backend has the method).

Embeddings: a second ``Llama`` with ``embedding=True`` and *mean pooling* over the last
hidden states of the text's tokens (stated choice: SmolLM2 and most chat GGUFs carry no
pooling type of their own); several whole texts share one decode batch, which is always a
single micro-batch (``n_ubatch == n_batch``: llama.cpp pools per micro-batch, so a text split
across two would get the mean of its tail only). On CPU a batch holds at most
``max(embed_ctx, 512)`` tokens: the texts of a batch attend over the whole batch (masked), so
2,048-token batches measured 1.2-1.3x more CPU per token than 512 for the same vectors.
In embedding mode llama.cpp also computes every position's vocabulary logits (no API skips
them): about a fifth of the cost. Vectors are L2-normalized by ``xpkit.core.embeddings``.

Threads: ``threads`` (0: all cores) for both prompt evaluation and generation, with
OpenMP's passive waiting (see ``import_llama_cpp``).

CPU buffers: llama.cpp's "extra" weight buffer types (AMX, repacking) are skipped when the
CPU advertises AMX, unless ``cpu_extra_buffers = "on"``: on VMs that advertise AMX without
enabling it, llama.cpp's AMX kernels die with a general-protection fault at the first decode.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import orjson

from xpkit.core.config import Settings
from xpkit.core.errors import ContextOverflowError, ModelError
from xpkit.core.hookspecs import hookimpl
from xpkit.core.llm import Messages, ModelSpec, RawCompletion
from xpkit.core.tokens import overflow_message

_load_lock = threading.Lock()


def cpu_advertises_amx() -> bool:
    """True if ``/proc/cpuinfo`` lists AMX tile instructions (Linux only)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_tile" in line.split()
    except OSError:
        pass
    return False


def use_extra_buffers(setting: str) -> bool:
    """Resolve the ``cpu_extra_buffers`` setting (``auto``: off when the CPU has AMX)."""
    return setting == "on" or (setting == "auto" and not cpu_advertises_amx())


@contextlib.contextmanager
def load_params(extra_buffers: bool) -> Iterator[None]:
    """Load with ``use_extra_bufts`` off: ``Llama`` has no argument for it, so its source
    of default model parameters is wrapped for the duration of one load (under a lock)."""
    import llama_cpp.llama as high

    low = high.llama_cpp
    original = low.llama_model_default_params
    if extra_buffers or not hasattr(original(), "use_extra_bufts"):
        yield
        return

    def params() -> Any:
        p = original()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = original


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence fd 2 while llama.cpp loads: some of its load-time notices bypass the log
    callback that ``verbose=False`` installs. Kept when XPKIT_DEBUG is set."""
    if os.environ.get("XPKIT_DEBUG", "") not in ("", "0"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_llama_cpp() -> Any:
    """``llama_cpp``, imported with OpenMP's passive waiting.

    OpenMP worker threads are made to sleep rather than spin while waiting
    (``OMP_WAIT_POLICY=PASSIVE`` unless the user set it). libgomp reads it once, when
    llama.cpp's library is first loaded, so every import here goes through this function:
    on a shared or oversubscribed CPU, spinning threads measured 0.4 generated tokens/s
    against 7.7 with passive waiting (2 threads on 2 busy cores), and embedding a short text
    took 0.8-6 CPU-seconds against 0.33 (the embedder used to import llama_cpp first).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import llama_cpp

    return llama_cpp


def load_llama(path: str, settings: Settings, **kwargs: Any) -> Any:
    """Construct a ``llama_cpp.Llama`` with xpkit's settings; load failures -> ``ModelError``."""
    llama_cpp = import_llama_cpp()
    threads = settings.threads or os.cpu_count() or 1
    options: dict[str, Any] = {"n_ctx": settings.ctx, "n_gpu_layers": settings.n_gpu_layers,
                               "n_threads": threads, "n_threads_batch": threads,
                               "seed": settings.seed, "verbose": False, **kwargs}
    with _load_lock, load_params(use_extra_buffers(settings.cpu_extra_buffers)), _quiet():
        try:
            return llama_cpp.Llama(model_path=path, **options)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"cannot load the model {path}: {exc}; is it a complete GGUF "
                             "file of an architecture this llama.cpp build supports?") from None


@functools.lru_cache(maxsize=64)
def _grammar(schema_json: str) -> Any:
    from llama_cpp.llama_grammar import LlamaGrammar

    try:
        return LlamaGrammar.from_json_schema(schema_json, verbose=False)
    except Exception as exc:  # the converter raises plain exceptions on unsupported schemas
        raise ModelError(f"llama.cpp cannot turn this JSON schema into a grammar: {exc}; "
                         "simplify the schema.") from None


def _head(llm: Any, text: str, n: int) -> tuple[str, int]:
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    if n >= len(ids):
        return text, len(ids)
    return llm.detokenize(ids[:n]).decode("utf-8", errors="ignore"), len(ids)


class _Renderer:
    """Chat messages -> prompt text, with the GGUF's own template when it has one."""

    def __init__(self, llm: Any) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def text_of(token: int) -> str:
            return llm._model.token_get_text(token) if token != -1 else ""

        template = llm.metadata.get("tokenizer.chat_template")
        eos = text_of(llm.token_eos())
        self.formatter = None
        self.stop: list[str] = []
        if template:
            self.formatter = Jinja2ChatFormatter(template=template, eos_token=eos,
                                                 bos_token=text_of(llm.token_bos()))
            self.stop = [eos] if eos else []
        else:
            self.stop = ["\n### "]

    def __call__(self, messages: Messages) -> tuple[str, bool]:
        """Prompt text and whether it already contains the BOS token."""
        if self.formatter is not None:
            out = self.formatter(messages=messages)
            return out.prompt, bool(out.added_special)
        parts = [f"### {str(m.get('role', 'user')).capitalize()}:\n{m.get('content', '')}\n\n"
                 for m in messages]
        return "".join(parts) + "### Assistant:\n", False


class LlamaCppModel:
    """A GGUF chat model loaded in this process. One call at a time (``parallel = 1``)."""

    parallel = 1

    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        self.spec = spec
        self.llm = load_llama(spec.location, settings)
        # llama.cpp pads the allocated window (to 256); the user's --ctx is the limit.
        self.n_ctx = min(self.llm.n_ctx(), settings.ctx, self.llm._model.n_ctx_train())
        self.render = _Renderer(self.llm)
        self._lock = threading.Lock()
        self._tokens_memo: OrderedDict[bytes, list[int]] = OrderedDict()

    def tokens(self, messages: Messages) -> list[int]:
        """The prompt's tokens (memoized: the runtime counts before it completes)."""
        key = orjson.dumps(messages)
        hit = self._tokens_memo.get(key)
        if hit is None:
            prompt, has_bos = self.render(messages)
            hit = self.llm.tokenize(prompt.encode("utf-8"), add_bos=not has_bos, special=True)
            self._tokens_memo[key] = hit
            if len(self._tokens_memo) > 16:
                self._tokens_memo.popitem(last=False)
        return hit

    def count_tokens(self, messages: Messages) -> int:
        with self._lock:
            return len(self.tokens(messages))

    def head(self, text: str, n: int) -> tuple[str, int]:
        with self._lock:
            return _head(self.llm, text, n)

    def complete(self, messages: Messages, *, schema: dict[str, Any] | None, max_tokens: int,
                 temperature: float, seed: int, stop: list[str] | None) -> RawCompletion:
        # Key order kept: the grammar emits properties in the schema's order.
        grammar = _grammar(orjson.dumps(schema).decode()) if schema is not None else None
        with self._lock:
            tokens = self.tokens(messages)
            if len(tokens) + max_tokens > self.n_ctx:
                raise ContextOverflowError(
                    overflow_message(self.spec.name or self.spec.spec, len(tokens), max_tokens,
                                     self.n_ctx), prompt_tokens=len(tokens), n_ctx=self.n_ctx)
            reused = _common_prefix(self.llm.input_ids[: self.llm.n_tokens], tokens)
            out = self.llm.create_completion(
                prompt=tokens, max_tokens=max_tokens, temperature=temperature, seed=seed,
                stop=self.render.stop + list(stop or []), grammar=grammar, repeat_penalty=1.0)
        choice = out["choices"][0]
        usage = out.get("usage", {})
        return RawCompletion(text=choice["text"], prompt_tokens=usage.get("prompt_tokens", 0),
                             completion_tokens=usage.get("completion_tokens", 0),
                             finish_reason=choice.get("finish_reason") or "stop",
                             reused_tokens=reused)

    def token_logprobs(self, prefix: Messages | str, continuation: str, *,
                       max_continuation: int = 512) -> Any:
        """Log-probabilities of ``continuation``'s tokens after ``prefix`` (chat messages,
        rendered with the chat template up to the assistant header, or plain text after the
        BOS token), from the raw logits of this model: see ``xpkit.core.token_losses``.

        Only the positions that predict a continuation token output logits, a chunk at a
        time; the KV cache keeps the longest prefix shared with the previous call (and
        llama-cpp-python's bookkeeping of it stays valid for ``complete``).
        """
        from xpkit.core.token_losses import TokenLogprobs, fit_to_context

        with self._lock:
            if isinstance(prefix, str):
                pre = self.llm.tokenize(prefix.encode("utf-8"), add_bos=True, special=False)
                bos = self.llm.token_bos()
                start = bos if bos != -1 else self.llm.token_eos()
                if not pre or pre[0] != start:
                    pre = [start, *pre]
            else:
                pre = list(self.tokens(prefix))
            cont = self.llm.tokenize(continuation.encode("utf-8"), add_bos=False,
                                     special=False)
            pre, kept, cut = fit_to_context(pre, cont, self.n_ctx, max_continuation)
            values = self._continuation_logprobs(pre, kept)
        return TokenLogprobs(values, len(pre), len(cont), cut)

    def _continuation_logprobs(self, prefix: list[int], cont: list[int]) -> Any:
        import llama_cpp
        import numpy as np

        from xpkit.core.token_losses import LOGIT_CHUNK, logprobs_at

        out = np.empty(len(cont), np.float32)
        if not cont:
            return out
        llm = self.llm
        seq = prefix + cont
        first = len(prefix) - 1  # the position whose logits predict cont[0]
        # The last token predicts nothing we score: evaluate seq[:-1] only.
        todo = seq[:-1]
        keep = min(_common_prefix(llm.input_ids[: llm.n_tokens], todo), first)
        if not llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            llm._ctx.kv_cache_seq_rm(-1, 0, -1)
            keep = 0
        llm.n_tokens = keep
        llm._requires_eval = True  # the last logits are no longer the sampler's
        chunk = max(1, min(LOGIT_CHUNK, llm.n_batch))
        n_vocab = llm.n_vocab()
        batch = llama_cpp.llama_batch_init(chunk, 0, 1)
        try:
            for lo in range(keep, len(todo), chunk):
                hi = min(len(todo), lo + chunk)
                wanted = []
                for j, pos in enumerate(range(lo, hi)):
                    batch.token[j] = todo[pos]
                    batch.pos[j] = pos
                    batch.n_seq_id[j] = 1
                    batch.seq_id[j][0] = 0
                    batch.logits[j] = pos >= first
                    if pos >= first:
                        wanted.append(pos)
                batch.n_tokens = hi - lo
                rc = llama_cpp.llama_decode(llm._ctx.ctx, batch)
                if rc != 0:
                    llm._ctx.kv_cache_seq_rm(-1, 0, -1)
                    llm.n_tokens = 0
                    raise ModelError(f"llama.cpp could not evaluate {hi - lo} tokens "
                                     f"(llama_decode returned {rc}).")
                llm.input_ids[lo:hi] = todo[lo:hi]
                llm.n_tokens = hi
                if wanted:
                    rows = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm._ctx.ctx),
                                                 shape=(len(wanted), n_vocab))
                    out[wanted[0] - first: wanted[-1] - first + 1] = logprobs_at(
                        rows, [seq[p + 1] for p in wanted])
        finally:
            llama_cpp.llama_batch_free(batch)
        return out

    def close(self) -> None:
        self.llm.close()


def _common_prefix(kept: Any, tokens: list[int]) -> int:
    n = 0
    for a, b in zip(kept, tokens, strict=False):
        if a != b:
            break
        n += 1
    return max(0, n - 1) if n == len(tokens) else n  # llama.cpp re-evaluates one token then


class LlamaCppBackend:
    """``--model`` values that are GGUF files (paths, ``default``, bundled names)."""

    name = "llama-cpp"
    kinds = ("gguf",)

    def load(self, spec: ModelSpec, settings: Settings) -> LlamaCppModel:
        return LlamaCppModel(spec, settings)


CPU_EMBED_BATCH = 512
"""Most tokens per embedding decode on CPU (unless one text's window needs more)."""


def embed_batch_tokens(settings: Settings) -> int:
    """Tokens per embedding decode: room for one whole text, several short ones per batch.

    On CPU, ``embed_batch_tokens`` above ``CPU_EMBED_BATCH`` buys nothing: the cost is linear
    in tokens, and attention over a larger packed batch only adds masked work.
    """
    n = settings.embed_batch_tokens
    if settings.n_gpu_layers == 0:
        n = min(n, CPU_EMBED_BATCH)
    return max(settings.embed_ctx, n)


class LlamaCppEmbedModel:
    """A GGUF model loaded for embeddings: mean pooling, several texts per decode batch."""

    pooling = "mean"

    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        mean = import_llama_cpp().LLAMA_POOLING_TYPE_MEAN
        n = embed_batch_tokens(settings)
        # n_ubatch == n_batch: llama-cpp-python's embed() packs whole texts into n_batch
        # tokens, and each decode must be one micro-batch for the mean pooling to be right.
        self.llm = load_llama(spec.location, settings, embedding=True, n_ctx=n, n_batch=n,
                              n_ubatch=n, pooling_type=mean)
        self.dim = self.llm.n_embd()
        self.max_tokens = min(settings.embed_ctx, self.llm._model.n_ctx_train())
        self._lock = threading.Lock()

    def head(self, text: str, n: int) -> tuple[str, int]:
        with self._lock:
            return _head(self.llm, text, n)

    def embed_batch(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            return self.llm.embed(texts, normalize=False, truncate=True)

    def close(self) -> None:
        self.llm.close()


class LlamaCppEmbedder:
    """``--embed-model`` values that are GGUF files."""

    name = "llama-cpp"
    kinds = ("gguf",)

    def load(self, spec: ModelSpec, settings: Settings) -> LlamaCppEmbedModel:
        return LlamaCppEmbedModel(spec, settings)


@hookimpl
def register_backends(register: Any) -> None:
    register(LlamaCppBackend())


@hookimpl
def register_embedders(register: Any) -> None:
    register(LlamaCppEmbedder())
