"""Query specs: validated with field-naming errors, overridable, and every shipped query parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from ldreg.errors import SpecError
from ldreg.query import spec as qspec
from ldreg.query.select import conditions, parse_ids

QUERIES = Path(__file__).resolve().parents[1] / "queries"


@pytest.mark.parametrize("path", sorted(QUERIES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_query_is_valid(path):
    spec = qspec.load(path)
    assert spec.name == path.stem and spec.observe
    assert path.read_text().startswith("#"), "each shipped query documents its selection at the top"


def test_a_misspelt_key_is_named_with_the_nearest_valid_one():
    with pytest.raises(SpecError, match=r"aggregate.allign: unknown key \(did you mean 'align'\?\)"):
        qspec.parse({"name": "q", "aggregate": {"allign": "dpo"}})
    with pytest.raises(SpecError, match=r"observe\[0\].quantty: unknown key \(did you mean 'quantity'\?\)"):
        qspec.parse({"name": "q", "observe": [{"quantty": "logp_sum"}]})
    with pytest.raises(SpecError, match=r"chart.kind: must be 'curves' or 'influence' or 'entk'"):
        qspec.parse({"name": "q", "chart": {"kind": "bars"}})
    with pytest.raises(SpecError, match=r"aggregate.ema: must be in \[0, 1\)"):
        qspec.parse({"name": "q", "aggregate": {"ema": 1.5}})
    with pytest.raises(SpecError, match=r"select.status: no status 'DONE'"):
        qspec.parse({"name": "q", "select": {"status": ["done"]}})


def test_an_unsupported_output_format_lists_the_supported_ones():
    with pytest.raises(SpecError, match=r"unsupported output format 'pdf'; supported: html, png, svg, json, csv, parquet"):
        qspec.parse({"name": "q", "formats": ["png", "pdf"]})


def test_overrides_replace_the_selection_or_set_any_key():
    spec = qspec.parse({"name": "q", "select": {"name": "sft-dpo", "latest": 3}},
                       ["runs=12,15-16", "chart.color=stage", "aggregate.align=1"])
    assert spec.select.ids == [12, 15, 16] and spec.select.name is None
    assert spec.chart.color == "stage" and spec.aggregate.align == 1
    assert qspec.parse({"name": "q"}, ["latest=2", "tag=paper,a"]).select.tags == ["paper", "a"]


def test_config_conditions_in_both_spellings():
    assert conditions({"stages.1.lr": {">": "1e-5"}, "stages.1.loss": "dpo"}) == {
        "config.stages.1.lr": {"$gt": 1e-5}, "config.stages.1.loss": "dpo"}
    assert conditions(["stages.1.loss == dpo", "seed in [1, 2]", "experiment.name ~ ^sft"]) == {
        "config.stages.1.loss": "dpo", "config.seed": {"$in": [1, 2]}, "experiment.name": {"$regex": "^sft"}}
    with pytest.raises(SpecError, match=r"where\[0\]: cannot read 'stages.1.loss is dpo'"):
        conditions(["stages.1.loss is dpo"])
    with pytest.raises(SpecError, match=r"'in' needs a list"):
        conditions({"seed": {"in": 3}})
    assert parse_ids("3, 5-7") == [3, 5, 6, 7]
