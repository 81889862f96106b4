"""Charts are serialised with only the columns they use (``ldreg.query.charts.render``): the fields a
spec reads, found by hand-checked cases, and the shipped figures drawn pixel-for-pixel the same."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import vl_convert

from ldreg.query.charts.common import HOVER
from ldreg.query.charts.render import _without_layers, save, to_spec, used_fields
from ldreg.query.execute import build
from ldreg.query.spec import load
from ldreg.store.events import record_event
from test_query_charts import insert
from test_query_events import _event

QUERIES = Path(__file__).resolve().parents[1] / "queries"


def test_fields_come_from_encodings_transforms_and_expressions():
    spec = {"encoding": {"x": {"field": "x"}, "color": {"field": "stages\\.1\\.loss"},
                         "tooltip": [{"field": "run"}, {"field": "meta.seed"}]},
            "transform": [{"filter": "isValid(datum.event_x) && datum['odd name'] > 0"},
                          {"aggregate": [{"op": "count", "as": "rows"}], "groupby": ["series"]}],
            "params": [{"name": "p", "select": {"type": "point", "fields": ["stage"]}}],
            "datasets": {"d": [{"never_named": 1, "x": 0}]}}
    assert used_fields(spec) == {"x", "stages.1.loss", "run", "meta.seed", "meta", "event_x", "odd name",
                                 "series", "stage"}


@pytest.mark.parametrize("spec", [
    {"transform": [{"fold": ["a", "b"]}], "encoding": {"x": {"field": "key"}}},  # reads fields not named "field"
    {"mark": {"type": "point", "tooltip": {"content": "data"}}},  # shows every field
])
def test_a_spec_that_may_read_any_field_keeps_every_column(spec):
    assert used_fields(spec) is None


def test_unused_columns_are_not_sent_and_an_image_drops_the_tooltip_fields():
    frame = pd.DataFrame({"x": [0, 1], "y": [1.0, 2.0], "tip": ["a", "b"], "unused": [9, 9]})
    import altair as alt

    chart = alt.layer(alt.Chart().mark_line().encode(x="x:Q", y="y:Q"),
                      alt.Chart().mark_point(opacity=0).encode(x="x:Q", y="y:Q", tooltip="tip:N").properties(name=HOVER),
                      data=frame)
    rows = lambda spec: next(iter(spec["datasets"].values()))  # noqa: E731
    assert rows(to_spec(chart)) == [{"x": 0, "y": 1.0, "tip": "a"}, {"x": 1, "y": 2.0, "tip": "b"}]
    image = to_spec(chart, image=True)
    assert rows(image) == [{"x": 0, "y": 1.0}, {"x": 1, "y": 2.0}]
    assert [layer["mark"]["type"] for layer in image["layer"]] == ["line"]


def _same_picture(chart) -> None:
    """The cut spec draws exactly the SVG of the whole spec (both without the hover layers)."""
    whole = chart.to_dict()
    whole = {k: (v if k == "datasets" else _without_layers(v, HOVER)) for k, v in whole.items()}
    cut = to_spec(chart, image=True)
    assert sum(len(rows[0]) for rows in cut["datasets"].values()) < sum(len(rows[0]) for rows in whole["datasets"].values())
    assert vl_convert.vegalite_to_svg(cut) == vl_convert.vegalite_to_svg(whole)


@pytest.fixture
def stored(db):
    insert(db, 1, "sft-only", 1, ["sft"])
    insert(db, 3, "sft-dpo", 1, ["sft", "dpo"])
    insert(db, 4, "sft-dpo", 2, ["sft", "dpo"])
    insert(db, 5, "extend-dpo", 1, ["extend", "dpo"])
    record_event(3, _event("squeeze", 12, 1), db)  # drawn as a labelled rule on the DPO figure
    return db


@pytest.mark.parametrize("name, runs", [("sft-probes", "1,3"), ("dpo-squeeze", "3,4"),
                                        ("extend-vs-baseline", "3,4,5")])
def test_shipped_figures_draw_the_same_from_the_cut_spec(stored, name, runs):
    chart, _ = build(load(QUERIES / f"{name}.yaml", [f"runs={runs}"]), stored)
    _same_picture(chart)


def test_save_writes_each_format_and_refuses_others(stored, tmp_path):
    chart, _ = build(load(QUERIES / "dpo-squeeze.yaml", ["runs=3,4"]), stored)
    assert save(chart, tmp_path / "a.png", "png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert save(chart, tmp_path / "a.svg", "svg").read_text().lstrip().startswith("<svg")
    assert "vegaEmbed" in save(chart, tmp_path / "a.html", "html").read_text()
    with pytest.raises(ValueError, match="cannot write a chart as 'gif'"):
        save(chart, tmp_path / "a.gif", "gif")
