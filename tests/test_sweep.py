"""Sweeps: grids expand and fail early with clear messages; every executor leaves one COMPLETED run
per config; a worker killed mid-run loses nothing; running a sweep again skips what is done."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ldreg.errors import LdregError, SpecError
from ldreg.sweep import definition, store

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "smoke.yaml"
QUICK = ["stages.0.epochs=1", "probing.influence=null", "probing.entk=null"]


@pytest.fixture
def sweep_db(ldreg_db):
    return ldreg_db


def _completed_per_config(db, sweep_id: str) -> dict[int, int]:
    return {i: sum(d["status"] == "COMPLETED" for d in docs) for i, docs in store.runs_of(db, sweep_id).items()}


# ------------------------------------------------------------------------------ definition

def test_grid_expands_as_a_product_with_zips_varying_together():
    axes = definition.parse_grid(["seed=1,2", "stages.1.loss=dpo,ipo", "stages.1.params.beta=[0.1, 0.5]"])
    assert axes == {"seed": [1, 2], "stages.1.loss": ["dpo", "ipo"], "stages.1.params.beta": [0.1, 0.5]}
    assert definition.parse_grid(["stages.0.lr=1e-3,2e-3"]) == {"stages.0.lr": [0.001, 0.002]}  # numbers, not text
    configs = definition.expand({"seed": [1, 2]}, [{"stages.0.lr": [0.1, 0.2], "stages.0.epochs": [1, 3]}], ["name=x"])
    assert configs == [["name=x", "seed=1", "stages.0.lr=0.1", "stages.0.epochs=1"],
                       ["name=x", "seed=1", "stages.0.lr=0.2", "stages.0.epochs=3"],
                       ["name=x", "seed=2", "stages.0.lr=0.1", "stages.0.epochs=1"],
                       ["name=x", "seed=2", "stages.0.lr=0.2", "stages.0.epochs=3"]]


@pytest.mark.parametrize("grid, zips, message", [
    (["seed"], [], "expected KEY=V1,V2"),
    (["seed=1,,2"], [], "an empty value"),
    (["seed=1", "seed=2"], [], "given twice"),
    (["seed=1"], [{"stages.0.lr": [1, 2], "stages.0.epochs": [1]}], "need one length"),
    (["seed=1"], [{"seed": [1, 2]}], "already swept in axes.seed"),
])
def test_bad_grids_name_the_axis_and_the_fix(grid, zips, message):
    with pytest.raises(SpecError, match=message):
        definition.expand(definition.parse_grid(grid), zips)


def test_every_config_is_validated_before_anything_runs():
    from ldreg.registry import get_plugins

    with pytest.raises(SpecError, match=r"sweep config 1 \(seed=1 stages.0.loss=nope\): stages\[0\].loss: no loss"):
        definition.build(SMOKE, axes=definition.parse_grid(["seed=1", "stages.0.loss=sft,nope"]), plugins=get_plugins())
    with pytest.raises(SpecError, match=r"stages\[0\].lrr: unknown key \(did you mean 'lr'\?\)"):
        definition.build(SMOKE, axes={"stages.0.lrr": [1, 2]})


def test_a_sweep_file_reads_base_axes_zips_and_executor(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: {SMOKE}\nname: s\naxes: {{seed: [1, 2]}}\nzip: [{{stages.0.lr: [0.1, 0.2]}}]\n"
                    f"overrides: [stages.0.epochs=1]\nexecutor: {{name: local, options: {{workers: 2}}}}\n")
    sweep = definition.load_file(path)
    assert len(sweep.configs) == 4 and sweep.executor.options == {"workers": 2} and sweep.name == "s"
    assert sweep.id == definition.load_file(path).id  # the same definition is the same sweep
    path.write_text(f"base: {SMOKE}\naxis: {{seed: [1]}}\n")
    with pytest.raises(SpecError, match=r"axis: unknown key \(did you mean 'axes'\?\)"):
        definition.load_file(path)


# ------------------------------------------------------------------------------ executors

def test_remote_executors_refuse_a_loopback_database(monkeypatch):
    from ldreg.registry import get_plugins

    executors = get_plugins().executors
    with pytest.raises(LdregError, match="only this machine can reach.*LDREG_MONGO_URL"):
        executors.get("ray").check({"address": "10.1.2.3:6379"}, "mongodb://127.0.0.1:27017")
    with pytest.raises(LdregError, match="only this machine can reach"):
        executors.get("slurm").check({"partition": "gpu"}, "mongodb://u:secret@localhost:27017")
    executors.get("slurm").check({"partition": "gpu"}, "mongodb://db1.lab:27017,db2.lab:27017/?replicaSet=rs0")
    executors.get("ray").check({}, "mongodb://127.0.0.1:27017")  # a local Ray instance reaches it
    with pytest.raises(LdregError, match="no option worker \\(did you mean 'workers'\\?\\)"):
        executors.get("local").check({"worker": 2}, "mongodb://127.0.0.1:1")
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if the extra were not installed
    from ldreg.sweep.executor import require

    with pytest.raises(LdregError, match=r"pip install 'ldreg\[slurm\]'"):
        require("submitit", "slurm", "slurm")


@pytest.mark.slow
def test_local_sweep_runs_each_config_once_and_rerunning_skips_them(sweep_db, tmp_path):
    from ldreg.sweep.launch import run_sweep

    sweep = definition.build(SMOKE, axes={"seed": [1, 2]}, overrides=QUICK, name="local-e2e")
    outcome = run_sweep(sweep, executor="local", options={"workers": 2}, progress=False)
    assert outcome.counts == {"queued": 0, "running": 0, "completed": 2, "failed": 0}
    assert _completed_per_config(sweep_db, sweep.id) == {0: 1, 1: 1}
    runs = {r["_id"]: r for r in sweep_db.runs.find({"meta.tags": store.run_tag(sweep.id)})}
    assert sorted(r["config"]["seed"] for r in runs.values()) == [1, 2]
    assert set(outcome.run_ids.values()) == set(runs)
    again = run_sweep(sweep, executor="local", options={"workers": 2}, progress=False)
    assert again.counts["completed"] == 2 and not again.created
    assert sweep_db.runs.count_documents({"meta.tags": store.run_tag(sweep.id)}) == 2  # nothing ran again

    # the query layer selects the sweep's runs, and its chart against the swept axis renders from them
    from ldreg.query.select import select_runs
    from ldreg.sweep.analysis import pooled, stage_changes, sweep_chart

    assert [r.id for r in select_runs(sweep_db, sweep=sweep.id)] == sorted(runs)
    frame = stage_changes(sweep_db, sweep.id)
    assert sorted(frame["run"]) == sorted(runs) and frame["mean"].notna().all()
    table = pooled(frame, ["loss"])
    assert table["runs"].tolist() == [2] and table["interval over"].tolist() == ["seeds"]
    assert table["lo"].iloc[0] <= frame["mean"].mean() <= table["hi"].iloc[0]
    page = sweep_chart(sweep_db, sweep.id, tmp_path / "sweep.html")
    assert page.stat().st_size > 1000 and "sft" in page.read_text()


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_nothing(sweep_db, tmp_path):
    """kill -9 a worker while its run trains (after its first checkpoint); once its claim expires another
    worker takes the config over and resumes that run, and the config ends with exactly one COMPLETED run."""
    from ldreg import checkpoint
    from ldreg.store.runs import get_run
    from ldreg.sweep.worker import work

    overrides = ["stages.0.epochs=10", "checkpoint_every=2", "probing.every=36", "probing.influence=null",
                 "probing.entk=null"]
    sweep = definition.build(SMOKE, axes={"seed": [3]}, overrides=overrides, name="kill")
    store.save(sweep_db, sweep)
    log = open(tmp_path / "worker.log", "wb")
    victim = subprocess.Popen([sys.executable, "-m", "ldreg.sweep.worker", sweep.id], env=os.environ.copy(),
                              stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    run = None
    while time.monotonic() < deadline and victim.poll() is None:
        found = store.runs_of(sweep_db, sweep.id).get(0)
        if found and checkpoint.exists(found[0]["_id"]):  # it is training, and has saved a checkpoint
            run = found[0]["_id"]
            break
        time.sleep(0.02)
    assert run is not None, (tmp_path / "worker.log").read_text()[-2000:]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert get_run(run, sweep_db)["status"] == "RUNNING", "the run ended before the kill: lengthen it"
    assert work(sweep.id) == 1  # another worker (this process) takes the config over once its claim expires
    entry = store.entries(sweep_db, sweep.id)[0]
    assert entry["state"] == "completed" and entry["attempts"] == 2 and entry["run_id"] == run
    done = get_run(run, sweep_db)
    assert done["status"] == "COMPLETED" and done["info"]["resumed_at_steps"]  # resumed, not restarted
    assert sweep_db.runs.count_documents({"meta.tags": store.run_tag(sweep.id)}) == 1


def _probe_values(db, run_id: int) -> dict:
    docs = db.observations.find({"run_id": run_id, "kind": "probe"}, {"step": 1, "response_type": 1, "values": 1})
    return {(d["step"], d["response_type"]): d["values"]["logp_sum"] for d in docs}


def _same_as_an_ordinary_run(db, run_id: int) -> None:
    """The engine's run stored what the same config stores when run here, in this process, without a sweep."""
    import numpy as np

    from ldreg import spec as specs
    from ldreg.runner import run_experiment

    config = db.runs.find_one({"_id": run_id})["config"]
    here = run_experiment(specs.parse(config), progress=False).run_id
    theirs, ours = _probe_values(db, run_id), _probe_values(db, here)
    assert theirs.keys() == ours.keys() and len(ours) > 2
    for key in ours:
        np.testing.assert_allclose(theirs[key], ours[key], rtol=1e-5, atol=1e-5, err_msg=str(key))


@pytest.mark.slow
def test_ray_executor_on_a_local_ray_instance(sweep_db):
    pytest.importorskip("ray")
    from ldreg.sweep.launch import run_sweep

    sweep = definition.build(SMOKE, axes={"seed": [1]}, overrides=QUICK, name="ray-local")
    outcome = run_sweep(sweep, executor="ray", options={"workers": 2}, progress=False)
    assert outcome.counts["completed"] == 1 and _completed_per_config(sweep_db, sweep.id) == {0: 1}
    _same_as_an_ordinary_run(sweep_db, outcome.run_ids[0])


@pytest.mark.slow
def test_slurm_executor_through_submitits_local_executor(sweep_db, tmp_path):
    pytest.importorskip("submitit")
    from ldreg.sweep.launch import run_sweep

    sweep = definition.build(SMOKE, axes={"seed": [1]}, overrides=QUICK, name="submitit-local")
    outcome = run_sweep(sweep, executor="slurm", options={"cluster": "local", "folder": str(tmp_path)},
                        progress=False)
    assert outcome.counts["completed"] == 1 and _completed_per_config(sweep_db, sweep.id) == {0: 1}
    _same_as_an_ordinary_run(sweep_db, outcome.run_ids[0])


def test_sweep_status_and_list_do_not_import_torch(sweep_db):
    sweep = definition.build(SMOKE, axes={"seed": [1, 2]}, overrides=QUICK, name="status")
    store.save(sweep_db, sweep)
    code = ("import sys\nfrom click.testing import CliRunner\nfrom ldreg.cli import main\n"
            f"for args in (['sweep', 'status', {sweep.id!r}], ['sweep', 'list']):\n"
            "    r = CliRunner().invoke(main, args)\n    print(r.output)\n    assert r.exit_code == 0, r.output\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    assert "0 done, 0 running, 0 failed, 2 queued" in done.stdout and sweep.id in done.stdout


def test_the_command_line_lists_a_grid_and_refuses_bad_axes_in_one_line():
    from click.testing import CliRunner

    from ldreg.cli import main

    listed = CliRunner().invoke(main, ["sweep", str(SMOKE), "--grid", "seed=1,2", "stages.0.lr=1e-3,2e-3",
                                       "with", "stages.0.epochs=1", "--dry-run"])
    assert listed.exit_code == 0, listed.output
    assert "4 configs" in listed.output and "3: stages.0.epochs=1 seed=2 stages.0.lr=0.002" in listed.output
    bad = CliRunner().invoke(main, ["sweep", "run", str(SMOKE), "--grid", "stages.0.loss=sft,nope", "--dry-run"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert "sweep config 1 (stages.0.loss=nope): stages[0].loss: no loss named 'nope'" in bad.output
    missing = CliRunner().invoke(main, ["sweep", "run", str(SMOKE), "--dry-run"])
    assert missing.exit_code == 2 and "--grid seed=1,2" in missing.output


def test_a_query_selects_a_sweeps_runs_by_its_tag():
    from ldreg.query.select import run_filters
    from ldreg.query.spec import load

    spec = load(REPO / "queries" / "loss-comparison.yaml", ["sweep=losses-1a2b3c4d"])
    assert spec.select.sweep == "losses-1a2b3c4d"
    assert {"meta.tags": "sweep:losses-1a2b3c4d"} in run_filters(spec.select).values()
    assert spec.chart.color == "stages.1.loss" and spec.chart.dash == "seed"  # one line per run: loss and seed


def test_claims_are_exclusive_expire_with_their_lease_and_failed_configs_requeue(sweep_db):
    sweep = definition.build(SMOKE, axes={"seed": [1, 2, 3]}, overrides=QUICK, name="claims")
    assert store.save(sweep_db, sweep) and not store.save(sweep_db, sweep)  # stored once
    first = store.claim(sweep_db, sweep.id, "a", lease_s=60)
    lapsed = store.claim(sweep_db, sweep.id, "b", lease_s=-1)  # b's lease has already run out
    taken = store.claim(sweep_db, sweep.id, "c", lease_s=60)  # so c takes config 1 over
    third = store.claim(sweep_db, sweep.id, "d", lease_s=60)
    assert [e["index"] for e in (first, lapsed, taken, third)] == [0, 1, 1, 2] and taken["attempts"] == 2
    assert store.claim(sweep_db, sweep.id, "e", lease_s=60) is None  # every config held
    assert not store.renew(sweep_db, lapsed, 60) and not store.finish(sweep_db, lapsed, "completed", 7)
    assert store.finish(sweep_db, first, "completed", 5) and store.finish(sweep_db, taken, "failed", 6, "boom")
    assert store.counts(store.entries(sweep_db, sweep.id)) == {"queued": 0, "running": 1, "completed": 1, "failed": 1}
    assert store.requeue_failed(sweep_db, sweep.id) == 1
    again = store.claim(sweep_db, sweep.id, "f", lease_s=60)
    assert again["index"] == 1 and again["run_id"] == 6  # its run is kept, so the worker resumes it


def test_the_axis_chart_draws_a_dotted_axis_as_one_field_not_a_nested_path():
    """A swept key such as stages.0.lr is one column; unescaped, Vega-Lite reads it as a nested path
    and draws an empty chart (seen in a screenshot)."""
    import pandas as pd

    from ldreg.sweep.analysis import axis_chart

    frame = pd.DataFrame({"loss": ["sft"] * 4, "stages.0.lr": [1e-3, 1e-3, 2e-3, 2e-3], "mean": [1.0, 2.0, 3.0, 4.0],
                          "se": [0.1] * 4, "n": [8] * 4, "run": [1, 2, 3, 4]})
    spec = axis_chart(frame, "stages.0.lr", "t").to_dict()
    rows = spec["datasets"][spec["data"]["name"]]
    for layer in spec["layer"]:
        field = layer["encoding"]["x"]["field"]
        assert "\\." in field and field.replace("\\.", ".") in rows[0]
    assert sorted(row["stages.0.lr"] for row in rows) == [1e-3, 2e-3]
