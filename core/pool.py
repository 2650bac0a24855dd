"""The selection pool: one streaming read of the input into small per-record arrays + spills.

Every input record is parsed with the same format plugins as ``ingest`` (so ``select-data``
reads whatever ``ingest`` reads) into canonical episodes, one *item* each. The pool keeps,
per item, only fixed-size values in memory (hashes, lengths, outcomes, codes, and a MinHash
signature when near-duplicate detection is on); the output payload and the compared text go
to disk spills (``xpkit.core.spill``), so pools larger than memory can be selected from.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from xpkit.core.errors import RecordError, UsageError
from xpkit.core.export import message_text, sft_messages
from xpkit.core.io import DEFAULT_BATCH_SIZE, SourceRow
from xpkit.core.minhash import normalize

# Item text choices for --text (anything else is a field path).
TEXT_CHOICES = ("all", "prompt", "response")
_EPISODE_KEYS = ("episode_id", "source", "task", "steps", "outcome", "answer", "reference",
                 "model", "meta")
_ALNUM = re.compile(r"\w")
_RUN = re.compile(r"(.)\1{29,}", re.DOTALL)
# Columns every --where row has; raw record fields with these names are not copied.
WHERE_COLUMNS = ("id", "file", "line", "format", "task", "answer", "model", "success",
                 "reward", "score", "n_steps", "chars", "response_chars", "tokens", "meta",
                 "record")


def get_path(obj: Any, path: str) -> Any:
    """``a.b.0.c`` in nested dicts and lists (``None`` when any part is missing)."""
    cur = obj
    for part in path.split("."):
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and part.lstrip("-").isdigit():
            i = int(part)
            cur = cur[i] if -len(cur) <= i < len(cur) else None
        else:
            return None
        if cur is None:
            return None
    return cur


def field_value(episode: dict[str, Any], record: dict[str, Any] | None, path: str) -> Any:
    """A field of a pool item: ``success``/``reward``/``score`` (the outcome), an episode
    path (``task``, ``model``, ``meta.category``, ``source.format``), else a path into the
    input record as read (``category``, ``info.task.user_id``)."""
    if path in ("success", "reward", "score"):
        return (episode.get("outcome") or {}).get(path)
    if path == "format":
        return (episode.get("source") or {}).get("format")
    head = path.split(".", 1)[0]
    if head in _EPISODE_KEYS:
        value = get_path(episode, path)
        if value is not None or record is None:
            return value
    return get_path(record, path) if record is not None else None


def as_key(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def response_text(episode: dict[str, Any]) -> str | None:
    """The answer of an item: its ``answer`` field, else the last assistant message."""
    answer = episode.get("answer")
    if isinstance(answer, str) and answer.strip():
        return answer
    for step in reversed(episode.get("steps") or []):
        if step.get("role") == "assistant" and step.get("content"):
            return step["content"]
    return answer


def prompt_text(episode: dict[str, Any]) -> str:
    task = episode.get("task")
    if task:
        return task
    for step in episode.get("steps") or []:
        if step.get("role") == "user":
            return step.get("content") or ""
    return ""


def item_text(episode: dict[str, Any], record: dict[str, Any] | None, spec: str) -> str:
    """The text that is deduplicated and sketched (``--text``)."""
    if spec == "prompt":
        return prompt_text(episode)
    if spec == "response":
        return response_text(episode) or ""
    if spec != "all":
        value = field_value(episode, record, spec)
        return value if isinstance(value, str) else (as_key(value) or "")
    task = episode.get("task") or ""
    parts = [task] if task else []
    for step in episode.get("steps") or []:
        if step.get("role") == "system":
            continue
        content = step.get("content") or ""
        if content and not (parts and content == task and len(parts) == 1):
            parts.append(content)
    answer = episode.get("answer")
    if answer and (not parts or answer != parts[-1]):
        parts.append(answer)
    return "\n".join(parts)


def degenerate_reason(response: str | None, prompt: str) -> str | None:
    """Why a response is degenerate (no letter or digit, a character repeated 30 times,
    a loop of repeated word trigrams, or the prompt echoed back), else ``None``."""
    if response is None or not response.strip():
        return None  # empty is its own filter
    if not _ALNUM.search(response):
        return "degenerate response (no letter or digit)"
    if _RUN.search(response):
        return "degenerate response (a character repeated 30+ times)"
    words = response.split()
    if len(words) >= 20:
        grams = list(zip(words, words[1:], words[2:], strict=False))
        distinct = len(set(grams)) / len(grams)
        if distinct < 0.5:
            return f"degenerate response (repetitive: {1 - distinct:.0%} of word trigrams repeat)"
    if prompt and normalize(response) == normalize(prompt):
        return "degenerate response (repeats the prompt)"
    return None


@dataclass
class PoolOptions:
    """What pass 1 must compute (decided by ``select_data`` from the options)."""

    text: str = "all"
    payload: str = "record"  # record | messages (for --export)
    count_tokens: bool = False
    keep_texts: bool = False
    signatures: Any = None  # a NearDupParams when near-dup detection is on
    task_field: str | None = None
    stratify: str | None = None
    where: bool = False
    want_messages_tokens: bool = False  # per-message token counts (DPO budgets)
    degenerate: bool = False  # check responses for --filter degenerate


@dataclass
class Pool:
    """The pool after pass 1. Arrays are indexed by item number (input order)."""

    options: PoolOptions
    workdir: str
    records: int = 0
    rejected: int = 0
    multi_records: int = 0
    sources: list[str] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)
    tasks: dict[bytes, int] = field(default_factory=dict)
    strata: dict[str, int] = field(default_factory=dict)
    # filled by finish():
    ids: Any = None
    file_idx: Any = None
    line: Any = None
    unit: list[str] = field(default_factory=list)
    text_hash: Any = None
    success: Any = None
    reward: Any = None
    task: Any = None
    stratum: Any = None
    chars: Any = None
    response_chars: Any = None
    tokens: Any = None
    empty: Any = None
    degenerate: dict[int, str] = field(default_factory=dict)
    size: int = 0

    def __post_init__(self) -> None:
        from xpkit.core.spill import ArraySpill, BlobSpill

        o = self.options
        self.payloads = BlobSpill(self.workdir, "xpkit-payload-")
        self.texts = BlobSpill(self.workdir, "xpkit-text-") if o.keep_texts else None
        self.wheres = BlobSpill(self.workdir, "xpkit-where-") if o.where else None
        self.msg_tokens = BlobSpill(self.workdir, "xpkit-msgtok-") if o.want_messages_tokens \
            else None
        self.sig_spill = (ArraySpill(o.signatures.num_perm, "uint32", self.workdir)
                          if o.signatures is not None else None)
        self._hasher = None
        if o.signatures is not None:
            from xpkit.core.minhash import MinHasher

            self._hasher = MinHasher(o.signatures.num_perm, o.signatures.seed)
        self._dtypes = {"ids": "S27", "file_idx": "int32", "line": "int64",
                        "text_hash": "uint64", "success": "float64", "reward": "float64",
                        "task": "int64", "stratum": "int32", "chars": "int64",
                        "response_chars": "int64", "tokens": "int64", "empty": "bool"}
        self._cols: dict[str, list[Any]] = {name: [] for name in self._dtypes}
        self._units: dict[str, int] = {}

    # ------------------------------------------------------------------ pass 1

    def add_batch(self, items: list[tuple[dict[str, Any], dict[str, Any] | None, SourceRow,
                                          str, bool]]) -> None:
        """Add parsed items: (episode, input record, row, format name, record gave several)."""
        import numpy as np

        from xpkit.core.dedup import text_hash

        o = self.options
        m = len(items)
        if not m:
            return
        n0 = self.size
        self.size += m
        ids: list[bytes] = []
        file_idx: list[int] = []
        lines: list[int] = []
        hashes: list[int] = []
        chars: list[int] = []
        success: list[float] = []
        reward: list[float] = []
        tasks: list[int] = []
        strata: list[int] = []
        resp_chars: list[int] = []
        empty: list[bool] = []
        texts: list[str] = []
        payloads: list[bytes] = []
        token_texts: list[list[str]] = []
        where_rows: list[dict[str, Any]] = []
        nan = float("nan")
        units = self._units
        task_codes = self.tasks
        strata_codes = self.strata
        dumps = orjson.dumps
        for k, (ep, rec, row, fmt, multi) in enumerate(items):
            fi = units.get(row.file)
            if fi is None:
                fi = units[row.file] = len(self.sources)
                self.sources.append(row.file)
                self.unit.append(row.unit)
            file_idx.append(fi)
            lines.append(row.line)
            ids.append(ep["episode_id"].encode())
            text = normalize(item_text(ep, rec, o.text))
            texts.append(text)
            hashes.append(text_hash(text))
            chars.append(len(text))
            out = ep.get("outcome") or {}
            sv, rv = out.get("success"), out.get("reward")
            success.append(nan if sv is None else float(bool(sv)))
            reward.append(nan if rv is None else float(rv))
            tkey = as_key(field_value(ep, rec, o.task_field)) if o.task_field else (
                prompt_text(ep) or ep["episode_id"])
            if tkey is None:
                tkey = ep["episode_id"]
            th = hashlib.blake2b(tkey.encode("utf-8", "surrogatepass"), digest_size=12).digest()
            code = task_codes.get(th)
            if code is None:
                code = task_codes[th] = len(task_codes)
            tasks.append(code)
            if o.stratify:
                skey = as_key(field_value(ep, rec, o.stratify))
                skey = "(missing)" if skey is None else skey
                strata.append(strata_codes.setdefault(skey, len(strata_codes)))
            resp = response_text(ep)
            resp_chars.append(len(resp or ""))
            empty.append(not (resp or "").strip())
            if o.degenerate:
                why = degenerate_reason(resp, prompt_text(ep))
                if why:
                    self.degenerate[n0 + k] = why
            messages = None
            if o.payload == "messages" or o.count_tokens:
                messages = sft_messages(ep, rec, fmt)
            if o.payload == "messages":
                payloads.append(dumps(messages))
            else:
                payloads.append(dumps(ep if multi or rec is None else rec))
            if o.count_tokens:
                token_texts.append(message_text(messages or []))
            if self.wheres is not None:
                where_rows.append(self._where_row(n0 + k, ep, rec, row, fmt, text, resp))
        self.payloads.extend(payloads)
        if self.texts is not None:
            self.texts.extend(t.encode("utf-8", "surrogatepass") for t in texts)
        totals = self._count(token_texts) if o.count_tokens else [-1] * m
        if self.wheres is not None:
            for view, t in zip(where_rows, totals, strict=True):
                view["tokens"] = t if t >= 0 else None
            self.wheres.extend(dumps(v) for v in where_rows)
        cols = self._cols
        for name, values, dtype in (
                ("ids", ids, "S27"), ("file_idx", file_idx, "int32"), ("line", lines, "int64"),
                ("text_hash", hashes, "uint64"), ("success", success, "float64"),
                ("reward", reward, "float64"), ("task", tasks, "int64"),
                ("stratum", strata or [0] * m, "int32"), ("chars", chars, "int64"),
                ("response_chars", resp_chars, "int64"), ("tokens", totals, "int64"),
                ("empty", empty, "bool")):
            cols[name].append(np.asarray(values, dtype=dtype))
        if self.sig_spill is not None:
            from xpkit.core.minhash import shingle_hashes

            values, offsets = shingle_hashes(texts, o.signatures.shingle, distinct=False)
            self.sig_spill.append(self._hasher.signatures(values, offsets))

    def _count(self, token_texts: list[list[str]]) -> list[int]:
        """Budget tokens (tiktoken cl100k) of each item's message texts, in one batched call."""
        from xpkit.core.tokens import count_tokens

        flat = [t for parts in token_texts for t in parts]
        counts = count_tokens(flat) if flat else []
        totals = []
        k = 0
        for parts in token_texts:
            per = counts[k:k + len(parts)]
            k += len(parts)
            totals.append(int(sum(per)))
            if self.msg_tokens is not None:
                self.msg_tokens.extend([orjson.dumps(per)])
        return totals

    def _where_row(self, n: int, ep: dict[str, Any], rec: dict[str, Any] | None,
                   row: SourceRow, fmt: str, text: str, resp: str | None) -> dict[str, Any]:
        out = ep.get("outcome") or {}
        view: dict[str, Any] = {"_idx": n}
        if rec is not None:
            for k, v in rec.items():
                if k not in WHERE_COLUMNS and k != "_idx" and (
                        v is None or isinstance(v, str | int | float | bool)):
                    view[k] = v
        view.update({"id": ep["episode_id"], "file": row.file, "line": row.line,
                     "format": fmt, "task": ep.get("task"), "answer": ep.get("answer"),
                     "model": ep.get("model"), "success": out.get("success"),
                     "reward": out.get("reward"), "score": out.get("score"),
                     "n_steps": len(ep.get("steps") or []), "chars": len(text),
                     "response_chars": len(resp or ""),
                     "meta": orjson.dumps(ep.get("meta") or {}).decode(),
                     "record": orjson.dumps(rec if rec is not None else {}).decode()})
        return view

    def finish(self) -> None:
        """Turn the columns into arrays and open the spills for reading."""
        import numpy as np

        for name, parts in self._cols.items():
            setattr(self, name, np.concatenate(parts) if parts
                    else np.zeros(0, self._dtypes[name]))
        for spill in (self.payloads, self.texts, self.wheres, self.msg_tokens):
            if spill is not None:
                spill.freeze()
        self._cols = {}

    # ------------------------------------------------------------------ access

    def signatures(self) -> Any:
        return self.sig_spill.array() if self.sig_spill is not None else None

    def text_of(self, indices: Any) -> list[str]:
        if self.texts is None:
            raise RuntimeError("texts were not kept for this pool")
        return [b.decode("utf-8", "surrogatepass") for b in self.texts.many(indices)]

    def payload(self, i: int) -> Any:
        return orjson.loads(self.payloads.get(i))

    def id_of(self, i: int) -> str:
        return self.ids[i].decode()

    def where_of(self, i: int) -> str:
        return f"{self.sources[self.file_idx[i]]}:{self.line[i]}"

    def message_tokens(self, i: int) -> list[int]:
        return orjson.loads(self.msg_tokens.get(i)) if self.msg_tokens is not None else []

    def close(self) -> None:
        for spill in (self.payloads, self.texts, self.wheres, self.msg_tokens, self.sig_spill):
            if spill is not None:
                spill.close()


def parse_rows(rows: Sequence[SourceRow], fmt: Any, options: Any,
               reject: Callable[[SourceRow, str, str | None], None]
               ) -> list[tuple[dict[str, Any], dict[str, Any] | None, SourceRow, str, bool]]:
    """Parse a batch of rows into pool items; unreadable or unparseable rows are rejected."""
    items = []
    for row in rows:
        if row.error is not None:
            reject(row, row.error, row.field)
            continue
        try:
            result = fmt.parse(row.value, options)
        except RecordError as exc:
            reject(row, f"{fmt.name}: {exc.reason}", exc.field)
            continue
        eps = result if isinstance(result, list) else [result]
        multi = len(eps) > 1
        for ep in eps:
            ep["source"] = {"format": fmt.name, "file": row.file, "line": row.line}
            items.append((ep, row.value, row, fmt.name, multi))
    return items


def validate_text_spec(text: str) -> None:
    if not text or text.strip() != text:
        raise UsageError(f"--text {text!r}: expected all, prompt, response or a field path.")


__all__ = ["DEFAULT_BATCH_SIZE", "TEXT_CHOICES", "Pool", "PoolOptions", "as_key",
           "degenerate_reason", "field_value", "item_text", "parse_rows", "prompt_text",
           "response_text", "validate_text_spec"]
