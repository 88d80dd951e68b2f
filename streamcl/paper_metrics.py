"""The continual-learning papers' metrics, computed from a run's ``metrics.csv`` rows.

Pure functions (numpy only) so the report, the CLI and config validation can import this
module cheaply. Conventions, with experiences numbered 0..T-1:

- ``acc[t, j]``: accuracy (fraction) on experience j's test set after training experience t,
  NaN where it was not evaluated (:func:`accuracy_matrix_from_rows`).
- ``curve[t]``: accuracy on all classes seen so far, after training experience t
  (:func:`accuracy_curve`; NaN where experience t has no evaluation row).

All values are fractions (the report multiplies by 100). Missing evaluations never raise:
means skip NaN steps, "final" values take the last evaluated step, and a metric with
nothing to average over is NaN.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from streamcl.errors import StreamclError
from streamcl.results import (
    EXP_ACC_PREFIX,
    STREAM_ACC_PREFIX,
    Row,
    accuracy_per_experience,
    experience_accuracies,
    read_metrics,
)

# Avalanche 0.6's StreamTopkAccuracy is named "Topk_<k>_Acc_Stream" (topk_acc.py, __str__);
# "Top<k>_Acc_Stream" is accepted too, like Top1_Acc_Stream is spelled.
TOPK_STREAM_PREFIXES = ("Topk_{k}_Acc_Stream/eval_phase/test_stream", "Top{k}_Acc_Stream/eval_phase/test_stream")
TASK_AGNOSTIC_ACC = "TaskAgnostic_Acc_Stream/eval_phase/test_stream"

_EXP_TASK = re.compile(r"^/Task(\d+)/Exp\d+$")

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


class MetricError(StreamclError):
    """Inputs a paper metric cannot be computed from (e.g. an offline curve that does not match the run's)."""


def _clean(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    return arr[~np.isnan(arr)]


def _mean(values: Sequence[float]) -> float:
    arr = _clean(values)
    return float(arr.mean()) if arr.size else math.nan


def _n_experiences(rows: Sequence[Row]) -> int:
    return max((int(r["experience"]) for r in rows), default=-1) + 1


def _dense_curve(rows: Sequence[Row], prefix: str) -> List[float]:
    """Per trained experience, the stream accuracy logged under ``prefix`` (optionally /TaskNNN), NaN where absent.

    Reuses :func:`streamcl.results.accuracy_per_experience` (task-free key, else mean over per-task
    keys) by renaming the metric to Top-1's; ``[]`` when no row has the metric.
    """
    by_exp: Dict[int, List[Row]] = {}
    for r in rows:
        if r["metric"].startswith(prefix):
            renamed = dict(r, metric=STREAM_ACC_PREFIX + r["metric"][len(prefix):])
            by_exp.setdefault(int(r["experience"]), []).append(renamed)
    if not by_exp:
        return []
    out = []
    for t in range(_n_experiences(rows)):
        vals = accuracy_per_experience(by_exp.get(t, []))
        out.append(vals[0] if vals else math.nan)
    if all(math.isnan(v) for v in out):
        return []
    return out


def accuracy_curve(rows: Sequence[Row]) -> List[float]:
    """Top-1 accuracy on seen classes after each trained experience, NaN for an experience never evaluated.

    Unlike :func:`streamcl.results.accuracy_per_experience`, a missing step stays in place, so
    ``curve[t]`` is always experience t (needed to pair a run's steps with an offline run's).
    """
    return _dense_curve(rows, STREAM_ACC_PREFIX)


def accuracy_matrix_from_rows(rows: Sequence[Row]) -> np.ndarray:
    """``acc[t, j]`` from the ``Top1_Acc_Exp`` rows, NaN where not evaluated; square, one row per trained experience."""
    cells = experience_accuracies(rows)
    n = max([_n_experiences(rows)] + [max(t, j) + 1 for t, j, _ in cells])
    m = np.full((n, n), np.nan)
    for t, j, v in cells:
        m[t, j] = v
    return m


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
            raise MetricError(f"omega: the offline learner's accuracy at step {t} is {o}, so the ratio is "
                              "undefined; rerun the offline learner's evaluation of that experience")
        ratios.append(float(a) / float(o))
    return _mean(ratios)


def topk_curve(rows: Sequence[Row], k: int) -> List[float]:
    """Top-k accuracy on seen classes after each trained experience, from Avalanche's StreamTopkAccuracy.

    Read like the top-1 curve (per trained experience, task-free key else mean over /TaskNNN keys);
    NaN for an experience without the row, ``[]`` when top-k was not logged.
    """
    for template in TOPK_STREAM_PREFIXES:
        curve = _dense_curve(rows, template.format(k=k))
        if curve:
            return curve
    return []


def task_labels(rows: Sequence[Row]) -> List[int]:
    """Task labels appearing in the per-experience accuracy rows (``.../TaskNNN/ExpMMM``), sorted."""
    labels = set()
    for r in rows:
        if r["metric"].startswith(EXP_ACC_PREFIX):
            m = _EXP_TASK.match(r["metric"][len(EXP_ACC_PREFIX):])
            if m:
                labels.add(int(m.group(1)))
    return sorted(labels)


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


def task_agnostic_curve(rows: Sequence[Row]) -> List[float]:
    """Accuracy when the model must infer the task (arg-max over all heads), per trained experience.

    Reads ``TaskAgnostic_Acc_Stream/eval_phase/test_stream`` (with or without /TaskNNN); NaN for an
    experience without it, ``[]`` when the metric was not logged.
    """
    return _dense_curve(rows, TASK_AGNOSTIC_ACC)


def run_metrics(run_dir: Path, offline_dir: Optional[Path] = None) -> Dict[str, float]:
    """Every metric in :data:`METRICS` for one run folder (its ``metrics.csv``), as fractions.

    ``offline_dir`` is the offline learner's run folder with the same run id (for ``omega_all``,
    NaN without it). Metrics the run did not log are NaN; a mismatched offline run raises MetricError.
    """
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.csv")
    curve = accuracy_curve(rows)
    acc = accuracy_matrix_from_rows(rows)
    top5 = topk_curve(rows, 5)
    aware = task_aware_accuracies(rows)
    omega_all = math.nan
    if offline_dir is not None:
        offline_dir = Path(offline_dir)
        offline = accuracy_curve(read_metrics(offline_dir / "metrics.csv"))
        try:
            omega_all = omega(curve, offline)
        except MetricError as e:
            raise MetricError(f"{run_dir} vs offline run {offline_dir}: {e}") from None
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
        "omega_all": omega_all,
    }
    assert list(out) == list(METRICS)
    return out


__all__ = [
    "METRICS",
    "MetricError",
    "TASK_AGNOSTIC_ACC",
    "TOPK_STREAM_PREFIXES",
    "accuracy_curve",
    "accuracy_matrix_from_rows",
    "average_incremental_accuracy",
    "backward_transfer",
    "forgetting",
    "last_accuracy",
    "omega",
    "run_metrics",
    "task_agnostic_curve",
    "task_aware_accuracies",
    "task_labels",
    "topk_curve",
]
