"""The ``math`` scorer: equivalence of final answers to competition-math problems.

Follows the answer checking of the MATH benchmark (Hendrycks et al. 2021, "Measuring
Mathematical Problem Solving With the MATH Dataset": ``last_boxed_only_string`` and
``is_equiv``/``strip_string``), Minerva's ``normalize_final_answer`` as used by
lm-evaluation-harness (Lewkowycz et al. 2022), and the PRM800K grader (Lightman et al. 2023,
"Let's Verify Step by Step": tuples compared element by element, numbers compared by value,
sympy for the rest).

1. **Extraction** (both sides): the last ``\\boxed{}`` (nested braces kept), else the text
   after ``####``, else after "the answer is" / "final answer is $X$"; else, when the text
   is prose (three or more words), its last number; else the whole text (a bare answer such
   as MATH-500's ``answer`` field).
2. **Normalization**: surrounding ``$``, ``\\(\\)``, trailing full stops; ``\\left``/``\\right``,
   ``\\!``, ``\\,`` and other spacing; ``\\dfrac``/``\\tfrac`` to ``\\frac``, ``\\frac12`` to
   ``\\frac{1}{2}``, ``\\sqrt2`` to ``\\sqrt{2}``, ``a/b`` to ``\\frac{a}{b}``; ``^\\circ``, ``°``,
   ``\\%``, ``\\$``; ``\\text{ cm}``-style units after a value and plain unit words after a
   number (``5 square units``); other ``\\text{X}``/``\\mathrm{X}`` unwrapped; thousands
   separators (``1,000``, ``1{,}000``, ``1\\,000``); ``x = 5`` to ``5`` when the left side is
   a single variable; ``.5`` to ``0.5``; spaces.
3. **Comparison**: equal normalized text; else, for tuples and intervals (``(1, 2)``,
   ``[2, 5)``: same brackets, element by element) and sets or bare lists (``\\{1, 2\\}``,
   ``1, -2``: in any order), each element: by value when both sides evaluate to numbers
   (``\\frac{1}{2}`` = ``0.5``, ``2\\sqrt{3}`` = ``\\sqrt{12}``; exact for rationals, else
   within the relative ``tolerance``), else symbolically when sympy is installed
   (``simplify(a - b) == 0``), else as normalized text, which the ``detail`` then says.
   sympy is optional: xpkit does not depend on it.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import math
import re
from fractions import Fraction
from typing import Any, ClassVar

from xpkit.core.hookspecs import hookimpl
from xpkit.core.scoring import (
    NO_REFERENCE,
    Param,
    Score,
    ScoreItem,
    Scorer,
    ScorerContext,
    best_score,
    references,
)
from xpkit.plugins.scorers.answers import (
    answer_is,
    balanced,
    gsm8k_marker,
    last_boxed,
    numbers,
    plain_latex,
)

_TEXT_CMDS = r"(?:text|textbf|textit|textrm|textnormal|textsf|mathrm|mathbf|mathit|mathsf|mbox|" \
             r"operatorname)"
# A \text{...} of words right after a value is a unit ("5\text{ cm}^2", "3\mbox{ inches}").
_TEXT_UNIT = re.compile(r"(?<=[\d}).])\s*\\" + _TEXT_CMDS
                        + r"\s*\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\{?\d\}?)?")
_TEXT_WRAP = re.compile(r"\\" + _TEXT_CMDS + r"\s*\{([^{}]*)\}")
# Plain words after a number are units ("18 dollars", "5 square units"); a single letter
# right after a number is a variable ("5x") and stays.
_WORD_UNITS = re.compile(r"(?<=\d)\s+[A-Za-z]{2,}(?:\s+[A-Za-z]{2,})*\s*(?:\^\{?\d\}?)?$")
_SPACING = re.compile(r"\\(?:[!,;:]|q?quad(?![A-Za-z]))")
_SIZING = re.compile(r"\\(?:displaystyle|left|right|[bB]igg?[lr]?)(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z])")
_VARIABLE = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?|\\[A-Za-z]+")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PLAIN = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")
_PROSE_WORD = re.compile(r"[A-Za-z]{2,}")


def _prose(text: str) -> bool:
    """Whether ``text`` reads as sentences rather than a bare answer."""
    bare = _TEXT_WRAP.sub(" ", text)
    return len(_PROSE_WORD.findall(re.sub(r"\\[A-Za-z]+", " ", bare))) >= 3


def extract_math_answer(text: str) -> tuple[str, str]:
    """The final answer in ``text`` and how it was found (``\\boxed``, ``####``,
    ``answer is``, ``last number``, ``whole answer``)."""
    for how, find in (("\\boxed", last_boxed), ("####", gsm8k_marker),
                      ("answer is", answer_is)):
        part = find(text)
        if part is not None and part.strip():
            return part, how
    if _prose(text):
        found = numbers(plain_latex(text))
        if found:
            return found[-1].text, "last number"
    return text, "whole answer"


def _fix_fracs(s: str) -> str:
    # \frac12 -> \frac{1}{2}, \frac{12}3 -> \frac{12}{3}, \frac1{2} -> \frac{1}{2}
    s = re.sub(r"\\frac(\w)(\w)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\{[^{}]*\})(\w)", r"\\frac\1{\2}", s)
    return re.sub(r"\\frac(\w)\{", r"\\frac{\1}{", s)


def normalize_math(text: str) -> str:
    """A final answer in canonical text form (see the module docstring, step 2)."""
    s = text.replace("\n", " ").strip()
    s = re.sub(r"^(?:\$+|\\\(|\\\[)|(?:\$+|\\\)|\\\])$", "", s).strip()
    s = s.rstrip(".").strip()
    s = _SIZING.sub("", s)
    s = re.sub(r"(?<!\\)\\ ", " ", _SPACING.sub(" ", s))  # "\ " but not a "\\" row break
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = _DEGREES.sub("", s)
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    s = re.sub(r"\\(?:dots|ldots|cdots)(?![A-Za-z])", "", s)
    s = _TEXT_UNIT.sub("", s)
    s = _TEXT_WRAP.sub(r"\1", s)
    s = _WORD_UNITS.sub("", s.strip())
    s = s.replace("{,}", ",")
    s = re.sub(r"\s+", "", s)
    sides = _split_top(s, "=")
    if len(sides) == 2 and _VARIABLE.fullmatch(sides[0]) and sides[1]:
        s = sides[1]
    s = _fix_fracs(s)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = re.sub(r"^(-?\d+)/(\d+)$", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\^\{(\w)\}", r"^\1", s)
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return s.rstrip(".")


# --------------------------------------------------------------------------------------
# Structure: tuples, intervals, sets, lists
# --------------------------------------------------------------------------------------
_OPEN, _CLOSE = "([{", ")]}"
_MATRIX = re.compile(r"\\begin\{([pbvBV]?matrix)\}(.*)\\end\{\1\}", re.DOTALL)


def _split_top(s: str, sep: str = ",") -> list[str]:
    """``s`` split at ``sep`` outside any brackets (``\\{``/``\\}`` count as brackets)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        ch = s[i]
        if ch == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(s[start:i])
            start = i + 1
        i += 1
    parts.append(s[start:])
    return parts


def _encloses(s: str) -> bool:
    """Whether the bracket opening ``s`` closes at its last character."""
    depth = 0
    for i, ch in enumerate(s):
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


def _structure(s: str) -> tuple[str, list[str]]:
    """``("set", elems)``, ``("list", elems)`` (both unordered), ``(brackets, elems)`` for a
    tuple or an interval, ``("matrix RxC", cells)``, or ``("atom", [s])``."""
    m = _MATRIX.fullmatch(s)
    if m:
        rows = [_split_top(row, "&") for row in m[2].split("\\\\") if row]
        return f"matrix {len(rows)}x{len(rows[0]) if rows else 0}", [c for r in rows for c in r]
    if s.startswith("\\{") and s.endswith("\\}") and len(s) > 4:
        return "set", _split_top(s[2:-2])
    if len(s) > 2 and s[0] in "([" and s[-1] in ")]" and _encloses(s):
        elems = _split_top(s[1:-1])
        if len(elems) > 1:
            return s[0] + s[-1], elems
    elems = _split_top(s)
    return ("list", elems) if len(elems) > 1 else ("atom", [s])


# --------------------------------------------------------------------------------------
# Values: a small, safe evaluator for numeric LaTeX; sympy (optional) for the rest
# --------------------------------------------------------------------------------------
_FRAC_OR_ROOT = re.compile(r"\\frac\{|\\sqrt(\[[^\]]*\])?\{")
_TOKEN = re.compile(r"\d+\.?\d*|\.\d+|sqrt|pi|\*\*|[A-Za-z]|[-+*/()]")


def _to_python(s: str, symbols: bool) -> str | None:
    """Normalized LaTeX as a Python expression over numbers, ``sqrt``, ``pi`` and (with
    ``symbols``) single-letter variables; ``None`` when anything else is in it."""
    if len(s) > 200:
        return None
    out, i = [], 0
    while i < len(s):
        m = _FRAC_OR_ROOT.match(s, i)
        if m:
            first = balanced(s, m.end() - 1)
            if first is None:
                return None
            end = m.end() + len(first) + 1
            inner = _to_python(first, symbols)
            if inner is None:
                return None
            if m[0].startswith("\\frac"):
                if end >= len(s) or s[end] != "{":
                    return None
                second = balanced(s, end)
                den = None if second is None else _to_python(second, symbols)
                if den is None:
                    return None
                out.append(f"(({inner})/({den}))")
                i = end + len(second or "") + 2
            else:
                if m[1]:
                    root = _to_python(m[1][1:-1], symbols)
                    if root is None:
                        return None
                    out.append(f"(({inner})**(1/({root})))")
                else:
                    out.append(f"sqrt({inner})")
                i = end
            continue
        out.append(s[i])
        i += 1
    text = "".join(out)
    for latex, py in (("\\cdot", "*"), ("\\times", "*"), ("\\div", "/"), ("\\pi", "pi"),
                      ("^", "**"), ("{", "("), ("}", ")")):
        text = text.replace(latex, py)
    tokens = _TOKEN.findall(text)
    if "".join(tokens) != text:
        return None  # something the evaluator does not know (\infty, \cup, =, ...)
    out = []
    value_end = False
    for tok in tokens:
        letter = len(tok) == 1 and tok.isalpha()
        if letter and not symbols:
            return None
        starts_value = tok[0].isdigit() or tok[0] == "." or letter or tok in ("pi", "sqrt", "(")
        if value_end and starts_value:
            out.append("*")  # implicit multiplication: 2\sqrt{3}, 3\pi, (x+1)(x-1)
        out.append(tok)
        value_end = tok[0].isdigit() or tok[0] == "." or letter or tok in ("pi", ")")
    return "".join(out)


Value = Fraction | float


def _eval(node: ast.AST) -> Value:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return Fraction(str(node.value))
    if isinstance(node, ast.Name) and node.id == "pi":
        return math.pi
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "sqrt" and len(node.args) == 1):
        return _power(_eval(node.args[0]), Fraction(1, 2))
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        if isinstance(node.op, ast.Div):
            return a / b
        if isinstance(node.op, ast.Pow):
            return _power(a, b)
    raise ValueError("not a number")


def _power(base: Value, exp: Value) -> Value:
    if isinstance(base, Fraction) and isinstance(exp, Fraction):
        if exp.denominator == 1 and abs(exp) <= 4096 and abs(exp) * max(
                base.numerator.bit_length(), base.denominator.bit_length()) <= 1 << 16:
            return base ** int(exp)
        if exp.denominator == 2 and base >= 0:  # exact square roots stay rational
            num, den = math.isqrt(base.numerator), math.isqrt(base.denominator)
            if num * num == base.numerator and den * den == base.denominator:
                return Fraction(num, den) ** int(exp * 2)
    if base < 0 and not (isinstance(exp, Fraction) and exp.denominator == 1):
        raise ValueError("not a real number")
    return float(base) ** float(exp)


def math_value(s: str) -> Value | None:
    """The value of a normalized answer that is a number (``\\frac{1}{2}``, ``2\\sqrt{3}``,
    ``\\pi/2``, ``10^{20}``): a ``Fraction`` when rational, else a float; else ``None``."""
    if _PLAIN.fullmatch(s):
        return Fraction(s if not s.startswith(("-.", ".")) else s.replace(".", "0.", 1))
    expr = _to_python(s, symbols=False)
    if expr is None:
        return None
    try:
        value = _eval(ast.parse(expr, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError,
            RecursionError):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@functools.cache
def sympy_available() -> bool:
    return importlib.util.find_spec("sympy") is not None


def sympy_equal(a: str, b: str) -> bool | None:
    """Whether two normalized answers are equal as expressions, by sympy; ``None`` when
    either cannot be parsed."""
    pa, pb = _to_python(a, symbols=True), _to_python(b, symbols=True)
    if pa is None or pb is None:
        return None
    import sympy
    from sympy.parsing.sympy_parser import parse_expr

    names = {ch: sympy.Symbol(ch) for ch in set(re.findall(r"\b[A-Za-z]\b", pa + " " + pb))}
    names.update(sqrt=sympy.sqrt, pi=sympy.pi)
    try:
        diff = parse_expr(pa, local_dict=names) - parse_expr(pb, local_dict=names)
        return bool(sympy.simplify(diff) == 0)
    except Exception:  # sympy raises many types on odd input; treat as "cannot tell"
        return None


_HOW = {"text": "as normalized text", "value": "by value", "sympy": "symbolically (sympy)",
        "text-no-sympy": "as normalized text (sympy is not installed, so no symbolic check "
                         "was made)"}


def _atom_equal(a: str, b: str, tolerance: float, symbolic: bool) -> tuple[bool, str]:
    """Whether two single values are equal, and how that was decided (a key of ``_HOW``)."""
    if a == b:
        return True, "text"
    va, vb = math_value(a), math_value(b)
    if va is not None and vb is not None:
        if isinstance(va, Fraction) and isinstance(vb, Fraction):
            return va == vb, "value"
        return math.isclose(float(va), float(vb), rel_tol=tolerance,
                            abs_tol=tolerance * 1e-3), "value"
    if symbolic and sympy_available():
        same = sympy_equal(a, b)
        return (same, "sympy") if same is not None else (False, "text")
    return False, "text-no-sympy" if symbolic else "text"


def _shape(kind: str, n: int) -> str:
    if kind.startswith("matrix"):
        return f"a {kind.split()[1]} matrix"
    return {"atom": "a single value", "set": f"a set of {n}", "list": f"a list of {n}"}.get(
        kind, f"{kind[0]}…{kind[1]} of {n}")


def equivalent(a: str, b: str, tolerance: float, symbolic: bool) -> tuple[bool, str]:
    """Whether two normalized answers are equivalent, and a few words on how it was decided."""
    if a == b:
        return True, "equal as normalized text"
    kind_a, elems_a = _structure(a)
    kind_b, elems_b = _structure(b)
    if kind_a != kind_b or len(elems_a) != len(elems_b):
        return False, f"{_shape(kind_a, len(elems_a))} vs {_shape(kind_b, len(elems_b))}"
    hows: list[str] = []
    if kind_a in ("set", "list"):  # unordered: match each element to an unused equal one
        left = list(elems_b)
        for x in elems_a:
            tried = []
            for y in left:
                same, how = _atom_equal(x, y, tolerance, symbolic)
                tried.append(how)
                if same:
                    hows.append(how)
                    left.remove(y)
                    break
            else:
                worst = "text-no-sympy" if "text-no-sympy" in tried else tried[-1]
                return False, f"no element equal to {x} ({_HOW[worst]})"
        return True, f"the same elements in any order ({_hows(hows)})"
    for x, y in zip(elems_a, elems_b, strict=True):
        same, how = _atom_equal(x, y, tolerance, symbolic)
        if not same:
            return False, (f"different {_HOW[how]}" if kind_a == "atom"
                           else f"element {x} != {y} ({_HOW[how]})")
        hows.append(how)
    if kind_a == "atom":
        return True, f"equal {_HOW[hows[0]]}"
    return True, f"equal element by element ({_hows(hows)})"


def _hows(hows: list[str]) -> str:
    return ", ".join(_HOW[h] for h in dict.fromkeys(hows))


class MathScorer(Scorer):
    """MATH-benchmark answer equivalence (see the module docstring)."""

    name = "math"
    description = ("final-answer equivalence for math (\\boxed{}, LaTeX normalization, "
                   "tuples and intervals; by value, else sympy if installed, else text)")
    params: ClassVar[dict[str, Param]] = {
        "tolerance": Param(1e-9, "relative tolerance when a side is irrational (sqrt, pi); "
                                 "rationals compare exactly"),
        "symbolic": Param(True, "check symbolic equality with sympy when it is installed",
                          bool),
    }

    def score_one(self, item: ScoreItem, ctx: ScorerContext) -> Score:
        refs = references(item.reference)
        if not refs:
            return Score(None, error=NO_REFERENCE)
        tolerance = float(self.param(ctx, "tolerance"))
        symbolic = bool(self.param(ctx, "symbolic"))
        raw, how = extract_math_answer(str(item.answer or ""))
        got = normalize_math(raw)
        scores = []
        for ref in refs:
            want = normalize_math(extract_math_answer(ref)[0])
            if not want:
                scores.append(Score(None, error=f"the reference {ref[:60]!r} is empty after "
                                                "normalization"))
                continue
            if not got:
                scores.append(Score(0.0, detail=f"no answer; reference {want[:60]}"))
                continue
            same, why = equivalent(got, want, tolerance, symbolic)
            scores.append(Score(1.0 if same else 0.0, extracted=got[:200],
                                detail=f"answer {got[:60]} ({how}) vs reference "
                                       f"{want[:60]}: {why}"))
        return best_score(scores)


@hookimpl
def register_scorers(register: Any) -> None:
    register(MathScorer())
