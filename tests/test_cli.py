"""The command line, end to end against the real database: run, runs, db, and bad input; output
fit for scripts (plain rows when piped, --json), and Ctrl-C naming the command that resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ldreg.cli import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "smoke.yaml"
LONG_TAG = "a-tag-long-enough-that-an-80-column-table-would-fold-it-" + "x" * 40


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_commands():
    out = invoke("--help").output
    for command in ("run", "runs", "query", "plugins", "backends", "db"):
        assert command in out


def test_plugins_and_backends_tables():
    out = invoke("plugins").output
    assert "sft" in out and "chosen_permuted" in out and "rocm" in out
    out = invoke("backends").output
    assert "cpu (auto)" in out and "cuda" in out


def test_plugins_and_backends_as_json():
    plugins = {p["plugin"]: p for p in json.loads(invoke("plugins", "--json").output)}
    assert set(plugins["ldreg.losses"]) == {"plugin", "distribution", "version", "origin", "losses",
                                            "response_types", "backends", "executors", "source_schemes", "judges"}
    assert {"sft", "dpo"} <= set(plugins["ldreg.losses"]["losses"])
    assert {"local", "ray", "slurm"} <= set(plugins["ldreg.executors"]["executors"])
    assert "chosen_permuted" in plugins["ldreg.responses"]["response_types"]
    backends = {b["backend"]: b for b in json.loads(invoke("backends", "--json").output)}
    assert {"cpu", "cuda", "mps", "rocm"} <= set(backends)
    assert [name for name, b in backends.items() if b["auto"]] == ["cpu"]  # no GPU in the test run
    assert backends["cpu"]["available"] is True and backends["cpu"]["device"] == "cpu"
    unavailable = [b for b in backends.values() if not b["available"]]
    assert unavailable and all(b["device"] is None and b["note"] for b in unavailable)


@pytest.fixture(scope="module")
def smoke_run(mongo_server, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LDREG_MONGO_URL", mongo_server.url)
    mp.setenv("LDREG_DB", "cli_smoke")
    result = invoke("run", SMOKE, "--no-progress", "--tag", "ci", "--tag", LONG_TAG, "with", "stages.0.epochs=1")
    yield result
    mp.undo()


def test_smoke_run_completes_and_is_stored(smoke_run, mongo_client):
    assert smoke_run.exit_code == 0, smoke_run.output
    assert "COMPLETED" in smoke_run.output
    db = mongo_client["cli_smoke"]
    run = db.runs.find_one(sort=[("_id", -1)])
    assert run["status"] == "COMPLETED" and run["experiment"]["name"] == "smoke"
    assert run["config"]["stages"][0]["epochs"] == 1.0 and run["meta"]["tags"] == ["smoke", "ci", LONG_TAG]
    assert run["host"]["hostname"] and run["experiment"]["sources"]
    # 18 train examples, batch 4, 1 epoch: 5 steps; probes at the start, at 8 and 16 seen, and at the end
    assert run["result"]["steps"] == 5 and run["result"]["probe_passes"] == 4
    probes = list(db.observations.find({"run_id": run["_id"], "kind": "probe"}))
    assert {p["response_type"] for p in probes} == {"chosen", "chosen_permuted"}
    assert len(probes) == 2 * 4 and all(len(p["values"]["logp_sum"]) == 8 for p in probes)
    assert db.metrics.find_one({"run_id": run["_id"], "name": "loss"})["steps"] == [1, 2, 3, 4, 5]
    # before training: the influence matrix (2 update x 2 observe types) and one eNTK Gram
    influence = list(db.observations.find({"run_id": run["_id"], "kind": "influence"}))
    assert {(d["update_type"], d["response_type"]) for d in influence} == {
        (u, o) for u in ("chosen", "chosen_permuted") for o in ("chosen", "chosen_permuted")}
    entk = db.observations.find_one({"run_id": run["_id"], "kind": "entk"})
    assert entk["meta"]["n"] == 6 and len(entk["values"]["gram"]) == 36


def test_runs_lists_and_shows_the_run(smoke_run, monkeypatch, mongo_server, mongo_client):
    monkeypatch.setenv("LDREG_MONGO_URL", mongo_server.url)
    monkeypatch.setenv("LDREG_DB", "cli_smoke")
    run_id = mongo_client["cli_smoke"].runs.find_one(sort=[("_id", -1)])["_id"]
    out = invoke("runs", "--status", "completed").output
    assert "smoke" in out and "COMPLETED" in out
    out = invoke("runs", "show", run_id).output
    assert f"id: {run_id}\n" in out and "observations:" in out and "chosen_permuted" in out


def test_piped_runs_are_whole_tab_separated_rows(smoke_run, monkeypatch, mongo_server, mongo_client):
    """CliRunner's stdout is not a terminal: a header, then one full-width line per run (no folding)."""
    monkeypatch.setenv("LDREG_MONGO_URL", mongo_server.url)
    monkeypatch.setenv("LDREG_DB", "cli_smoke")
    run_id = mongo_client["cli_smoke"].runs.find_one(sort=[("_id", -1)])["_id"]
    lines = invoke("runs").output.splitlines()
    assert lines[0].split("\t") == ["id", "name", "status", "losses", "tags", "start", "duration", "observations"]
    row = next(line.split("\t") for line in lines[1:] if line.startswith(f"{run_id}\t"))
    assert row[1:5] == ["smoke", "COMPLETED", "sft", f"smoke, ci, {LONG_TAG}"]
    assert int(row[7]) > 0 and not any(ch in "".join(lines) for ch in "┃│━─")


def test_runs_and_show_as_json(smoke_run, monkeypatch, mongo_server, mongo_client):
    monkeypatch.setenv("LDREG_MONGO_URL", mongo_server.url)
    monkeypatch.setenv("LDREG_DB", "cli_smoke")
    db = mongo_client["cli_smoke"]
    run_id = db.runs.find_one(sort=[("_id", -1)])["_id"]
    rows = json.loads(invoke("runs", "--json", "--tag", "ci").output)
    row = next(r for r in rows if r["id"] == run_id)
    assert set(row) == {"id", "name", "status", "losses", "tags", "start", "duration", "observations"}
    assert row["status"] == "COMPLETED" and row["losses"] == ["sft"] and row["tags"] == ["smoke", "ci", LONG_TAG]
    assert row["observations"] == db.observations.count_documents({"run_id": run_id})
    shown = json.loads(invoke("runs", "show", run_id, "--json").output)
    assert shown["id"] == run_id and shown["config"]["stages"][0]["epochs"] == 1.0
    assert sum(shown["observations"]["probe"].values()) == db.observations.count_documents(
        {"run_id": run_id, "kind": "probe"})
    assert shown["metrics"]["loss"]["count"] == 5


def test_model_free_commands_import_neither_torch_nor_transformers(smoke_run, mongo_server, mongo_client, tmp_path):
    """`python -X importtime` lists every module a command imports; runs, db, sweep listings and
    query need no model, and importing torch and transformers costs them over a second."""
    env = {**os.environ, "LDREG_MONGO_URL": mongo_server.url, "LDREG_DB": "cli_smoke", "LDREG_HOME": str(tmp_path)}
    run_id = mongo_client["cli_smoke"].runs.find_one(sort=[("_id", -1)])["_id"]
    for args in (["runs", "--json"], ["runs", "show", run_id, "--json"], ["db", "status"], ["sweep", "list"],
                 ["query", REPO / "queries" / "smoke.yaml", "--out", tmp_path / "smoke.csv"]):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "ldreg", *map(str, args)], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "ldreg.cli" in imported and "pymongo" in imported  # the listing is real
        assert not imported & {"torch", "transformers"}, f"`ldreg {' '.join(map(str, args))}` imports a model library"


def test_completed_run_is_found_by_its_config(smoke_run, mongo_client):
    from ldreg import spec as specs
    from ldreg.paper.demo import completed_run

    db = mongo_client["cli_smoke"]
    spec = specs.load(SMOKE, ["stages.0.epochs=1"])
    spec.tags = ["smoke", "ci", LONG_TAG]
    assert completed_run(db, spec) == db.runs.find_one(sort=[("_id", -1)])["_id"]
    spec.seed = 1
    assert completed_run(db, spec) is None


def test_dry_run_prints_resolved_config():
    out = invoke("run", SMOKE, "--dry-run", "with", "seed=7").output
    assert "seed: 7" in out and "loss: sft" in out


@pytest.mark.parametrize("args, message", [
    (["run", "nope.yaml"], "nope.yaml: no such file"),
    (["run", SMOKE, "with", "stages.0.loss=sfx"], "stages[0].loss: no loss named 'sfx'"),
    (["run", SMOKE, "with", "probing.every=-1"], "probing.every: must be > 0"),
])
def test_bad_input_is_one_line_not_a_traceback(args, message):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_malformed_yaml_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [\n")
    result = CliRunner().invoke(main, ["run", str(bad)])
    assert result.exit_code == 2 and "not valid YAML" in result.output


def test_unreachable_mongo_url_is_one_line(monkeypatch):
    monkeypatch.setenv("LDREG_MONGO_URL", "mongodb://someone:secret@127.0.0.1:9/")
    result = CliRunner().invoke(main, ["db", "status"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "secret" not in result.output and "127.0.0.1:9" in result.output


def test_runs_delete_removes_run_and_observations(smoke_run, mongo_client, monkeypatch, mongo_server):
    monkeypatch.setenv("LDREG_MONGO_URL", mongo_server.url)
    monkeypatch.setenv("LDREG_DB", "cli_smoke")
    db = mongo_client["cli_smoke"]
    run_id = db.runs.find_one(sort=[("_id", -1)])["_id"]
    assert db.observations.count_documents({"run_id": run_id}) > 0
    out = invoke("runs", "delete", str(run_id), "--yes").output
    assert f"deleted run {run_id}" in out
    assert db.runs.count_documents({"_id": run_id}) == 0
    assert db.observations.count_documents({"run_id": run_id}) == 0
    assert db.metrics.count_documents({"run_id": run_id}) == 0
    result = CliRunner().invoke(main, ["runs", "show", str(run_id)])
    assert result.exit_code == 2 and f"no run with id {run_id}" in result.output


def test_ctrl_c_names_the_command_that_resumes(mongo_server, mongo_client, tmp_path):
    """A real SIGINT to a real `ldreg run` once it has checkpointed: the run is INTERRUPTED and the
    message names `ldreg run --resume ID`; the exit status is 130, as for any Ctrl-C'd command."""
    env = {**os.environ, "LDREG_MONGO_URL": mongo_server.url, "LDREG_DB": "cli_interrupt",
           "LDREG_HOME": str(tmp_path), "LDREG_HEARTBEAT_S": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ldreg", "run", str(SMOKE), "--no-progress", "with", "stages.0.epochs=500",
         "checkpoint_every=1"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell's background job (`make test &`) ignores SIGINT, and children inherit that: undo it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoints = tmp_path / "checkpoints" / "cli_interrupt"
    try:
        while not list(checkpoints.glob("run-*.pt")):
            assert proc.poll() is None, proc.communicate()  # ended before its first checkpoint
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_id = int(next(checkpoints.glob("run-*.pt")).stem.removeprefix("run-"))
    assert proc.returncode == 130, out + err
    assert f"run {run_id} INTERRUPTED; `ldreg run --resume {run_id}` continues it" in " ".join(err.split())
    assert "Traceback" not in err
    assert mongo_client["cli_interrupt"].runs.find_one({"_id": run_id})["status"] == "INTERRUPTED"
