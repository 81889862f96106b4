"""Heatmaps: the one-step influence matrix (Figure 3, right) and an eNTK Gram matrix.

Influence: rows are the observed response types, columns the updating ones, each cell the mean
over examples of the change in log-probability after one step; blue for a pull-up, orange for a
push-down, centred on zero, with the value written in the cell. eNTK: the Gram of per-example
gradients between probe examples, on a sequential scale (it is positive semi-definite).
"""

from __future__ import annotations

from typing import Any, Sequence

import altair as alt
import numpy as np
import pandas as pd

from ldreg.query.charts.common import DIVERGING_SCHEME, SEQUENTIAL_SCHEME, configure, number_format


SHORT_TITLES = {"delta_logp": "Δ log π (nats)", "lbk": "LBK", "lbk_signed": "signed LBK"}


def pick_step(frame: pd.DataFrame, at: int | str) -> pd.DataFrame:
    """Each run's rows at step ``at``: an integer, "first" or "last" (of that run's steps)."""
    if isinstance(at, int):
        return frame[frame["step"] == at]
    if at not in ("first", "last"):
        raise ValueError(f"step must be an integer, 'first' or 'last', not {at!r}")
    chosen = frame.groupby("run_id")["step"].transform("min" if at == "first" else "max")
    return frame[frame["step"] == chosen]


def influence_heatmap(frame: pd.DataFrame, *, at: int | str = "first", title: str | None = None,
                      subtitle: str | None = None, order: Sequence[str] | None = None, cell: int = 34) -> alt.TopLevelMixin:
    """Update type (x) by observe type (y) of ``mean``, one panel per run when there are several."""
    data = pick_step(frame, at).copy()
    if data.empty:
        raise ValueError(f"no influence observations at step {at!r}")
    types = list(order) if order else list(dict.fromkeys(list(data["update_type"]) + list(data["response_type"])))
    # the axes show the types' display labels (y+, y-, ...) where the frame has them
    if "response_label" not in data:
        data["response_label"], data["update_label"] = data["response_type"], data["update_type"]
    name = dict(zip(data["response_type"], data["response_label"])) | dict(zip(data["update_type"], data["update_label"]))
    updates = [name.get(t, t) for t in types if t in set(data["update_type"])]
    observes = [name.get(t, t) for t in types if t in set(data["response_type"])]
    fmt = number_format(data["mean"])
    limit = float(np.nanmax(np.abs(data["mean"]))) or 1.0
    base = alt.Chart().encode(
        x=alt.X("update_label:N", sort=updates, title="updating on (u)", axis=alt.Axis(labelAngle=-40, orient="top")),
        y=alt.Y("response_label:N", sort=observes, title="observing (o)"))
    rect = base.mark_rect(stroke="white", strokeWidth=1).encode(
        color=alt.Color("mean:Q", title=SHORT_TITLES.get(data["quantity"].iloc[0], data["quantity"].iloc[0]),
                        scale=alt.Scale(scheme=DIVERGING_SCHEME, reverse=True, domain=[-limit, limit], domainMid=0),
                        legend=alt.Legend(orient="right", gradientLength=max(60, cell * len(observes)))),
        tooltip=[alt.Tooltip("run:N"), alt.Tooltip("update_label:N", title="update"),
                 alt.Tooltip("response_label:N", title="observe"), alt.Tooltip("step:Q"),
                 alt.Tooltip("mean:Q", format=fmt), alt.Tooltip("ci_low:Q", format=fmt, title="CI low"),
                 alt.Tooltip("ci_high:Q", format=fmt, title="CI high"), alt.Tooltip("n:Q")])
    text = base.mark_text(fontSize=10).encode(
        text=alt.Text("mean:Q", format=fmt),
        color=alt.condition(f"abs(datum.mean) > {0.6 * limit}", alt.value("white"), alt.value("#222")))
    chart = alt.layer(rect, text, data=data).properties(width=cell * len(updates), height=cell * len(observes))
    if data["run"].nunique() > 1:
        chart = chart.facet(facet=alt.Facet("run:N", title=None), columns=3)
    return configure(chart, title, subtitle)


def entk_heatmap(entk: dict[str, Any], *, normalise: bool = False, title: str | None = None,
                 subtitle: str | None = None, cell: int = 26) -> alt.TopLevelMixin:
    """The Gram K[i, j] between probe examples (``normalise``: cosine K_ij / sqrt(K_ii K_jj))."""
    gram = np.asarray(entk["gram"], dtype=float)
    if normalise:
        diag = np.sqrt(np.clip(np.diag(gram), 1e-300, None))
        gram = gram / np.outer(diag, diag)
    ids = [str(i) for i in entk["example_ids"]]
    n = gram.shape[0]
    rows = pd.DataFrame({"i": np.repeat(ids, n), "j": np.tile(ids, n), "value": gram.reshape(-1)})
    fmt = number_format(rows["value"])
    label = "cosine of gradients" if normalise else "K(x_i, x_j) = ⟨∇ log π(y_i|x_i), ∇ log π(y_j|x_j)⟩"
    chart = alt.Chart(rows).mark_rect().encode(
        x=alt.X("j:N", sort=ids, title="probe example", axis=alt.Axis(labelAngle=0, orient="top")),
        y=alt.Y("i:N", sort=ids, title="probe example"),
        color=alt.Color("value:Q", title="cosine" if normalise else "K", scale=alt.Scale(scheme=SEQUENTIAL_SCHEME),
                        legend=alt.Legend(orient="right", gradientLength=max(60, cell * n))),
        tooltip=[alt.Tooltip("i:N", title="example i"), alt.Tooltip("j:N", title="example j"),
                 alt.Tooltip("value:Q", format=fmt, title=label)],
    ).properties(width=cell * n, height=cell * n)
    return configure(chart, title, subtitle)
