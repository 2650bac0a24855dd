"""How retrieved entries become a context: ``plain``, ``markdown`` or ``chat`` messages.

Each hit renders to one *block*; the context is a header followed by the blocks. A block's
``tokens`` (tiktoken, ``xpkit.core.tokens``) is what it costs in the budget, and the packer
checks the total of the whole rendered context, header and separators included, so
``context_tokens`` never exceeds ``--budget-tokens``. ``chat`` renders the markdown context
into one system message (the query itself stays the caller's to send); its token count adds
the few tokens a chat format spends per message.
"""

from __future__ import annotations

from typing import Any

from xpkit.core.errors import UsageError

TEMPLATES = ("plain", "markdown", "chat")
CHAT_MESSAGE_OVERHEAD = 4  # role and separators per message in OpenAI-style chat formats
_HEADERS = {
    "plain": "Relevant experience:",
    "markdown": "## Relevant experience",
    "chat": "## Relevant experience",
}
CHAT_PREAMBLE = ("Use the following experience from earlier tasks where it applies; "
                 "ignore it where it does not.")


def check_template(name: str) -> str:
    if name not in TEMPLATES:
        raise UsageError(f"--template {name}: expected one of {', '.join(TEMPLATES)}.")
    return name


def _label(hit: dict[str, Any]) -> str:
    kind = hit.get("kind") or "entry"
    pol = hit.get("polarity")
    return f"{kind}, {pol}" if pol == "avoid" else kind


def render_block(hit: dict[str, Any], n: int, template: str) -> str:
    """One hit as text. ``hit`` carries ``content`` and optionally title/when/example/kind."""
    title = hit.get("title")
    when = hit.get("when")
    example = hit.get("example")
    content = (hit.get("content") or "").strip()
    if template == "plain":
        head = f"{n}. [{_label(hit)}]" + (f" {title}" if title else "")
        lines = [head]
        if when:
            lines.append(f"When: {when}")
        lines.append(content)
        if example:
            lines.append(f"Example: {example}")
        return "\n".join(lines)
    head = f"### {n}. {title or _label(hit).capitalize()}"
    if title:
        head += f" ({_label(hit)})"
    lines = [head]
    if when:
        lines.append(f"**When:** {when}")
    if hit.get("polarity") == "avoid":
        lines.append("**Avoid:**")
    lines.append(content)
    if example:
        lines.append(f"*Example:* {example}")
    return "\n\n".join(lines)


def render_context(blocks: list[str], template: str) -> Any:
    """The context for the chosen blocks: text, or a list of chat messages (``[]`` if none)."""
    if not blocks:
        return [] if template == "chat" else ""
    sep = "\n\n"
    body = _HEADERS[template] + sep + sep.join(blocks)
    if template == "chat":
        return [{"role": "system", "content": CHAT_PREAMBLE + sep + body}]
    return body


def context_tokens(context: Any, count: Any) -> int:
    """Budget tokens of a rendered context (``count`` is ``tokens.count_tokens``)."""
    if isinstance(context, list):
        return sum(count(m["content"]) + CHAT_MESSAGE_OVERHEAD for m in context)
    return count(context) if context else 0
