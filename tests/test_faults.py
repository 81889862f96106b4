"""Faults injected into real runs against the real embedded server: nothing lost, nothing silent.

Each disturbed run is compared with one undisturbed run of the same spec and seed: the same
observations (equal values, each stored once) and every metric step exactly once. Faults: the
server SIGKILLed just after a heartbeat, during the final save and before the end; the spool
unwritable and the disk full while the server is down; the run process SIGKILLed or interrupted
and resumed (while a loss plugin holds it at a known step, so the signal never lands after the
end). Sacred's heartbeat is set short (LDREG_HEARTBEAT_S) instead of sleeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from faultkit import SMOKE, FaultySFT, assert_metrics_once, assert_same_observations, kill_server, wait_for
from ldreg import checkpoint
from ldreg import spec as specs
from ldreg.errors import LdregError
from ldreg.registry import load_plugins
from ldreg.runner import ObservationsNotStored, resume_experiment, run_experiment
from ldreg.store.connection import open_client
from ldreg.store.spool import flush_all, spool_dir
from ldreg.tracking import RunNotSaved

pytestmark = pytest.mark.slow

STEPS = 18  # 18 training pairs x 4 epochs, in batches of 4
OVERRIDES = ["stages.0.epochs=4", "probing.every=4", "checkpoint_every=2", "name=faults"]
HEARTBEAT_S = "0.3"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ldreg.store.server import EmbeddedServer

    srv = EmbeddedServer(tmp_path_factory.mktemp("faults-server"))
    srv.start()
    yield srv
    srv.stop()


def _client(server):
    return open_client(server.start().url, timeout_s=5)


@pytest.fixture(scope="module")
def baseline(server):
    """The undisturbed run every disturbed run is compared with."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LDREG_MONGO_URL", server.status().url)
        mp.setenv("LDREG_DB", "faults_baseline")
        mp.setenv("LDREG_HEARTBEAT_S", HEARTBEAT_S)
        plugins = load_plugins([FaultySFT()])
        run = run_experiment(_spec(plugins), progress=False, plugins=plugins)
    db = _client(server)["faults_baseline"]
    return db, run


@pytest.fixture
def fresh_db(server, monkeypatch):
    """A database of its own for one test (spool and checkpoint files are per database too)."""
    name = f"faults_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("LDREG_MONGO_URL", server.status().url)
    monkeypatch.setenv("LDREG_DB", name)
    monkeypatch.setenv("LDREG_HEARTBEAT_S", HEARTBEAT_S)
    return name


def _spec(plugins):
    return specs.load(SMOKE, ["stages.0.loss=faulty_sft", *OVERRIDES], plugins)


def _run(actions):
    plugins = load_plugins([FaultySFT(actions)])
    return run_experiment(_spec(plugins), progress=False, plugins=plugins)


def _latest(db):
    return db.runs.find_one(sort=[("_id", -1)])


def _assert_like_baseline(baseline, db, run_id):
    base_db, base = baseline
    assert db.runs.find_one({"_id": run_id})["status"] == "COMPLETED"
    assert_same_observations(base_db, base.run_id, db, run_id)
    assert_metrics_once(db, run_id, STEPS)
    assert _first_query(db, run_id) == _first_query(base_db, base.run_id)


def _first_query(db, run_id) -> list[tuple]:
    """What a first query reads of the run (its summary table, where the sink wrote one that is
    valid; else every bucket's summary), as comparable tuples: a table written by a disturbed run
    must hold what its buckets hold."""
    from ldreg.query import writeback
    from ldreg.query.frame import summaries
    from ldreg.query.select import select_runs

    rows = summaries(db, select_runs(db, ids=[run_id]), "probe", "logp_sum")[1]
    writeback.wait()
    keys = ("stage_index", "step", "probe_set", "response_type", "update_type", "examples_seen", "n", "mean", "std",
            "median")
    return sorted(tuple(str(row.get(k)) for k in keys) for row in rows)


def test_undisturbed_run_counts_each_observation_once(baseline):
    """Fault 6: the final probe was emitted and counted twice (414 reported for 412 stored)."""
    db, run = baseline
    assert run.result["steps"] == STEPS
    assert run.result["observations"] == db.observations.count_documents({"run_id": run.run_id}) > 0
    assert_metrics_once(db, run.run_id, STEPS)


def test_server_killed_just_after_a_heartbeat(server, fresh_db, baseline):
    """Fault 3: metrics written at a heartbeat were lost on a kill -9 (unjournaled)."""
    db = _client(server)[fresh_db]

    def kill_after_heartbeat():
        first = _latest(db).get("heartbeat")
        wait_for(lambda: _latest(db).get("heartbeat") != first, what="a new heartbeat")
        kill_server(server)
        time.sleep(1.0)  # > 3 heartbeats: metrics logged meanwhile must wait, not vanish

    run = _run({6: kill_after_heartbeat, 9: server.start})
    _assert_like_baseline(baseline, db, run.run_id)


def test_server_killed_during_the_final_save_then_flush(server, fresh_db, baseline, monkeypatch):
    """Fault 2: the run ended RUNNING forever with its metrics nowhere; now: bounded, loud, flushable."""
    from ldreg.tracking import DurableMongoObserver

    real = DurableMongoObserver.completed_event

    def killed_first(self, stop_time, result):
        kill_server(server)
        return real(self, stop_time, result)

    monkeypatch.setattr(DurableMongoObserver, "completed_event", killed_first)
    with pytest.raises(RunNotSaved, match="ldreg db flush"):
        _run({})
    server.start()
    db = _client(server)[fresh_db]
    run_id = _latest(db)["_id"]
    assert db.runs.find_one({"_id": run_id})["status"] == "RUNNING"  # not silently COMPLETED
    report = flush_all(db)
    assert report.runs_finished == [run_id]
    _assert_like_baseline(baseline, db, run_id)


def test_server_down_at_the_end_is_loud_and_flush_completes_it(server, fresh_db, baseline):
    """Fault 2: observations spooled at the end; the run is not COMPLETED until they are stored."""
    with pytest.raises(RunNotSaved, match=r"observation\(s\) in .*ldreg db flush"):
        _run({STEPS - 1: lambda: kill_server(server)})
    server.start()
    db = _client(server)[fresh_db]
    run_id = _latest(db)["_id"]
    assert db.runs.find_one({"_id": run_id})["status"] == "RUNNING"
    assert checkpoint.exists(run_id)  # kept while anything is unstored
    report = flush_all(db)
    assert sum(c.stored for c in report.observations.values()) > 0 and report.runs_finished == [run_id]
    _assert_like_baseline(baseline, db, run_id)
    assert not list(spool_dir(fresh_db).rglob("*.json*"))


def test_spool_folder_unwritable_while_the_server_is_down(server, fresh_db, baseline):
    """Fault 1: the writer died and every later observation was dropped; now they wait in memory."""
    blocker = spool_dir(fresh_db)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the spool folder should be\n")  # mkdir fails even for root
    try:
        run = _run({5: lambda: kill_server(server), 8: server.start})
    finally:
        blocker.unlink()
    db = _client(server)[fresh_db]
    _assert_like_baseline(baseline, db, run.run_id)


def test_disk_full_and_server_down_fails_loudly_and_resume_recovers(server, fresh_db, baseline):
    """Fault 1: spool writes hit ENOSPC (/dev/full) and the server stays down to the end: the run
    must end FAILED with the counts and the recovery, keep its checkpoint, and recover by resume."""
    spool = spool_dir(fresh_db) / "run-1.jsonl"  # the first run id of a fresh database
    spool.parent.mkdir(parents=True, exist_ok=True)
    spool.symlink_to("/dev/full")
    with pytest.raises(ObservationsNotStored) as failure:
        _run({7: lambda: kill_server(server)})
    message = str(failure.value)
    assert "FAILED" in message and "of" in message and "lost" in message and "No space left" in message
    assert "ldreg run --resume 1" in message
    spool.unlink()  # the disk has room again
    server.start()
    db = _client(server)[fresh_db]
    flush_all(db)  # the final FAILED status waited on disk
    assert db.runs.find_one({"_id": 1})["status"] == "FAILED"
    assert checkpoint.exists(1)
    plugins = load_plugins([FaultySFT()])
    resume_experiment(1, progress=False, plugins=plugins)
    _assert_like_baseline(baseline, db, 1)


HOLD_AT = 6  # steps 1-5 done, the last checkpoint at step 4: resuming must redo step 5 once
HELD_SFT = f'''
"""SFT as `held_sft`. With FAULTS_HOLD_FILE set, its {HOLD_AT}th call (one call per step) creates that
file and waits there (5 min at most) for the test's signal, so the signal always lands mid-run;
without it (the resuming test process) it is plain SFT."""
import os
import time
from pathlib import Path

from ldreg.hookspecs import hookimpl
from ldreg.losses import LossDefinition
from ldreg.registry import load_plugins


@hookimpl
def ldreg_register_losses(registry):
    sft = load_plugins(third_party=False).losses.get("sft")
    calls = [0]

    def compute(logps):
        calls[0] += 1
        hold = os.environ.get("FAULTS_HOLD_FILE")
        if hold and calls[0] == {HOLD_AT}:
            Path(hold).touch()
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                time.sleep(0.05)
        return sft.compute(logps)

    registry.add(LossDefinition(name="held_sft", compute=compute, description="SFT that holds mid-run"))
'''


@pytest.fixture
def held(tmp_path):
    """A plugins folder with `held_sft`, and the file its CLI run creates when it holds."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "held_sft.py").write_text(HELD_SFT)
    return folder, tmp_path / "holding"


def _cli_run(db_name: str, server, held) -> subprocess.Popen:
    """`ldreg run` of the smoke spec with `held_sft`, which holds at step HOLD_AT until signalled."""
    folder, hold_file = held
    env = {**os.environ, "LDREG_MONGO_URL": server.status().url, "LDREG_DB": db_name,
           "LDREG_HEARTBEAT_S": HEARTBEAT_S, "LDREG_PLUGINS_DIR": str(folder), "FAULTS_HOLD_FILE": str(hold_file)}
    args = [sys.executable, "-c", AS_FROM_A_TERMINAL, "run", str(SMOKE), "with", "stages.0.loss=held_sft", *OVERRIDES,
            "--no-progress"]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# `python -m ldreg` with Ctrl-C enabled, as in a terminal: a command started in the background by a
# non-interactive shell (as CI may start the suite) inherits SIGINT ignored, and Python then never
# raises KeyboardInterrupt, so the held run would wait out its hold.
AS_FROM_A_TERMINAL = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                      "runpy.run_module('ldreg', run_name='__main__', alter_sys=True)")


def _held_plugins(held):
    """The plugins to resume a `held_sft` run with (in this process, where it never holds)."""
    return load_plugins(files=[held[0] / "held_sft.py"])


def _wait_until_held(proc: subprocess.Popen, held) -> None:
    """Wait until the run holds at step HOLD_AT: alive, after its checkpoint at step HOLD_AT - 2."""
    hold_file = held[1]
    wait_for(lambda: hold_file.exists() or proc.poll() is not None, timeout_s=120, what="the run to hold")
    assert proc.poll() is None, "the run ended before it held:\n" + proc.stdout.read()
    assert checkpoint.load(1)["clock"]["step"] == HOLD_AT - 2


def _stop(proc: subprocess.Popen, sig: int) -> str:
    """Send ``sig`` (to a run held mid-step) and return its output; SIGKILL it if it has not
    ended within 60 s, so no test leaves a run behind."""
    try:
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out


def test_run_killed_shows_dead_refuses_delete_while_alive_and_resumes(server, fresh_db, baseline, held):
    """Faults 3, 4, 5: a kill -9'd run stayed RUNNING forever; a live run could be deleted;
    resumed, its metrics had a gap. Now: DEAD, delete refused while alive, resume exactly once."""
    from ldreg.cli import main
    from ldreg.store.runs import delete_run, list_runs

    db = _client(server)[fresh_db]
    proc = _cli_run(fresh_db, server, held)
    try:
        _wait_until_held(proc, held)
        assert db.runs.find_one({"_id": 1})["status"] == "RUNNING"
        with pytest.raises(LdregError, match="is RUNNING"):
            delete_run(1, db)
    finally:
        _stop(proc, signal.SIGKILL)  # kill -9 mid-step: the run holds at step HOLD_AT
    assert proc.returncode == -signal.SIGKILL
    wait_for(lambda: list_runs(db=db)[0]["status"] == "DEAD", what="DEAD in `ldreg runs`")
    shown = CliRunner().invoke(main, ["runs"])
    assert shown.exit_code == 0 and "DEAD" in shown.output
    marked = CliRunner().invoke(main, ["runs", "mark-failed", "1"])
    assert marked.exit_code == 0 and "marked FAILED" in marked.output, marked.output
    resume_experiment(1, progress=False, plugins=_held_plugins(held))
    _assert_like_baseline(baseline, db, 1)


def test_interrupted_run_resumes_exactly_once(server, fresh_db, baseline, held):
    """Ctrl-C (SIGINT) mid-run: INTERRUPTED, non-zero exit; resumed, equal to the undisturbed run."""
    db = _client(server)[fresh_db]
    proc = _cli_run(fresh_db, server, held)
    try:
        _wait_until_held(proc, held)
    finally:
        out = _stop(proc, signal.SIGINT)  # Ctrl-C mid-step: the run holds at step HOLD_AT
    assert proc.returncode == 130 and "ldreg run --resume 1" in out, out
    assert db.runs.find_one({"_id": 1})["status"] == "INTERRUPTED"
    resume_experiment(1, progress=False, plugins=_held_plugins(held))
    _assert_like_baseline(baseline, db, 1)


def test_run_ids_are_never_reused_after_a_delete(server, fresh_db):
    """Fault 7: after deleting the newest run its id came back, and so did its leftover files."""
    from ldreg.store.runs import delete_run
    from ldreg.tracking import run_tracked

    url = server.status().url
    first, _ = run_tracked("ids", {"seed": 0}, lambda ctx: {}, url=url)
    db = _client(server)[fresh_db]
    delete_run(first, db)
    second, _ = run_tracked("ids", {"seed": 0}, lambda ctx: {}, url=url)
    assert second > first and db.runs.count_documents({}) == 1


def test_db_stop_without_a_database_is_one_line(tmp_path, monkeypatch):
    """Fault 8: `ldreg db stop` in a fresh LDREG_HOME ended in a FileNotFoundError traceback."""
    from ldreg.cli import main

    monkeypatch.setenv("LDREG_HOME", str(tmp_path / "fresh"))
    result = CliRunner().invoke(main, ["db", "stop"])
    assert result.exit_code == 0 and result.exception is None
    assert result.output.strip().startswith("not running") and len(result.output.strip().splitlines()) == 1


def test_reliability_doc_names_only_tests_that_exist():
    """Each row of docs/reliability.md's Faults table names a test that is really there."""
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    section = doc.split("## Faults", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(test_\w+\.py)(?:::(test_\w+))?`", section)
    assert len(named) >= 10
    for filename, function in named:
        source = (Path(__file__).parent / filename).read_text()
        assert not function or f"def {function}(" in source, f"{filename}::{function} is not a test"
