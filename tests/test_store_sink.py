"""StoreSink and the spool: every observation stored exactly once, through outages and kills."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid

import pytest
from pymongo import MongoClient, WriteConcern, monitoring

from ldreg.observations import Observation
from ldreg.store.connection import open_client
from ldreg.store.documents import COLLECTION, bucket_from_observation
from ldreg.store.sink import StoreSink, flush_spools
from ldreg.store.spool import Spool


def _obs(i: int, n: int = 20) -> Observation:
    return Observation(
        kind="probe", step=i // 3, examples_seen=i * 8, stage="sft", stage_index=0, probe_set="train",
        response_type=("chosen", "rejected", "random")[i % 3], example_ids=list(range(n)),
        values={"logp_sum": [i + j / 100 for j in range(n)], "prob": [1.0 / (1 + i + j) for j in range(n)]},
    )


def _assert_stored_exactly(db, run_id: int, observations: list[Observation]) -> None:
    stored = {d["_id"]: d for d in db[COLLECTION].find({"run_id": run_id})}
    assert len(stored) == len(observations)
    for obs in observations:
        doc = stored[bucket_from_observation(run_id, obs)["_id"]]
        assert doc["values"] == obs.values and doc["example_ids"] == obs.example_ids


def _wait_for(condition, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_sink_writes_every_observation(db, tmp_path):
    observations = [_obs(i) for i in range(300)]
    with StoreSink(1, db, spool_path=tmp_path / "run-1.jsonl", batch_size=16, queue_size=8) as sink:
        for obs in observations:
            sink.emit(obs)
    assert sink.counts.stored == 300 and sink.counts.left == 0 and sink.spooled == 0
    _assert_stored_exactly(db, 1, observations)
    assert not (tmp_path / "run-1.jsonl").exists()


def test_emitting_the_same_observation_twice_stores_it_once(db, tmp_path):
    sink = StoreSink(2, db, spool_path=tmp_path / "s.jsonl")
    sink.emit(_obs(0))
    sink.close()
    sink = StoreSink(2, db, spool_path=tmp_path / "s.jsonl")
    sink.emit(_obs(0))
    counts = sink.close()
    assert counts.duplicates == 1 and counts.stored == 0
    _assert_stored_exactly(db, 2, [_obs(0)])


def test_emit_after_close_is_an_error(db, tmp_path):
    sink = StoreSink(3, db, spool_path=tmp_path / "s.jsonl")
    sink.close()
    with pytest.raises(RuntimeError, match="after close"):
        sink.emit(_obs(0))


def test_unreachable_database_spools_and_flush_stores_it(db, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_url = f"mongodb://127.0.0.1:{s.getsockname()[1]}"
    dead = open_client(dead_url, timeout_s=0.2)
    spool = tmp_path / "run-4.jsonl"
    observations = [_obs(i) for i in range(40)]
    sink = StoreSink(4, dead[db.name], spool_path=spool, batch_size=8, retry_interval_s=0.1, final_wait_s=0.3)
    for obs in observations:
        sink.emit(obs)
    counts = sink.close()
    assert counts.stored == 0 and counts.left == 40 == sink.spooled
    assert Spool(spool).pending() == 40
    results = flush_spools(db, tmp_path)
    assert results["run-4.jsonl"].stored == 40 and not spool.exists()
    _assert_stored_exactly(db, 4, observations)


def test_replay_counts_duplicates_and_moves_torn_lines_aside(db, tmp_path):
    observations = [_obs(i) for i in range(10)]
    docs = [bucket_from_observation(5, o) for o in observations]
    db[COLLECTION].insert_many(docs[:4])  # these landed before the server died
    spool = Spool(tmp_path / "run-5.jsonl")
    spool.append(docs)
    with open(spool.path, "a") as f:
        f.write('{"_id": "half a line')  # the process died mid-write
    counts = flush_spools(db, tmp_path)["run-5.jsonl"]
    assert (counts.stored, counts.duplicates, counts.rejected, counts.left) == (6, 4, 1, 0)
    assert not spool.path.exists() and spool.rejected_path.read_text().startswith('{"_id": "half')
    _assert_stored_exactly(db, 5, observations)


def test_replay_interrupted_by_an_outage_keeps_the_unstored_lines(db, tmp_path):
    spool = Spool(tmp_path / "run-6.jsonl")
    docs = [bucket_from_observation(6, _obs(i)) for i in range(10)]
    spool.append(docs)

    class DiesAfterOneBatch:
        def __init__(self, collection):
            self.collection, self.calls = collection, 0

        def insert_many(self, batch, ordered):
            self.calls += 1
            if self.calls > 1:
                from pymongo.errors import AutoReconnect

                raise AutoReconnect("server went away")
            return self.collection.insert_many(batch, ordered=ordered)

    from pymongo.errors import AutoReconnect

    with pytest.raises(AutoReconnect):
        spool.replay(DiesAfterOneBatch(db[COLLECTION]), batch_size=4)
    assert spool.pending() == 6, "the first batch of 4 is stored and gone from the spool"
    assert spool.replay(db[COLLECTION]).stored == 6
    assert db[COLLECTION].count_documents({"run_id": 6}) == 10


def test_killing_the_server_mid_stream_loses_nothing_and_duplicates_nothing(tmp_path):
    """SIGKILL the real server while a sink writes, restart it on the same data directory."""
    from ldreg.store.server import EmbeddedServer

    server = EmbeddedServer(tmp_path / "home")
    info = server.start()
    client = open_client(info.url, timeout_s=0.5)
    db = client["killtest"]
    observations = [_obs(i, n=100) for i in range(1500)]
    sink = StoreSink(7, db, spool_path=tmp_path / "run-7.jsonl", batch_size=32, queue_size=64,
                     retry_interval_s=0.2)
    try:
        for obs in observations[:500]:
            sink.emit(obs)
        _wait_for(lambda: sink.counts.stored > 0)
        os.kill(info.pid, signal.SIGKILL)
        for obs in observations[500:1000]:
            sink.emit(obs)
        _wait_for(lambda: sink.spooled > 0)
        restarted = server.start()
        assert restarted.port == info.port and restarted.pid != info.pid
        for obs in observations[1000:]:
            sink.emit(obs)
        counts = sink.close()
        assert counts.left == 0 and sink.spooled > 0
        assert counts.stored + counts.duplicates >= 1500
        check = db.with_options(write_concern=WriteConcern(j=True))
        _assert_stored_exactly(check, 7, observations)
    finally:
        client.close()
        server.stop()


class _BatchRecordingSink(StoreSink):
    """A real StoreSink that also notes the size of each batch it inserts."""

    def __init__(self, *args, **kwargs):
        self.batches: list[int] = []
        super().__init__(*args, **kwargs)

    def _insert(self, batch):
        self.batches.append(len(batch))
        super()._insert(batch)


def test_the_writer_takes_what_is_ready_never_more_than_a_batch(db, tmp_path):
    observations = [_obs(i) for i in range(120)]
    with _BatchRecordingSink(8, db, spool_path=tmp_path / "s.jsonl", batch_size=16, queue_size=8) as sink:
        for obs in observations:
            sink.emit(obs)
    assert sum(sink.batches) == 120 and max(sink.batches) <= 16
    assert sink.counts.stored == 120 and sink.thread_cpu_s > 0
    _assert_stored_exactly(db, 8, observations)


def test_the_indexes_exist_before_the_first_observation(db, tmp_path):
    """The writer creates them as it starts, while the first observations are being converted."""
    sink = StoreSink(9, db, spool_path=tmp_path / "s.jsonl")
    try:
        _wait_for(lambda: len(db[COLLECTION].index_information()) >= 3)  # _id and the two bucket indexes
        assert db[COLLECTION].count_documents({}) == 0
    finally:
        sink.close()


class _Commands(monitoring.CommandListener):
    """The names of the commands a client sends, in order."""

    def __init__(self):
        self.names: list[str] = []

    def started(self, event):
        self.names.append(event.command_name)

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def test_a_sink_costs_one_index_command_and_a_clean_close_no_round_trip(mongo_server, tmp_path):
    """Fixed costs of every run, which weigh most in a small one: both indexes in one createIndexes,
    and no ping or replay at close when nothing waits in memory or in the spool. The indexes are all there."""
    listener = _Commands()
    client = MongoClient(mongo_server.url, event_listeners=[listener])
    db = client[f"test_fixed_{uuid.uuid4().hex[:12]}"]
    try:
        observations = [_obs(i) for i in range(40)]
        with StoreSink(10, db, spool_path=tmp_path / "s.jsonl", batch_size=16) as sink:
            for obs in observations:
                sink.emit(obs)
        assert listener.names.count("createIndexes") == 1
        assert "insert" in listener.names and "ping" not in listener.names
        assert len(db[COLLECTION].index_information()) == 3  # _id and the two bucket indexes
        _assert_stored_exactly(db, 10, observations)
    finally:
        client.drop_database(db.name)
        client.close()


def test_a_burst_smaller_than_a_batch_is_stored_without_close(db, tmp_path):
    """The writer waits for ``min_batch`` documents only while more are coming: once the queue runs
    dry a smaller burst must go too, or settle (the checkpoint's guard) would wait for the next one."""
    sink = StoreSink(11, db, spool_path=tmp_path / "s.jsonl")
    try:
        observations = [_obs(i) for i in range(sink.min_batch - 3)]
        for obs in observations:
            sink.emit(obs)
        assert sink.settle(timeout_s=30)
        _assert_stored_exactly(db, 11, observations)
        more = [_obs(i) for i in range(100, 100 + 2 * sink.min_batch + 5)]
        for obs in more:
            sink.emit(obs)
        assert sink.settle(timeout_s=30)
        assert db[COLLECTION].count_documents({"run_id": 11}) == len(observations) + len(more)
    finally:
        counts = sink.close()
    assert counts.stored == len(observations) + len(more) and counts.left == 0 and counts.lost == 0


def test_spooled_buckets_keep_their_types_through_the_raw_documents(db, tmp_path):
    """Documents travel as encoded BSON; through the spool they must come back field for field."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_url = f"mongodb://127.0.0.1:{s.getsockname()[1]}"
    observations = [_obs(i) for i in range(6)]
    sink = StoreSink(10, open_client(dead_url, timeout_s=0.2)[db.name], spool_path=tmp_path / "run-10.jsonl",
                     retry_interval_s=0.1, final_wait_s=0.2)
    for obs in observations:
        sink.emit(obs)
    assert sink.close().left == 6
    flush_spools(db, tmp_path)
    direct = StoreSink(11, db, spool_path=tmp_path / "run-11.jsonl")
    for obs in observations:
        direct.emit(obs)
    direct.close()
    by_run = {run: sorted(db[COLLECTION].find({"run_id": run}, {"_id": 0, "run_id": 0}),
                          key=lambda d: (d["step"], d["response_type"])) for run in (10, 11)}
    for a, b in zip(by_run[10], by_run[11], strict=True):
        a_created, b_created = a.pop("created"), b.pop("created")
        assert a == b and type(a_created) is type(b_created)


@pytest.mark.slow
def test_the_benchmarks_dropping_side_runs_the_same_run_and_stores_no_observation(mongo_url, mongo_client, monkeypatch):
    """bench_store (d) times a real run with a sink that stores nothing: the run itself must be whole
    (same observations emitted, Sacred's record COMPLETED) and the store must hold none of them."""
    from pathlib import Path

    from ldreg import spec as specs
    from ldreg.observations import ListSink
    from ldreg.runner import run_experiment

    monkeypatch.setenv("LDREG_DB", "dropping")
    smoke = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"
    spec = specs.load(smoke, ["name=dropping", "probing.entk=null", "stages.0.epochs=1"])
    made: list[ListSink] = []
    run = run_experiment(spec, progress=False, sink_factory=lambda run_id: made.append(ListSink()) or made[-1])
    db = mongo_client["dropping"]
    assert len(made) == 1 and run.result["observations"] == len(made[0].observations) > 0
    assert db[COLLECTION].count_documents({"run_id": run.run_id}) == 0
    assert db["runs"].find_one({"_id": run.run_id})["status"] == "COMPLETED"
