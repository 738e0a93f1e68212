"""Evidence: data a claim hands to the report (plots, scalars, tables, notes).

Calls are recorded only while a claim runs (and only from examples before the first failure, so the
shrinking phase does not flood the report); outside a claim run they do nothing.  Everything is capped
(lines per plot, points per line, rows per table) so a claim may call these in every example.

    evidence.series("|W11| vs loss", x=loss, y=w11.abs(), group=f"depth {N}",
                    xlabel="loss ℓ", ylabel="|W₁₁|", log_x=True, log_y=True)
    evidence.scalar("largest error/margin", ratio)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from implreg.harness import recorder as _record

__all__ = ["instances", "note", "recording", "scalar", "series", "table"]


def recording() -> bool:
    """True while evidence is recorded (inside a claim, not during shrinking): skip evidence-only work otherwise."""
    rec = _record.current()
    return rec is not None and rec.recording_evidence


def _floats(x: Any) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        x = x.detach().to("cpu").double().numpy()
    arr = np.asarray(x, dtype=object if type(x).__module__.startswith("mpmath") else None)
    if arr.dtype == object:
        arr = np.vectorize(float, otypes=[float])(arr)
    return arr.astype(np.float64)


def _downsample(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    if x.size <= n:
        return x, y
    idx = np.unique(np.linspace(0, x.size - 1, n).round().astype(int))
    return x[idx], y[idx]


def series(name: str, x: Any, y: Any, *, group: str | None = None, xlabel: str | None = None,
           ylabel: str | None = None, log_x: bool = False, log_y: bool = False, symlog_y: bool = False,
           kind: str = "line") -> None:
    """Add line(s) to the plot called ``name``: ``y`` of shape (T,) or (B, T) against ``x`` (T,) or (B, T).

    Lines with the same ``group`` share a colour and a legend entry.  ``kind`` is "line" or "scatter".
    ``symlog_y`` uses a symmetric log axis (linear near zero), for signed quantities over many decades.
    """
    rec = _record.current()
    if rec is None or not rec.recording_evidence:
        return
    if kind not in ("line", "scatter"):
        raise ValueError(f"evidence.series({name!r}): kind must be 'line' or 'scatter', got {kind!r}")
    xa, ya = _floats(x), _floats(y)
    if ya.ndim == 0:
        ya = ya.reshape(1)
    if xa.ndim == 0:
        xa = xa.reshape(1)
    if ya.ndim == 1:
        ya = ya[None, :]
    if xa.ndim == 1:
        xa = np.broadcast_to(xa[None, :], ya.shape)
    try:
        xa, ya = np.broadcast_arrays(xa, ya)
    except ValueError:
        raise ValueError(f"evidence.series({name!r}): x {xa.shape} and y {ya.shape} do not match") from None
    plot = rec.series.setdefault(name, {
        "name": name, "xlabel": xlabel or "", "ylabel": ylabel or "", "log_x": bool(log_x),
        "log_y": bool(log_y), "symlog_y": bool(symlog_y), "kind": kind, "lines": [], "dropped_lines": 0,
    })
    for row_x, row_y in zip(xa.reshape(-1, xa.shape[-1]), ya.reshape(-1, ya.shape[-1]), strict=True):
        if len(plot["lines"]) >= _record.MAX_SERIES_LINES:
            plot["dropped_lines"] += 1
            continue
        keep = np.isfinite(row_x) & np.isfinite(row_y)
        px, py = _downsample(row_x[keep], row_y[keep], _record.MAX_SERIES_POINTS)
        plot["lines"].append({"group": group, "x": [float(v) for v in px], "y": [float(v) for v in py]})


def scalar(name: str, value: Any, *, unit: str | None = None) -> None:
    """Record a scalar (or every entry of an array); the report shows n, min, median, max."""
    rec = _record.current()
    if rec is None or not rec.recording_evidence:
        return
    vals = _floats(value).ravel()
    entry = rec.scalars.setdefault(name, {"name": name, "unit": unit, "values": [], "nonfinite": 0})
    finite = vals[np.isfinite(vals)]
    entry["nonfinite"] += int(vals.size - finite.size)
    room = 10_000 - len(entry["values"])
    entry["values"].extend(float(v) for v in finite[:max(room, 0)])


def table(name: str, rows: list[dict[str, Any]] | dict[str, Any]) -> None:
    """Append rows (dicts column → value) to the table called ``name`` (first rows kept, capped)."""
    rec = _record.current()
    if rec is None or not rec.recording_evidence:
        return
    if isinstance(rows, dict):
        rows = [rows]
    t = rec.tables.setdefault(name, {"name": name, "columns": [], "rows": [], "dropped_rows": 0})
    for row in rows:
        for col in row:
            if col not in t["columns"]:
                t["columns"].append(str(col))
        if len(t["rows"]) >= _record.MAX_TABLE_ROWS:
            t["dropped_rows"] += 1
            continue
        t["rows"].append({str(k): _cell(v) for k, v in row.items()})


def _cell(v: Any) -> Any:
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f if math.isfinite(f) else str(f)


def note(text: str) -> None:
    """A sentence for the claim's section of the report (deduplicated, first few kept)."""
    rec = _record.current()
    if rec is None or not rec.recording_evidence:
        return
    text = str(text)
    if text not in rec.notes and len(rec.notes) < _record.MAX_NOTES:
        rec.notes.append(text)


def instances(k: int) -> None:
    """Declare how many problem instances the current example holds (``batches`` does this itself)."""
    rec = _record.current()
    if rec is not None:
        rec.set_instances(k)
