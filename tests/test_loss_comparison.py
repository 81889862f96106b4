"""The loss comparison (`ldreg demo --sweep`): the squeeze rule per loss, the same-SFT-start check and the
report's section.

The rule is tested on probe buckets written through the store's real sink, shaped so that each loss's
verdict is known before the test runs; the same start and the report section on real runs of a tiny
model (SFT then two different preference losses, one seed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ldreg.observations import Observation
from ldreg.paper import loss_comparison as L
from ldreg.store.sink import StoreSink

N, PROBES = 24, 5
FALL, RISE, FLAT = [0, -1, -2, -3, -4], [0, 1, 2, 3, 4], [0] * PROBES
SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"


def _store(db, run_id: int, rejected: list[float], argmax: list[float], seed: int, start_shift: float = 0.0) -> None:
    """Stage 0 (SFT, flat) and stage 1 (the preference stage): y- and the argmax confidence follow their
    shapes per example (plus small noise), y+ falls a little, a rephrase stays flat."""
    rng = np.random.default_rng(seed)
    sink = StoreSink(run_id, db=db)
    ids = list(range(N))
    level = {t: -50 + np.random.default_rng(7).normal(0, 5, N) for t in ("chosen", "rejected", "chosen_rephrase_semantic")}
    shapes = {"chosen": [0, -0.5, -1, -1.5, -2], "rejected": rejected, "chosen_rephrase_semantic": FLAT}
    for stage in (0, 1):
        for k in range(PROBES):
            for rtype, shape in shapes.items():
                move = shape[k] if stage == 1 else 0.0
                noise = rng.normal(0, 0.05, N) if (stage, k) != (1, 0) else np.zeros(N)  # the stage's start: the SFT model
                values = {"logp_sum": level[rtype] + start_shift + move + noise, "n_tokens": np.full(N, 10.0)}
                values["logp_mean"] = values["logp_sum"] / 10
                if rtype == "chosen":
                    values["argmax_logp"] = -20 + start_shift + (argmax[k] if stage == 1 else 0.0) + noise
                sink.emit(Observation(kind="probe", step=stage * 100 + k, examples_seen=stage * 1000 + k * 10,
                                      stage=f"s{stage}", stage_index=stage, probe_set="train", response_type=rtype,
                                      example_ids=ids, values=values))
    sink.close()


@pytest.fixture
def stored(db):
    """dpo squeezes in both seeds; sft lets y- rise; ipo's y- is flat in seed 1; slic squeezes in one seed only."""
    runs = {("dpo", 1): 1, ("dpo", 2): 2, ("sft", 1): 3, ("sft", 2): 4, ("ipo", 1): 5, ("ipo", 2): 6,
            ("slic", 1): 7, ("slic", 2): 8}
    shapes = {"dpo": [(FALL, RISE), (FALL, RISE)], "sft": [(RISE, RISE), (RISE, FLAT)],
              "ipo": [(FLAT, RISE), (FALL, RISE)], "slic": [(FALL, RISE), (FALL, FALL)]}
    for (loss, seed), run in runs.items():
        rejected, argmax = shapes[loss][seed - 1]
        _store(db, run, rejected, argmax, seed=run, start_shift=float(seed))  # each seed its own SFT model
    return runs


def test_the_rule_judges_each_loss_by_y_minus_and_the_argmax_over_examples_and_seeds(stored, db):
    results = {r.loss: r for r in L.compare(db, stored, seeds=(1, 2))}
    assert {k: r.verdict for k, r in results.items()} == {
        "dpo": L.SQUEEZES, "sft": L.DOES_NOT_SQUEEZE, "ipo": "inconclusive", "slic": "inconclusive"}
    seeds = {k: {f.seeds[0]: L.verdict_word(f.verdict) for f in r.finding.per_seed} for k, r in results.items()}
    assert seeds["ipo"] == {1: "inconclusive", 2: L.SQUEEZES}  # y- flat in seed 1: its interval covers 0
    assert seeds["slic"] == {1: L.SQUEEZES, 2: L.DOES_NOT_SQUEEZE}  # the argmax falls in seed 2
    dpo = results["dpo"].changes
    assert dpo["rejected"][1].mean == pytest.approx(-4, abs=0.1) and dpo["rejected"][1].high < 0
    assert dpo["argmax_confidence"][2].low > 0 and dpo["argmax_confidence"][2].level < 0.99  # Holm: 2 types
    assert dpo["chosen"][1].mean == pytest.approx(-2, abs=0.1) and dpo["chosen"][1].level == 0.95  # reported
    assert abs(dpo["chosen_rephrase_semantic"][1].mean) < 0.1 and dpo["chosen"][1].n == N
    # the JSON form keeps every seed's numbers
    doc = results["slic"].as_dict()
    assert doc["seed_verdicts"] == {"1": L.SQUEEZES, "2": L.DOES_NOT_SQUEEZE}
    assert doc["changes"]["rejected"]["2"]["ci"][1] < 0
    # the interval chart: a dot per loss, probe and seed (y+, y-, argmax, one rephrase stored), by verdict
    drawn = L.change_chart(list(results.values())).to_dict()
    rows = next(iter(drawn["datasets"].values()))
    assert len(rows) == 4 * 4 * 2 and {r["verdict"] for r in rows} == {L.SQUEEZES, L.DOES_NOT_SQUEEZE, "inconclusive"}


def test_same_start_sees_a_config_whose_preference_stage_starts_elsewhere(db):
    _store(db, 1, FALL, RISE, seed=1)
    _store(db, 2, RISE, RISE, seed=2)  # another loss: the stage moves differently, but starts at the same model
    same = L.same_start(db, {("dpo", 1): 1, ("ipo", 1): 2})
    assert same.identical and same.seeds == {1: 0.0} and same.values == 2 * (3 + 1) * N
    _store(db, 3, FALL, RISE, seed=3, start_shift=1e-3)  # a different SFT model
    moved = L.same_start(db, {("dpo", 1): 1, ("ipo", 1): 2, ("slic", 1): 3})
    assert not moved.identical and moved.seeds[1] == pytest.approx(1e-3) and "NOT identical" in moved.text()


@pytest.mark.slow
def test_real_runs_share_the_sft_start_and_the_report_shows_every_loss(mongo_url, mongo_client, monkeypatch, tmp_path):
    """Two configs of one seed (SFT then dpo, SFT then ipo) on a tiny model: the preference stage starts from
    bit-identical probe values, and the report section has the chart, the table and the parameters."""
    from ldreg import spec as specs
    from ldreg.paper import demo
    from ldreg.paper.report import Report
    from ldreg.registry import get_plugins
    from ldreg.runner import run_experiment

    monkeypatch.setenv("LDREG_DB", "loss_comparison")
    monkeypatch.setenv("LDREG_HOME", str(tmp_path))
    db = mongo_client["loss_comparison"]
    plugins = get_plugins()
    runs = {}
    for loss in ("dpo", "ipo"):
        spec = specs.load(SMOKE, [f"name=losses-{loss}", "seed=3", "probing.influence=null", "probing.entk=null",
                                  "probing.response_types=[chosen, rejected, chosen_rephrase_semantic, chosen_rephrase_format,"
                                  " rejected_rephrase_semantic, rejected_rephrase_format]",
                                  "stages=[{loss: sft, epochs: 1, lr: 1.0e-3, batch_size: 4},"
                                  f" {{loss: {loss}, epochs: 1, lr: 1.0e-3, batch_size: 4}}]"], plugins)
        runs[(loss, 3)] = run_experiment(spec, progress=False, plugins=plugins).run_id
    same = L.same_start(db, runs)
    assert same.identical and same.values > 0, same.text()
    curves_differ = [doc["values"]["logp_sum"] for doc in db.observations.find(
        {"run_id": {"$in": list(runs.values())}, "kind": "probe", "stage_index": 1, "response_type": "rejected"})
        .sort("step", -1).limit(2)]
    assert curves_differ[0] != curves_differ[1]  # the two losses did train differently after the start

    report = Report("test")
    demo._loss_comparison(report, db, runs, demo.Plan(quick=True, seeds=(3,)), plugins)
    figure = report.figures[-1]
    assert "squeeze" in figure.title and "same SFT start: identical" in figure.shows
    assert "<code>dpo</code>" in figure.numbers and "<code>ipo</code>" in figure.numbers
    assert "beta 0.1, label_smoothing 0.0; lr 0.0003" in figure.numbers  # dpo's defaults, the comparison's lr
    drawn = json.dumps(figure.chart.to_dict())
    assert '"dpo"' in drawn and '"ipo"' in drawn  # one line per loss
    assert 'stages\\\\.1\\\\.loss' in drawn  # escaped, or Vega-Lite reads a nested path and draws no line
    doc = json.loads((tmp_path / "reports" / "loss-comparison-quick.json").read_text())
    assert doc["same_start_identical"] and {d["loss"] for d in doc["losses"]} == {"dpo", "ipo"}


def test_every_tier_with_sweep_names_existing_specs_and_the_comparison_covers_the_losses():
    """`--quick --sweep` once pointed at quick-sft-ipo.yaml and friends, which never existed."""
    from ldreg.paper import demo
    from ldreg.registry import get_plugins
    from ldreg.sweep.definition import load_file

    for plan in (demo.Plan(sweep=True), demo.Plan(quick=True, sweep=True), demo.Plan(real=True, sweep=True)):
        assert all((demo.EXPERIMENTS / f"{name}.yaml").is_file() for name in plan.experiments), plan.experiments
    plugins = get_plugins()
    sweep = load_file(demo.LOSS_SWEEP, ["seed=1,2"], plugins=plugins)
    swept = set(sweep.axes["stages.1.loss"])
    left_out = {"spin", "trl_dpo", "extend_sft"}  # minutes per config; dpo exactly; not a preference loss
    assert swept == set(plugins.losses.names()) - left_out and len(sweep.configs) == 2 * len(swept)
    assert all("params" not in o for c in sweep.configs for o in c)  # each loss at its defaults
