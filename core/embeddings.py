"""Text embeddings: batched, cached, L2-normalized vectors from a local GGUF model or a server.

``--embed-model`` takes the same forms as ``--model`` (GGUF path, ``default``, a bundled
name, an OpenAI-compatible URL); embedders are plugins (hook ``register_embedders``). The
built-in llama.cpp embedder loads the model with ``embedding=True`` and **mean pooling**
over the last hidden states of the text's tokens, and decodes several texts per batch.
Every vector is L2-normalized here, whatever the backend, so a dot product is the cosine.

Cost: the bundled SmolLM2-135M (Q4_1) embeds about 90 tokens/s on this 2-core Xeon when
idle (55 tokens per CPU-second; llama.cpp's prompt-evaluation rate for the model): 0.5
CISI abstracts/s of ~170 tokens, so 100k texts take hours, which is why no command embeds
large inputs unless asked. Each distinct text is embedded once: vectors are cached by
(model identity, embedder, token window, text) in the shared cache (``core.llm_cache``).

Long texts follow one stated rule: a text longer than ``embed_ctx`` model tokens is
embedded from its first ``embed_ctx`` tokens (its head), and the count of such texts is
reported in ``Embedder.stats.truncated``. An empty text gets the zero vector.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from xpkit.core.config import Settings, load_settings
from xpkit.core.llm import ModelSpec, Progress, find_backend, load, resolve_model
from xpkit.core.llm_cache import LLMCache, cache_key, open_cache

HOOK = "register_embedders"


class EmbedHandle(Protocol):
    """A loaded embedding model, as returned by an embedder plugin's ``load``."""

    pooling: str
    max_tokens: int | None
    """Token window per text; ``None`` when the backend handles length itself."""

    def head(self, text: str, n: int) -> tuple[str, int]:
        """The first ``n`` tokens of ``text`` as text, and its total token count."""

    def embed_batch(self, texts: list[str]) -> list[list[float]]:
        """Raw (unnormalized) vectors, one per text, in order."""


@dataclass
class EmbedStats:
    texts: int = 0
    unique: int = 0
    cache_hits: int = 0
    embedded: int = 0
    truncated: int = 0
    batches: int = 0
    seconds: float = 0.0


class Embedder:
    """An embedding model plus cache and batching; the loaded model is shared per process."""

    def __init__(self, spec: ModelSpec, settings: Settings,
                 cache: LLMCache | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.cache = cache if cache is not None or settings.no_cache else open_cache()
        self.stats = EmbedStats()
        self._backend_name = find_backend(spec.kind, HOOK).name

    @property
    def handle(self) -> EmbedHandle:
        return load(self.spec, self.settings, HOOK)

    def key(self, text: str) -> str:
        return cache_key("embedding", self.spec.identity,
                         {"embedder": self._backend_name, "window": self.settings.embed_ctx,
                          "text": text})

    def embed(self, texts: Sequence[str], *, batch_size: int = 64,
              on_progress: Callable[[Progress], None] | None = None) -> Any:
        """Vectors for ``texts`` as a float32 array of shape ``(len(texts), dim)``."""
        import numpy as np

        start = time.perf_counter()
        texts = list(texts)
        unique = list(dict.fromkeys(t for t in texts if t.strip()))
        self.stats.texts += len(texts)
        self.stats.unique += len(unique)
        keys = {t: self.key(t) for t in unique}
        vectors: dict[str, Any] = {}
        if self.cache is not None and unique:
            found = self.cache.get_vectors(list(keys.values()))
            vectors = {t: found[k] for t, k in keys.items() if k in found}
        self.stats.cache_hits += len(vectors)
        todo = [t for t in unique if t not in vectors]
        progress = Progress(len(vectors), len(unique), len(vectors), 0, 0, 0, 0.0)
        if todo:
            handle = self.handle
            for i in range(0, len(todo), batch_size):
                batch = todo[i:i + batch_size]
                raw = handle.embed_batch([self._fit(handle, t) for t in batch])
                normed = [_l2(np.asarray(v, dtype=np.float32)) for v in raw]
                vectors.update(zip(batch, normed, strict=True))
                if self.cache is not None:
                    self.cache.put_vectors(self.spec.identity,
                                           ((keys[t], v) for t, v in zip(batch, normed,
                                                                         strict=True)))
                self.stats.embedded += len(batch)
                self.stats.batches += 1
                progress.done += len(batch)
                progress.elapsed = time.perf_counter() - start
                if on_progress is not None:
                    on_progress(Progress(**vars(progress)))
        dim = len(next(iter(vectors.values()))) if vectors else self._dim()
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for row, t in enumerate(texts):
            if t in vectors:
                out[row] = vectors[t]
        self.stats.seconds += time.perf_counter() - start
        return out

    def _fit(self, handle: EmbedHandle, text: str) -> str:
        """The truncation rule: keep the head of a text beyond the token window."""
        window = handle.max_tokens
        # Every token is at least one byte, so a short text cannot exceed the window.
        if window is None or len(text.encode("utf-8")) < window - 2:
            return text
        head, total = handle.head(text, window - 2)  # room for BOS/EOS specials
        if total <= window - 2:
            return text
        self.stats.truncated += 1
        return head

    def _dim(self) -> int:
        dim = getattr(self.handle, "dim", None)
        return int(dim) if dim else 0


def _l2(v: Any) -> Any:
    import numpy as np

    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def get_embedder(embed_model: str | None = None, *, settings: Settings | None = None,
                 **options: Any) -> Embedder:
    """An ``Embedder`` for ``embed_model`` (``None``: the configured ``embed_model``)."""
    settings = settings.with_values(**options) if settings else load_settings(**options)
    spec = resolve_model(embed_model if embed_model not in (None, "") else settings.embed_model,
                         settings=settings, option="--embed-model")
    return Embedder(spec, settings)


def embed(texts: Sequence[str], *, embed_model: str | None = None, batch_size: int = 64,
          on_progress: Callable[[Progress], None] | None = None, **options: Any) -> Any:
    """L2-normalized float32 vectors (one row per text) from the configured embedder."""
    return get_embedder(embed_model, **options).embed(texts, batch_size=batch_size,
                                                      on_progress=on_progress)


def cosine(a: Any, b: Any) -> float:
    """Cosine similarity of two vectors (a dot product when both are L2-normalized)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / den) if den > 0 else 0.0
