"""The library's intervals against scipy: Student-t means, paired differences, and the helpers built on them."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats as sp

from hf_metatransfer.experiments import mean_ci, paired
from hf_metatransfer.meta import confidence_interval as meta_confidence_interval
from hf_metatransfer.stats import Interval, confidence_interval, mean_interval, paired_difference, t_quantile

SCORES = [31.2, 44.0, 27.5, 38.9]  # e.g. chrF of 4 tasks


@pytest.mark.parametrize("df", [1, 2, 3, 7, 30, 500])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_t_quantile_is_scipy_two_sided_quantile(df, confidence):
    assert t_quantile(confidence, df) == pytest.approx(sp.t.ppf(1 - (1 - confidence) / 2, df), rel=1e-12)


def test_t_quantile_known_values_and_limits():
    assert t_quantile(0.95, 3) == pytest.approx(3.18245, abs=1e-5)  # the textbook table
    assert t_quantile(0.95, 10**6) == pytest.approx(1.959964, abs=1e-5)  # tends to the normal quantile
    for bad in [(0.0, 3), (1.0, 3), (0.95, 0)]:
        with pytest.raises(ValueError):
            t_quantile(*bad)


@pytest.mark.parametrize("values", [SCORES, [0.5, 0.7], [0.1, 0.2, 0.2, 0.9, 0.4, 0.6, 0.3]])
def test_mean_interval_matches_scipy_t_interval(values):
    interval = mean_interval(values)
    low, high = sp.t.interval(0.95, len(values) - 1, loc=statistics.fmean(values), scale=sp.sem(values))
    assert (interval.low, interval.high) == pytest.approx((low, high), rel=1e-10)
    assert interval.n == len(values) and interval.confidence == 0.95
    wider = mean_interval(values, confidence=0.99)
    assert wider.mean == interval.mean and wider.half_width > interval.half_width


def test_student_t_is_wider_than_the_normal_interval_with_four_tasks():
    normal = 1.959964 * statistics.stdev(SCORES) / math.sqrt(len(SCORES))
    assert mean_interval(SCORES).half_width / normal == pytest.approx(3.18245 / 1.959964, rel=1e-5)


def test_one_value_has_no_spread_and_is_never_called_significant():
    one = mean_interval([0.7])
    assert (one.mean, one.half_width, one.n) == (0.7, 0.0, 1)
    assert not one.above_zero and not one.excludes_zero
    with pytest.raises(ValueError, match="at least one"):
        mean_interval([])


def test_paired_difference_agrees_with_the_paired_t_test():
    a = [30.0, 42.0, 29.0, 40.0, 35.0]
    cases = {
        "consistent small gain": [x - 1.0 + 0.1 * i for i, x in enumerate(a)],
        "noisy gain": [28.0, 45.0, 22.0, 41.0, 30.0],
        "loss": [x + 2.0 + 0.2 * i for i, x in enumerate(a)],
    }
    for name, b in cases.items():
        interval = paired_difference(a, b)
        assert interval.mean == pytest.approx(statistics.fmean(x - y for x, y in zip(a, b)))
        p = sp.ttest_rel(a, b).pvalue
        assert interval.excludes_zero == (p < 0.05), name  # the CI excludes 0 iff the two-sided test rejects
        assert interval.above_zero == (p < 0.05 and interval.mean > 0), name
        assert interval.below_zero == (p < 0.05 and interval.mean < 0), name
    # pairing: the two methods' own intervals overlap, yet a is better on every unit
    b = cases["consistent small gain"]
    assert mean_interval(a).low < mean_interval(b).high and paired_difference(a, b).above_zero
    with pytest.raises(ValueError, match="matched units"):
        paired_difference([1.0], [1.0, 2.0])


def test_interval_views():
    interval = Interval(0.873, 0.021, 40)
    assert interval.as_tuple() == (0.873, 0.021)
    assert interval.format(scale=100) == "87.3 +- 2.1"
    assert Interval(-1.25, 0.5, 4).format(sign=True, digits=2) == "-1.25 +- 0.50"
    d = Interval(2.0, 0.5, 4).as_dict(digits=2)
    assert d == {"mean": 2.0, "ci_half_width": 0.5, "ci_low": 1.5, "ci_high": 2.5, "n": 4, "confidence": 0.95,
                 "excludes_zero": True}  # fmt: skip


def test_every_interval_helper_is_the_student_t_one():
    expected = mean_interval(SCORES).as_tuple()
    assert confidence_interval(SCORES) == expected
    assert meta_confidence_interval(SCORES) == expected  # meta_test's and the benchmarks' helper
    assert mean_ci(SCORES) == expected  # the lecture experiments'
    assert paired(SCORES, [0.0] * 4) == expected
