"""Experiment specs: each malformed spec gets one message naming the field (and the fix)."""

from pathlib import Path

import pytest

from ldreg import spec as specs
from ldreg.errors import SpecError
from ldreg.registry import load_plugins

REPO = Path(__file__).resolve().parents[1]
BASE = {"data": {"source": "x.jsonl"}, "stages": [{"loss": "sft"}], "probing": {"response_types": ["chosen"]}}


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


def _with(**changes):
    return specs.deep_merge(BASE, changes)


@pytest.mark.parametrize("data, message", [
    (_with(seeed=1), r"^seeed: unknown key \(did you mean 'seed'\?\)"),
    (_with(stages=[{"loss": "sft", "lrr": 1}]), r"^stages\[0\]\.lrr: unknown key \(did you mean 'lr'\?\)"),
    (_with(stages=[{"loss": "sft", "lr": -1}]), r"^stages\[0\]\.lr: must be > 0, got -1"),
    (_with(stages=[{"loss": "sft", "batch_size": "four"}]), r"^stages\[0\]\.batch_size: expected an integer, got 'four'"),
    (_with(stages=[{"loss": "sft", "optimizer": "adam"}]), r"^stages\[0\]\.optimizer: must be 'rmsprop' or 'adamw' or 'sgd', not 'adam'"),
    (_with(stages=[{"loss": "dpx"}]), r"^stages\[0\]\.loss: no loss named 'dpx'.*installed: "),
    (_with(stages=[{"loss": "sft", "params": {"beta": 0.1}}]), r"^stages\[0\]\.params\.beta: loss 'sft' has no such"),
    (_with(stages=[]), r"^stages: needs at least one stage"),
    ({"stages": [{"loss": "sft"}]}, r"^data\.source: required"),
    (_with(probing={"response_types": ["chosen", "choosen"]}), r"^probing\.response_types: no response type 'choosen' \(did you mean 'chosen'\?\)"),
    (_with(probing={"every": 0}), r"^probing\.every: must be > 0"),
    (_with(probing={"sets": [{"source": "train"}]}), r"^probing\.sets\[0\]\.name: required, but missing"),
    (_with(data={"max_prompt_length": 600}), r"^data\.max_prompt_length: must be below max_length"),
    (_with(backend="tpu"), r"^backend: no backend 'tpu'"),
    (_with(model={"dtype": "fp8"}), r"^model\.dtype: must be 'auto' or"),
    (_with(tags="smoke"), r"^tags: expected a list of a string, got 'smoke'"),
])
def test_malformed_specs_name_the_field(plugins, data, message):
    with pytest.raises(SpecError, match=message):
        specs.parse(data, plugins)


def test_valid_spec_and_shorthand(plugins):
    spec = specs.parse({"model": "EleutherAI/pythia-410m", "data": "Anthropic/hh-rlhf", "probing": BASE["probing"],
                        "stages": [{"loss": "sft", "lr": "1e-5"}]}, plugins)
    assert spec.model.base == "EleutherAI/pythia-410m" and spec.data.source == "Anthropic/hh-rlhf"
    assert spec.stages[0].lr == 1e-5 and spec.stages[0].name == "0-sft"


def test_overrides_reach_into_stages():
    data = specs.apply_overrides(BASE, ["seed=3", "stages.0.lr=2e-3", "data.limit=10", "tags=[a, b]"])
    assert data["seed"] == 3 and data["data"]["limit"] == 10
    assert specs.parse(data).stages[0].lr == 2e-3  # YAML reads 2e-3 as text; the schema makes it a float
    assert data["tags"] == ["a", "b"]
    with pytest.raises(SpecError, match=r"stages.5 is not an index of a list of 1"):
        specs.apply_overrides(BASE, ["stages.5.lr=1"])
    with pytest.raises(SpecError, match=r"expected key=value"):
        specs.apply_overrides(BASE, ["seed"])


def test_include_merges_base_and_resolves_paths(tmp_path, plugins):
    (tmp_path / "base.yaml").write_text("seed: 5\ndata: {source: ./d.jsonl, max_length: 128, max_prompt_length: 64}\n")
    (tmp_path / "exp.yaml").write_text("include: base.yaml\nname: child\nstages: [{loss: sft}]\nprobing: {response_types: [chosen]}\n")
    spec = specs.load(tmp_path / "exp.yaml", plugins=plugins)
    assert spec.seed == 5 and spec.name == "child" and spec.data.max_length == 128
    assert spec.data.source == str(tmp_path / "d.jsonl")


def test_bad_files_get_one_line(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        specs.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [loss: sft\n")
    with pytest.raises(SpecError, match=r"not valid YAML at line"):
        specs.load(bad)
    code = tmp_path / "code.yaml"
    code.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        specs.load(code)


def test_shipped_experiment_specs_are_valid(plugins):
    for path in sorted((REPO / "experiments").glob("[!_]*.yaml")):  # _*.yaml are bases, only included
        specs.load(path, plugins=plugins)
