"""The demo's findings step on stored runs: which run each finding reads (SFT-only, else the SFT stage of
SFT-then-DPO; the preference stage found from the run's config), the verdicts per seed and pooled, and
the findings.json/.md that name them.

The runs are probe buckets written through the store's real sink, shaped so that every verdict is
known before the test runs, and so that reading the wrong run or stage would change it.
"""

import json

import numpy as np
import pytest

from ldreg.observations import Observation
from ldreg.paper import demo
from ldreg.store.sink import StoreSink

N, PROBES = 30, 7
RISE, FALL, FLAT = [0, 1, 2, 3, 4, 5, 6], [0, -1, -2, -3, -4, -5, -6], [0] * PROBES


def _store(db, run_id: int, stage_index: int, shapes: dict[str, list[float]], seed: int) -> None:
    """Per-token curves, 10 tokens a response: each example follows ``shape`` from its own level."""
    rng = np.random.default_rng(seed)
    sink = StoreSink(run_id, db=db)
    ids = list(range(N))
    for rtype, shape in shapes.items():
        start = -5 + rng.normal(0, 1, N)
        for k, s in enumerate(shape):
            per_token = start + s + rng.normal(0, 0.05, N)
            values = {"logp_sum": per_token * 10, "n_tokens": np.full(N, 10.0), "logp_mean": per_token}
            if rtype == "chosen":  # argmax confidence rises in every run
                values["argmax_logp"] = (-3 + 0.5 * k + rng.normal(0, 0.05, N)) * 10
            sink.emit(Observation(kind="probe", step=stage_index * 100 + k, examples_seen=stage_index * 1000 + k * 10,
                                  stage=f"s{stage_index}", stage_index=stage_index, probe_set="train",
                                  response_type=rtype, example_ids=ids, values=values))
    sink.close()


@pytest.fixture
def stored(db):
    """Seed 1: sft-only #11, sft-dpo #21, extend-dpo #31. Seed 2: sft-dpo #22 only (no SFT-only run)."""
    dpo_stage = {"chosen": [0, -0.5, -1, -1.5, -2, -2.5, -3], "rejected": FALL}
    _store(db, 11, 0, {"chosen": RISE}, seed=1)
    _store(db, 21, 0, {"chosen": FALL}, seed=2)  # would say "did not hold" if seed 1 read it for SFT
    _store(db, 21, 1, dpo_stage, seed=3)
    _store(db, 31, 1, {"chosen": FLAT, "rejected": FLAT}, seed=4)  # extend: decays far less than #21
    _store(db, 22, 0, {"chosen": FALL}, seed=5)  # seed 2's SFT stage: y+ falls
    _store(db, 22, 2, dpo_stage, seed=6)  # its preference stage is stage 2, from its config
    stages = {21: ["sft", "dpo"], 22: ["sft", "sft", "dpo"], 31: ["sft", "dpo"]}
    db.runs.insert_many([{"_id": r, "config": {"stages": [{"loss": s} for s in losses]}}
                         for r, losses in stages.items()])
    return {("sft-only", 1): 11, ("sft-dpo", 1): 21, ("extend-dpo", 1): 31, ("sft-dpo", 2): 22}


def _by_key(found):
    return {f.key: f for f in found if f.per_seed}


def test_findings_read_the_right_runs_and_keep_each_seeds_verdict(stored, db):
    found = demo._findings(db, stored, demo.Plan(seeds=(1, 2)))
    pooled = _by_key(found)

    sft = pooled["sft_raises_chosen"]
    assert [(f.seeds, f.runs, f.verdict) for f in sft.per_seed] == [([1], [11], "held"), ([2], [22], "did not hold")]
    assert sft.runs == [11, 22] and sft.verdict == "inconclusive"  # two seeds disagree: neither held nor not
    assert sft.name == "SFT raises y+ (seeds 1, 2)" and sft.per_seed[0].name == "SFT raises y+ (seed 1)"

    squeeze = pooled["dpo_squeeze"]
    assert [(f.runs, f.verdict) for f in squeeze.per_seed] == [([21], "held"), ([22], "held")]
    assert {t.response_type: t.verdict for t in squeeze.per_seed[1].types} == {
        "chosen": "held", "rejected": "held", "margin": "held", "argmax_confidence": "held"}
    assert squeeze.verdict == "held"

    extend = pooled["extend_slows_decay"]  # seed 2 has no extend run: only seed 1 is judged
    assert [(f.seeds, f.runs, f.verdict) for f in extend.per_seed] == [([1], [21, 31], "held")]
    assert not any(key.endswith("_squeeze") and key != "dpo_squeeze" for key in pooled)  # no sweep runs given


def test_written_findings_name_the_runs_and_verdicts_computed(stored, db):
    plan = demo.Plan(seeds=(1, 2))
    found = demo._findings(db, stored, plan)
    json_path, md_path = demo._write_findings(found, stored, plan, {1: "pretrained:x", 2: "pretrained:x"})

    doc = json.loads(json_path.read_text())
    assert doc["seeds"] == [1, 2] and doc["command"] == "ldreg demo --seeds 1,2"
    assert doc["runs"] == {"sft-only": {"1": 11}, "sft-dpo": {"1": 21, "2": 22}, "extend-dpo": {"1": 31}}
    written = {f["key"]: f for f in doc["findings"]}
    assert written.keys() == _by_key(found).keys()
    for key, f in _by_key(found).items():
        assert (written[key]["verdict"], written[key]["runs"]) == (f.verdict, f.runs), key
        assert [(s["seeds"], s["runs"], s["verdict"]) for s in written[key]["per_seed"]] == \
            [(s.seeds, s.runs, s.verdict) for s in f.per_seed], key
    md = md_path.read_text()
    assert "runs #11, #21, #22, #31" in md and "**SFT raises y+ (seeds 1, 2)**: inconclusive" in md
