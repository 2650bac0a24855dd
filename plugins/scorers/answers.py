"""Final-answer extraction shared by the ``numeric`` and ``math`` scorers.

A model's solution (or a worked reference solution) states its result in one of a few
conventions, tried in this order:

1. the GSM8K marker ``#### 72`` on the last line (Cobbe et al. 2021, "Training Verifiers to
   Solve Math Word Problems": the reference solutions end with it, and its ``extract_answer``
   reads the number after it);
2. ``\\boxed{...}`` (or ``\\fbox``), the last one, with nested braces (Hendrycks et al. 2021,
   "Measuring Mathematical Problem Solving With the MATH Dataset": ``last_boxed_only_string``);
3. "the answer is X" / "final answer: X" (the chain-of-thought prompt format of Wei et al.
   2022 and Minerva's "Final Answer: The final answer is $X$");
4. otherwise the last number in the text.

Numbers are read as people write them: thousands separators (``1,234``), signs (``-3``,
``−3``), decimals (``.5``), currency (``$18``, ``-$5``), percent (``50%``, value 50: the sign
is dropped, not divided by 100), fractions (``3/4``, ``\\frac{3}{4}``), mixed numbers
(``1 1/2``) and a unit after the number (``18 dollars``). Values are exact ``Fraction``s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

NUMBER = re.compile(r"""
    (?<![\w.])                                  # not inside a word, not after a decimal point
    (?P<sign>[-\u2212])?                        # a minus glued to the number (or to its $)
    (?:[$\u20ac\u00a3\u00a5]\s?(?P<sign2>-)?)?  # currency symbol, "$-5"
    (?:(?P<whole>\d+)[ ](?=\d+/\d))?            # "1 1/2": checked below (numerator < denominator)
    (?P<num>\d{1,3}(?:,\d{3})+(?!\d)|\d+|(?=\.\d))
    (?P<dec>\.\d+)?
    (?:[eE](?P<exp>[-+]?\d{1,3})(?![\w]))?
    (?:/(?P<den>\d+(?:\.\d+)?)(?!\d|,\d))?
    (?P<pct>[ ]?(?:\\?%|percent\b))?
    """, re.VERBOSE)

# LaTeX that hides plain numbers: \frac{1}{2}, \dfrac12, {,} and \, as thousands separators.
_FRAC = re.compile(r"\\[dt]?frac\s*(?:\{\s*(-?[\d.,]+)\s*\}|(\d))\s*(?:\{\s*(-?[\d.,]+)\s*\}|(\d))")
_LATEX_NOISE = re.compile(r"\\[!,;: ]|\{,\}|\\left|\\right|\^\s*\{?\\circ\}?|\\(?:text|mathrm|"
                          r"textbf|mbox)\s*")
_MARKER = re.compile(r"####")
_ANSWER_IS = re.compile(r"\b(?:final\s+answer|the\s+answer)\s*(?:is\b|:)\s*:?", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\b")


@dataclass(frozen=True)
class Number:
    """A number found in text: its exact value and the text it was read from."""

    value: Fraction
    text: str
    percent: bool = False


def plain_latex(text: str) -> str:
    """``text`` with the LaTeX that hides plain numbers removed: ``\\frac{1}{2}`` becomes
    ``1/2``, ``1{,}000`` and ``1\\,000`` become ``1,000``/``1000``, ``\\$``/``\\%`` lose the
    backslash, ``\\text{...}`` its command (the braces stay, which no number reads across)."""
    text = _FRAC.sub(lambda m: f"{m[1] or m[2]}/{m[3] or m[4]}", text)
    text = text.replace("{,}", ",").replace("\\$", "$").replace("\\%", "%")
    return _LATEX_NOISE.sub("", text)


def numbers(text: str) -> list[Number]:
    """Every number in ``text`` (plain text; see ``plain_latex`` for LaTeX), in order."""
    out: list[Number] = []
    for m in NUMBER.finditer(text):
        negative = bool(m["sign"] or m["sign2"])
        body = m["num"].replace(",", "") + (m["dec"] or "")
        try:
            value = Fraction(body if body[:1] != "." else "0" + body)
            if m["exp"]:
                value *= Fraction(10) ** int(m["exp"])
            if m["den"] is not None:
                den = Fraction(m["den"])
                if den == 0:
                    continue
                value /= den
        except (ValueError, ZeroDivisionError):
            continue
        shown = m[0].strip()
        if m["whole"] is not None:
            if m["den"] is not None and 0 <= value < 1:
                value += int(m["whole"])
            else:  # "3 4/2" is two numbers, not a mixed number
                out.append(Number(Fraction(int(m["whole"])) * (-1 if negative else 1),
                                  text[m.start():m.end("whole")].strip()))
                negative, shown = False, text[m.start("num"):m.end()].strip()
        out.append(Number(-value if negative else value, shown, bool(m["pct"])))
    return out


def balanced(text: str, start: int) -> str | None:
    """The content of the brace group opening at ``text[start]`` (``{``), or ``None`` when
    the braces never close."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # \{ and \} are literal braces; skip any escaped character
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces kept), or of
    ``\\boxed 5`` (up to the next ``$`` or whitespace); ``None`` when there is none."""
    for m in reversed(list(_BOXED.finditer(text))):
        rest = m.end()
        while rest < len(text) and text[rest] == " ":
            rest += 1
        if rest < len(text) and text[rest] == "{":
            inner = balanced(text, rest)
            if inner is not None:
                return inner
        elif rest > m.end():  # "\boxed 5"
            token = re.match(r"[^\s$]+", text[rest:])
            if token:
                return token[0]
    return None


def gsm8k_marker(text: str) -> str | None:
    """The rest of the line after the last ``####`` (GSM8K), or ``None``."""
    found = list(_MARKER.finditer(text))
    if not found:
        return None
    line = text[found[-1].end():].split("\n", 1)[0].strip()
    return line or None


def answer_is(text: str) -> str | None:
    """What follows the last "the answer is" / "final answer:" on its line, or ``None``.

    Minerva's ``$X$`` and ``\\(X\\)`` are unwrapped; otherwise the text ends at the first
    full stop followed by a space or the end of the line (a decimal point is not one).
    """
    found = list(_ANSWER_IS.finditer(text))
    if not found:
        return None
    line = text[found[-1].end():].split("\n", 1)[0].strip()
    wrapped = re.match(r"\$\$?(.+?)\$|\\\((.+?)\\\)", line)
    if wrapped:
        return (wrapped[1] or wrapped[2]).strip() or None
    line = re.split(r"\.(?:\s|$)", line, maxsplit=1)[0].strip()
    return line or None


def final_number(text: str) -> tuple[Number, str] | None:
    """The solution's final number and how it was found (``####``, ``\\boxed``,
    ``answer is``, ``last number``); ``None`` when the text has no number at all."""
    for how, find in (("####", gsm8k_marker), ("\\boxed", last_boxed),
                      ("answer is", answer_is)):
        part = find(text)
        if part is not None:
            found = numbers(plain_latex(part))
            if found:
                return found[0], how
    found = numbers(plain_latex(text))
    return (found[-1], "last number") if found else None


def format_number(value: Fraction) -> str:
    """A number as a short text: ``72``, ``0.75``, ``-1.333333333``."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.10g}"
