"""The continual-learning papers' metrics, computed from a run's ``metrics.csv`` rows.

Pure functions (numpy only) so the report, the CLI and config validation can import this
module cheaply. The rows themselves are read by :mod:`streamcl.results` (the one home of
``metrics.csv`` parsing, row grouping, curves and the accuracy matrix; the reading functions
this module used to define are re-exported from there). Conventions, with experiences
numbered 0..T-1 in code (users see them numbered 1..T):

- ``acc[t, j]``: accuracy (fraction) on experience j's test set after training experience t,
  NaN where it was not evaluated (:func:`~streamcl.results.accuracy_matrix_from_rows`).
- ``curve[t]``: accuracy on all classes seen so far, after training experience t
  (:func:`~streamcl.results.accuracy_curve`; NaN where experience t has no evaluation row).

All values are fractions (the report multiplies by 100). Missing evaluations never raise:
means skip NaN steps, "final" values take the last evaluated step, and a metric with
nothing to average over is NaN. :func:`metrics_from_rows` is the one computation behind
both the report's tables and a run's ``summary.json`` (:func:`summary_fields`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from streamcl.errors import StreamclError
from streamcl.results import (
    TASK_AGNOSTIC_ACC,
    TOPK_STREAM_PREFIXES,
    Row,
    accuracy_curve,
    accuracy_matrix_from_rows,
    accuracy_per_experience,
    read_run,
    replay_bytes,
    task_agnostic_curve,
    task_labels,
    topk_curve,
)

METRICS: Dict[str, Tuple[str, str, bool]] = {
    "final_accuracy": ("%", "accuracy on all seen classes after the last experience", True),
    "average_incremental_accuracy": ("%", "mean over experiences of the accuracy on seen classes (iCaRL)", True),
    "forgetting": ("%", "mean drop from best to final accuracy per old experience (Chaudhry 2018)", False),
    "bwt": ("%", "backward transfer: final minus just-learned accuracy per old experience (GEM)", True),
    "top5_final_accuracy": ("%", "top-5 accuracy on all seen classes after the last experience", True),
    "top5_average_incremental_accuracy": ("%", "mean over experiences of top-5 accuracy on seen classes", True),
    "task_aware_final_accuracy": ("%", "multi-task: mean accuracy over seen tasks, each with its own head, at the end",
                                  True),
    "task_aware_average_accuracy": ("%", "multi-task: mean over experiences of the task-aware accuracy", True),
    "task_agnostic_final_accuracy": ("%", "multi-task: final accuracy when the model must infer the task", True),
    "omega_all": ("ratio", "mean over experiences of accuracy / offline learner's accuracy (Omega_all, REMIND)",
                  True),
}

#: The values each metric can take (fractions), so that an interval or error bar drawn around a mean
#: of a few runs can be clipped to it: accuracies lie in [0, 1]; forgetting and BWT are differences
#: of two accuracies, in [-1, 1] (negative forgetting: the final accuracy beats every earlier one);
#: Omega is a ratio of accuracies, >= 0.
RANGES: Dict[str, Tuple[float, float]] = {
    m: (-1.0, 1.0) if m in ("forgetting", "bwt") else (0.0, math.inf) if unit == "ratio" else (0.0, 1.0)
    for m, (unit, _, _) in METRICS.items()
}


class MetricError(StreamclError):
    """Inputs a paper metric cannot be computed from (e.g. an offline curve that does not match the run's)."""


def _clean(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    return arr[~np.isnan(arr)]


def _mean(values: Sequence[float]) -> float:
    arr = _clean(values)
    return float(arr.mean()) if arr.size else math.nan


def average_incremental_accuracy(curve: Sequence[float]) -> float:
    """Mean over steps of the accuracy on all seen classes, first step included (Rebuffi et al., iCaRL).

    The "average incremental accuracy" WA and DyTox report; NaN steps (never evaluated) are skipped,
    NaN for an empty curve.
    """
    return _mean(curve)


def last_accuracy(curve: Sequence[float]) -> float:
    """Accuracy at the last evaluated step (last non-NaN entry); NaN when there is none."""
    arr = _clean(curve)
    return float(arr[-1]) if arr.size else math.nan


def _final_row(acc: np.ndarray) -> int:
    """Index of the last row with any evaluation (the final trained experience when nothing is missing); -1 if none."""
    evaluated = np.flatnonzero(~np.all(np.isnan(acc), axis=1)) if acc.size else np.array([], dtype=int)
    return int(evaluated[-1]) if evaluated.size else -1


def forgetting(acc: np.ndarray) -> float:
    """Average forgetting (Chaudhry et al. 2018, RWalk): mean_{j<T-1} max_{t in [j, T-2]} acc[t, j] - acc[T-1, j].

    T-1 is the last evaluated row (the final experience unless its evaluation is missing). An old
    experience j is skipped when acc[T-1, j] or every acc[t, j], t in [j, T-2], is NaN; NaN when no
    j is left (e.g. a single experience).
    """
    acc = np.asarray(acc, dtype=float)
    last = _final_row(acc)
    drops = []
    for j in range(min(max(last, 0), acc.shape[1])):
        before = acc[j:last, j]
        before = before[~np.isnan(before)]
        if before.size and not math.isnan(acc[last, j]):
            drops.append(float(before.max() - acc[last, j]))
    return _mean(drops)


def backward_transfer(acc: np.ndarray) -> float:
    """Backward transfer (Lopez-Paz & Ranzato 2017, GEM): mean over j < T-1 of acc[T-1, j] - acc[j, j].

    T-1 is the last evaluated row; pairs with a NaN are skipped; NaN when none is left.
    """
    acc = np.asarray(acc, dtype=float)
    last = _final_row(acc)
    return _mean([acc[last, j] - acc[j, j] for j in range(min(max(last, 0), acc.shape[1]))])


def omega(curve: Sequence[float], offline_curve: Sequence[float]) -> float:
    """Omega_all (Hayes et al., REMIND; Kemker et al. 2018): mean over steps t of curve[t] / offline_curve[t].

    ``offline_curve`` is the offline learner's accuracy on the same seen classes at the same steps.
    Steps where the run has NaN are skipped; raises :class:`MetricError` when the lengths differ or
    the offline value is 0 or NaN at a step the run has.
    """
    if len(curve) != len(offline_curve):
        raise MetricError(f"omega: the run has {len(curve)} steps but the offline learner has "
                          f"{len(offline_curve)}; evaluate both on the same experiences")
    ratios = []
    for t, (a, o) in enumerate(zip(curve, offline_curve)):
        if math.isnan(float(a)):
            continue
        if math.isnan(float(o)) or float(o) == 0.0:
            raise MetricError(f"omega: the offline learner's accuracy after experience {t + 1} is {o}, so the "
                              "ratio is undefined; rerun the offline learner's evaluation of that experience")
        ratios.append(float(a) / float(o))
    return _mean(ratios)


def task_aware_accuracies(rows: Sequence[Row]) -> List[float]:
    """Task-aware accuracy after each trained experience t: mean of acc[t, j] over evaluated experiences j <= t.

    In a multi-task run Avalanche's ``Top1_Acc_Exp/.../TaskNNN/ExpMMM`` evaluates each task with its
    own head. Each experience weighs the same; NaN for a step with none evaluated; ``[]`` for a
    single-task run (fewer than two task labels), where it would not be task-aware.
    """
    labels = task_labels(rows)
    if len(labels) < 2:
        return []
    acc = accuracy_matrix_from_rows(rows)
    return [_mean(acc[t, : t + 1]) for t in range(acc.shape[0])]


def metrics_from_rows(rows: Sequence[Row], offline_rows: Optional[Sequence[Row]] = None) -> Dict[str, float]:
    """Every metric in :data:`METRICS` from one run's rows, as fractions (NaN where the run did not log it).

    The one computation behind the report's tables and the run's ``summary.json``
    (:func:`summary_fields`), so the two always agree. ``offline_rows``: the offline learner's
    run of the same id (for ``omega_all``, NaN without it); a mismatch raises :class:`MetricError`.
    """
    curve = accuracy_curve(rows)
    acc = accuracy_matrix_from_rows(rows)
    top5 = topk_curve(rows, 5)
    aware = task_aware_accuracies(rows)
    out = {
        "final_accuracy": last_accuracy(curve),
        "average_incremental_accuracy": average_incremental_accuracy(curve),
        "forgetting": forgetting(acc),
        "bwt": backward_transfer(acc),
        "top5_final_accuracy": last_accuracy(top5),
        "top5_average_incremental_accuracy": average_incremental_accuracy(top5),
        "task_aware_final_accuracy": last_accuracy(aware),
        "task_aware_average_accuracy": average_incremental_accuracy(aware),
        "task_agnostic_final_accuracy": last_accuracy(task_agnostic_curve(rows)),
        "omega_all": math.nan if offline_rows is None else omega(curve, accuracy_curve(offline_rows)),
    }
    assert list(out) == list(METRICS)
    return out


def run_metrics(run_dir: Path, offline_dir: Optional[Path] = None) -> Dict[str, float]:
    """Every metric in :data:`METRICS` for one run folder (its ``metrics.csv``), as fractions.

    ``offline_dir`` is the offline learner's run folder with the same run id (for ``omega_all``,
    NaN without it). Metrics the run did not log are NaN; a mismatched offline run raises MetricError
    naming both folders.
    """
    offline = None if offline_dir is None else read_run(Path(offline_dir))
    try:
        return metrics_from_rows(read_run(Path(run_dir)), offline)
    except MetricError as e:
        raise MetricError(f"{run_dir} vs offline run {offline_dir}: {e}") from None


def _json_number(x: float) -> Optional[float]:
    """``x`` for JSON: None (null) for NaN, which JSON cannot hold."""
    return None if math.isnan(x) else float(x)


def summary_fields(rows: Sequence[Row]) -> Dict[str, Any]:
    """The figures a run's ``summary.json`` holds, from its rows, JSON-ready (null: not logged / not measured).

    ``final_accuracy``, ``average_incremental_accuracy``, ``forgetting`` and ``bwt`` are
    :func:`metrics_from_rows`'s, the very numbers the report's tables show; ``stored_bytes`` is
    :func:`~streamcl.results.replay_bytes` (null when the run did not measure it, 0 when the
    method stores nothing); ``accuracy_per_experience`` lists the evaluated experiences in order.
    """
    m = metrics_from_rows(rows)
    return {
        "final_accuracy": _json_number(m["final_accuracy"]),
        "average_incremental_accuracy": _json_number(m["average_incremental_accuracy"]),
        "accuracy_per_experience": accuracy_per_experience(rows),
        "forgetting": _json_number(m["forgetting"]),
        "bwt": _json_number(m["bwt"]),
        "stored_bytes": replay_bytes(rows),
    }


__all__ = [
    "METRICS",
    "MetricError",
    "RANGES",
    "TASK_AGNOSTIC_ACC",
    "TOPK_STREAM_PREFIXES",
    "accuracy_curve",
    "accuracy_matrix_from_rows",
    "average_incremental_accuracy",
    "backward_transfer",
    "forgetting",
    "last_accuracy",
    "metrics_from_rows",
    "omega",
    "run_metrics",
    "summary_fields",
    "task_agnostic_curve",
    "task_aware_accuracies",
    "task_labels",
    "topk_curve",
]
