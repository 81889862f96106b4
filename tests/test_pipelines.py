"""The shipped LLM pipelines: every spec validates; the preference data is real, keyed and
deterministic; a micro SFT -> DPO pipeline runs end to end with finite probes and a rising margin."""

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ldreg.paper import pretrain
from ldreg.backends import resolve_backend
from ldreg.paper import fortune_prefs
from ldreg.data.adapters import load_preferences
from ldreg.errors import SpecError
from ldreg.observations import ListSink
from ldreg.registry import get_plugins
from ldreg.runner import run_body
from ldreg.spec import load

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
PIPELINES = sorted(p for p in EXPERIMENTS.glob("*.yaml") if not p.name.startswith("_"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_shipped_spec_validates(path):
    spec = load(path, plugins=get_plugins())
    assert spec.stages and spec.data.source


def test_llm_pipelines_share_base_data_and_probes():
    # the real-model and GPU tiers (real-*, gpu-*) have their own base model and data
    specs = {p.stem: load(p) for p in PIPELINES if p.stem not in ("smoke",) and not p.stem.startswith(("real-", "gpu-"))}
    assert {"sft-only", "sft-dpo", "extend-dpo", "sft-ipo", "sft-slic", "sft-sppo", "sft-spin"} <= set(specs)
    full = {n: s for n, s in specs.items() if not n.startswith("quick")}
    assert {s.model.base for s in full.values()} == {"pretrained:fortunes-small"}
    assert {s.data.source for s in full.values()} == {"generated:fortune-prefs"}
    # the loss comparison's base probes fewer response types (its report reads y+, y- and the rephrases)
    assert len({tuple(s.probing.response_types) for n, s in specs.items() if n != "quick-loss"}) == 1
    assert set(specs["quick-loss"].probing.response_types) <= set(specs["sft-dpo"].probing.response_types)
    # the baseline and extend differ only in stage 1's loss
    base, ext = specs["sft-dpo"], specs["extend-dpo"]
    assert [s.loss for s in ext.stages] == ["extend_sft", "dpo"] and ext.stages[1] == base.stages[1]


def test_pairs_share_the_keyword_and_never_reuse_a_sentence():
    good = [f"The {w} is a fine thing, said the old man to me." for w in ("river", "garden", "window", "candle")]
    bad = [f"My {w} crashed again after the kernel upgrade today." for w in ("river", "garden", "window", "candle")]
    recipe = fortune_prefs.PrefsRecipe(n_pairs=4, seed=3)
    rows = fortune_prefs.build_pairs(good, bad, recipe)
    assert rows == fortune_prefs.build_pairs(good, bad, recipe)
    for row in rows:
        assert row["prompt"] == f"Tell me something about {row['keyword']}."
        assert row["keyword"] in row["chosen"] and row["keyword"] in row["rejected"]
        assert row["chosen"].startswith(" The") and row["rejected"].startswith(" My")
    assert len({r["chosen"] for r in rows}) == 4 and len({r["rejected"] for r in rows}) == 4
    shared = fortune_prefs.build_pairs(good, bad[:3] + [good[3]], replace(recipe, n_pairs=3))
    assert all(r["rejected"] != " " + good[3] for r in shared)
    with pytest.raises(SpecError, match="only 4 keyword pairs"):
        fortune_prefs.build_pairs(good, bad, replace(recipe, n_pairs=5))


def test_generated_source_resolves_to_a_jsonl_file_and_passes_others_through(monkeypatch, tmp_path):
    monkeypatch.setenv("LDREG_HOME", str(tmp_path))
    path = fortune_prefs.resolve_source("generated:fortune-prefs-quick")
    assert path.endswith(".jsonl") and fortune_prefs.resolve_source("generated:fortune-prefs-quick") == path
    examples = load_preferences(path, "jsonl")
    assert len(examples) == fortune_prefs.DATASETS["fortune-prefs-quick"].n_pairs
    assert all(e.chosen != e.rejected for e in examples)
    assert fortune_prefs.resolve_source("Anthropic/hh-rlhf") == "Anthropic/hh-rlhf"
    with pytest.raises(SpecError, match="no generated dataset 'nope'.*generated:fortune-prefs"):
        fortune_prefs.resolve_source("generated:nope")


def test_micro_sft_then_dpo_pipeline_end_to_end(monkeypatch, tmp_path):
    monkeypatch.setenv("LDREG_HOME", str(tmp_path))
    monkeypatch.setitem(pretrain.PRESETS, "micro-pipe",
                        replace(pretrain.PRESETS["fortunes-micro"], max_chars=60_000, steps=20))
    monkeypatch.setitem(fortune_prefs.DATASETS, "micro-prefs", fortune_prefs.PrefsRecipe(n_pairs=40))
    plugins = get_plugins()
    spec = load(EXPERIMENTS / "quick-sft-dpo.yaml", [
        "model.base=pretrained:micro-pipe", "data.source=generated:micro-prefs", "probing.every=32",
        "probing.sets=[{name: train, source: train, n: 4}]", "stages.0.epochs=1", "stages.1.epochs=2",
        "stages.1.lr=1e-3"], plugins)
    spec.data.source = fortune_prefs.resolve_source(spec.data.source)
    sink = ListSink()
    ctx = SimpleNamespace(run_id=0, info={}, log_scalar=lambda *a: None, add_artifact=lambda *a: None)
    result = run_body(spec, ctx, plugins=plugins, backend=resolve_backend("cpu", plugins.backends),
                      progress=False, sink=sink)
    assert result["steps"] == 3 + 5  # 36 train pairs, batch 16: ceil(36/16) + ceil(72/16) (epochs run on)
    probes = [o for o in sink.observations if o.kind == "probe"]
    assert {o.response_type for o in probes} == set(spec.probing.response_types)
    assert all(np.isfinite(v).all() for o in probes for v in o.values.values())
    dpo = [o for o in probes if o.stage_index == 1]
    mean = lambda kind, obs: float(np.mean(next(o for o in obs if o.response_type == kind).values["logp_sum"]))
    first, last = [o for o in dpo if o.step == dpo[0].step], [o for o in dpo if o.step == dpo[-1].step]
    margin = lambda obs: mean("chosen", obs) - mean("rejected", obs)
    assert margin(last) > margin(first)
