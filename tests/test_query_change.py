"""Paired changes since a stage's start, and the margin, from buckets in the real server.

Every number below is worked out by hand from the buckets inserted here. Example ids are
stored in a different order at different steps, so only pairing by id gives these numbers.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

from ldreg.errors import SpecError
from ldreg.observations import Observation
from ldreg.query.frame import curves_frame
from ldreg.query.pipeline import Aggregation, Pick
from ldreg.query.select import select_runs
from ldreg.query.spec import parse
from ldreg.store.documents import bucket_from_observation

NAN = float("nan")
# (stage_index, step, examples seen, {type: (example ids, values)})
PROBES = [
    (0, 0, 0, {"chosen": ([0, 1, 2, 3], [10.0, 20.0, 30.0, NAN]), "rejected": ([0, 1, 2, 3], [5.0, 5.0, 5.0, 5.0])}),
    (0, 5, 40, {"chosen": ([3, 2, 1, 0], [7.0, 33.0, 18.0, 11.0]), "rejected": ([0, 1, 2, 3], [4.0, 6.0, 1.0, 5.0])}),
    (1, 5, 40, {"chosen": ([0, 1, 2, 3], [11.0, 18.0, 33.0, 7.0]), "rejected": ([0, 1, 2, 3], [4.0, 6.0, 1.0, 5.0])}),
    (1, 9, 72, {"chosen": ([0, 1, 2, 3], [9.0, 18.0, 30.0, 8.0]), "rejected": ([3, 2, 1, 0], [1.0, 0.0, 2.0, 3.0])}),
]


def bucket(run_id, stage_index, step, seen, rtype, ids, values):
    obs = Observation(kind="probe", step=step, examples_seen=seen, stage=f"{stage_index}-{'sft' if stage_index == 0 else 'dpo'}",
                      stage_index=stage_index, probe_set="train", response_type=rtype, example_ids=ids,
                      values={"logp_sum": values, "argmax_logp": [2 * v for v in values]})
    return bucket_from_observation(run_id, obs)


def insert_run(db, run_id=7, labels=None, skip=()):
    start = dt.datetime(2025, 1, 1, 12, run_id)
    db.runs.insert_one({"_id": run_id, "experiment": {"name": "sft-dpo"}, "status": "COMPLETED", "start_time": start,
                        "meta": {"tags": []}, "info": {"response_labels": labels} if labels else {},
                        "config": {"seed": 0, "stages": [{"loss": "sft"}, {"loss": "dpo"}]}})
    docs = [bucket(run_id, s, step, seen, t, ids, vals) for s, step, seen, by in PROBES for t, (ids, vals) in by.items()
            if (s, step) not in skip]
    db.observations.insert_many(docs)


def row(frame, **where):
    mask = np.ones(len(frame), bool)
    for key, value in where.items():
        mask &= frame[key].to_numpy() == value
    assert mask.sum() == 1, frame[mask]
    return frame[mask].iloc[0]


def test_change_since_stage_start_pairs_examples_by_id(db):
    insert_run(db)
    runs = select_runs(db, ids=[7])
    frame = curves_frame(db, runs, [Pick(response_types=["chosen"])], Aggregation(change="stage_start"))
    start = row(frame, stage_index=0, step=0)
    assert (start["mean"], start["n"]) == (0.0, 3)  # example 3 is NaN at the start: left out
    sft = row(frame, stage_index=0, step=5)  # changes +1, -2, +3 (example 3 has no start)
    assert (sft["n"], sft["mean"], sft["median"]) == (3, pytest.approx(2 / 3), pytest.approx(1.0))
    assert sft["std"] == pytest.approx(np.std([1, -2, 3], ddof=1))
    half = 4.302652729749464 * sft["std"] / math.sqrt(3)  # t_{0.975, 2}: the paired interval
    assert sft["ci_high"] == pytest.approx(2 / 3 + half) and sft["change"] == "stage_start"
    dpo = row(frame, stage_index=1, step=9)  # from the DPO stage's own start: -2, 0, -3, +1
    assert (dpo["n"], dpo["mean"], dpo["median"]) == (4, pytest.approx(-1.0), pytest.approx(-1.0))
    assert dpo["std"] == pytest.approx(np.std([-2, 0, -3, 1], ddof=1))
    level = curves_frame(db, runs, [Pick(response_types=["chosen"])])  # the level is still there
    assert row(level, stage_index=1, step=9)["mean"] == pytest.approx(16.25) and level["change"].isna().all()


def test_margin_and_its_change(db):
    insert_run(db, labels={"chosen": "y+", "rejected": "y-"})
    runs = select_runs(db, ids=[7])
    margin = Pick(response_types=["chosen"], minus="rejected")
    level = curves_frame(db, runs, [margin])
    assert row(level, stage_index=0, step=0)["mean"] == pytest.approx(15.0)  # 5, 15, 25
    assert row(level, stage_index=1, step=9)["mean"] == pytest.approx((6 + 16 + 30 + 7) / 4)
    change = curves_frame(db, runs, [margin], Aggregation(change="stage_start"))
    sft = row(change, stage_index=0, step=5)  # margins 7, 12, 32 against 5, 15, 25
    assert (sft["n"], sft["mean"], sft["std"]) == (3, pytest.approx(2.0), pytest.approx(5.0))
    dpo = row(change, stage_index=1, step=9)  # margins 6, 16, 30, 7 against 7, 12, 32, 2
    assert dpo["mean"] == pytest.approx((-1 + 4 - 2 + 5) / 4)
    assert set(change["series"]) == {"y+ − y-"} and set(change["minus"]) == {"rejected"}


def test_series_use_the_labels_the_run_recorded(db):
    insert_run(db, labels={"chosen": "y+", "rejected": "y-"})
    frame = curves_frame(db, select_runs(db, ids=[7]), [Pick(response_types=["chosen", "rejected"]),
                                                         Pick(quantity="argmax_logp", response_types=["chosen"])])
    assert set(frame["series"]) == {"y+", "y-", "argmax confidence (on y+)"}
    assert set(frame["response_label"]) == {"y+", "y-"}


def test_a_stage_start_written_late_is_picked_up(db):
    """Late: its bucket waited in a spool (a completed run's buckets are otherwise final)."""
    insert_run(db, skip={(1, 5)})
    db.runs.update_one({"_id": 7}, {"$set": {"result": {"observations_spooled": 3}}})
    runs = select_runs(db, ids=[7])
    agg = Aggregation(change="stage_start")
    early = curves_frame(db, runs, [Pick(response_types=["chosen"])], agg)
    assert row(early, stage_index=1, step=9)["mean"] == 0.0  # its own start, for now
    db.observations.insert_many([bucket(7, 1, 5, 40, t, ids, vals) for t, (ids, vals) in PROBES[2][3].items()])
    late = curves_frame(db, runs, [Pick(response_types=["chosen"])], agg)
    assert row(late, stage_index=1, step=9)["mean"] == pytest.approx(-1.0)


def test_seed_pooling_applies_to_changes(db):
    insert_run(db, 7)
    insert_run(db, 8)
    db.runs.update_one({"_id": 8}, {"$set": {"config.seed": 1}})
    db.observations.update_many({"run_id": 8, "stage_index": 1, "step": 9, "response_type": "chosen"},
                                {"$set": {"values.logp_sum": [14.0, 18.0, 30.0, 8.0]}})  # change +3 on example 0
    frame = curves_frame(db, select_runs(db, ids=[7, 8]), [Pick(response_types=["chosen"])],
                         Aggregation(change="stage_start", seeds=True))
    pooled = row(frame, stage_index=1, step=9)  # per-run mean changes -1 and +0.25
    assert (pooled["n"], pooled["mean"]) == (2, pytest.approx(-0.375))


def test_query_specs_name_a_bad_change_or_minus():
    with pytest.raises(SpecError, match=r"aggregate.change: must be one of stage_start"):
        parse({"name": "q", "aggregate": {"change": "stage_begin"}})
    with pytest.raises(SpecError, match=r"observe\[0\].minus: 'rejected' minus itself"):
        parse({"name": "q", "observe": [{"response_types": ["rejected"], "minus": "rejected"}]})


def test_a_minus_type_nobody_recorded_is_named(db):
    from ldreg.query.errors import QueryError

    insert_run(db)
    with pytest.raises(QueryError, match=r"minus: .*'rejectd'.*did you mean 'rejected'"):
        curves_frame(db, select_runs(db, ids=[7]), [Pick(response_types=["chosen"], minus="rejectd")])
