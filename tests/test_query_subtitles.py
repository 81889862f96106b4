"""A figure's subtitle names its runs and seeds; a sweep's many runs are named as id ranges."""

from ldreg.query.execute import run_list, seeds_line
from ldreg.query.select import RunInfo


def _runs(ids, seeds=(1, 2)):
    return [RunInfo(i, "r", "COMPLETED", {"seed": seeds[k % len(seeds)]}, [], None) for k, i in enumerate(ids)]


def test_a_few_runs_are_listed_one_by_one_with_their_seeds():
    assert seeds_line(_runs([5, 6]), pooled=False) == "runs #5 (seed 1), #6 (seed 2), each drawn on its own"


def test_many_runs_are_named_as_ranges_of_consecutive_ids():
    runs = _runs(list(range(9, 53)) + [60, 62, 63])
    assert run_list(runs) == "#9-#52, #60, #62-#63"
    assert seeds_line(runs, pooled=False) == "47 runs (#9-#52, #60, #62-#63; seeds 1, 2), each drawn on its own"
    assert "#9-#52" in seeds_line(runs, pooled=True)
