"""The one-fetch path (ldreg.query.rows) gives what the server's pipelines give on the same
summaries: the same curve rows, number for number, the same anchors and the same record of types."""

from __future__ import annotations

import pytest
from test_query_data import populate_all

from ldreg.query import rows as summary_rows
from ldreg.query import writeback
from ldreg.query.frame import _anchors, curves_frame, ensure_summaries
from ldreg.query.paired import ensure_derived
from ldreg.query.pipeline import STATS, Aggregation, Pick, curve_pipeline, derived_key, recorded, shift_x
from ldreg.query.select import select_runs
from ldreg.store.tables import read_table, table_id

PICKS = [Pick(), Pick(response_types=["chosen"]), Pick(response_types=["rejected"], stages=[1]),
         Pick(stages=["0-sft"], steps=[1, 8]), Pick(quantity="argmax_logp", probe_set=None),
         Pick(response_types=["chosen"], minus="rejected"),
         Pick(kind="influence", quantity="delta_logp", update_types=["rejected"], probe_set=None)]
ALIGNS = [None, "dpo", "stage", "last", 1]


@pytest.fixture
def summarised(db):
    populate_all(db)
    runs = select_runs(db, ids=[1, 2, 3])
    for pick in PICKS:
        ensure_summaries(db, runs, pick.kind, pick.quantity)
        ensure_derived(db, runs, pick.kind, pick.quantity, pick.minus, "stage_start")
    return db, runs


def _key(row):
    return tuple(str(row.get(f)) for f in ("run_id", "response_type", "update_type", "probe_set", "stage_index", "step"))


@pytest.mark.parametrize("change", [None, "stage_start"])
def test_curve_rows_anchors_and_record_equal_the_servers(summarised, change):
    db, runs = summarised
    ids = [r.id for r in runs]
    checked = 0
    for pick in PICKS:
        plain = summary_rows.fetch(db, ids, pick.kind, pick.quantity)
        have = summary_rows.recorded_in(plain, recorded(db, ids, pick.kind))
        assert vars(have) == vars(recorded(db, ids, pick.kind, pick.quantity))
        key = derived_key(pick.minus, change)
        source = plain if key is None else summary_rows.fetch(db, ids, pick.kind, pick.quantity, key)
        for align in ALIGNS:
            anchors = _anchors(db, runs, pick, align, plain) if align is not None else None
            if align is not None:
                assert anchors == _anchors(db, runs, pick, align)
            ours = summary_rows.curve_rows(source, pick)
            theirs = list(db[STATS].aggregate(curve_pipeline(ids, pick, Aggregation(align=align, change=change),
                                                             anchors=anchors)))
            if anchors is not None:
                shift_x(ours, anchors)
                shift_x(theirs, anchors)
            assert sorted(ours, key=_key) == sorted(theirs, key=_key)  # == on floats: bit for bit
            checked += bool(theirs)
    assert checked >= len(PICKS) * len(ALIGNS) - len(ALIGNS)  # (influence has no stage 'dpo' rows to miss)


def test_a_first_query_uses_the_copies_it_wrote_and_a_later_one_reads_them_back(db):
    """Sealed runs' copies are stored as one table a run, not a row a bucket, until a server
    pipeline (seed pooling) asks for rows: then they are made from the tables, once."""
    from ldreg.store.collections import STATS_TABLES

    populate_all(db)
    runs = select_runs(db, ids=[1, 2, 3])
    pick = [Pick(response_types=["chosen", "rejected"])]
    first = curves_frame(db, runs, pick, Aggregation(align="dpo"))
    writeback.wait()  # the copies are stored on a thread
    assert db[STATS].count_documents({"quantity": "logp_sum"}) == 0
    assert sum(t["rows"] for t in db[STATS_TABLES].find()) == 36  # 3 runs x 6 probes x 2 types, copied
    later = curves_frame(db, runs, pick, Aggregation(align="dpo"))
    assert len(first) == 36 and first.equals(later)
    pooled = curves_frame(db, runs, pick, Aggregation(align="dpo", seeds=True))
    assert db[STATS].count_documents({"quantity": "logp_sum"}) == 36 and len(pooled) > 0
    assert curves_frame(db, runs, pick, Aggregation(align="dpo")).equals(first)


@pytest.mark.parametrize("sealed", [True, False])
def test_a_failed_deferred_copy_fails_loudly_and_the_next_query_copies_again(db, sealed):
    """The copies a first query stores on a thread while it draws: when the server refuses them
    (a real validator on the collection), waiting raises, no run is marked as summarised, and the
    next query, the fault gone, copies them again and draws every point."""
    from pymongo.errors import BulkWriteError, WriteError

    from ldreg.store.collections import STATS_SUMMARISED, STATS_TABLES

    populate_all(db)
    if not sealed:  # still running: its copies are stored a row a bucket, not as one table
        db.runs.update_many({}, {"$set": {"status": "RUNNING"}})
    runs = select_runs(db, ids=[1, 2, 3])
    pick = [Pick(response_types=["chosen", "rejected"])]
    refusing = STATS_TABLES if sealed else STATS
    db.create_collection(refusing, validator={"_id": {"$type": "int"}})  # every write here is refused
    frame = curves_frame(db, runs, pick)  # drawn from the copies in hand
    assert len(frame) == 36
    with pytest.raises((BulkWriteError, WriteError)):
        writeback.wait()
    assert db[STATS_SUMMARISED].count_documents({}) == 0 and db[refusing].count_documents({}) == 0
    db.command("collMod", refusing, validator={})
    again = curves_frame(db, runs, pick)
    writeback.wait()
    assert again.equals(frame)
    assert db[refusing].count_documents({}) == (3 if sealed else 36)  # 3 runs x 6 probes x 2 types
    assert db[STATS_SUMMARISED].count_documents({}) == 3


def test_a_sealed_runs_summaries_come_back_from_its_table_as_stored(db):
    """A completed run's plain and derived summaries are kept as one table each, read back as the
    same rows (fields a row lacks stay absent); the first query writes them."""
    from ldreg.store.collections import STATS_SUMMARISED, STATS_TABLES

    populate_all(db)
    runs = select_runs(db, ids=[1, 2, 3])
    picks = [Pick(response_types=["chosen", "rejected"]), Pick(response_types=["chosen"], minus="rejected")]
    first = curves_frame(db, runs, picks, Aggregation(align="dpo", change="stage_start"))
    writeback.wait()
    assert db[STATS_TABLES].count_documents({}) == 3 * 3  # plain, change, and minus with change: per run
    ensure_summaries(db, runs, "probe", "logp_sum")  # the plain rows too, to compare
    for run in runs:
        mark = db[STATS_SUMMARISED].find_one({"_id": f"{run.id}|probe|logp_sum"})
        stamp = summary_rows.stamp(mark)
        for derived in (None, derived_key(None, "stage_start"), derived_key("rejected", "stage_start")):
            table = read_table(db, run.id, "probe", "logp_sum", derived, stamp)
            by_row = summary_rows.fetch(db, [run.id], "probe", "logp_sum", derived)  # row by row
            assert sorted(table, key=_key) == sorted(by_row, key=_key)  # (copied rows keep the buckets' order)
            assert table and all("update_type" in row for row in table)
    assert curves_frame(db, runs, picks, Aggregation(align="dpo", change="stage_start")).equals(first)


def test_a_table_is_read_only_while_its_run_is_unchanged(db):
    """Proof that the table is what a later query reads: a number changed in it shows in the frame;
    once the run is resumed (a new stop time), its rows are read again and the table rebuilt."""
    from ldreg.store.collections import STATS_TABLES

    populate_all(db)
    runs = select_runs(db, ids=[1])
    pick = [Pick(response_types=["chosen"])]
    first = curves_frame(db, runs, pick)
    writeback.wait()
    key = table_id(1, "probe", "logp_sum", None)
    means = db[STATS_TABLES].find_one({"_id": key})["columns"]["mean"]
    db[STATS_TABLES].update_one({"_id": key}, {"$set": {"columns.mean": [m + 1000 for m in means]}})
    assert (curves_frame(db, runs, pick)["mean"] == first["mean"] + 1000).all()
    stop = db.runs.find_one({"_id": 1})["stop_time"]
    db.runs.update_one({"_id": 1}, {"$set": {"stop_time": stop.replace(hour=stop.hour + 1)}})  # resumed, completed
    again = curves_frame(db, select_runs(db, ids=[1]), pick)
    writeback.wait()
    assert again.equals(first)
    assert db[STATS_TABLES].find_one({"_id": key})["stamp"]["stop_time"] == stop.replace(hour=stop.hour + 1)
