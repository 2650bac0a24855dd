"""Token counting: tiktoken offline for budgets; the stated truncation and packing rules."""

from __future__ import annotations

import socket

import pytest

from xpkit.core import tokens as T
from xpkit.core.errors import ContextOverflowError


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Any connection attempt fails; tiktoken's download cache points at an empty folder."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    T._encoding.cache_clear()
    yield
    T._encoding.cache_clear()


def test_counts_work_offline(no_network):
    assert T.count_tokens("hello world") == 2
    assert T.count_tokens(["hello world", "", "tokens are counted with cl100k_base"]) == [2, 0, 8]


def test_special_token_text_is_counted_as_text():
    assert T.count_tokens("<|endoftext|>") > 1


def test_truncate_to_tokens_keeps_the_head_and_says_so():
    text = " ".join(f"word{i}" for i in range(200))
    same, cut = T.truncate_to_tokens("short", 50)
    assert (same, cut) == ("short", 0)
    out, cut = T.truncate_to_tokens(text, 50)
    assert out.startswith("word0 word1") and cut > 0
    assert out.endswith(T.TRUNCATION_MARKER.format(n=cut))
    assert T.count_tokens(out) <= 50


def test_pack_keeps_whole_records_only():
    packed = T.pack(["a", "b", "c", "d"], budget=10, counts=[4, 7, 3, 5])
    assert (packed.kept, packed.dropped, packed.tokens) == ([0, 2], [1, 3], 7)
    real = T.pack(["one two three", "four", "five six"], budget=3)
    assert real.kept == [0] and real.tokens == 3


def _count(messages):
    return sum(len(m["content"].split()) + 2 for m in messages)


def _head(text, n):
    words = text.split()
    return " ".join(words[:n]), len(words)


def test_fit_messages_leaves_fitting_prompts_alone():
    msgs = [{"role": "user", "content": "a b c"}]
    assert T.fit_messages(msgs, n_ctx=100, max_tokens=10, count=_count, head=_head) == (msgs, 0)


def test_fit_messages_cuts_only_the_last_user_message():
    msgs = [{"role": "system", "content": "sys " * 5},
            {"role": "user", "content": "first turn stays"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": " ".join(f"w{i}" for i in range(300))}]
    out, cut = T.fit_messages(msgs, n_ctx=120, max_tokens=20, count=_count, head=_head)
    assert out[:3] == msgs[:3] and cut > 0
    assert out[3]["content"].startswith("w0 w1") and "w299" not in out[3]["content"]
    assert _count(out) + 20 <= 120


def test_fit_messages_refuses_when_the_rest_is_too_long():
    msgs = [{"role": "system", "content": "s " * 200}, {"role": "user", "content": "x"}]
    with pytest.raises(ContextOverflowError, match="rest of the prompt alone is too long"):
        T.fit_messages(msgs, n_ctx=100, max_tokens=10, count=_count, head=_head, model="M")


@pytest.mark.model
def test_model_tokens_use_the_models_own_tokenizer_and_chat_template():
    n_plain = T.count_model_tokens("hello there")
    n_system = T.count_model_tokens([{"role": "system", "content": "You are terse."},
                                     {"role": "user", "content": "hello there"}])
    # The chat template adds role markers: more tokens than tiktoken's 2 for the text.
    assert n_plain > T.count_tokens("hello there") and n_system > 5
