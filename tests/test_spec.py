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
    (_with(probing={"response_types": ["chosen", "choosen"]}), r"^probing\.response_types: no response type named 'choosen' \(did you mean 'chosen'\?\)"),
    (_with(probing={"every": 0}), r"^probing\.every: must be > 0"),
    (_with(probing={"sets": [{"source": "train"}]}), r"^probing\.sets\[0\]\.name: required, but missing"),
    (_with(data={"max_prompt_length": 600}), r"^data\.max_prompt_length: must be below max_length"),
    (_with(backend="tpu"), r"^backend: no backend 'tpu'"),
    (_with(model={"dtype": "fp8"}), r"^model\.dtype: must be 'auto' or"),
    (_with(tags="smoke"), r"^tags: expected a list of strings, got 'smoke'"),
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
    """Each shipped spec loads to what its file (with its includes) says, and survives the trip through
    the run's stored config that ``--resume`` makes."""
    import json

    shipped = sorted((REPO / "experiments").glob("[!_]*.yaml"))  # _*.yaml are bases, only included
    assert len(shipped) >= 10
    for path in shipped:
        spec = specs.load(path, plugins=plugins)
        assert spec.name == path.stem, path.name  # every shipped spec is named for its file
        assert spec.stages and all(s.loss in plugins.losses.names() for s in spec.stages), path.name
        assert set(spec.probing.all_types()) <= set(plugins.responses.names()), path.name
        assert specs.parse(json.loads(json.dumps(spec.to_config())), plugins) == spec, path.name
    smoke = specs.load(REPO / "experiments" / "smoke.yaml", plugins=plugins)
    assert (smoke.seed, smoke.model.base, smoke.probing.every) == (0, "tiny", 8)
    assert [s.loss for s in smoke.stages] == ["sft"]
    assert smoke.data.source == str(REPO / "experiments" / "data" / "smoke.jsonl")  # relative to the spec's folder
    assert (smoke.stages[0].epochs, smoke.stages[0].lr, smoke.stages[0].batch_size) == (2, 1.0e-3, 4)


# --- hostile YAML (the CLI-level corpus is tests/test_bad_input.py) -------------------------------

def test_yaml_limits_refuse_before_building_anything():
    from ldreg import yamlsafe

    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefg", "bcdefgh"))
    with pytest.raises(SpecError, match=r"bomb\.yaml: line 5: expands to more than 100,000 values"):
        yamlsafe.loads(bomb, "bomb.yaml")
    assert len(yamlsafe.loads(bomb.split("d:")[0], "small.yaml")["c"]) == 10  # a few aliases are fine
    with pytest.raises(SpecError, match=r"line 1: nested more than 50 levels deep"):
        yamlsafe.loads("a: " + "[" * 100_000 + "]" * 100_000, "deep.yaml")
    with pytest.raises(SpecError, match=r"line 102: more than 100 aliases"):
        yamlsafe.loads("a: &a 1\n" + "".join(f"k{i}: *a\n" for i in range(101)), "many.yaml")


def test_duplicate_keys_are_refused_but_merge_keys_may_be_overridden():
    from ldreg import yamlsafe

    with pytest.raises(SpecError, match=r"x\.yaml: line 3: duplicate key 'lr' \(first given at line 2\)"):
        yamlsafe.loads("stages:\n  - {loss: sft, lr: 1,\n     lr: 2}\n", "x.yaml")
    merged = yamlsafe.loads("base: &b {lr: 1, epochs: 2}\nstage: {<<: *b, lr: 3}\n", "ok.yaml")
    assert merged["stage"] == {"lr": 3, "epochs": 2}


def test_echoed_values_are_cut_to_a_preview(plugins):
    huge = "x" * 5_000_000
    with pytest.raises(SpecError) as info:
        specs.parse(_with(stages=[{"loss": "sft", "lr": huge}]), plugins)
    assert len(str(info.value)) < 200 and "(5,000,000 characters)" in str(info.value)
    with pytest.raises(SpecError) as info:
        specs.parse(_with(**{huge: 1}), plugins)
    assert len(str(info.value)) < 600


@pytest.mark.parametrize("data, message", [
    (_with(stages=[{"loss": "sft", "epochs": float("inf")}]), r"^stages\[0\]\.epochs: must be a finite number, got inf"),
    (_with(stages=[{"loss": "sft", "lr": "1e999"}]), r"^stages\[0\]\.lr: must be a finite number, got '1e999'"),
    (_with(stages=[{"loss": "dpo", "params": {"beta": float("nan")}}]), r"^stages\[0\]\.params\.beta: must be a finite number"),
    (_with(stages=[{"loss": "sft"}, {"loss": "dpo", "params": {"beta": -1}}]), r"^stages\[1\]\.params\.beta: must be > 0"),
    (_with(seed=2**40), r"^seed: must be in \[0, 2\*\*32\)"),
    (_with(data={"limit": 10**30}), r"^data\.limit: 1000000000000000000000000000000 is too large"),
])
def test_impossible_numbers_name_the_field(plugins, data, message):
    with pytest.raises(SpecError, match=message):
        specs.parse(data, plugins)


def test_include_errors_name_the_including_file(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: [c.yaml]\n")
    (tmp_path / "c.yaml").write_text("include: a.yaml\n")
    with pytest.raises(SpecError, match=r"c\.yaml: include: cycle a\.yaml -> b\.yaml -> c\.yaml -> a\.yaml"):
        specs.load_raw(tmp_path / "a.yaml")
    (tmp_path / "d.yaml").write_text("include: [base.yaml, 3]\n")
    with pytest.raises(SpecError, match=r"d\.yaml: include: expected a file name or a list of them"):
        specs.load_raw(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("include: ../nowhere/base.yaml\n")
    with pytest.raises(SpecError, match=r"e\.yaml: include: \.\./nowhere/base\.yaml: no such file"):
        specs.load_raw(tmp_path / "e.yaml")


def test_relative_model_and_reference_paths_are_relative_to_the_spec(tmp_path):
    (tmp_path / "exp.yaml").write_text(
        "data: {source: ./d.jsonl}\nmodel: {base: ./m}\nstages: [{loss: dpo, reference: ../r}]\n"
        "probing: {sets: [{name: a, source: ./p.jsonl}]}\n")
    raw = specs.load_raw(tmp_path / "exp.yaml")
    assert raw["model"]["base"] == str(tmp_path / "m")
    assert raw["stages"][0]["reference"] == str(tmp_path.parent / "r")
    assert raw["probing"]["sets"][0]["source"] == str(tmp_path / "p.jsonl")


def test_override_values_are_read_with_the_same_limits():
    with pytest.raises(SpecError, match=r"override stages\.0\.lr: line 1: duplicate key 'a'"):
        specs.apply_overrides(BASE, ["stages.0.lr={a: 1, a: 2}"])
    with pytest.raises(SpecError, match=r"no key before '='"):
        specs.apply_overrides(BASE, ["=3"])
    assert specs.apply_overrides(BASE, ["name=[unclosed"])["name"] == "[unclosed"  # not YAML: taken as text
