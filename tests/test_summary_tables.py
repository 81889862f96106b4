"""A run's summaries as one table (ldreg.store.tables): written by the sink at the end of a run that
stored everything itself, read by a first query instead of every bucket, and ignored when it may
not cover the run (another run's, a resumed run's, a run not sealed)."""

from __future__ import annotations

import pytest
from test_query_summaries import _buckets

from ldreg.query import writeback
from ldreg.query.frame import curves_frame
from ldreg.query.pipeline import Aggregation, Pick
from ldreg.query.select import select_runs
from ldreg.store.collections import OBSERVATIONS, STATS, STATS_SUMMARISED, STATS_TABLES
from ldreg.store.tables import RunTables, read_table, sink_stamp, summary_row, table_id, write_table
from test_query_data import run_doc

PICK = [Pick(response_types=["chosen", "rejected"])]
MARKER = -12345.0  # a mean no bucket has: where a frame shows it, the table was read


def _run(db, run_id: int, sink_table: bool = True, **changes) -> list[dict]:
    doc = run_doc(run_id, "tables", 0, "dpo", minute=run_id)
    doc.update(changes)
    db.runs.insert_one(doc)
    buckets = _buckets(run_id)
    db[OBSERVATIONS].insert_many(buckets)
    if sink_table:
        tables = RunTables()
        for bucket in buckets:
            tables.add(bucket)
        assert tables.write(db, run_id) == 1
    return buckets


def test_a_table_reads_back_the_rows_it_was_given_with_absent_fields_absent(db):
    rows = [{"a": 1, "b": None}, {"a": 2}, {"b": 3.5}]
    write_table(db, 9, "probe", "logp_sum", None, {"s": 1}, rows)
    assert read_table(db, 9, "probe", "logp_sum", None, {"s": 1}) == rows
    assert read_table(db, 9, "probe", "logp_sum", None, {"s": 2}) is None  # another stamp: not this table
    assert read_table(db, 9, "probe", "other", None, {"s": 1}) is None


def test_the_sink_table_holds_every_buckets_summary(db):
    buckets = _run(db, 1)
    doc = db[STATS_TABLES].find_one({"_id": table_id(1, "probe", "logp_sum")})
    assert doc["rows"] == len(buckets) == 60
    assert doc["stamp"] == sink_stamp(db.runs.find_one({"_id": 1})["start_time"], 60)
    assert sorted(doc["columns"]["bucket"]) == sorted(b["_id"] for b in buckets)


def test_a_first_query_reads_the_sink_table_not_the_buckets(db):
    """Proof by tampering: a number changed in the sink's table shows in the first query, so the
    buckets were not read; the table is then the query's (stamped as its mark), and pooling seeds
    makes the per-bucket rows from it."""
    _run(db, 1)
    reference = _run(db, 2, sink_table=False)  # the same values, summarised from its buckets
    assert [summary_row(b, "logp_sum")["mean"] for b in reference] == [
        summary_row(b, "logp_sum")["mean"] for b in _buckets(1)]
    key = table_id(1, "probe", "logp_sum")
    db[STATS_TABLES].update_one({"_id": key}, {"$set": {"columns.mean": [MARKER] * 60}})
    frame = curves_frame(db, select_runs(db, ids=[1, 2]), PICK)
    writeback.wait()
    assert (frame[frame.run_id == 1]["mean"] == MARKER).all() and MARKER not in set(frame[frame.run_id == 2]["mean"])
    mark = db[STATS_SUMMARISED].find_one({"_id": "1|probe|logp_sum"})
    assert mark["buckets"] == 60 and mark["sealed"] and mark["rows"] is False
    assert mark["table"] == db[STATS_TABLES].find_one({"_id": key})["stamp"]  # read by the sink's stamp
    assert db[STATS].count_documents({"run_id": 1}) == 0
    later = curves_frame(db, select_runs(db, ids=[1, 2]), PICK)
    assert later.equals(frame)
    curves_frame(db, select_runs(db, ids=[1]), PICK, Aggregation(seeds=True))  # (one run: SecantusDB fails to
    assert db[STATS].count_documents({"run_id": 1, "derived": None}) == 60      # pool two of these ±1e300 values)


@pytest.mark.parametrize("case", ["running", "spooled", "another run's start"])
def test_a_sink_table_that_may_not_cover_the_run_is_not_read(db, case):
    changes = {"running": {"status": "RUNNING"}, "spooled": {"result": {"observations_spooled": 2}},
               "another run's start": {}}[case]
    _run(db, 1, **changes)
    if case == "another run's start":
        db.runs.update_one({"_id": 1}, {"$set": {"start_time": db.runs.find_one({"_id": 1})["start_time"].replace(year=2030)}})
    key = table_id(1, "probe", "logp_sum")
    db[STATS_TABLES].update_one({"_id": key}, {"$set": {"columns.mean": [MARKER] * 60}})  # would show if read
    frame = curves_frame(db, select_runs(db, ids=[1]), PICK)
    writeback.wait()
    assert MARKER not in set(frame["mean"]) and len(frame) == 60


def _sink_run(db, run_id: int, tmp_path, n: int = 30, **sink_options) -> list[dict]:
    from ldreg.store.sink import StoreSink
    from test_store_sink import _obs

    db.runs.insert_one(run_doc(run_id, "sink", 0, "dpo", minute=run_id))
    observations = [_obs(i) for i in range(n)]
    with StoreSink(run_id, db, spool_path=tmp_path / f"{run_id}.jsonl", batch_size=8, **sink_options) as sink:
        for obs in observations:
            sink.emit(obs)
    return list(db[OBSERVATIONS].find({"run_id": run_id}))


def test_a_real_sink_writes_each_quantitys_table_from_the_buckets_it_stored(db, tmp_path):
    stored = _sink_run(db, 3, tmp_path)
    start = db.runs.find_one({"_id": 3})["start_time"]
    for quantity in ("logp_sum", "prob"):
        doc = db[STATS_TABLES].find_one({"_id": table_id(3, "probe", quantity)})
        assert doc["stamp"] == sink_stamp(start, 30)
        rows = read_table(db, 3, "probe", quantity, None, doc["stamp"])
        assert sorted(rows, key=lambda r: r["bucket"]) == sorted((summary_row(b, quantity) for b in stored),
                                                                  key=lambda r: r["bucket"])


def test_no_table_from_a_resumed_runs_sink_or_one_that_did_not_store_everything(db, tmp_path):
    _sink_run(db, 4, tmp_path, summary_tables=False)  # a resumed run's sink
    db.command("collMod", OBSERVATIONS, validator={"step": {"$lt": 5}})  # refuses the later buckets
    _sink_run(db, 5, tmp_path)
    assert db[STATS_TABLES].count_documents({}) == 0
    assert 0 < db[OBSERVATIONS].count_documents({"run_id": 5}) < 30  # (refused ones kept in a .rejected file)


def test_forgetting_a_runs_tables_leaves_the_others(db):
    from ldreg.store.tables import forget_tables

    for run_id in (6, 60):
        write_table(db, run_id, "probe", "logp_sum", None, {"s": 1}, [{"a": 1}])
        write_table(db, run_id, "probe", "logp_sum", "change:stage_start", {"s": 1}, [{"a": 1}])
    assert forget_tables(db, 6) == 2
    assert sorted(d["_id"] for d in db[STATS_TABLES].find()) == ["60|probe|logp_sum|", "60|probe|logp_sum|change:stage_start"]
