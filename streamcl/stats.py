"""Honest statistics over a handful of runs: mean ± std, Student-t intervals, paired comparisons.

Runs of one cell differ by their run id (the class order), so two methods are compared
pair-wise on the run ids they share. The paired test is the exact Wilcoxon signed-rank
test; with too few pairs to ever reach p < 0.05 no p-value is given, only a note.

A Student-t interval assumes unbounded, normal data; over two or three accuracies near 100 %
it reaches past 100 %, which no accuracy can. ``bounds`` clips an interval to the values the
quantity can take, so none is ever shown outside them. One value has no spread: it is shown
alone, never as ``± 0.00``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

ALPHA = 0.05
Bounds = Optional[Tuple[float, float]]


def _min_pairs_for_test(alpha: float = ALPHA) -> int:
    """Fewest non-zero pairs for which the exact two-sided signed-rank p-value can be <= ``alpha``.

    Its smallest attainable value is 2 / 2**n (every difference with the same sign).
    """
    n = 1
    while 2.0 / 2**n > alpha:
        n += 1
    return n


MIN_PAIRS_FOR_TEST = _min_pairs_for_test()  # 6: 2/2**6 = 0.03125, while n=5 gives 0.0625


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof=1) and 95 % Student-t interval of the mean over n values."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Paired:
    """Run-by-run comparison of a and b on their shared run ids (difference = a - b)."""

    n_pairs: int
    mean_diff: float
    ci_low: float
    ci_high: float
    wins_a: int
    wins_b: int
    ties: int
    p_value: Optional[float]
    note: str = ""
    test: str = "Wilcoxon signed-rank (exact, two-sided)"
    run_ids: List[int] = field(default_factory=list)


def clip_interval(low: float, high: float, bounds: Bounds = None) -> Tuple[float, float]:
    """``[low, high]`` intersected with ``bounds`` (``(lo, hi)``, the quantity's possible values); as is without.

    A t interval on bounded data (accuracies in [0, 1]) can reach past the bound; the part beyond
    it holds no possible value, so it is cut off rather than shown.
    """
    if bounds is None:
        return low, high
    lo, hi = bounds
    if not math.isnan(low):
        low = min(max(low, lo), hi)
    if not math.isnan(high):
        high = max(min(high, hi), lo)
    return low, high


def summarize(values: Iterable[float], bounds: Bounds = None) -> Summary:
    """n, mean, std (ddof=1; 0.0 for one value) and the 95 % t-interval mean ± t_{0.975,n-1}·std/√n.

    NaN values are dropped; the interval is NaN for n < 2, and everything but n is NaN for n = 0.
    ``bounds``: the values the quantity can take (e.g. ``(0, 1)`` for an accuracy); the interval is
    clipped to them (:func:`clip_interval`).
    """
    arr = np.asarray([float(v) for v in values], dtype=float)
    arr = arr[~np.isnan(arr)]
    n = int(arr.size)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(arr.mean())
    if n == 1:
        return Summary(1, mean, 0.0, math.nan, math.nan)
    from scipy import stats

    std = float(arr.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, *clip_interval(mean - half, mean + half, bounds))


def paired_comparison(a: Dict[int, float], b: Dict[int, float], bounds: Bounds = None) -> Paired:
    """Compare a and b on the run ids both have (pairs with a NaN are left out): mean difference a - b, its
    95 % t-interval, wins/ties, and the exact two-sided Wilcoxon signed-rank p-value.

    ``bounds``: the values a and b can take; the interval of the difference is clipped to
    ``(lo - hi, hi - lo)``, the differences possible.

    Signed-rank, not a paired t-test: accuracy differences over a few class orders are not known to
    be normal and the signed-rank test needs no normality. Zero differences are dropped (Wilcoxon's
    rule). With fewer than :data:`MIN_PAIRS_FOR_TEST` pairs p cannot reach 0.05, so ``p_value`` is
    None and ``note`` says why; likewise when every difference is zero.
    """
    ids = sorted(k for k in set(a) & set(b) if not (math.isnan(float(a[k])) or math.isnan(float(b[k]))))
    diffs = np.asarray([float(a[k]) - float(b[k]) for k in ids], dtype=float)
    s = summarize(diffs, None if bounds is None else (bounds[0] - bounds[1], bounds[1] - bounds[0]))
    n = len(ids)
    wins_a, wins_b = int((diffs > 0).sum()), int((diffs < 0).sum())
    ties = n - wins_a - wins_b
    nonzero = diffs[diffs != 0]
    p_value: Optional[float] = None
    if n == 0:
        note = "no run ids in common: nothing to compare"
    elif nonzero.size == 0:
        note = f"all {n} differences are zero: the runs are identical, no test"
    elif n < MIN_PAIRS_FOR_TEST:
        note = (f"n={n} pairs: too few for a Wilcoxon signed-rank test at 5 % "
                f"(needs >= {MIN_PAIRS_FOR_TEST})")
    elif nonzero.size < MIN_PAIRS_FOR_TEST:
        note = (f"n={nonzero.size} non-zero differences ({ties} ties dropped): too few for a Wilcoxon "
                f"signed-rank test at 5 % (needs >= {MIN_PAIRS_FOR_TEST})")
    else:
        from scipy import stats

        p_value = float(stats.wilcoxon(nonzero, method="exact", alternative="two-sided").pvalue)
        note = f"{ties} ties dropped" if ties else ""
        if np.unique(np.abs(nonzero)).size < nonzero.size:
            note = (note + "; " if note else "") + "tied |differences| share ranks (exact null assumes none)"
    return Paired(n_pairs=n, mean_diff=s.mean, ci_low=s.ci_low, ci_high=s.ci_high, wins_a=wins_a,
                  wins_b=wins_b, ties=ties, p_value=p_value, note=note, run_ids=ids)


def format_mean_std(s: Summary, scale: float = 100, digits: int = 2) -> str:
    """``"42.10 ± 9.36"`` (mean ± std, scaled: fractions to %); the value alone for one run; ``"n/a"`` with none.

    One run has no spread: ``"± 0.00"`` would claim a measured std of zero.
    """
    if s.n == 0 or math.isnan(s.mean):
        return "n/a"
    if s.n == 1:
        return f"{s.mean * scale:.{digits}f}"
    return f"{s.mean * scale:.{digits}f} ± {s.std * scale:.{digits}f}"


def format_ci(s: Summary, scale: float = 100, digits: int = 1) -> str:
    """``"[30.5, 53.7]"``: the 95 % interval, scaled; ``"n/a"`` when undefined (n < 2)."""
    if math.isnan(s.ci_low) or math.isnan(s.ci_high):
        return "n/a"
    return f"[{s.ci_low * scale:.{digits}f}, {s.ci_high * scale:.{digits}f}]"


__all__ = [
    "ALPHA",
    "MIN_PAIRS_FOR_TEST",
    "Paired",
    "Summary",
    "clip_interval",
    "format_ci",
    "format_mean_std",
    "paired_comparison",
    "summarize",
]
