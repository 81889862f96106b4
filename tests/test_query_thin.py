"""Curves thinned for drawing: extremes, ends and short lines kept, and the chart says so."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ldreg.query.charts.curves import curves_chart
from ldreg.query.charts.thin import thin_lines


def _frame(points: int, runs: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for run in range(runs):
        mean = np.cumsum(rng.normal(0, 1, points))
        mean[points // 3] = 1e3  # a one-point spike and a dip: thinning must keep both
        mean[2 * points // 3] = -1e3
        for k in range(points):
            rows.append({"run": f"run {run}", "series": "y+", "stage": "0-sft", "stage_index": 0, "step": k,
                         "examples_seen": 4 * k, "x": 4 * k, "mean": mean[k], "ci_low": mean[k] - 1,
                         "ci_high": mean[k] + 1, "n": 50, "quantity": "logp_sum", "update_type": None,
                         "median": mean[k], "minus": None, "change": None})
    return pd.DataFrame(rows)


def test_thinning_keeps_ends_extremes_and_short_lines():
    frame = _frame(1000)
    frame["line_id"] = frame["run"]
    short = _frame(30, runs=1).assign(line_id="short")
    short["x"] = short["x"] * (frame["x"].max() / short["x"].max())  # few points over the whole axis
    thinned = thin_lines(pd.concat([frame, short], ignore_index=True), "line_id", "x", "mean", max_points=100)
    for run, rows in thinned[thinned.line_id != "short"].groupby("line_id"):
        full = frame[frame.line_id == run]
        assert len(rows) <= 102
        assert rows["x"].iloc[0] == full["x"].min() and rows["x"].iloc[-1] == full["x"].max()
        assert rows["mean"].max() == full["mean"].max() == 1e3 and rows["mean"].min() == -1e3
        means = full.sort_values("x")["mean"].to_numpy()
        for part in np.array_split(means, 50):  # every pixel's span keeps its own extremes
            assert part.max() in set(rows["mean"]) and part.min() in set(rows["mean"])
    assert len(thinned[thinned.line_id == "short"]) == 30


def test_a_thinned_chart_says_so_and_a_small_one_does_not():
    big = curves_chart(_frame(1000), facet="none", width=200, title="big").to_dict()
    assert len(big["datasets"][next(iter(big["datasets"]))]) <= 2 * 202
    assert "thinned for drawing" in " ".join(big["title"]["subtitle"])
    assert "2,000 points" in " ".join(big["title"]["subtitle"])
    small = curves_chart(_frame(50), facet="none", width=200, title="small").to_dict()
    assert "thinned" not in str(small["title"].get("subtitle"))
    unthinned = curves_chart(_frame(1000), facet="none", width=200, title="all", thin=False).to_dict()
    assert len(unthinned["datasets"][next(iter(unthinned["datasets"]))]) == 2000


def test_an_image_drops_the_hover_layer_only():
    from ldreg.query.charts.render import to_spec

    chart = curves_chart(_frame(30), facet="series", title="t")
    marks = lambda spec: [layer["mark"]["type"] for layer in spec["spec"]["layer"]]  # noqa: E731
    assert marks(to_spec(chart)) == ["area", "line", "point"]
    assert marks(to_spec(chart, image=True)) == ["area", "line"]
    assert marks(to_spec(chart)) == ["area", "line", "point"]  # the chart keeps its tooltips


def test_a_chart_of_many_short_lines_serialises():
    """5,100 points of 170 short lines (a 100-run comparison has ~30k): nothing to thin, still drawable."""
    frame = _frame(30, runs=170)
    spec = curves_chart(frame, facet="none", title="many").to_dict()
    assert len(spec["datasets"][spec["data"]["name"]]) == 5_100


def test_a_line_over_half_the_axis_gets_half_the_pixels():
    whole = _frame(400, runs=1).assign(line_id="whole")
    half = _frame(200, runs=1).assign(line_id="half")  # x from 0 to 796: half of whole's 0..1596
    thinned = thin_lines(pd.concat([whole, half], ignore_index=True), "line_id", "x", "mean", max_points=100)
    assert len(thinned[thinned.line_id == "whole"]) <= 102
    assert len(thinned[thinned.line_id == "half"]) <= 52
    assert thinned[thinned.line_id == "half"]["mean"].max() == 1e3


def _thin_line_by_line(frame, line, x, y, max_points):
    """The plain reading of the rule, one line at a time: what ``thin_lines`` must keep, row for row."""
    xs = frame[x].to_numpy(dtype=float)
    span = float(np.nanmax(xs) - np.nanmin(xs)) if len(xs) else 0.0
    keep = []
    for _, rows in frame.groupby(line, sort=False):
        own = float(rows[x].max() - rows[x].min())
        share = max_points if span <= 0 else max(2, int(np.ceil(max_points * own / span)))
        if len(rows) <= share:
            keep.append(rows.index.to_numpy())
            continue
        rows = rows.sort_values(x, kind="stable")
        values = rows[y].to_numpy(dtype=float)
        chosen = {0, len(rows) - 1}
        for part in np.array_split(np.arange(len(rows)), max(share // 2, 1)):
            finite = part[np.isfinite(values[part])]
            if finite.size:
                chosen.update((int(finite[np.argmin(values[finite])]), int(finite[np.argmax(values[finite])])))
        keep.append(rows.index.to_numpy()[sorted(chosen)])
    return frame.loc[np.sort(np.concatenate(keep))] if keep else frame


def test_thinning_all_lines_at_once_keeps_what_thinning_each_line_keeps():
    rng = np.random.default_rng(3)
    thinned = 0
    for trial in range(20):
        lines = int(rng.integers(1, 40))
        sizes = rng.integers(1, 400 if trial % 2 else 3, size=lines)  # even trials: nothing to thin
        frame = pd.DataFrame({
            "line_id": np.repeat([f"l{k}" for k in range(lines)], sizes),
            "x": np.concatenate([np.sort(rng.uniform(0, rng.uniform(1, 1e4), n)) for n in sizes]),
            "mean": rng.normal(0, 1, int(sizes.sum()))})
        frame.loc[rng.random(len(frame)) < 0.02, "mean"] = np.nan
        frame = frame.sample(frac=1, random_state=trial).reset_index(drop=True)  # lines interleaved
        width = int(rng.integers(20, 300))
        got = thin_lines(frame, "line_id", "x", "mean", max_points=width)
        pd.testing.assert_frame_equal(got, _thin_line_by_line(frame, "line_id", "x", "mean", width))
        thinned += len(got) < len(frame)
    assert 0 < thinned < 20  # both paths taken: frames with lines to thin, and frames without
