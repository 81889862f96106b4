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
    keep = []
    for _, rows in frame.groupby(line, sort=False):
        own = float(rows[x].max() - rows[x].min())
        share = max_points if span <= 0 else max(2, int(np.ceil(max_points * own / span)))
        if len(rows) <= share:
            keep.append(rows.index.to_numpy())
            continue
        bins = max(share // 2, 1)
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
    if not keep:
        return frame
    return frame.loc[np.sort(np.concatenate(keep))]


def thinning_note(drawn: int, total: int) -> str | None:
    """The subtitle line that says a chart was thinned (None when it was not)."""
    if drawn >= total:
        return None
    return (f"curves thinned for drawing: {drawn:,} of {total:,} points shown (each line's first, last, "
            f"and the lowest and highest of every pixel's span); the data are not thinned")

