"""Charts for the two small simulations: the squeezing effect (Figure 20) and the digits eNTK (Figure 1).

Each builder takes the plain results of ``ldreg.paper.sim`` (or a tidy DataFrame) and returns an
``alt.Chart``; nothing here computes dynamics. Charts embed their data, so PNG/SVG (vl-convert)
and ``chart.save(..., inline=True)`` HTML work offline.
"""

from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd

from ldreg.paper.sim.digits import DigitsResult
from ldreg.paper.sim.squeeze import SqueezeResult, fraction_falling

BEFORE, AFTER = "before the step", "after the step"
PHASE_COLOURS = alt.Scale(domain=[BEFORE, AFTER], range=["#9e9e9e", "#1f77b4"])
MAX_BARS = 100  # above this many classes bars are thinner than a pixel: draw lines instead


def squeeze_frame(result: SqueezeResult) -> pd.DataFrame:
    """Tidy rows (class, phase, prob, role): role names what the step did to the class."""
    roles = np.full(result.before.size, "other", dtype=object)
    roles[result.argmax] = "argmax"
    for k, eta in result.steps:
        roles[k] = "pushed down" if eta < 0 else "pulled up"
    rows = []
    for phase, probs in ((BEFORE, result.before), (AFTER, result.after)):
        for c, p in enumerate(probs):
            rows.append({"class": c, "phase": phase, "prob": float(p), "role": roles[c]})
    return pd.DataFrame(rows)


def _step_words(result: SqueezeResult) -> str:
    """What the step did, naming the class by its rank when it is the peak (the most likely class)."""
    peak = int(np.argmax(result.before))
    parts = [f"{'negative' if eta < 0 else 'positive'} step (eta={eta:g}) on "
             f"{'the peak, ' if k == peak else ''}class {k} (p = {result.before[k]:.3g})" for k, eta in result.steps]
    return " + ".join(parts)


def squeeze_chart(result: SqueezeResult, *, width: int = 700, height: int = 220) -> alt.LayerChart:
    """pi before and after one step, every class; the step's targets and the argmax are labelled."""
    frame = squeeze_frame(result)
    v = result.before.size
    base = alt.Chart(frame)
    x = alt.X("class:O", title="class", axis=alt.Axis(labelAngle=0, values=list(range(0, v, max(1, v // 25)))))
    if v <= MAX_BARS:
        marks = base.mark_bar().encode(
            x=x, xOffset=alt.XOffset("phase:N", sort=[BEFORE, AFTER]),
            y=alt.Y("prob:Q", title="probability"),
            color=alt.Color("phase:N", scale=PHASE_COLOURS, sort=[BEFORE, AFTER], title=None,
                            legend=alt.Legend(orient="top-right")),
            tooltip=["class", "phase", alt.Tooltip("prob:Q", format=".3g"), "role"],
        )
    else:
        x = alt.X("class:Q", title="class", scale=alt.Scale(domain=[0, v - 1]))
        marks = base.mark_line(strokeWidth=1).encode(
            x=x, y=alt.Y("prob:Q", title="probability"),
            color=alt.Color("phase:N", scale=PHASE_COLOURS, sort=[BEFORE, AFTER], title=None,
                            legend=alt.Legend(orient="top-right")),
        )
    marked = frame[(frame["role"] != "other")]
    tops = marked.groupby(["class", "role"], as_index=False)["prob"].max()
    tops["label"] = tops["role"] + " (" + tops["class"].astype(str) + ")"
    xq = "class:O" if v <= MAX_BARS else "class:Q"
    labels = alt.Chart(tops).mark_text(dy=-8, fontSize=11, fontWeight="bold", color="#d62728").encode(
        x=alt.X(xq), y=alt.Y("prob:Q"), text="label:N"
    )
    title = alt.TitleParams(
        f"{result.case}: {_step_words(result)}",
        subtitle=[
            f"{v} classes; grey = pi before, blue = pi after one SGD step on cross-entropy "
            f"(negative eta = gradient ascent, as for DPO's rejected response)",
            f"argmax = most likely class not pushed down; {_fraction_words(result)}",
        ],
        anchor="start",
    )
    return alt.layer(marks, labels).properties(width=width, height=height, title=title)


def _fraction_words(result: SqueezeResult) -> str:
    return f"{100 * fraction_falling(result):.0f}% of the other classes fell"


def squeeze_panel(results: Sequence[SqueezeResult]) -> alt.VConcatChart:
    """Figure 20: one before/after chart per case, stacked."""
    return alt.vconcat(*(squeeze_chart(r) for r in results)).resolve_scale(color="shared")


def entk_frame(matrix: np.ndarray) -> pd.DataFrame:
    rows = [
        {"observed class": o, "updated class": u, "mean eNTK norm": float(matrix[o, u])}
        for o in range(matrix.shape[0])
        for u in range(matrix.shape[1])
    ]
    return pd.DataFrame(rows)


def entk_heatmap(matrix: np.ndarray, *, size: int = 360) -> alt.LayerChart:
    """Figure 1(d): mean ||K(x_o, x_u)||_F per pair of digit classes, values printed in the cells."""
    frame = entk_frame(matrix)
    mid = float(frame["mean eNTK norm"].median())
    base = alt.Chart(frame).encode(
        x=alt.X("updated class:O", title="class of the updated example x_u", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("observed class:O", title="class of the observed example x_o"),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("mean eNTK norm:Q", scale=alt.Scale(scheme="viridis"),
                        title=["mean", "||K(x_o, x_u)||_F"]),
        tooltip=["observed class", "updated class", alt.Tooltip("mean eNTK norm:Q", format=".0f")],
    )
    text = base.mark_text(fontSize=9).encode(
        text=alt.Text("mean eNTK norm:Q", format=".0f"),
        color=alt.condition(alt.datum["mean eNTK norm"] > mid, alt.value("black"), alt.value("white")),
    )
    title = alt.TitleParams(
        "Empirical NTK between digit classes",
        subtitle=["Frobenius norm of the 10x10 logit eNTK, averaged over pairs of distinct examples;",
                  "a large value means an update on one class moves predictions on the other"],
        anchor="start",
    )
    return alt.layer(cells, text).properties(width=size, height=size, title=title)


def influence_frame(result: DigitsResult) -> pd.DataFrame:
    names = {"same_class": "same class", "similar_class": "similar class", "dissimilar_class": "dissimilar class"}
    rows = []
    for group, v in result.influence.items():
        label = f"{names.get(group, group)} ({v['observed_class']})"
        for quantity, title in (("own_label", "log p(own label)"), ("update_class", f"log p({result.update_class})")):
            vals = np.asarray(v[quantity])
            rows.append({"observed": label, "quantity": title, "mean change": float(vals.mean()),
                         "sem": float(vals.std(ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else 0.0})
    return pd.DataFrame(rows)


def influence_chart(result: DigitsResult, *, width: int = 260, height: int = 110) -> alt.FacetChart:
    """One SGD step on a digit of class u: mean change of log-probabilities on held-out digits."""
    frame = influence_frame(result)
    frame["low"] = frame["mean change"] - frame["sem"]
    frame["high"] = frame["mean change"] + frame["sem"]
    order = list(dict.fromkeys(frame["observed"]))
    base = alt.Chart().encode(y=alt.Y("observed:N", sort=order, title=None, axis=alt.Axis(labelLimit=200)))
    bars = base.mark_bar().encode(
        x=alt.X("mean change:Q", title="mean change after one step"),
        color=alt.Color("observed:N", sort=order, legend=None, scale=alt.Scale(range=["#2ca02c", "#ff7f0e", "#7f7f7f"])),
        tooltip=["observed", "quantity", alt.Tooltip("mean change:Q", format=".3g")],
    )
    errors = base.mark_rule().encode(x="low:Q", x2="high:Q")
    zero = alt.Chart().mark_rule(color="black", strokeWidth=0.5).encode(x=alt.datum(0))
    quantities = list(dict.fromkeys(frame["quantity"]))
    return alt.layer(bars, errors, zero, data=frame).properties(width=width, height=height).facet(
        column=alt.Column("quantity:N", sort=quantities, title=None, header=alt.Header(labelFontSize=12)),
    ).resolve_scale(x="independent").properties(
        title=alt.TitleParams(
            f"One SGD step on a digit {result.update_class}: change of log-probabilities on held-out digits",
            subtitle=[f"bars: mean over the held-out examples of each class (lines: standard error);",
                      f"similar / dissimilar = the class with the largest / smallest eNTK to class {result.update_class}"],
            anchor="start",
        )
    )
