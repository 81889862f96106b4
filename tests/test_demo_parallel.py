"""The demo's LLM runs in worker processes: the same numbers as a run in this process, and failures raised.

Runs the walking-skeleton experiment (experiments/smoke.yaml, one short SFT epoch) against the real
embedded server, in spawned processes exactly as ``ldreg demo`` starts them.
"""

from __future__ import annotations


import pytest

SHORT = ["stages.0.epochs=1", "probing.influence=null", "probing.entk=null"]


@pytest.fixture
def demo_db(ldreg_db):
    return ldreg_db


def _observations(db, run_id: int) -> dict:
    return {(d["kind"], d["stage_index"], d["step"], d["probe_set"], d["response_type"], d.get("update_type")):
            (d["example_ids"], d["values"]) for d in db.observations.find({"run_id": run_id})}


@pytest.mark.slow
def test_runs_in_two_processes_store_exactly_what_a_run_here_stores(demo_db):
    from ldreg import spec as specs
    from ldreg.paper.demo import EXPERIMENTS, _in_processes
    from ldreg.runner import run_experiment

    overrides = {("smoke", seed): [f"seed={seed}", *SHORT] for seed in (1, 2)}
    timings: dict[str, float] = {}
    done = _in_processes(list(overrides), overrides, 2, timings)
    assert set(done) == set(overrides) and set(timings) == {"smoke (seed 1)", "smoke (seed 2)"}
    for run_id, _ in done.values():
        assert demo_db.runs.find_one({"_id": run_id})["status"] == "COMPLETED"

    here = run_experiment(specs.load(EXPERIMENTS / "smoke.yaml", overrides[("smoke", 1)]), progress=False).run_id
    theirs, ours = _observations(demo_db, done[("smoke", 1)][0]), _observations(demo_db, here)
    assert len(ours) > 5 and {k[0] for k in ours} >= {"probe", "batch"}
    assert theirs == ours  # to the last bit: the same config computes the same thing in a worker process
    other = _observations(demo_db, done[("smoke", 2)][0])
    assert other != ours  # and a different seed does not (the comparison can fail)
    configs = [demo_db.runs.find_one({"_id": i})["config"] for i in (done[("smoke", 1)][0], here)]
    assert configs[0] == configs[1]


@pytest.mark.slow
def test_a_failing_run_is_raised_in_the_demo_with_its_message(demo_db):
    from ldreg.errors import LdregError
    from ldreg.paper.demo import _in_processes

    overrides = {("smoke", 1): ["seed=1", "data.source=./no-such-file.jsonl", *SHORT]}
    with pytest.raises(LdregError, match="no-such-file.jsonl"):
        _in_processes(list(overrides), overrides, 2, {})


def test_every_tier_reads_sft_from_the_sft_stage_of_sft_dpo():
    from ldreg.paper.demo import Plan, default_workers

    for plan in (Plan(), Plan(quick=True), Plan(real=True)):
        assert [n.removeprefix(plan.prefix) for n in plan.experiments] == ["sft-dpo", "extend-dpo"]
    assert default_workers(Plan(real=True)) == 1  # its model takes every core
