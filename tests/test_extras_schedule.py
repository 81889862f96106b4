"""Influence and the eNTK on their own schedule (``every`` > 0) land where the clock crosses each
multiple of ``every`` examples, even when the batch size does not divide ``every``; a run resumed
from a checkpoint keeps that schedule."""

from pathlib import Path

import pytest

from ldreg import spec as specs
from ldreg.registry import load_plugins
from ldreg.runner import resume_experiment, run_experiment
from ldreg.store.collections import OBSERVATIONS

from faultkit import CrashingSFT

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"
# 18 training examples in batches of 4: the clock reads 4, 8, 12, 16, 18; probes every 8 examples
# fall at 8 and 16, plus before training and at the end (18).
OVERRIDES = ["stages.0.loss=crashy_sft", "stages.0.epochs=1", "probing.every=8", "probing.sets.0.n=4",
             "probing.influence.every=6", "probing.influence.n=2", "probing.entk.every=5", "probing.entk.n=2",
             "checkpoint_every=1"]


def _seen_at(db, run_id: int, kind: str) -> list[int]:
    return sorted({d["examples_seen"] for d in db[OBSERVATIONS].find({"run_id": run_id, "kind": kind})})


@pytest.mark.slow
def test_influence_and_entk_fire_at_each_multiple_the_clock_crosses_and_keep_it_across_resume(
        mongo_url, mongo_client, monkeypatch):
    monkeypatch.setenv("LDREG_DB", "extras_schedule")
    db = mongo_client["extras_schedule"]
    clean = load_plugins([CrashingSFT(None)])
    full = run_experiment(specs.load(SMOKE, OVERRIDES + ["name=extras"], clean), progress=False, plugins=clean)

    assert full.result["examples_seen"] == 18
    assert _seen_at(db, full.run_id, "probe") == [0, 8, 16, 18]
    # every 6: before training, then 8 (crossed 6), 16 (12), 18 (18). An exact modulo fired at 0 and 18 only.
    assert _seen_at(db, full.run_id, "influence") == [0, 8, 16, 18]
    # every 5: 8 (crossed 5), 16 (10 and 15, once); no multiple of 5 is ever on the clock.
    assert _seen_at(db, full.run_id, "entk") == [0, 8, 16]

    # Crash in step 4: the last checkpoint is step 3 (12 examples), the last probe before it at 8. The
    # resumed run must know that probe, or it would judge 16 against 12 and skip the influence at 16.
    crashing = load_plugins([CrashingSFT(crash_on=4)])
    with pytest.raises(Exception, match="simulated crash"):
        run_experiment(specs.load(SMOKE, OVERRIDES + ["name=extras"], crashing), progress=False, plugins=crashing)
    crashed = db.runs.find_one({"experiment.name": "extras"}, sort=[("_id", -1)])["_id"]
    assert crashed != full.run_id and _seen_at(db, crashed, "influence") == [0, 8]
    resume_experiment(crashed, progress=False, plugins=clean)
    assert db.runs.find_one({"_id": crashed})["info"]["resumed_at_steps"] == [3]
    for kind in ("probe", "influence", "entk"):
        assert _seen_at(db, crashed, kind) == _seen_at(db, full.run_id, kind), kind
