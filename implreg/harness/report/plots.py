"""A small deterministic SVG plotter for the report: lines and scatter, linear / log / symlog axes.

Why not matplotlib: it is a large dependency (with a font cache and a GUI-backend layer) for what the
report needs — a few lines or points per plot with log axes — and its SVG output carries generated ids
and metadata that would make reports differ byte-for-byte between identical runs.  This module is
~250 lines, has no dependencies, and produces the same SVG for the same data.

Input is an evidence plot dict (see ``implreg.harness.evidence.series``); output is an ``<svg>`` string in which
every piece of user text is XML-escaped.
"""

from __future__ import annotations

import math
import re
from html import escape
from typing import Any

__all__ = ["svg_plot"]

# Okabe–Ito: distinguishable under the common colour-vision deficiencies
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]

W, H = 540, 320
ML, MR, MT, MB = 62, 112, 30, 44   # margins: left, right (legend), top (title), bottom


def _esc(s: Any) -> str:
    return escape(str(s), quote=True)


class _Axis:
    """Maps data values to [0, 1] for one of linear / log10 / symlog scales, and makes ticks."""

    def __init__(self, values: list[float], scale: str):
        self.scale = scale
        vals = [v for v in values if math.isfinite(v) and (scale != "log" or v > 0)]
        self.linthresh = 1.0
        if scale == "symlog":
            nz = sorted(abs(v) for v in vals if v != 0)
            big = nz[-1] if nz else 1.0
            small = nz[max(0, len(nz) // 20)] if nz else 1.0
            self.linthresh = 10 ** math.floor(math.log10(max(small, big * 1e-12)))
        t = [self.fwd(v) for v in vals]
        lo, hi = (min(t), max(t)) if t else (0.0, 1.0)
        if hi - lo < 1e-12 * max(1.0, abs(hi)):
            lo, hi = lo - 0.5, hi + 0.5
        pad = 0.04 * (hi - lo)
        self.lo, self.hi = lo - pad, hi + pad

    def fwd(self, v: float) -> float:
        if self.scale == "log":
            return math.log10(v)
        if self.scale == "symlog":
            return math.copysign(math.log10(1 + abs(v) / self.linthresh), v)
        return v

    def inv(self, t: float) -> float:
        if self.scale == "log":
            return 10 ** t
        if self.scale == "symlog":
            return math.copysign(self.linthresh * (10 ** abs(t) - 1), t)
        return t

    def frac(self, v: float) -> float | None:
        if not math.isfinite(v) or (self.scale == "log" and v <= 0):
            return None
        return (self.fwd(v) - self.lo) / (self.hi - self.lo)

    def ticks(self) -> list[tuple[float, str]]:
        if self.scale == "log":
            a, b = math.ceil(self.lo - 1e-9), math.floor(self.hi + 1e-9)
            if b < a:  # less than a decade: fall back to nice linear ticks in value space
                return [(v, _num(v)) for v in _nice(self.inv(self.lo), self.inv(self.hi)) if v > 0]
            step = max(1, math.ceil((b - a + 1) / 7))
            return [(10.0**k, f"1e{k}" if k not in (0, 1, -1) else _num(10.0**k)) for k in range(a, b + 1, step)]
        if self.scale == "symlog":
            out = [(0.0, "0")] if self.lo <= 0 <= self.hi else []
            k0 = round(math.log10(self.linthresh))
            for sign in (1, -1):
                k = k0
                while True:
                    v = sign * 10.0 ** k
                    t = self.fwd(v)
                    if not (self.lo <= t <= self.hi):
                        if (t > self.hi and sign > 0) or (t < self.lo and sign < 0):
                            break
                    else:
                        out.append((v, _num(v) if abs(k) < 3 else f"{'-' if sign < 0 else ''}1e{k}"))
                    k += 1
                    if k > k0 + 40:
                        break
            out.sort()
            if len(out) > 9:
                keep = max(1, math.ceil(len(out) / 9))
                out = [o for i, o in enumerate(out) if i % keep == 0 or o[0] == 0]
            return out
        return [(v, _num(v)) for v in _nice(self.lo, self.hi)]


def _nice(lo: float, hi: float, target: int = 6) -> list[float]:
    span = hi - lo
    if span <= 0 or not math.isfinite(span):
        return [lo]
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    out, v = [], first
    while v <= hi + 1e-9 * step:
        out.append(0.0 if abs(v) < 1e-12 * step else v)
        v += step
    return out


def _num(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if 1e-3 <= a < 1e5:
        s = f"{v:.4g}"
    else:
        s = f"{v:.2g}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")
    return s


def _natural(s: str) -> list[Any]:
    """Sort key that orders "depth 2" < "depth 10"."""
    parts = re.split(r"(\d+(?:\.\d+)?)", s)
    return [(0, float(t), "") if re.fullmatch(r"\d+(\.\d+)?", t) else (1, 0.0, t) for t in parts]


def _scale_name(log: bool, symlog: bool = False) -> str:
    return "symlog" if symlog else "log" if log else "linear"


def svg_plot(plot: dict[str, Any], *, diagonal: bool = False) -> str:
    """Render one evidence plot as inline SVG."""
    lines = plot.get("lines") or []
    xs = [v for ln in lines for v in ln["x"]]
    ys = [v for ln in lines for v in ln["y"]]
    xa = _Axis(xs, _scale_name(plot.get("log_x", False)))
    ya = _Axis(ys, _scale_name(plot.get("log_y", False), plot.get("symlog_y", False)))
    pw, ph = W - ML - MR, H - MT - MB

    def px(v: float) -> float | None:
        f = xa.frac(v)
        return None if f is None else ML + f * pw

    def py(v: float) -> float | None:
        f = ya.frac(v)
        return None if f is None else MT + (1 - f) * ph

    groups = sorted({ln.get("group") or "" for ln in lines}, key=_natural)
    color = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    title = plot.get("name", "")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" '
           f'role="img" aria-label="{_esc(title)}" class="plot">', f"<title>{_esc(title)}</title>",
           f'<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" class="frame"/>']
    for v, label in xa.ticks():
        x = px(v)
        if x is None or not ML - 0.5 <= x <= ML + pw + 0.5:
            continue
        out.append(f'<line x1="{x:.1f}" y1="{MT}" x2="{x:.1f}" y2="{MT + ph}" class="grid"/>')
        out.append(f'<text x="{x:.1f}" y="{MT + ph + 15}" class="tick" text-anchor="middle">{_esc(label)}</text>')
    for v, label in ya.ticks():
        y = py(v)
        if y is None or not MT - 0.5 <= y <= MT + ph + 0.5:
            continue
        out.append(f'<line x1="{ML}" y1="{y:.1f}" x2="{ML + pw}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{ML - 6}" y="{y + 3.5:.1f}" class="tick" text-anchor="end">{_esc(label)}</text>')
    if diagonal and xs and ys:
        lo = max(min(xs), min(ys))
        hi = min(max(xs), max(ys))
        p0, p1 = (px(lo), py(lo)), (px(hi), py(hi))
        if None not in p0 + p1 and hi > lo:
            out.append(f'<line x1="{p0[0]:.1f}" y1="{p0[1]:.1f}" x2="{p1[0]:.1f}" y2="{p1[1]:.1f}" '
                       'class="diag"/>')
    # a nested <svg> with an identity viewBox clips the data to the plotting area
    out.append(f'<svg x="{ML}" y="{MT}" width="{pw}" height="{ph}" viewBox="{ML} {MT} {pw} {ph}" '
               'overflow="hidden">')
    scatter = plot.get("kind") == "scatter"
    many = len(lines) > 8
    for ln in lines:
        c = color[ln.get("group") or ""]
        pts = [(px(x), py(y)) for x, y in zip(ln["x"], ln["y"], strict=False)]
        pts = [(a, b) for a, b in pts if a is not None and b is not None]
        if not pts:
            continue
        if scatter:
            out.extend(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.6" fill="{c}" fill-opacity="0.75"/>' for a, b in pts)
        elif len(pts) == 1:
            out.append(f'<circle cx="{pts[0][0]:.1f}" cy="{pts[0][1]:.1f}" r="2.6" fill="{c}"/>')
        else:
            coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
            out.append(f'<polyline points="{coords}" fill="none" stroke="{c}" stroke-width="1.4" '
                       f'stroke-opacity="{0.55 if many else 0.9}" stroke-linejoin="round"/>')
    out.append("</svg>")
    out.append(f'<text x="{ML}" y="{MT - 10}" class="ptitle">{_esc(title)}</text>')
    if plot.get("xlabel"):
        out.append(f'<text x="{ML + pw / 2:.1f}" y="{H - 8}" class="label" text-anchor="middle">'
                   f'{_esc(plot["xlabel"])}{" (log)" if xa.scale == "log" else ""}</text>')
    if plot.get("ylabel"):
        ylab = f'{plot["ylabel"]}{" (log)" if ya.scale == "log" else " (symlog)" if ya.scale == "symlog" else ""}'
        out.append(f'<text x="14" y="{MT + ph / 2:.1f}" class="label" text-anchor="middle" '
                   f'transform="rotate(-90 14 {MT + ph / 2:.1f})">{_esc(ylab)}</text>')
    named = [g for g in groups if g]
    for i, g in enumerate(named[:12]):
        y = MT + 10 + 18 * i
        x = ML + pw + 14
        mark = (f'<circle cx="{x + 9}" cy="{y}" r="3.2" fill="{color[g]}"/>' if scatter else
                f'<line x1="{x}" y1="{y}" x2="{x + 18}" y2="{y}" stroke="{color[g]}" stroke-width="2.4"/>')
        out.append(mark + f'<text x="{x + 24}" y="{y + 4}" class="legend">{_esc(g)}</text>')
    if len(named) > 12:
        out.append(f'<text x="{ML + pw + 14}" y="{MT + 10 + 18 * 12}" class="legend">'
                   f'… {len(named) - 12} more</text>')
    if plot.get("dropped_lines"):
        out.append(f'<text x="{ML + pw}" y="{MT - 10}" class="note" text-anchor="end">'
                   f'{len(lines)} of {len(lines) + plot["dropped_lines"]} lines shown</text>')
    out.append("</svg>")
    return "".join(out)
