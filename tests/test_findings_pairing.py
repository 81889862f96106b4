"""The findings read per-example values through the query layer's pairing: matched by example id."""

import numpy as np
import pytest

from ldreg.observations import Observation
from ldreg.paper import findings as F
from ldreg.query.paired import common_examples, derive_run, example_matrix
from ldreg.store.sink import StoreSink


def test_common_examples_pairs_by_id_not_by_position():
    ids, (a, b) = common_examples([5, 3, 9, 1], [1, 9, 7, 5])
    assert ids.tolist() == [1, 5, 9] and a.tolist() == [3, 0, 2] and b.tolist() == [0, 3, 1]
    docs = [{"example_ids": [5, 3, 9], "values": {"v": [50.0, 30.0, 90.0]}},
            {"example_ids": [9, 5], "values": {"v": [91.0, 51.0]}}]
    ids, rows = example_matrix(docs, ["v"])
    assert ids.tolist() == [5, 9] and rows["v"].tolist() == [[50.0, 90.0], [51.0, 91.0]]


def test_findings_change_equals_the_query_layers_paired_change(db):
    """Buckets in shuffled example order, one example missing at the end: both layers agree."""
    rng = np.random.default_rng(4)
    sink = StoreSink(21, db=db)
    start = rng.normal(-20, 3, 30)
    for step, ids in ((0, list(range(30))), (5, list(range(29, -1, -1))), (9, list(range(1, 30))[::-1])):
        values = start[ids] + step + rng.normal(0, 0.1, len(ids))
        sink.emit(Observation(kind="probe", step=step, examples_seen=step * 4, stage="sft", stage_index=0,
                              probe_set="train", response_type="chosen", example_ids=ids,
                              values={"logp_sum": values, "logp_mean": values / 10}))
    sink.close()
    block = F.Curves(db).get(21, "chosen", 0)
    first, last = block.window("start")[0], block.window("end")[0]
    assert len(block.ids) == 29 and np.all(np.abs(last - first - 9) < 1)  # paired: each example's own change
    docs = list(db.observations.find({"run_id": 21}))
    end = next(r for r in derive_run(docs, "logp_sum", None, "stage_start") if r["step"] == 9)
    assert end["n"] == 29 and end["mean"] == pytest.approx(float(np.mean(last - first)), abs=1e-9)
