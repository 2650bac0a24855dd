"""Evaluation reports: the summary of an ``evaluate`` run as JSON, Markdown, HTML or PNG.

The format follows the file's extension. JSON is the summary object itself; Markdown and
HTML show the arms (mean, 95% bootstrap interval, tokens), the paired comparisons and the
most credited units; HTML adds an inline SVG chart. PNG is a chart with no text (a
learning curve when the summary has one, else the arms' means with their intervals); its
legend is in the Markdown/HTML reports. Written atomically (temp file + rename).
"""

from __future__ import annotations

import html
import itertools
import os
import struct
import tempfile
import zlib
from collections.abc import Sequence
from typing import Any

import orjson

from xpkit.core.errors import UsageError

FORMATS = (".json", ".md", ".html", ".png")
COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75))


def check_report_path(path: str) -> str:
    """The report format of ``path`` (its extension); a usage error before any work is done
    when the extension or the directory is wrong."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise UsageError(f"--report {path}: expected one of {', '.join(FORMATS)}.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--report {path}: directory {folder} does not exist.")
    return ext


def write_report(summary: dict[str, Any], path: str) -> None:
    """Write ``summary`` to ``path`` in the format its extension names."""
    ext = check_report_path(path)
    if ext == ".json":
        data = orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    elif ext == ".md":
        data = markdown(summary).encode()
    elif ext == ".html":
        data = html_report(summary).encode()
    else:
        data = png_chart(summary)
    _atomic_write(path, data)


def _atomic_write(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".xpkit-report-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- tables


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def arm_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Rows of the arms table: arm, mean, 95% interval, n, passed, tokens in/out."""
    rows = []
    for name, a in summary.get("arms", {}).items():
        if "mean" not in a:  # retrieval metrics
            rows.extend([[name, k, _fmt(v)] for k, v in a.items()])
            continue
        tok = a.get("tokens") or {}
        rows.append([name, _fmt(a.get("mean")),
                     f"[{_fmt(a.get('ci_low'))}, {_fmt(a.get('ci_high'))}]", _fmt(a.get("n")),
                     _fmt(a.get("passed")), _fmt(tok.get("prompt")),
                     _fmt(tok.get("completion"))])
    return rows


ARM_HEADER = ["arm", "mean", "95% CI", "n", "passed", "prompt tokens", "completion tokens"]
RETRIEVAL_HEADER = ["", "metric", "value"]
COMPARE_HEADER = ["comparison", "diff (b - a)", "95% CI", "p", "b better", "a better", "test"]


def comparison_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for c in summary.get("comparisons", []):
        d = c.get("diff") or {}
        rows.append([f"{c['b']} vs {c['a']}", _fmt(d.get("mean")),
                     f"[{_fmt(d.get('low'))}, {_fmt(d.get('high'))}]", _fmt(c.get("p_value"), 4),
                     _fmt(c.get("b_better")), _fmt(c.get("a_better")), str(c.get("method"))])
    return rows


def top_units(summary: dict[str, Any], n: int = 10) -> list[list[str]]:
    units = summary.get("units") or {}
    ranked = sorted(units.items(), key=lambda kv: (-(kv[1]["helpful"] - kv[1]["harmful"]),
                                                   -kv[1]["uses"], kv[0]))
    return [[uid, _fmt(c["uses"]), _fmt(c["helpful"]), _fmt(c["harmful"])]
            for uid, c in ranked[:n]]


def subset_lines(sub: dict[str, Any]) -> list[str]:
    """The evaluation-subset result in a few sentences (figures in points of score)."""
    lines = [f"subset: {sub['n']} of {sub['n_items']} items ({sub['method']}, estimator "
             f"{sub['estimator']}), chosen on {sub['n_train']} models"]
    if sub.get("mae") is not None:
        lines.append(f"mean absolute error of the predicted full score on {sub['n_held_out']} "
                     f"held-out models: {100 * sub['mae']:.2f} points (max "
                     f"{100 * sub['max_abs_error']:.2f}); random subsets of the same size: "
                     f"{100 * sub['mae_random_mean']:.2f} ± {100 * sub['mae_random_std']:.2f} "
                     f"over {sub['repeats']} draws")
    return lines


def _is_retrieval(summary: dict[str, Any]) -> bool:
    return summary.get("scorer") == "retrieval"


def markdown(summary: dict[str, Any]) -> str:
    def table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return [*out, ""]

    lines = ["# xpkit evaluate", ""]
    meta = [f"items: {summary.get('items', 0):,}", f"rejected: {summary.get('rejected', 0):,}",
            f"scorer: {summary.get('scorer')}"]
    if summary.get("model"):
        meta.append(f"model: {summary['model']}")
    lines += [", ".join(meta), ""]
    if summary.get("subset"):
        lines += [*subset_lines(summary["subset"]), "",
                  *table(["model", "true", "predicted", "error"],
                         [[p["model"], _fmt(p["true"]), _fmt(p["predicted"]), _fmt(p["error"])]
                          for p in summary["subset"].get("predictions", [])])]
    else:
        lines += table(RETRIEVAL_HEADER if _is_retrieval(summary) else ARM_HEADER,
                       arm_rows(summary))
    if summary.get("comparisons"):
        lines += ["## Paired comparisons", "", *table(COMPARE_HEADER, comparison_rows(summary))]
    if summary.get("gate"):
        g = summary["gate"]
        lines += ["## Gate", "", f"Units {g['units_file']}: **{g['decision']}** (score "
                  f"{_fmt(g['score_with'])} with vs {_fmt(g['score_without'])} without, "
                  f"p = {_fmt(g['p_value'], 4)}).", ""]
    if summary.get("units"):
        lines += ["## Units credited", "",
                  *table(["unit", "uses", "helpful", "harmful"], top_units(summary))]
    if summary.get("curve"):
        lines += ["## Learning curve", "", "Cumulative success by task index (PNG/HTML "
                  "colours: " + ", ".join(f"{name} = {_color_name(i)}" for i, name in
                                          enumerate(summary["curve"])) + ").", ""]
    for note in summary.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


def _color_name(i: int) -> str:
    return ("blue", "orange", "green", "red", "purple", "brown")[i % len(COLORS)]


def html_report(summary: dict[str, Any]) -> str:
    def table(header: Sequence[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                       for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>xpkit evaluate</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}</style></head><body>",
             "<h1>xpkit evaluate</h1>",
             f"<p>{html.escape(markdown(summary).splitlines()[2])}</p>",
             table(RETRIEVAL_HEADER if _is_retrieval(summary) else ARM_HEADER,
                   arm_rows(summary))]
    if summary.get("comparisons"):
        parts += ["<h2>Paired comparisons</h2>", table(COMPARE_HEADER, comparison_rows(summary))]
    if summary.get("units"):
        parts += ["<h2>Units credited</h2>",
                  table(["unit", "uses", "helpful", "harmful"], top_units(summary))]
    parts.append(svg_chart(summary))
    parts += [f"<p>{html.escape(n)}</p>" for n in summary.get("notes", [])]
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- charts


def _series(summary: dict[str, Any]) -> tuple[str, list[tuple[str, list[float]]]]:
    """What to draw: ("curve", lines) for a learning curve, else ("bars", [(arm, [mean, low,
    high])])."""
    curve = summary.get("curve")
    if curve:
        return "curve", [(name, [float(v) for v in vals]) for name, vals in curve.items()]
    bars = []
    for name, a in summary.get("arms", {}).items():
        if a.get("mean") is not None:
            bars.append((name, [a["mean"], a.get("ci_low") or a["mean"],
                                a.get("ci_high") or a["mean"]]))
    return "bars", bars


def svg_chart(summary: dict[str, Any], width: int = 640, height: int = 320) -> str:
    kind, series = _series(summary)
    if not series:
        return ""
    pad = 40
    w, h = width - 2 * pad, height - 2 * pad
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>",
           f"<rect x='{pad}' y='{pad}' width='{w}' height='{h}' fill='none' stroke='#999'/>"]
    for t in (0.0, 0.5, 1.0):
        y = pad + h * (1 - t)
        out.append(f"<text x='{pad - 6}' y='{y + 4}' font-size='11' text-anchor='end'>{t}</text>")
    if kind == "curve":
        for i, (name, vals) in enumerate(series):
            if not vals:
                continue
            step = w / max(1, len(vals) - 1)
            pts = " ".join(f"{pad + j * step:.1f},{pad + h * (1 - v):.1f}"
                           for j, v in enumerate(vals))
            r, g, b = COLORS[i % len(COLORS)]
            out.append(f"<polyline fill='none' stroke='rgb({r},{g},{b})' stroke-width='2' "
                       f"points='{pts}'/>")
            out.append(f"<text x='{pad + 8}' y='{pad + 16 + 14 * i}' font-size='12' "
                       f"fill='rgb({r},{g},{b})'>{html.escape(name)}</text>")
    else:
        slot = w / len(series)
        for i, (name, (mean, low, high)) in enumerate(series):
            r, g, b = COLORS[i % len(COLORS)]
            x = pad + i * slot + slot * 0.2
            out.append(f"<rect x='{x:.1f}' y='{pad + h * (1 - mean):.1f}' width='{slot * 0.6:.1f}'"
                       f" height='{h * mean:.1f}' fill='rgb({r},{g},{b})'/>")
            cx = x + slot * 0.3
            out.append(f"<line x1='{cx:.1f}' x2='{cx:.1f}' y1='{pad + h * (1 - low):.1f}' "
                       f"y2='{pad + h * (1 - high):.1f}' stroke='black'/>")
            out.append(f"<text x='{cx:.1f}' y='{height - pad + 16}' font-size='12' "
                       f"text-anchor='middle'>{html.escape(name)}</text>")
    out.append("</svg>")
    return "".join(out)


def png_chart(summary: dict[str, Any], width: int = 640, height: int = 320) -> bytes:
    """The chart as a PNG (RGB, no text), drawn with numpy and encoded with zlib."""
    import numpy as np

    img = np.full((height, width, 3), 255, np.uint8)
    pad = 30
    w, h = width - 2 * pad, height - 2 * pad

    def y_of(v: float) -> int:
        return round(pad + h * (1 - min(1.0, max(0.0, v))))

    img[pad:pad + h + 1, pad] = img[pad:pad + h + 1, pad + w] = 150  # frame
    img[pad, pad:pad + w + 1] = img[pad + h, pad:pad + w + 1] = 150
    for t in (0.25, 0.5, 0.75):  # grid
        img[y_of(t), pad:pad + w:4] = 200
    kind, series = _series(summary)
    for i, (_name, vals) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        if kind == "curve" and vals:
            step = w / max(1, len(vals) - 1)
            pts = [(pad + j * step, y_of(v)) for j, v in enumerate(vals)]
            for (x0, y0), (x1, y1) in itertools.pairwise(pts):
                _line(img, x0, y0, x1, y1, color)
            if len(pts) == 1:
                _line(img, pts[0][0], pts[0][1], pts[0][0] + 1, pts[0][1], color)
        elif kind == "bars":
            mean, low, high = vals
            slot = w / len(series)
            x0, x1 = int(pad + i * slot + slot * 0.2), int(pad + i * slot + slot * 0.8)
            img[y_of(mean):pad + h, x0:x1] = color
            cx = (x0 + x1) // 2
            img[y_of(high):y_of(low) + 1, cx - 1:cx + 1] = 0
    return _encode_png(img)


def _line(img: Any, x0: float, y0: float, x1: float, y1: float, color: tuple[int, ...]) -> None:
    import numpy as np

    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.linspace(x0, x1, n).round().astype(int)
    ys = np.linspace(y0, y1, n).round().astype(int)
    for dy in (-1, 0, 1):  # 3 px thick
        yy = np.clip(ys + dy, 0, img.shape[0] - 1)
        img[yy, np.clip(xs, 0, img.shape[1] - 1)] = color


def _encode_png(img: Any) -> bytes:
    height, width, _ = img.shape
    raw = b"".join(b"\x00" + img[row].tobytes() for row in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
