"""streamcl.stats: summaries, t-intervals and the paired Wilcoxon comparison on worked examples."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from streamcl.stats import (
    MIN_PAIRS_FOR_TEST,
    Summary,
    clip_interval,
    format_ci,
    format_mean_std,
    paired_comparison,
    summarize,
)


def test_summarize_worked_example():
    # [1, 2, 3]: mean 2, std (ddof=1) = sqrt((1 + 0 + 1) / 2) = 1, t_{0.975,2} = 4.3027
    s = summarize([1, 2, 3])
    assert (s.n, s.mean, s.std) == (3, pytest.approx(2.0), pytest.approx(1.0))
    half = 4.302653 / math.sqrt(3)  # = 2.4841
    assert s.ci_low == pytest.approx(2 - half, abs=1e-5)
    assert s.ci_high == pytest.approx(2 + half, abs=1e-5)


def test_summarize_drops_nan_and_small_n():
    s = summarize([0.5, math.nan])
    assert (s.n, s.mean, s.std) == (1, 0.5, 0.0)
    assert math.isnan(s.ci_low) and math.isnan(s.ci_high)
    e = summarize([])
    assert e.n == 0 and math.isnan(e.mean)


def test_formatting():
    s = Summary(n=3, mean=0.421, std=0.0936, ci_low=0.3053, ci_high=0.5367)
    assert format_mean_std(s) == "42.10 ± 9.36"
    assert format_ci(s) == "[30.5, 53.7]"
    assert format_mean_std(s, scale=1, digits=3) == "0.421 ± 0.094"
    assert format_ci(summarize([0.5])) == "n/a"
    assert format_mean_std(summarize([])) == "n/a"


def test_one_value_is_shown_without_a_spread():
    # one run has no spread: "50.00", never "50.00 ± 0.00"
    assert format_mean_std(summarize([0.5])) == "50.00"
    assert format_mean_std(summarize([2.04]), scale=1, digits=1) == "2.0"
    assert format_mean_std(summarize([0.5, math.nan])) == "50.00"  # NaN runs do not count


def test_interval_clipped_to_bounds():
    # [0.99, 0.80]: mean 0.895, std 0.13435, t_{0.975,1} = 12.7062 -> half 1.2071: [-0.312, 2.102] unbounded
    free = summarize([0.99, 0.80])
    assert free.ci_high == pytest.approx(0.895 + 12.7062 * 0.134350 / math.sqrt(2), abs=1e-4) and free.ci_high > 1
    s = summarize([0.99, 0.80], bounds=(0.0, 1.0))
    assert (s.ci_low, s.ci_high) == (0.0, 1.0) and (s.mean, s.std) == (free.mean, free.std)
    assert format_ci(s) == "[0.0, 100.0]"
    # inside the bounds nothing changes
    assert summarize([0.5, 0.6, 0.55], bounds=(0.0, 1.0)) == summarize([0.5, 0.6, 0.55])


def test_clip_interval_edges():
    assert clip_interval(-0.2, 1.3, (0.0, 1.0)) == (0.0, 1.0)
    assert clip_interval(0.2, 0.3) == (0.2, 0.3)  # no bounds: as is
    assert clip_interval(1.2, 1.5, (0.0, 1.0)) == (1.0, 1.0)  # never low > high
    low, high = clip_interval(math.nan, math.nan, (0.0, 1.0))
    assert math.isnan(low) and math.isnan(high)  # undefined stays undefined


def test_paired_interval_clipped_to_possible_differences():
    a, b = {0: 1.0, 1: 0.0}, {0: 0.0, 1: 1.0}  # differences +1, -1: t interval ±12.7
    assert paired_comparison(a, b).ci_high > 1
    p = paired_comparison(a, b, bounds=(0.0, 1.0))
    assert (p.ci_low, p.ci_high) == (-1.0, 1.0)


def test_min_pairs_from_minimum_p():
    # smallest exact two-sided p with n non-zero pairs is 2 / 2**n: n=5 -> 0.0625 > 0.05, n=6 -> 0.03125
    assert MIN_PAIRS_FOR_TEST == 6


def test_paired_all_positive_hand_checkable():
    # 6 differences all > 0: W- = 0, the most extreme of 2**6 sign patterns -> p = 2/64 = 0.03125
    a = {i: 0.5 + 0.01 * (i + 1) for i in range(6)}
    b = {i: 0.5 for i in range(6)}
    p = paired_comparison(a, b)
    assert p.n_pairs == 6 and (p.wins_a, p.wins_b, p.ties) == (6, 0, 0)
    assert p.p_value == pytest.approx(0.03125)
    # differences 0.01..0.06: mean 0.035
    assert p.mean_diff == pytest.approx(0.035)
    assert p.ci_low < p.mean_diff < p.ci_high


def test_paired_matches_scipy():
    a = {0: 0.61, 1: 0.55, 2: 0.70, 3: 0.48, 4: 0.66, 5: 0.59, 6: 0.52, 7: 0.63}
    b = {0: 0.58, 1: 0.57, 2: 0.62, 3: 0.41, 4: 0.69, 5: 0.50, 6: 0.49, 7: 0.64}
    p = paired_comparison(a, b)
    diffs = [a[k] - b[k] for k in sorted(a)]
    assert p.p_value == pytest.approx(sps.wilcoxon(diffs, method="exact").pvalue)
    s = summarize(diffs)
    assert (p.mean_diff, p.ci_low, p.ci_high) == (pytest.approx(s.mean), pytest.approx(s.ci_low),
                                                  pytest.approx(s.ci_high))
    assert (p.wins_a, p.wins_b, p.ties) == (5, 3, 0)


def test_paired_too_few_pairs():
    a = {i: 0.6 for i in range(5)}
    b = {i: 0.5 for i in range(5)}
    p = paired_comparison(a, b)
    assert p.p_value is None
    assert p.note == "n=5 pairs: too few for a Wilcoxon signed-rank test at 5 % (needs >= 6)"
    assert p.mean_diff == pytest.approx(0.1) and p.wins_a == 5


def test_paired_uses_shared_run_ids_only():
    a = {i: 0.6 + 0.01 * i for i in range(8)}          # ids 0..7
    b = {i: 0.5 for i in range(2, 10)}                  # ids 2..9
    p = paired_comparison(a, b)
    assert p.run_ids == list(range(2, 8)) and p.n_pairs == 6
    # differences 0.12 .. 0.17, all positive
    assert p.p_value == pytest.approx(0.03125)
    assert p.mean_diff == pytest.approx(0.145)


def test_paired_nan_pairs_dropped():
    a = {i: 0.6 for i in range(6)}
    b = {i: 0.5 for i in range(6)}
    a[3] = math.nan
    p = paired_comparison(a, b)
    assert p.n_pairs == 5 and p.p_value is None and 3 not in p.run_ids


def test_paired_identical():
    a = {i: 0.5 for i in range(7)}
    p = paired_comparison(a, dict(a))
    assert p.p_value is None and "identical" in p.note
    assert (p.ties, p.mean_diff) == (7, 0.0)


def test_paired_zeros_leave_too_few():
    # 7 pairs but 2 zero differences: 5 non-zero left, p could not reach 0.05
    a = {i: 0.6 for i in range(7)}
    b = {i: (0.6 if i < 2 else 0.5) for i in range(7)}
    p = paired_comparison(a, b)
    assert p.n_pairs == 7 and p.ties == 2 and p.p_value is None
    assert "5 non-zero" in p.note


def test_paired_no_overlap():
    p = paired_comparison({0: 0.5}, {1: 0.5})
    assert p.n_pairs == 0 and p.p_value is None and math.isnan(p.mean_diff)
