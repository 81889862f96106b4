"""Predicted vs measured one-step change: how much of it the first-order term -eta A K G explains.

Reads the kind-"prediction" observations (ldreg.dynamics.prediction) of some runs. The chart puts
each (update, observe, example) at (predicted, measured) with the y = x line: on the line, the
decomposition's first-order term is the whole change. The agreement is R^2 about that line, with
no fitting: 1 - sum (measured - predicted)^2 / sum (measured - mean measured)^2, the share of the
measured changes' variance the prediction accounts for (it can be negative: worse than the mean).
"""

from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd

from ldreg.query.charts.common import configure
from ldreg.store.collections import OBSERVATIONS

COLUMNS = ["run_id", "step", "stage_index", "update_type", "response_type", "example_id", "predicted", "measured",
           "residual", "lr", "entk_mode"]


def prediction_frame(db, run_ids: Sequence[int], step: int | str = "first") -> pd.DataFrame:
    """One row per (run, step, update, observe, example). ``step``: an int, "first" or "last" per run, or "all"."""
    rows = []
    for doc in db[OBSERVATIONS].find({"run_id": {"$in": [int(r) for r in run_ids]}, "kind": "prediction"}):
        v, meta = doc["values"], doc.get("meta") or {}
        for k, example_id in enumerate(doc["example_ids"]):
            rows.append((doc["run_id"], doc["step"], doc["stage_index"], doc["update_type"], doc["response_type"],
                         example_id, v["predicted"][k], v["measured"][k], v["residual"][k], meta.get("lr"),
                         meta.get("entk_mode", "")))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if frame.empty or step == "all":
        return frame
    if isinstance(step, int):
        return frame[frame["step"] == step]
    pick = frame.groupby("run_id")["step"].transform("min" if step == "first" else "max")
    return frame[frame["step"] == pick].reset_index(drop=True)


def agreement(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """R^2 about y = x (no fit), and the residual's size relative to the measured change (RMS ratio)."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    res = m - p
    spread = float(np.sum((m - m.mean()) ** 2)) if len(m) else 0.0
    size = float(np.sqrt(np.sum(m ** 2)))
    return {"n": int(len(m)), "r2": 1.0 - float(np.sum(res ** 2)) / spread if spread > 0 else float("nan"),
            "relative_residual": float(np.sqrt(np.sum(res ** 2))) / size if size > 0 else float("nan")}


def prediction_line(frame: pd.DataFrame) -> str:
    """One sentence for a report: how much of the one-step change the first-order term explains."""
    if frame.empty:
        return "not measured: no prediction observations (set probing.influence.predict: true)"
    a = agreement(frame["predicted"], frame["measured"])
    modes = ", ".join(sorted(set(frame["entk_mode"]))) or "?"
    lrs = ", ".join(f"{v:g}" for v in sorted(set(frame["lr"].dropna())))
    return (f"the first-order term -eta A K G explains {a['r2']:.1%} of the variance of the measured one-step "
            f"changes (R^2 about y = x, no fit; {a['n']} (update, observe, example) triples over "
            f"{frame['run_id'].nunique()} run(s) at step {', '.join(map(str, sorted(set(frame['step']))))}, eta {lrs}, "
            f"eNTK {modes}); the residual's RMS is "
            f"{a['relative_residual']:.1%} of the measured change's.")


def prediction_chart(frame: pd.DataFrame, *, title: str | None = None, width: int = 320) -> alt.TopLevelMixin:
    """Predicted (x) vs measured (y) one-step change, coloured by observed type (the update in the
    tooltip), the y = x line dashed."""
    if frame.empty:
        raise ValueError("no prediction observations to draw (set probing.influence.predict: true)")
    data = frame
    lo = float(min(data["predicted"].min(), data["measured"].min()))
    hi = float(max(data["predicted"].max(), data["measured"].max()))
    line = alt.Chart(pd.DataFrame({"x": [lo, hi], "y": [lo, hi]})).mark_line(
        strokeDash=[5, 4], color="#777").encode(x="x:Q", y="y:Q")
    points = alt.Chart(data).mark_circle(size=50, opacity=0.8).encode(
        x=alt.X("predicted:Q", title="predicted Δ log π = η K G (nats)"),
        y=alt.Y("measured:Q", title="measured Δ log π (nats)"),
        color=alt.Color("response_type:N", title="observed response", legend=alt.Legend(columns=3)),
        tooltip=["run_id", "step", "update_type", "response_type", "example_id",
                 alt.Tooltip("predicted:Q", format=".4g"), alt.Tooltip("measured:Q", format=".4g"),
                 alt.Tooltip("residual:Q", format=".3g")])
    a = agreement(data["predicted"], data["measured"])
    subtitle = f"R² about y = x: {a['r2']:.3f}; residual RMS / measured RMS: {a['relative_residual']:.3f}; n {a['n']}"
    return configure((line + points).properties(width=width, height=width),
                     title or "Does the first-order term predict the one-step change?", subtitle)
