"""The verdicts' statistics against values worked out by hand (t-table, Holm's rule on paper)."""

import math

import pytest

from ldreg import stats


def test_paired_t_interval_matches_the_t_table():
    # 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5) = 0.7071; t(0.975, 4 dof) = 2.776 from the table
    iv = stats.t_interval([1, 2, 3, 4, 5])
    assert iv.n == 5 and iv.mean == 3
    assert iv.se == pytest.approx(math.sqrt(0.5))
    assert iv.low == pytest.approx(3 - 2.776 * math.sqrt(0.5), abs=1e-3)
    assert iv.high == pytest.approx(3 + 2.776 * math.sqrt(0.5), abs=1e-3)
    # t = 3 / 0.7071 = 4.243 on 4 dof: two-sided p between 0.01 (t 4.604) and 0.02 (t 3.747)
    assert 0.01 < iv.p < 0.02 and iv.excludes_zero() == 1


def test_wider_at_a_higher_level_and_nan_dropped():
    narrow, wide = stats.t_interval([2.0, -1.0, 0.5, float("nan")]), stats.t_interval([2.0, -1.0, 0.5], 0.99)
    assert narrow.n == wide.n == 3
    assert wide.low < narrow.low < narrow.mean < narrow.high < wide.high
    assert narrow.excludes_zero() == 0  # mean 0.5, se 0.866: covers 0


def test_degenerate_samples():
    assert math.isnan(stats.t_interval([]).mean)
    one = stats.t_interval([4.0])
    assert one.mean == 4 and math.isnan(one.low) and one.excludes_zero() == 0
    flat = stats.t_interval([-2.0, -2.0, -2.0])
    assert (flat.low, flat.high, flat.p, flat.excludes_zero()) == (-2.0, -2.0, 0.0, -1)


def test_holm_levels_stop_at_the_first_failure():
    # sorted 0.01 <= 0.05/3 (rejected); 0.03 > 0.05/2 (stop): 0.03 and 0.04 keep 0.025
    levels = stats.holm_levels([0.01, 0.04, 0.03])
    assert levels == pytest.approx([0.05 / 3, 0.025, 0.025])
    rejected = [p <= lv for p, lv in zip([0.01, 0.04, 0.03], levels)]
    assert rejected == [True, False, False]
    # all small: each rejected at its own step's threshold
    assert stats.holm_levels([0.001, 0.02, 0.004]) == pytest.approx([0.05 / 3, 0.05, 0.025])
    # a NaN is never rejected and does not hide the others
    levels = stats.holm_levels([float("nan"), 0.01])
    assert levels[1] == pytest.approx(0.025) and not (math.nan <= levels[0])


def test_holm_adjusted_p_values():
    # (3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04)) = (0.03, 0.06, 0.06) in the input's order
    assert stats.holm_adjusted([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm_adjusted([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_holm_level_interval_agrees_with_the_decision():
    # an interval at confidence 1 - level excludes 0 exactly when Holm rejects
    samples = [[1.0, 1.2, 0.9, 1.1], [0.3, -0.5, 0.9, 0.1], [0.4, 0.6, 0.2, 0.5]]
    ps = [stats.t_interval(s).p for s in samples]
    for s, p, level in zip(samples, ps, stats.holm_levels(ps)):
        assert (stats.t_interval(s, 1 - level).excludes_zero() != 0) == (p <= level)


def test_random_effects_uses_the_spread_between_seeds():
    # three seed means 1, 2, 3: se 0.577 with 2 dof (t 4.303): (-0.484, 4.484) covers 0
    iv = stats.random_effects([1.0, 2.0, 3.0])
    assert iv.low == pytest.approx(2 - 4.303 * (1 / math.sqrt(3)), abs=1e-3) and iv.excludes_zero() == 0
