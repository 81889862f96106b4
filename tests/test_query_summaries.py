"""Summaries written with each bucket: a first query copies them, and every number equals what the
server's own reduction of the arrays (the full pass used before buckets carried them) gives."""

from __future__ import annotations

import math
import random

import pandas as pd
import pytest

from ldreg.observations import Observation
from ldreg.query.frame import curves_frame, ensure_summaries
from ldreg.query.pipeline import Aggregation, Pick
from ldreg.query.select import select_runs
from ldreg.store.collections import OBSERVATIONS, STATS
from ldreg.store.documents import bucket_from_observation, value_summary
from test_query_data import run_doc

STATISTICS = ["n", "mean", "std", "median"]


def _values(rng: random.Random, k: int) -> list[float]:
    """Edge cases first (empty, one value, two, NaN, ±inf, ties), then random lengths and scales."""
    fixed = [[], [3.5], [1.0, -2.0], [float("nan"), 1.0, 4.0], [float("inf"), -1.0, 2.0, 2.0],
             [float("-inf"), float("nan")], [0.1] * 7, [1e300, 1e300, -1e300]]
    if k < len(fixed):
        return fixed[k]
    return [rng.gauss(-50.0, 10.0 ** rng.randint(-3, 3)) for _ in range(rng.randint(2, 301))]


def _buckets(run_id: int, n: int = 30) -> list[dict]:
    rng = random.Random(7)
    docs = []
    for k in range(n):
        stage_index = int(k >= n // 2)
        for rtype in ("chosen", "rejected"):
            values = _values(rng, k if rtype == "chosen" else k + 100)
            obs = Observation(kind="probe", step=k, examples_seen=4 * k, stage=f"{stage_index}-x", stage_index=stage_index,
                              probe_set="train", response_type=rtype, example_ids=list(range(len(values))),
                              values={"logp_sum": values})
            docs.append(bucket_from_observation(run_id, obs))
    return docs


@pytest.fixture
def two_copies(db):
    """Runs 1 and 2 hold the same values; run 2's buckets lack their summary, as buckets stored
    before summaries were written with them do, so the server reduces their arrays."""
    db.runs.insert_many([run_doc(1, "same", 0, "dpo", minute=1), run_doc(2, "same", 0, "dpo", minute=2)])
    db[OBSERVATIONS].insert_many(_buckets(1))
    legacy = _buckets(2)
    for doc in legacy:
        del doc["summary"]
    db[OBSERVATIONS].insert_many(legacy)
    return db


def test_written_summaries_equal_the_servers_reduction_bit_for_bit(two_copies):
    db = two_copies
    runs = select_runs(db, ids=[1, 2])
    assert ensure_summaries(db, runs, "probe", "logp_sum") == 120
    rows = {}
    for doc in db[STATS].find({"quantity": "logp_sum"}):
        rows.setdefault(doc["run_id"], {})[doc["bucket"].split(",", 1)[1]] = [doc.get(s) for s in STATISTICS]
    assert rows[1].keys() == rows[2].keys() and len(rows[1]) == 60
    for key, copied in rows[1].items():
        reduced = rows[2][key]
        assert [type(v) for v in copied] == [type(v) for v in reduced], key
        assert all(a == b or (a is None and b is None) for a, b in zip(copied, reduced)), (key, copied, reduced)


def test_query_result_is_unchanged(two_copies):
    db = two_copies
    frames = [curves_frame(db, select_runs(db, ids=[r]), [Pick(response_types=["chosen", "rejected"])],
                           Aggregation(align="dpo")) for r in (1, 2)]
    numbers = ["x", "step", "examples_seen", "mean", "median", "std", "ci_low", "ci_high", "n"]
    pd.testing.assert_frame_equal(frames[0][numbers], frames[1][numbers], check_exact=True)


def test_copied_summaries_come_from_the_bucket_not_the_arrays(db):
    """A bucket whose arrays were never reduced is still summarised: the copy reads only `summary`."""
    db.runs.insert_one(run_doc(3, "copy", 0, "dpo"))
    docs = _buckets(3, n=4)
    for doc in docs:
        doc["values"] = {"logp_sum": []}  # if the server reduced the arrays, n would be 0
    db[OBSERVATIONS].insert_many(docs)
    ensure_summaries(db, select_runs(db, ids=[3]), "probe", "logp_sum")
    stored = {d["bucket"]: d["n"] for d in db[STATS].find({"run_id": 3})}
    assert stored == {d["_id"]: d["summary"]["logp_sum"]["n"] for d in docs}
    assert any(n > 0 for n in stored.values())


def test_value_summary_leaves_out_non_finite_values():
    s = value_summary([float("nan"), 1.0, float("inf"), 3.0, 2.0, 10.0])
    assert s == {"n": 4, "mean": 4.0, "std": math.sqrt(((1 - 4) ** 2 + 1 + 4 + 36) / 3), "median": 2.5}
    assert value_summary([]) == {"n": 0, "mean": None, "std": None, "median": None}
    assert value_summary([2.0])["std"] is None


def _chosen_steps(db, run_id: int) -> list[int]:
    frame = curves_frame(db, select_runs(db, ids=[run_id]), [Pick(response_types=["chosen"])])
    return sorted(frame["step"])


def test_late_buckets_are_summarised_unless_the_run_was_sealed(db):
    """A completed run with nothing spooled is not recounted; one whose observations waited in a
    spool (a flush adds them later), or one resumed (a new stop time), is."""
    docs = _buckets(4, n=6)
    early, late = [d for d in docs if d["step"] < 4], [d for d in docs if d["step"] >= 4]
    spooled = run_doc(4, "spooled", 0, "dpo")
    spooled["result"] = {"observations_spooled": len(late)}
    db.runs.insert_one(spooled)
    db[OBSERVATIONS].insert_many(early)
    assert _chosen_steps(db, 4) == [0, 1, 2, 3]
    db[OBSERVATIONS].insert_many(late)  # `ldreg db flush`
    assert _chosen_steps(db, 4) == [0, 1, 2, 3, 4, 5]

    db.runs.insert_one(run_doc(5, "resumed", 0, "dpo"))
    docs = _buckets(5, n=6)
    db[OBSERVATIONS].insert_many([d for d in docs if d["step"] < 4])
    assert _chosen_steps(db, 5) == [0, 1, 2, 3]
    db[OBSERVATIONS].insert_many([d for d in docs if d["step"] >= 4])
    stop = db.runs.find_one({"_id": 5})["stop_time"]
    db.runs.update_one({"_id": 5}, {"$set": {"stop_time": stop.replace(hour=stop.hour + 1)}})  # resumed, completed
    assert _chosen_steps(db, 5) == [0, 1, 2, 3, 4, 5]
