"""The query layer's statistics, computed in the real server, against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_query_data import CHOSEN, populate

from ldreg.query.errors import QueryError
from ldreg.query.frame import curves_frame
from ldreg.query.pipeline import Aggregation, Pick
from ldreg.query.select import select_runs


@pytest.fixture
def filled(db):
    populate(db)
    return db


def _row(frame, **where):
    mask = np.ones(len(frame), bool)
    for key, value in where.items():
        mask &= frame[key].to_numpy() == value
    rows = frame[mask]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_per_bucket_statistics_leave_out_nan(filled):
    runs = select_runs(filled, ids=[1])
    frame = curves_frame(filled, runs, [Pick(response_types=["chosen", "rejected"])])
    assert len(frame) == 12
    row = _row(frame, response_type="chosen", step=0)
    assert row["n"] == 4 and row["mean"] == pytest.approx(4.25) and row["median"] == pytest.approx(3.0)
    finite = [v for v in CHOSEN if not math.isnan(v)]
    assert row["std"] == pytest.approx(np.std(finite, ddof=1))
    half = 3.182446305284263 * np.std(finite, ddof=1) / 2  # t_{0.975, 3} * s / sqrt(4)
    assert row["ci_low"] == pytest.approx(4.25 - half) and row["ci_high"] == pytest.approx(4.25 + half)
    later = _row(frame, response_type="rejected", step=4)  # k = 5: -1+5, -3+5, -2+5 -> 4, 2, 3
    assert (later["mean"], later["median"], later["n"]) == (pytest.approx(3.0), pytest.approx(3.0), 3)


def test_odd_and_even_medians_match_numpy(filled):
    filled.observations.insert_one({"_id": "odd", "run_id": 1, "kind": "probe", "stage": "0-sft", "stage_index": 0,
                                    "step": 99, "examples_seen": 99, "probe_set": "train", "response_type": "chosen",
                                    "update_type": None, "example_ids": [0, 1, 2, 3, 4],
                                    "values": {"logp_sum": [5.0, -1.0, 7.5, 2.0, 3.0]}})
    frame = curves_frame(filled, select_runs(filled, ids=[1]), [Pick(response_types=["chosen"], steps=[99, 99])])
    assert frame["median"].tolist() == [3.0] and frame["mean"].tolist() == [pytest.approx(3.3)]


def test_x_aligns_at_the_start_of_the_named_stage(filled):
    runs = select_runs(filled, ids=[1, 3])
    frame = curves_frame(filled, runs, [Pick(response_types=["chosen"])], Aggregation(align="dpo"))
    # run 3 has no dpo stage: x stays examples seen; run 1's dpo starts at 8 examples
    assert _row(frame, run_id=1, step=0, stage_index=0)["x"] == -8
    assert _row(frame, run_id=1, step=2, stage_index=1)["x"] == 0
    assert _row(frame, run_id=1, step=4)["x"] == 8
    assert _row(frame, run_id=3, step=4)["x"] == 16
    by_index = curves_frame(filled, runs, [Pick(response_types=["chosen"])], Aggregation(align=1))
    assert _row(by_index, run_id=3, step=4)["x"] == 8
    each = curves_frame(filled, runs, [Pick(response_types=["chosen"])], Aggregation(align="stage"))
    assert sorted(each[each.run_id == 1]["x"]) == [0, 0, 4, 4, 8, 8]


def test_align_at_a_stage_no_run_has_is_named(filled):
    with pytest.raises(QueryError, match=r"no selected run has a stage 'dpp'.*did you mean 'dpo'"):
        curves_frame(filled, select_runs(filled, ids=[1]), [Pick()], Aggregation(align="dpp"))


def test_seed_groups_pool_runs_that_differ_only_in_seed(filled):
    runs = select_runs(filled, ids=[1, 2, 3])
    frame = curves_frame(filled, runs, [Pick(response_types=["chosen"], steps=[0, 0])], Aggregation(seeds=True))
    assert len(frame) == 2
    pooled = _row(frame, run_id=1)
    # per-run means 4.25 and 5.25 (offset 1): mean 4.75, sample std sqrt(0.5), n = 2 runs
    assert (pooled["mean"], pooled["median"], pooled["n"]) == (pytest.approx(4.75), pytest.approx(4.75), 2)
    assert pooled["std"] == pytest.approx(math.sqrt(0.5))
    assert pooled["ci_high"] - pooled["mean"] == pytest.approx(12.706204736174698 * math.sqrt(0.5) / math.sqrt(2))
    assert pooled["run"] == "loss=dpo (2 seeds: 0,1)"
    alone = _row(frame, run_id=3)
    assert alone["n"] == 1 and math.isnan(alone["ci_low"]) and alone["run"] == "loss=ipo (1 seed: 0)"


def test_ema_restarts_each_stage(filled):
    runs = select_runs(filled, ids=[1])
    frame = curves_frame(filled, runs, [Pick(response_types=["rejected"])], Aggregation(ema=0.6))
    # raw means per probe: -2 + k, k = 0..5; stage 0 holds k = 0,1,2, stage 1 holds k = 3,4,5
    expected = []
    for raw in ([-2, -1, 0], [1, 2, 3]):
        s = raw[0]
        for i, v in enumerate(raw):
            s = v if i == 0 else 0.6 * s + 0.4 * v
            expected.append(s)
    got = frame.sort_values(["stage_index", "step"])["mean"].tolist()
    assert got == pytest.approx(expected)


def test_quantities_get_their_own_series_labels(filled):
    frame = curves_frame(filled, select_runs(filled, ids=[1]),
                         [Pick(response_types=["chosen"]), Pick(quantity="argmax_logp", response_types=["chosen"])])
    assert set(frame["series"]) == {"chosen", "argmax confidence (on chosen)"}  # runs without labels: names
    assert _row(frame, quantity="argmax_logp", step=0)["mean"] == pytest.approx(4.25 / 2)


def test_labels_name_what_differs(filled):
    frame = curves_frame(filled, select_runs(filled, ids=[1, 2, 3]), [Pick(response_types=["chosen"], steps=[0, 0])])
    # name and stages.1.name split the runs as stages.1.loss does: said once
    assert dict(zip(frame.run_id, frame.run)) == {1: "loss=dpo, seed=0", 2: "loss=dpo, seed=1", 3: "loss=ipo, seed=0"}


def test_a_response_type_nobody_recorded_is_named_with_those_recorded(filled):
    with pytest.raises(QueryError, match=r"'chosn'.*did you mean 'chosen'.*recorded: chosen, rejected"):
        curves_frame(filled, select_runs(filled, ids=[1]), [Pick(response_types=["chosn"])])
    with pytest.raises(QueryError, match=r"recorded 'influence' observations; they recorded: probe"):
        curves_frame(filled, select_runs(filled, ids=[1]), [Pick(kind="influence")])
    with pytest.raises(QueryError, match=r"quantity: .*'logp'.*recorded: argmax_logp, logp_sum"):
        curves_frame(filled, select_runs(filled, ids=[1]), [Pick(quantity="logp")])
