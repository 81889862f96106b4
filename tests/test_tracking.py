"""Sacred's observer, made durable: metrics logged during an outage wait and are written once."""

import pytest
from pymongo.errors import AutoReconnect

from ldreg.tracking import DurableMongoObserver, MongoObserver


def _metrics(steps):
    return {"loss": {"steps": steps, "values": [float(s) for s in steps], "timestamps": [0] * len(steps)},
            "lr": {"steps": steps, "values": [0.1] * len(steps), "timestamps": [0] * len(steps)}}


def test_metrics_wait_out_an_outage_and_are_written_once(db, monkeypatch, tmp_path):
    observer = DurableMongoObserver(client=db.client, db_name=db.name, failure_dir=str(tmp_path))
    observer.run_entry = {"_id": 5, "info": {}}
    real = MongoObserver.log_metrics
    down = {"on": True}

    def flaky(self, metrics_by_name, info):
        if down["on"] and "lr" in metrics_by_name:  # "loss" gets written, then the server goes away
            raise AutoReconnect("connection refused")
        return real(self, metrics_by_name, info)

    monkeypatch.setattr(MongoObserver, "log_metrics", flaky)
    observer.log_metrics(_metrics([1, 2]), {})
    assert set(observer.pending) == {"lr"}
    observer.log_metrics(_metrics([3]), {})  # still down: lr waits with steps 1-3
    assert observer.pending["lr"]["steps"] == [1, 2, 3]
    down["on"] = False
    observer.log_metrics(_metrics([4]), {})
    assert observer.pending == {}
    for name in ("loss", "lr"):
        assert db.metrics.find_one({"run_id": 5, "name": name})["steps"] == [1, 2, 3, 4]


def test_metrics_still_pending_at_the_end_are_saved_to_disk(db, monkeypatch, tmp_path):
    observer = DurableMongoObserver(client=db.client, db_name=db.name, failure_dir=str(tmp_path))
    observer.run_entry = {"_id": 6, "info": {}}
    monkeypatch.setattr(MongoObserver, "log_metrics", lambda self, m, info: (_ for _ in ()).throw(AutoReconnect("down")))
    monkeypatch.setattr(MongoObserver, "completed_event", lambda self, stop_time, result: None)
    observer.log_metrics(_metrics([1]), {})
    observer.completed_event(stop_time=None, result=None)
    saved = (tmp_path / "metrics-run-6.json").read_text()
    assert '"loss"' in saved and '"lr"' in saved
