"""Built-in backend and embedder: any OpenAI-compatible server (llama.cpp, vLLM, ...).

``--model http://host:port/v1#model-name`` sends ``POST {base}/chat/completions`` (and
``{base}/embeddings``) with the standard library's HTTP client; no SDK is needed. Without
``#model-name`` the first model listed by ``GET {base}/models`` is used. Requests run on a
thread pool of ``--concurrency`` workers (``parallel``), which is how a server or a fleet
behind a load balancer is kept busy.

Structured output uses ``response_format``: first the OpenAI / vLLM / llama.cpp-server form
``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``; if the server
refuses it (llama-cpp-python's own server accepts only ``json_object``), the handle switches
to ``{"type": "json_object", "schema": ...}`` for the rest of the process. The runtime
validates every response regardless of what the server promised.

Failures are explicit: a refused connection, a reset, a response cut mid-body or a timeout
raise ``ModelServerError`` (the batch then returns nothing, see ``LLM.run``); a request
the server rejects for length raises ``ContextOverflowError`` (one item's rejection).
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import urllib.error
import urllib.request
from typing import Any

import orjson

from xpkit.core.config import Settings
from xpkit.core.errors import ContextOverflowError, ModelServerError
from xpkit.core.hookspecs import hookimpl
from xpkit.core.llm import Messages, ModelSpec, RawCompletion

_OVERFLOW = re.compile(r"context (window|length)|maximum context|too many tokens|"
                       r"exceed", re.IGNORECASE)
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                   TimeoutError, socket.timeout, OSError)


class _Client:
    """JSON over HTTP with errors turned into xpkit's."""

    def __init__(self, base: str, timeout: float) -> None:
        self.base = base
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else orjson.dumps(body)
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise _StatusError(exc.code, _error_text(exc)) from None
        except _NETWORK_ERRORS as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ModelServerError(f"model server {self.base} stopped answering "
                                   f"({type(exc).__name__}: {reason})") from None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ModelServerError(f"model server {self.base} sent a response that is not "
                                   f"JSON: {raw[:120]!r}") from None


class _StatusError(Exception):
    """The server answered with an HTTP error status; ``detail`` is its message."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"HTTP {code}: {detail}")
        self.code = code
        self.detail = detail

    def as_model_error(self, base: str) -> ModelServerError:
        what = "refused the request" if self.code < 500 else "failed"
        return ModelServerError(f"model server {base} {what}: {self}")


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        doc = orjson.loads(exc.read())
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        msg = err.get("message", err) if isinstance(err, dict) else err
    except Exception:
        msg = exc.reason
    return " ".join(str(msg).split())[:300]


def _discover(client: _Client) -> str:
    try:
        listing = client.request("GET", "/models")
    except _StatusError as exc:
        raise ModelServerError(f"model server {client.base}: GET /models failed ({exc}); "
                               "name the model with URL#model-name.") from None
    data = listing.get("data") if isinstance(listing, dict) else None
    if not data:
        raise ModelServerError(f"model server {client.base} lists no models; name one with "
                               "URL#model-name.")
    return str(data[0]["id"])


class OpenAIModel:
    """A model behind an OpenAI-compatible server; ``parallel`` requests at a time."""

    n_ctx = None

    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        self.client = _Client(spec.location, settings.timeout)
        self.parallel = settings.concurrency
        self.model = spec.name or _discover(self.client)
        self._json_mode = "json_schema"
        self._mode_lock = threading.Lock()

    def count_tokens(self, messages: Messages) -> int | None:
        return None  # servers expose no standard tokenizer endpoint

    def head(self, text: str, n: int) -> tuple[str, int]:
        raise NotImplementedError("no tokenizer for a remote model")

    def _response_format(self, schema: dict[str, Any], mode: str) -> dict[str, Any]:
        if mode == "json_schema":
            return {"type": "json_schema",
                    "json_schema": {"name": "output", "schema": schema, "strict": True}}
        return {"type": "json_object", "schema": schema}

    def complete(self, messages: Messages, *, schema: dict[str, Any] | None, max_tokens: int,
                 temperature: float, seed: int, stop: list[str] | None) -> RawCompletion:
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "max_tokens": max_tokens, "temperature": temperature,
                                "seed": seed}
        if stop:
            body["stop"] = stop
        mode = self._json_mode
        if schema is not None:
            body["response_format"] = self._response_format(schema, mode)
        try:
            doc = self.client.request("POST", "/chat/completions", body)
        except _StatusError as exc:
            if _OVERFLOW.search(exc.detail):
                raise ContextOverflowError(f"{self.client.base} refused the prompt: "
                                           f"{exc.detail}") from None
            refused_format = "response_format" in exc.detail or "json_schema" in exc.detail
            if schema is None or mode != "json_schema" or not refused_format:
                raise exc.as_model_error(self.client.base) from None
            with self._mode_lock:
                self._json_mode = "json_object"
            body["response_format"] = self._response_format(schema, "json_object")
            try:
                doc = self.client.request("POST", "/chat/completions", body)
            except _StatusError as exc2:
                raise exc2.as_model_error(self.client.base) from None
        try:
            choice = doc["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ModelServerError(f"model server {self.client.base} sent an unexpected "
                                   f"response: {str(doc)[:200]}") from None
        usage = doc.get("usage") or {}
        return RawCompletion(text=text, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                             completion_tokens=int(usage.get("completion_tokens") or 0),
                             finish_reason=choice.get("finish_reason") or "stop")


class OpenAIBackend:
    """``--model http://host:port/v1[#model-name]``."""

    name = "openai-http"
    kinds = ("openai",)

    def load(self, spec: ModelSpec, settings: Settings) -> OpenAIModel:
        return OpenAIModel(spec, settings)


class OpenAIEmbedModel:
    """``POST {base}/embeddings``; pooling is whatever the server does."""

    pooling = "server"
    max_tokens = None

    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        self.client = _Client(spec.location, settings.timeout)
        self.model = spec.name or _discover(self.client)
        self.dim: int | None = None

    def head(self, text: str, n: int) -> tuple[str, int]:
        raise NotImplementedError("no tokenizer for a remote model")

    def embed_batch(self, texts: list[str]) -> list[list[float]]:
        try:
            doc = self.client.request("POST", "/embeddings",
                                      {"model": self.model, "input": texts})
        except _StatusError as exc:
            raise exc.as_model_error(self.client.base) from None
        try:
            rows = sorted(doc["data"], key=lambda r: r["index"])
            vectors = [r["embedding"] for r in rows]
        except (KeyError, TypeError):
            raise ModelServerError(f"model server {self.client.base} sent an unexpected "
                                   f"embedding response: {str(doc)[:200]}") from None
        if len(vectors) != len(texts):
            raise ModelServerError(f"model server {self.client.base} returned "
                                   f"{len(vectors)} embeddings for {len(texts)} texts.")
        return vectors


class OpenAIEmbedder:
    name = "openai-http"
    kinds = ("openai",)

    def load(self, spec: ModelSpec, settings: Settings) -> OpenAIEmbedModel:
        return OpenAIEmbedModel(spec, settings)


@hookimpl
def register_backends(register: Any) -> None:
    register(OpenAIBackend())


@hookimpl
def register_embedders(register: Any) -> None:
    register(OpenAIEmbedder())
