"""The Sacred record of a run, read back with incense (a real Sacred client) from the real server.

One crashed-then-resumed run carries every promise: the spec files as written and the resolved config
as artifacts, the sources of the modules that ran (the loss and its plugin, lazily imported engine
modules, the test plugin's own module), plugin distributions as dependencies, readable captured
output that keeps the crashed attempt's lines, and the original start time.
"""

from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from incense import ExperimentLoader

from ldreg import spec as specs
from ldreg.registry import load_plugins
from ldreg.runner import plugin_record, resume_experiment, run_experiment
from ldreg.tracking import readable_output

from faultkit import CrashingSFT

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TOP = """\
# The record test's spec; this comment must survive byte for byte.
include: base.yaml
name: sacred-record
checkpoint_every: 2
probing: {every: 4, influence: null, entk: null}
stages:
  - {loss: crashy_sft, epochs: 1, lr: 1.0e-3, optimizer: adamw, batch_size: 4}
"""


@pytest.fixture
def spec_dir(tmp_path) -> Path:
    """top.yaml including base.yaml (the smoke spec with its data path made absolute)."""
    smoke = (EXPERIMENTS / "smoke.yaml").read_text()
    (tmp_path / "base.yaml").write_text(smoke.replace("./data/smoke.jsonl", str(EXPERIMENTS / "data" / "smoke.jsonl")))
    (tmp_path / "top.yaml").write_text(TOP)
    return tmp_path


def test_a_resumed_run_keeps_a_complete_record(spec_dir, db, mongo_server, monkeypatch):
    monkeypatch.setenv("LDREG_MONGO_URL", mongo_server.url)
    monkeypatch.setenv("LDREG_DB", db.name)
    top = spec_dir / "top.yaml"
    crashing = load_plugins([CrashingSFT(crash_on=4)])
    with pytest.raises(Exception, match="simulated crash"):
        run_experiment(specs.load(top, [], crashing), spec_path=top, progress=True, plugins=crashing)
    run_id = db.runs.find_one({"experiment.name": "sacred-record"})["_id"]
    crashed = db.runs.find_one({"_id": run_id})
    assert crashed["status"] == "FAILED"

    clean = load_plugins([CrashingSFT(None)])
    resume_experiment(run_id, progress=True, plugins=clean)

    run = ExperimentLoader(mongo_uri=mongo_server.url, db_name=db.name).find_by_id(run_id)
    assert run.status == "COMPLETED"
    # resume keeps the first start and appends to the output
    assert run.start_time == crashed["start_time"]
    out = run.captured_out
    assert out.startswith(crashed["captured_out"].rstrip("\n"))
    assert f"ldreg run {run_id} (sacred-record): started" in out and f"ldreg run {run_id} (sacred-record): resumed" in out
    assert "stage 0-crashy_sft" in out  # the crashed attempt's progress bar passed through, readable
    assert "\r" not in out and "\x1b" not in out
    assert all(line == line.rstrip() for line in out.split("\n"))
    # artifacts: each spec file byte for byte, and the resolved config (kept across the resume)
    artifacts = run.artifacts
    assert set(artifacts) == {"spec/top.yaml", "spec/base.yaml", "config.resolved.yaml"}
    assert artifacts["spec/top.yaml"].content == top.read_bytes()
    assert artifacts["spec/base.yaml"].content == (spec_dir / "base.yaml").read_bytes()
    resolved = yaml.safe_load(artifacts["config.resolved.yaml"].content)
    assert resolved == run.to_dict()["config"] and resolved["stages"][0]["loss"] == "crashy_sft"
    # the spec's path and checksum, as before
    assert [Path(path).name for path, _ in run.resources] == ["top.yaml"]
    # sources: the code that ran, each readable from GridFS
    sources = dict(run.experiment["sources"])
    for name in ("ldreg/runner.py", "ldreg/train.py", "ldreg/losses.py", "ldreg/dynamics/probes.py",
                 "plugins/losses/sft.py", "tests/faultkit.py"):
        assert name in sources, name
    fs = run._grid_filesystem
    assert fs.get(sources["ldreg/losses.py"]).read() == Path(specs.__file__).with_name("losses.py").read_bytes()
    assert list(sources) == sorted(sources)
    # dependencies: the plugin distributions beside the libraries
    record = plugin_record(clean)
    assert record["dependencies"] == {"ldreg": version("ldreg")}  # the built-in plugins' distribution
    assert {"ldreg_plugins", CrashingSFT.__module__.split(".")[0]} <= set(record["source_packages"])
    deps = set(run.experiment["dependencies"])
    assert f"ldreg=={version('ldreg')}" in deps
    assert f"torch=={version('torch')}" in deps


def test_readable_output_is_what_a_terminal_shows_without_control_characters():
    raw = ("ldreg run 1 (x): started\n"
           "\rstage 0-sft:  50%|\x1b[32m#####\x1b[0m     | 1/2\rstage 0-sft: 100%|##########| 2/2"
           "\r                                        \r"
           "\x1b[1mdone\x1b[0m   \n\nlast\r")
    assert readable_output(raw) == "ldreg run 1 (x): started\ndone\n\nlast"


def test_config_carries_the_tiny_block_only_for_a_tiny_model():
    real = specs.parse({"model": {"base": "EleutherAI/pythia-410m"}, "data": {"source": "x.jsonl"},
                        "stages": [{"loss": "sft"}]}).to_config()
    tiny = specs.parse({"model": {"base": "tiny"}, "data": {"source": "x.jsonl"}, "stages": [{"loss": "sft"}]}).to_config()
    assert "tiny" not in real["model"] and real["model"]["base"] == "EleutherAI/pythia-410m"
    assert tiny["model"]["tiny"]["hidden_size"] == 64


def test_an_artifact_the_database_did_not_take_is_stored_at_the_end(tmp_path):
    """Fault: the server is killed after the run started and before its artifact is stored; it is back
    before the run ends, and the artifact must then be in the record, byte for byte."""
    from datetime import datetime, timezone

    from faultkit import kill_server

    from ldreg.store.server import EmbeddedServer
    from ldreg.tracking import DurableMongoObserver

    server = EmbeddedServer(tmp_path / "server")
    url = server.start().url
    try:
        observer = DurableMongoObserver(url=url, db_name="record", failure_dir=str(tmp_path / "spool"),
                                        serverSelectionTimeoutMS=1000, connectTimeoutMS=1000)
        ex_info = {"name": "x", "base_dir": str(tmp_path), "sources": [], "dependencies": [], "repositories": [],
                   "mainfile": None}
        run_id = observer.started_event(ex_info, "main", {}, datetime.now(timezone.utc), {}, {}, None)
        spec = tmp_path / "spec.yaml"
        spec.write_bytes(b"# as written\nname: x\n")
        kill_server(server)
        observer.artifact_event("spec/spec.yaml", str(spec), content_type="text/yaml")  # must not raise
        spec.unlink()  # the artifact does not depend on the file surviving the run
        assert server.start().url == url
        observer.completed_event(stop_time=datetime.now(timezone.utc), result={})
        run = ExperimentLoader(mongo_uri=url, db_name="record").find_by_id(run_id)
        assert run.status == "COMPLETED" and run.artifacts["spec/spec.yaml"].content == b"# as written\nname: x\n"
        assert "artifacts_not_saved" not in run.info
    finally:
        server.stop()
