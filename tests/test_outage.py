"""A database outage in the middle of a real training run loses nothing and duplicates nothing.

The real server is SIGKILLed while the run trains, stays down across several Sacred heartbeats
(set short with LDREG_HEARTBEAT_S instead of sleeping through Sacred's 10 s), and is restarted on
the same data directory; the run goes on, and at the end every observation and every metric step
is stored exactly once, as in a run that had no outage.
"""

import time

import pytest

from faultkit import SMOKE, FaultySFT, assert_metrics_once, assert_same_observations, kill_server
from ldreg import spec as specs
from ldreg.registry import load_plugins
from ldreg.runner import run_experiment


@pytest.mark.slow
def test_server_killed_mid_run_loses_nothing(tmp_path, monkeypatch):
    from ldreg.store.connection import open_client
    from ldreg.store.server import EmbeddedServer

    server = EmbeddedServer(tmp_path / "home")
    info = server.start()
    monkeypatch.setenv("LDREG_MONGO_URL", info.url)
    monkeypatch.setenv("LDREG_DB", "outage")
    monkeypatch.setenv("LDREG_HEARTBEAT_S", "0.3")
    overrides = ["stages.0.loss=faulty_sft", "stages.0.epochs=2", "probing.every=4", "checkpoint_every=0"]

    def outage():
        kill_server(server)
        time.sleep(1.0)  # > 3 heartbeats: metrics logged meanwhile must wait, not vanish

    try:
        calm = load_plugins([FaultySFT()])
        baseline = run_experiment(specs.load(SMOKE, overrides + ["name=calm"], calm), progress=False, plugins=calm)
        stormy = load_plugins([FaultySFT({3: outage, 5: server.start})])
        hit = run_experiment(specs.load(SMOKE, overrides + ["name=outage"], stormy), progress=False, plugins=stormy)
        db = open_client(info.url)["outage"]
        assert db.runs.find_one({"_id": hit.run_id})["status"] == "COMPLETED"
        assert_same_observations(db, baseline.run_id, db, hit.run_id)
        assert_metrics_once(db, hit.run_id, hit.result["steps"], names=("loss", "grad_norm"))
    finally:
        server.stop()
