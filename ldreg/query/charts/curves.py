"""Learning curves: a statistic of each series against examples seen, with its confidence band.

The paper's Figures 3, 4, 5 and 17 are all this chart with different choices of what is a panel
(``facet``: a response type/series, a stage, a run) and what is a colour (``color``: a run, a
series, or any column such as a config key added to the frame). A dashed rule marks x = 0 when
the runs are aligned at a stage's start; a solid rule marks y = 0 when the curves are changes
since a stage began, so "did it rise or fall, and is the band clear of zero" is read at a glance.
Panels shrink so that the whole figure fits a page (``PAGE_WIDTH``).
"""

from __future__ import annotations

from typing import Sequence

import altair as alt
import pandas as pd

from ldreg.query.charts.common import (CATEGORY_SCHEME, HOVER, PANEL_HEIGHT, PANEL_WIDTH, configure, fit_width,
                                       legend_columns, number_format, x_title)
from ldreg.query.charts.thin import thin_lines, thinning_note
from ldreg.query.frame import QUANTITIES, quantity_label

FACETS = ("series", "response_type", "stage", "run", "quantity", "none")
COLOR_TITLES = {"run": "run", "series": "response", "response_type": "response", "stage": "stage",
                "name": "experiment"}


def stage_words(frame: pd.DataFrame) -> str:
    """The stage a change is measured from: "SFT", "DPO", or "each stage" when the frame spans several."""
    names = list(dict.fromkeys(str(s) for s in frame["stage"].unique())) if "stage" in frame else []
    if len(names) != 1:
        return "each stage"
    name = names[0].split("-", 1)[1] if names[0][:1].isdigit() and "-" in names[0] else names[0]
    return name.upper() if name.isalpha() and len(name) <= 5 else name


def _changes(frame: pd.DataFrame) -> bool:
    return "change" in frame and frame["change"].notna().any()


def y_title(frame: pd.DataFrame, y: str) -> list[str]:
    """What the y axis shows, with its unit, in two lines: e.g. ["change in log π(y|x) since SFT began",
    "(nats, summed over tokens)"]. Panels of several quantities (or of a difference) share a title, so
    their names go to the panel headers and the axis keeps the unit."""
    quantities = list(frame["quantity"].unique()) if "quantity" in frame else []
    stat = "" if y == "mean" else f"{y} of "
    since = f" since {stage_words(frame)} began" if _changes(frame) else ""
    mixed = len(quantities) != 1 or ("minus" in frame and frame["minus"].notna().any())
    if not mixed:
        what, unit = QUANTITIES.get(quantities[0], (quantities[0], ""))
        head = f"{stat}change in {what}{since}" if since else f"{stat}{what}"
        return [head] + ([f"({unit})"] if unit else [])
    nats = set(quantities) <= {"logp_sum", "argmax_logp"}
    unit = "(nats, summed over tokens)" if nats else "(nats)" if set(quantities) <= {"logp_mean"} else ""
    return [f"{stat}{'change' if since else 'value'}{since}"] + ([unit] if unit else [])


def curves_chart(frame: pd.DataFrame, *, color: str = "run", facet: str = "series", x: str = "x", y: str = "mean",
                 band: bool = True, columns: int = 3, align: int | str | None = None, title: str | None = None,
                 subtitle: str | Sequence[str] | None = None, order: Sequence[str] | None = None,
                 independent_y: bool = True, width: int = PANEL_WIDTH, height: int = PANEL_HEIGHT,
                 dashes: str | None = None, thin: bool = True, events: pd.DataFrame | None = None,
                 event_labels: bool = True) -> alt.TopLevelMixin:
    """One line per colour value in each panel, the ``ci_low``-``ci_high`` band behind it.

    ``y``: "mean" (with the band) or "median". ``order``: the panels' order (default: as first seen).
    ``width`` is the most a panel gets: it shrinks so that ``columns`` panels fit the page.
    ``dashes``: a column whose values get their own dash pattern (e.g. the seed, with colour for the
    pipeline). ``thin``: lines with more points than the panel has pixels across are thinned for
    drawing (``ldreg.query.charts.thin``), and the subtitle says how many points are shown.
    ``events``: alarms to mark (``ldreg.query.events.event_marks_frame``), drawn as dashed vertical
    rules, in the run's colour where the colour is per run, labelled unless ``event_labels`` is off.
    """
    if frame.empty:
        raise ValueError("nothing to draw: the frame is empty")
    data = frame.copy()
    data["update_type"] = data["update_type"].astype(object).where(data["update_type"].notna(), "")
    fmt = number_format(data[y])
    legend = alt.Legend(title=COLOR_TITLES.get(color, color), columns=legend_columns(data[color]), symbolType="stroke",
                        symbolOpacity=1, symbolStrokeWidth=3)
    domain = list(dict.fromkeys(data[color]))
    escaped = color.replace(".", "\\.")  # Vega-Lite reads "stages.1.loss" as a nested path unless escaped
    colour = alt.Color(f"{escaped}:N", legend=legend, scale=alt.Scale(scheme=CATEGORY_SCHEME, domain=domain))
    x_enc = alt.X(f"{x}:Q", title=x_title(x, align, stage_words(data)), axis=alt.Axis(tickCount=6, format="~s"))
    tooltip = [alt.Tooltip("run:N"), alt.Tooltip("series:N", title="response"), alt.Tooltip("stage:N"),
               alt.Tooltip("step:Q"), alt.Tooltip("examples_seen:Q", title="examples seen"),
               alt.Tooltip(f"{y}:Q", format=fmt), alt.Tooltip("ci_low:Q", format=fmt, title="CI low"),
               alt.Tooltip("ci_high:Q", format=fmt, title="CI high"), alt.Tooltip("n:Q")]
    # One line per run, series and stage: a stage's end and the next one's start are separate points.
    detail = alt.Detail("line_id:N")
    data["line_id"] = data["run"].astype(str) + "|" + data["series"] + "|" + data["stage_index"].astype(str)
    base = alt.Chart()
    layers = []
    if band and y == "mean" and data["ci_low"].notna().any():
        layers.append(base.mark_area(opacity=0.18).encode(x=x_enc, y=alt.Y("ci_low:Q"), y2="ci_high:Q",
                                                          color=colour, detail=detail))
    dash = {}
    if dashes:
        dash = {"strokeDash": alt.StrokeDash(f"{dashes}:N", title=COLOR_TITLES.get(dashes, dashes),
                                             legend=alt.Legend(symbolType="stroke", symbolStrokeWidth=2))}
    layers.append(base.mark_line(strokeWidth=2).encode(
        x=x_enc, y=alt.Y(f"{y}:Q", title=y_title(data, y), scale=alt.Scale(zero=False)), color=colour, detail=detail,
        **dash))
    layers.append(base.mark_point(size=28, filled=True, opacity=0).encode(x=x_enc, y=f"{y}:Q", tooltip=tooltip)
                  .properties(name=HOVER))  # invisible, for tooltips: an image leaves it out (``render``)
    if x == "x" and align is not None and align != "stage" and data[x].min() < 0:
        layers.append(base.transform_aggregate(rows="count()").mark_rule(strokeDash=[4, 4], color="#666")
                      .encode(x=alt.datum(0)))
    if _changes(data):
        layers.append(base.transform_aggregate(rows="count()").mark_rule(color="#333", strokeWidth=1)
                      .encode(y=alt.datum(0)))
    if facet != "none":
        columns = max(1, min(columns, data[facet].nunique() if facet in data else columns))
        width = fit_width(width, columns)
    if thin:
        total = len(data)
        data = thin_lines(data, "line_id", x, y, max_points=width)
        note = thinning_note(len(data), total)
        if note:
            subtitle = [*([subtitle] if isinstance(subtitle, str) else subtitle or []), note]
            title = title or " "  # the note is a subtitle: a chart without a title gets a blank one
    if events is not None and not events.empty:
        from ldreg.query.events import event_layers, with_panels

        marks = with_panels(events, data, facet)
        data = pd.concat([data, marks], ignore_index=True)  # one data set, so every panel gets its marks
        layers += event_layers(base, marks, colour if color in events else None, event_labels)
    chart = alt.layer(*layers, data=data).properties(width=width, height=height)
    if facet != "none":
        if facet not in data:
            raise ValueError(f"cannot facet by {facet!r}; use one of {', '.join(FACETS)}")
        panels = list(order) if order else list(dict.fromkeys(data[facet]))
        chart = chart.facet(facet=alt.Facet(f"{facet}:N", sort=panels, title=None), columns=columns)
        if independent_y:
            chart = chart.resolve_scale(y="independent")
    return configure(chart, title, subtitle)
