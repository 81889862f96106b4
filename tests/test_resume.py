"""Nothing lost: a crashed run keeps what it computed, and --resume finishes it as if it never broke."""

from pathlib import Path

import pytest

from ldreg import spec as specs
from ldreg.registry import load_plugins
from ldreg.runner import resume_experiment, run_experiment

from faultkit import CrashingSFT

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"


def _spec(plugins):
    return specs.load(SMOKE, ["stages.0.loss=crashy_sft", "stages.0.epochs=1", "checkpoint_every=2",
                              "probing.every=4", "name=resume-test"], plugins)


def _probes(db, run_id):
    docs = db.observations.find({"run_id": run_id, "kind": {"$in": ["probe", "batch"]}})
    return {(d["kind"], d["stage_index"], d["step"], d["response_type"]): d["values"] for d in docs}


def test_crash_keeps_observations_and_resume_equals_uninterrupted(mongo_server, mongo_client, monkeypatch):
    monkeypatch.setenv("LDREG_MONGO_URL", mongo_server.url)
    monkeypatch.setenv("LDREG_DB", "resume_test")
    db = mongo_client["resume_test"]

    clean = load_plugins([CrashingSFT(None)])
    full = run_experiment(_spec(clean), progress=False, plugins=clean)

    crashing = load_plugins([CrashingSFT(crash_on=4)])
    with pytest.raises(Exception, match="simulated crash"):  # Boom, or the guard's message naming it
        run_experiment(_spec(crashing), progress=False, plugins=crashing)
    crashed_id = db.runs.find_one({"experiment.name": "resume-test"}, sort=[("_id", -1)])["_id"]
    assert crashed_id != full.run_id
    doc = db.runs.find_one({"_id": crashed_id})
    assert doc["status"] == "FAILED" and "simulated crash" in "".join(doc["fail_trace"])
    before = _probes(db, crashed_id)
    assert ("probe", 0, 0, "chosen") in before and ("batch", 0, 3, "chosen") in before  # kept

    resumed = resume_experiment(crashed_id, progress=False, plugins=clean)
    assert resumed.run_id == crashed_id
    doc = db.runs.find_one({"_id": crashed_id})
    assert doc["status"] == "COMPLETED" and doc["info"]["resumed_at_steps"] == [2]
    after, expected = _probes(db, crashed_id), _probes(db, full.run_id)
    assert after.keys() == expected.keys()
    for key in expected:
        for quantity, values in expected[key].items():
            assert after[key][quantity] == pytest.approx(values, rel=1e-5, abs=1e-6), (key, quantity)
    # exactly once: one bucket per key, and each metric step logged once
    assert db.observations.count_documents({"run_id": crashed_id}) == \
        db.observations.count_documents({"run_id": full.run_id})
    loss = db.metrics.find_one({"run_id": crashed_id, "name": "loss"})
    assert loss["steps"] == [1, 2, 3, 4, 5]
