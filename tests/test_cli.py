"""The command line, end to end against the real database: run, runs, db, and bad input."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from ldreg.cli import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "smoke.yaml"


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


@pytest.fixture(scope="module")
def smoke_run(mongo_server, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LDREG_MONGO_URL", mongo_server.url)
    mp.setenv("LDREG_DB", "cli_smoke")
    result = invoke("run", SMOKE, "--no-progress", "--tag", "ci", "with", "stages.0.epochs=1")
    yield result
    mp.undo()


def test_smoke_run_completes_and_is_stored(smoke_run, mongo_client):
    assert smoke_run.exit_code == 0, smoke_run.output
    assert "COMPLETED" in smoke_run.output
    db = mongo_client["cli_smoke"]
    run = db.runs.find_one(sort=[("_id", -1)])
    assert run["status"] == "COMPLETED" and run["experiment"]["name"] == "smoke"
    assert run["config"]["stages"][0]["epochs"] == 1.0 and run["meta"]["tags"] == ["smoke", "ci"]
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


def test_runs_lists_and_shows_the_run(smoke_run, monkeypatch, mongo_server):
    monkeypatch.setenv("LDREG_MONGO_URL", mongo_server.url)
    monkeypatch.setenv("LDREG_DB", "cli_smoke")
    out = invoke("runs", "--status", "completed").output
    assert "smoke" in out and "COMPLETED" in out
    out = invoke("runs", "show", "1").output
    assert "observations:" in out and "chosen_permuted" in out


def test_completed_run_is_found_by_its_config(smoke_run, mongo_client):
    from ldreg import spec as specs
    from ldreg.demo import completed_run

    db = mongo_client["cli_smoke"]
    spec = specs.load(SMOKE, ["stages.0.epochs=1"])
    spec.tags = ["smoke", "ci"]
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
