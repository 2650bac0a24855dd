"""A scripted fake model and embedder, registered through the real plugin hooks.

``--model scripted:NAME`` resolves (through the backend's ``kinds``) to the ``ScriptedModel``
the test put in ``backend.models[NAME]``. Its tokenizer counts words, so context-window
tests can be exact. Used for plumbing tests; the real model has its own tests.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from xpkit.core.hookspecs import hookimpl
from xpkit.core.llm import RawCompletion, unload_all
from xpkit.core.plugins import get_plugin_manager

Script = str | RawCompletion | Exception | Callable[[list[dict[str, Any]]], Any]


def _words(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content", "")).split()) + 2 for m in messages)


class ScriptedModel:
    """Answers from a queue; the last item repeats forever. Records every call."""

    def __init__(self, *script: Script, n_ctx: int | None = None, parallel: int = 1,
                 delay: float = 0.0) -> None:
        self.script = list(script)
        self.n_ctx = n_ctx
        self.parallel = parallel
        self.delay = delay
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def count_tokens(self, messages: list[dict[str, Any]]) -> int | None:
        return _words(messages) if self.n_ctx else None

    def head(self, text: str, n: int) -> tuple[str, int]:
        words = text.split()
        return " ".join(words[:n]), len(words)

    def complete(self, messages: list[dict[str, Any]], *, schema: Any, max_tokens: int,
                 temperature: float, seed: int, stop: Any) -> RawCompletion:
        with self._lock:
            self.calls.append({"messages": messages, "schema": schema, "max_tokens": max_tokens,
                               "temperature": temperature, "seed": seed})
            item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if self.delay:
            time.sleep(self.delay)
        if callable(item) and not isinstance(item, Exception | RawCompletion):
            item = item(messages)
        if isinstance(item, Exception):
            raise item
        if isinstance(item, RawCompletion):
            return item
        return RawCompletion(text=item, prompt_tokens=_words(messages),
                             completion_tokens=len(item.split()), finish_reason="stop")


class ScriptedScorer(ScriptedModel):
    """A scripted model that also gives token log-probabilities (what the in-process GGUF
    backend offers): ``fn(prefix, continuation)`` returns one logprob per continuation word.
    Records every ``(prefix, continuation)`` it scores."""

    def __init__(self, fn: Callable[[Any, str], list[float]], *script: Script,
                 **kw: Any) -> None:
        super().__init__(*(script or ("",)), **kw)
        self.fn = fn
        self.scored: list[tuple[Any, str]] = []

    def token_logprobs(self, prefix: Any, continuation: str, *,
                       max_continuation: int = 512) -> Any:
        import numpy as np

        from xpkit.core.token_losses import TokenLogprobs

        with self._lock:
            self.scored.append((prefix, continuation))
        values = list(self.fn(prefix, continuation))
        kept = values[:max_continuation]
        n_prefix = len(prefix.split()) if isinstance(prefix, str) else _words(prefix)
        return TokenLogprobs(np.asarray(kept, np.float32), n_prefix + 1, len(values))


class ScriptedEmbedModel:
    """Deterministic vectors from a hash of the text; counts the texts it embeds."""

    pooling = "hash"

    def __init__(self, dim: int = 8, max_tokens: int | None = None) -> None:
        self.dim = dim
        self.max_tokens = max_tokens
        self.embedded: list[str] = []

    def head(self, text: str, n: int) -> tuple[str, int]:
        words = text.split()
        return " ".join(words[:n]), len(words)

    def embed_batch(self, texts: list[str]) -> list[list[float]]:
        self.embedded.extend(texts)
        out = []
        for t in texts:
            digest = hashlib.sha256(t.encode()).digest()
            out.append([b - 127.5 for b in digest[: self.dim]])
        return out


class ScriptedBackend:
    name = "scripted"
    kinds = ("scripted",)

    def __init__(self) -> None:
        self.models: dict[str, Any] = {}
        self.loads = 0

    def load(self, spec: Any, settings: Any) -> Any:
        self.loads += 1
        return self.models[spec.location]


class _Plugin:
    def __init__(self, backend: ScriptedBackend, embedder: ScriptedBackend) -> None:
        self.backend = backend
        self.embedder = embedder

    @hookimpl
    def register_backends(self, register: Any) -> None:
        register(self.backend)

    @hookimpl
    def register_embedders(self, register: Any) -> None:
        register(self.embedder)


class Scripted:
    """What the ``scripted`` fixture yields: ``.backend.models`` and ``.embedder.models``."""

    def __init__(self) -> None:
        self.backend = ScriptedBackend()
        self.embedder = ScriptedBackend()

    def model(self, name: str, *script: Script, **kw: Any) -> ScriptedModel:
        self.backend.models[name] = m = ScriptedModel(*script, **kw)
        return m

    def scorer(self, name: str, fn: Callable[[Any, str], list[float]], *script: Script,
               **kw: Any) -> ScriptedScorer:
        self.backend.models[name] = m = ScriptedScorer(fn, *script, **kw)
        return m

    def embed_model(self, name: str, **kw: Any) -> ScriptedEmbedModel:
        self.embedder.models[name] = m = ScriptedEmbedModel(**kw)
        return m


@pytest.fixture(name="scripted")
def scripted_fixture():
    """Register the scripted backend and embedder for one test, then unregister them."""
    pm = get_plugin_manager()
    s = Scripted()
    pm.register(_Plugin(s.backend, s.embedder), name="scripted-test")
    try:
        yield s
    finally:
        pm.unregister(name="scripted-test")
        unload_all("scripted")
