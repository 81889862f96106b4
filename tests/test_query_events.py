"""Alarms (the events collection) as labelled vertical rules in query charts: at the event's step in
the chart's own x (aligned at a stage start), in every panel, in the run's colour; validated fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from ldreg.errors import SpecError
from ldreg.query.execute import build
from ldreg.query.spec import load
from ldreg.store.events import record_event
from test_query_charts import insert

QUERIES = Path(__file__).resolve().parents[1] / "queries"


def _event(alarm: str, step: int, stage_index: int, probe_set: str = "train") -> dict:
    return {"alarm": alarm, "probe_set": probe_set, "step": step, "examples_seen": 16 * step,
            "stage": ["sft", "dpo"][stage_index], "stage_index": stage_index, "threshold": 0.5, "value": 0.6,
            "message": f"ALARM {alarm}"}


@pytest.fixture
def alarmed(db):
    insert(db, 3, "sft-dpo", 1, ["sft", "dpo"])
    insert(db, 4, "sft-dpo", 2, ["sft", "dpo"])
    record_event(3, _event("squeeze", 12, 1), db)  # DPO began at step 8 (examples seen 128)
    record_event(4, _event("displacement_share", 16, 1), db)
    record_event(4, _event("squeeze", 4, 0), db)  # during SFT: not in the drawn (DPO) stage
    record_event(3, _event("displacement_share", 12, 1, "test"), db)  # a probing set the chart does not draw
    return db


def _marks(chart_dict: dict) -> list[dict]:
    rows = chart_dict["datasets"][chart_dict["data"]["name"]]
    return [r for r in rows if r.get("event_x") is not None]


def test_dpo_squeeze_marks_each_alarm_at_its_aligned_step_in_every_panel(alarmed):
    spec = load(QUERIES / "dpo-squeeze.yaml", ["runs=3,4"])
    assert spec.events is not None  # the shipped figure asks for them
    chart, _ = build(spec, alarmed)
    d = chart.to_dict()
    marks = _marks(d)
    panels = {r["series"] for r in d["datasets"][d["data"]["name"]] if r.get("event_x") is None}
    # x = examples seen since DPO began: (12 - 8) * 16 and (16 - 8) * 16, once per panel
    assert sorted({(r["run_id"], r["event_x"], r["alarm"]) for r in marks}) == [
        (3, 64.0, "squeeze"), (4, 128.0, "displacement_share")]
    assert {r["series"] for r in marks} == panels and len(marks) == 2 * len(panels)
    # coloured like the run's curves: the same run label the lines use
    lines = {r["run_id"]: r["run"] for r in d["datasets"][d["data"]["name"]] if r.get("event_x") is None}
    assert all(r["run"] == lines[r["run_id"]] for r in marks)
    assert "2 alarm(s) fired" in str(d["title"]) and "1 in stages not drawn here" in str(d["title"])


def test_the_rules_and_labels_are_drawn(alarmed):
    """Rendered, not guessed: the labels are text in the SVG, the rules are dashed lines."""
    import vl_convert

    spec = load(QUERIES / "dpo-squeeze.yaml", ["runs=3,4"])
    chart, frame = build(spec, alarmed)
    panels = frame["series"].nunique()  # y+, y-, the margin, the argmax confidence
    svg = vl_convert.vegalite_to_svg(chart.to_dict())
    assert svg.count(">squeeze #3<") == panels == svg.count(">displacement #4<") == 4
    unlabelled = load(QUERIES / "dpo-squeeze.yaml", ["runs=3,4", "events.label=false"])
    assert ">squeeze #3<" not in vl_convert.vegalite_to_svg(build(unlabelled, alarmed)[0].to_dict())


def test_alarm_and_probing_set_filters(alarmed):
    spec = load(QUERIES / "dpo-squeeze.yaml", ["runs=3,4", "events.alarms=[squeeze]"])
    assert {r["alarm"] for r in _marks(build(spec, alarmed)[0].to_dict())} == {"squeeze"}
    spec = load(QUERIES / "dpo-squeeze.yaml", ["runs=3,4", "events.probe_sets=[other]"])
    d = build(spec, alarmed)[0].to_dict()
    assert _marks(d) == [] and "no alarm fired in the drawn stages" in str(d["title"])
    # both sets: run 3's two alarms at step 12 share one rule and one label
    spec = load(QUERIES / "dpo-squeeze.yaml", ["runs=3,4", "events.probe_sets=[train, test]"])
    d = build(spec, alarmed)[0].to_dict()
    assert sorted({(r["run_id"], r["event_label"]) for r in _marks(d)}) == [
        (3, "squeeze + displacement #3"), (4, "displacement #4")]
    assert "3 alarm(s) fired" in str(d["title"])


def test_facet_by_run_keeps_each_mark_in_its_run_panel(alarmed):
    spec = load(QUERIES / "dpo-squeeze.yaml", ["runs=3,4", "chart.facet=run", "chart.color=series"])
    d = build(spec, alarmed)[0].to_dict()
    marks = _marks(d)
    lines = {r["run_id"]: r["run"] for r in d["datasets"][d["data"]["name"]] if r.get("event_x") is None}
    assert len(marks) == 2 and all(r["run"] == lines[r["run_id"]] for r in marks)  # not repeated per panel


@pytest.mark.parametrize("override, message", [
    ("events.alarms=[sqeeze]", "events.alarms[0]: no alarm 'sqeeze' (did you mean 'squeeze'?)"),
    ("events.alarms=[]", "events.alarms: empty"),
    ("events.colour=red", "events.colour"),
    ("chart.kind=influence", "events: only curves charts mark events"),
])
def test_bad_event_fields_get_one_message_naming_the_field(override, message):
    with pytest.raises(SpecError) as err:
        load(QUERIES / "dpo-squeeze.yaml", [override])
    assert message in str(err.value) and "\n" not in str(err.value)
