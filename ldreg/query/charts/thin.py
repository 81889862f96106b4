"""Thinning curves for drawing: a line never needs more points than its panel has pixels across.

A 400-step run drawn in a 140-pixel panel puts three points on every pixel column; drawing them
costs time (vl-convert renders every one) and shows nothing more. ``thin_lines`` keeps, per line,
its first and last points and, in each of (its pixels) / 2 equal runs of consecutive points,
the one with the lowest and the one with the highest value (min-max decimation: every peak and
trough a pixel column could show survives). The chart says so in its subtitle
(``thinning_note``); the frame a query returns is never thinned.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def thin_lines(frame: pd.DataFrame, line: str, x: str, y: str, max_points: int) -> pd.DataFrame:
    """The rows to draw. ``max_points``: the panel's width in pixels; a line spanning part of the
    x range gets its share of them (a stage drawn over half the axis, half). Lines within their
    share are kept whole, longer ones min-max decimated (first, last, and each bin's lowest and
    highest ``y``: at most share + 2 rows a line)."""
    xs = frame[x].to_numpy(dtype=float)
    span = float(np.nanmax(xs) - np.nanmin(xs)) if len(xs) else 0.0
    # Lengths and spans of every line at once: a loop over the lines costs more than drawing
    # a 100-run comparison (2,800 short lines, none to thin).
    lines = frame.groupby(line, sort=False)[x].agg(["size", "min", "max"])
    if span <= 0:
        share = np.full(len(lines), max_points)
    else:
        own = (lines["max"] - lines["min"]).to_numpy(dtype=float)
        share = np.maximum(2, np.ceil(max_points * own / span).astype(int))
    long = lines.index[lines["size"].to_numpy() > share]
    whole = frame[line].notna().to_numpy()
    if not len(long) and whole.all() and frame.index.is_monotonic_increasing and frame.index.is_unique:
        return frame  # nothing to thin: the rows as they are
    share_of = dict(zip(lines.index, share))
    keep = [frame.index[whole & ~frame[line].isin(long).to_numpy()].to_numpy()]
    for key, rows in frame[frame[line].isin(long)].groupby(line, sort=False):
        bins = max(int(share_of[key]) // 2, 1)
        rows = rows.sort_values(x, kind="stable")
        values = rows[y].to_numpy(dtype=float)
        where = np.arange(len(rows))
        chosen = {0, len(rows) - 1}
        for part in np.array_split(where, bins):
            finite = part[np.isfinite(values[part])]
            if finite.size:
                chosen.add(int(finite[np.argmin(values[finite])]))
                chosen.add(int(finite[np.argmax(values[finite])]))
        keep.append(rows.index.to_numpy()[sorted(chosen)])
    return frame.loc[np.sort(np.concatenate(keep))]


def thinning_note(drawn: int, total: int) -> str | None:
    """The subtitle line that says a chart was thinned (None when it was not)."""
    if drawn >= total:
        return None
    return (f"curves thinned for drawing: {drawn:,} of {total:,} points shown (each line's first, last, "
            f"and the lowest and highest of every pixel's span); the data are not thinned")

