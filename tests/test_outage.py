"""A database outage in the middle of a real training run loses nothing and duplicates nothing.

The real server is SIGKILLed while the run trains, stays down across a Sacred heartbeat, and is
restarted on the same data directory; the run goes on, and at the end every observation and every
metric step is stored exactly once, as in a run that had no outage.
"""

import os
import signal
import time
from pathlib import Path

import pytest

from ldreg import spec as specs
from ldreg.hookspecs import hookimpl
from ldreg.losses import LossDefinition
from ldreg.registry import load_plugins
from ldreg.runner import run_experiment

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"


class OutageSFT:
    """SFT whose 3rd call kills the server and whose 5th, 11 s later, starts it again."""

    def __init__(self, server=None):
        self.server, self.calls = server, 0

    @hookimpl
    def ldreg_register_losses(self, registry):
        sft = load_plugins().losses.get("sft")

        def compute(logps):
            self.calls += 1
            if self.server is not None and self.calls == 3:
                os.kill(self.server.status().pid, signal.SIGKILL)
                time.sleep(11)  # longer than Sacred's 10 s heartbeat: metrics must wait too
            if self.server is not None and self.calls == 5:
                self.server.start()
            return sft.compute(logps)

        registry.add(LossDefinition(name="outage_sft", compute=compute, description="SFT with an outage"))


def _observations(db, run_id):
    return {(d["kind"], d["stage_index"], d["step"], d["response_type"], d.get("update_type")): d["values"]
            for d in db.observations.find({"run_id": run_id})}


@pytest.mark.slow
def test_server_killed_mid_run_loses_nothing(tmp_path, monkeypatch):
    from ldreg.store.connection import open_client
    from ldreg.store.server import EmbeddedServer

    server = EmbeddedServer(tmp_path / "home")
    info = server.start()
    monkeypatch.setenv("LDREG_MONGO_URL", info.url)
    monkeypatch.setenv("LDREG_DB", "outage")
    overrides = ["stages.0.loss=outage_sft", "stages.0.epochs=2", "probing.every=4", "checkpoint_every=0"]
    try:
        calm = load_plugins([OutageSFT(None)])
        baseline = run_experiment(specs.load(SMOKE, overrides + ["name=calm"], calm), progress=False, plugins=calm)
        stormy = load_plugins([OutageSFT(server)])
        hit = run_experiment(specs.load(SMOKE, overrides + ["name=outage"], stormy), progress=False, plugins=stormy)
        db = open_client(info.url)["outage"]
        assert db.runs.find_one({"_id": hit.run_id})["status"] == "COMPLETED"
        expected, got = _observations(db, baseline.run_id), _observations(db, hit.run_id)
        assert got.keys() == expected.keys()
        for key, values in expected.items():
            for quantity, v in values.items():
                assert got[key][quantity] == pytest.approx(v, rel=1e-5, abs=1e-6), key
        assert db.observations.count_documents({"run_id": hit.run_id}) == len(expected)
        steps = list(range(1, hit.result["steps"] + 1))
        for name in ("loss", "grad_norm"):
            assert db.metrics.find_one({"run_id": hit.run_id, "name": name})["steps"] == steps
    finally:
        server.stop()
