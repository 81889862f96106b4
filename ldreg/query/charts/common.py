"""Shared styling for every ldreg chart: one look, readable at a glance and in print.

Fonts large enough for a slide, light grid, legends that wrap long run labels, the colour
conventions of the paper (blue pulls up, orange pushes down), axis titles with units, and the
tooltip fields every point carries.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

# Altair refuses to serialise a frame of over 5,000 rows (MaxRowsError), so a 100-run comparison
# (~30k points of short lines, nothing to thin) failed to write. ldreg bounds what it draws itself
# (ldreg.query.charts.thin), so the blunt limit is off for every chart made in this process.
alt.data_transformers.disable_max_rows()

FONT = "Helvetica, Arial, sans-serif"
PANEL_WIDTH = 280
PANEL_HEIGHT = 220
CATEGORY_SCHEME = "tableau10"
DIVERGING_SCHEME = "blueorange"  # reversed below: positive (a pull-up) is blue, negative orange, as in the paper
SEQUENTIAL_SCHEME = "viridis"

PAGE_WIDTH = 1280  # the report's page: no figure may be wider than the page less its margins
PAGE_MARGIN = 24  # ldreg.query.outputs.page's body margin, each side
# What a faceted panel adds beside its plot: its own y axis (labels and title; scales are
# independent) and the spacing between panels; and what the whole figure adds (padding).
PANEL_EXTRA = 95
FIGURE_EXTRA = 60


def fit_width(width: int, columns: int) -> int:
    """The panel width, at most ``width``, at which ``columns`` panels fit the page."""
    room = PAGE_WIDTH - 2 * PAGE_MARGIN - FIGURE_EXTRA
    return int(max(120, min(width, room / max(columns, 1) - PANEL_EXTRA)))


X_TITLES = {
    "x": "examples seen",
    "examples_seen": "examples seen",
    "step": "optimiser steps",
}


def x_title(x: str, align: int | str | None, stage: str | None = None) -> str:
    """``examples seen`` or, when aligned, ``examples seen since <stage> began`` (``stage``: the name
    of the one stage drawn, if so, which says more than ``last`` or an index)."""
    if x != "x" or align is None:
        return X_TITLES.get(x, x)
    if align == "stage":
        return "examples seen in each stage"
    if stage and stage != "each stage":
        return f"examples seen since {stage} began"
    if align == "last":
        return "examples seen since the last stage began"
    if isinstance(align, int):
        return f"examples seen since stage {align} began"
    name = align.upper() if align.isalpha() and len(align) <= 5 else align
    return f"examples seen since {name} began"


def configure(chart: alt.TopLevelMixin, title: str | None = None, subtitle: str | list[str] | None = None
              ) -> alt.TopLevelMixin:
    """Apply ldreg's look (and the title) to a finished chart."""
    if title:
        chart = chart.properties(title=alt.TitleParams(title, subtitle=subtitle or [], anchor="start", fontSize=16,
                                                       subtitleFontSize=12, subtitleColor="#555"))
    return (chart
            .configure(font=FONT, background="white", padding=12)
            .configure_axis(labelFontSize=11, titleFontSize=12, gridColor="#e8e8e8", domainColor="#888",
                            tickColor="#888", titleFontWeight="normal")
            .configure_header(labelFontSize=12, labelFontWeight="bold", titleFontSize=12, labelLimit=320)
            .configure_legend(labelFontSize=11, titleFontSize=12, labelLimit=420, symbolStrokeWidth=3,
                              orient="bottom")
            .configure_view(stroke="#ccc"))


def legend_columns(labels: pd.Series) -> int:
    """Short labels fit side by side; long run labels get a line each."""
    longest = max((len(str(v)) for v in labels.unique()), default=0)
    return 1 if longest > 40 else 2 if longest > 20 else 4


def number_format(values: pd.Series) -> str:
    """d3 format for tooltips and cell labels: 3 significant digits, plain for typical log-probs."""
    return ".3~g" if values.abs().max(skipna=True) < 1e-2 or values.abs().max(skipna=True) >= 1e5 else ".2f"


HOVER = "hover"  # the name of a layer that exists only for tooltips (invisible marks)
