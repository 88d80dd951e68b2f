"""A run's results on disk: ``metrics.csv`` rows and the accuracy figures read from them.

The one module that reads metrics rows: parsing ``metrics.csv``, grouping a run's rows by
trained experience, and the accuracy curves and matrix those rows hold. The paper metrics
(:mod:`streamcl.paper_metrics`), the report and the runner all read rows through it, so a
metric name or a file-format rule is decided here once.

Below the runner and the report (both import this module, neither imports the
other). Metric names are Avalanche's; they are matched by prefix, so a plain
single-task stream (``Top1_Acc_Stream/eval_phase/test_stream``), a stream with
task label 0 (``.../Task000``) and a multi-task stream (``.../Task000``,
``.../Task001`` ...) all read the same way.

Experiences are numbered from 0 here, as in ``metrics.csv`` (``curve[t]`` is experience t);
whatever shows them to a user numbers them from 1, as the runner's "experience 1/3" does.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from streamcl.errors import StreamclError

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
METRICS_HEADER = ["experience", "step", "metric", "value"]
STREAM_ACC_PREFIX = "Top1_Acc_Stream/eval_phase/test_stream"
# The single-task key (kept for callers that read one task's stream accuracy directly).
STREAM_ACC = STREAM_ACC_PREFIX + "/Task000"
EXP_ACC_PREFIX = "Top1_Acc_Exp/eval_phase/test_stream"
REPLAY_BYTES = "ReplayBytes/train_phase/train_stream"
FORGETTING = "StreamForgetting/eval_phase/test_stream"
BWT = "StreamBWT/eval_phase/test_stream"
# Avalanche 0.6's StreamTopkAccuracy is named "Topk_<k>_Acc_Stream" (topk_acc.py, __str__);
# "Top<k>_Acc_Stream" is accepted too, like Top1_Acc_Stream is spelled.
TOPK_STREAM_PREFIXES = ("Topk_{k}_Acc_Stream/eval_phase/test_stream", "Top{k}_Acc_Stream/eval_phase/test_stream")
TASK_AGNOSTIC_ACC = "TaskAgnostic_Acc_Stream/eval_phase/test_stream"

_TASK_SUFFIX = re.compile(r"^(/Task\d+)?$")
_EXP_KEY = re.compile(r"^(?:/Task\d+)?/Exp(\d+)$")
_EXP_TASK = re.compile(r"^/Task(\d+)/Exp\d+$")

Row = Dict[str, Any]


class ResultsError(StreamclError):
    """A results file (``metrics.csv``, ``summary.json``) that cannot be read."""


# ------------------------------------------------------------------------------ files


def read_metrics(path: Path) -> List[Row]:
    """Rows of a run's ``metrics.csv`` as dicts (experience:int, step:int, metric:str, value:float).

    A file that is not such a table raises :class:`ResultsError` naming it.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != METRICS_HEADER:
                raise ValueError(f"header {reader.fieldnames!r} is not {','.join(METRICS_HEADER)}")
            return [{"experience": int(r["experience"]), "step": int(r["step"]), "metric": r["metric"],
                     "value": float(r["value"])} for r in reader]
    except FileNotFoundError:
        raise ResultsError(f"{path}: not found; rerun the experiment to write it") from None
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, csv.Error) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ResultsError(
            f"{path}: not a streamcl metrics table ({reason}); delete its run folder and rerun the experiment"
        ) from None


def read_run(run_dir: Path) -> List[Row]:
    """The rows of the run folder's ``metrics.csv`` (:func:`read_metrics`): how every reader finds them."""
    return read_metrics(Path(run_dir) / METRICS_FILE)


def read_summary(path: Path) -> Dict[str, Any]:
    """A run's ``summary.json``; an unreadable one raises :class:`ResultsError` naming it."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "final_accuracy" not in data:
            raise ValueError("not a run summary")
        return data
    except FileNotFoundError:
        raise ResultsError(f"{path}: not found; rerun the experiment to write it") from None
    except (ValueError, UnicodeDecodeError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ResultsError(f"{path}: unreadable run summary ({reason})") from None


def rows_to_csv_text(rows: Iterable[Sequence[Any]]) -> str:
    """``metrics.csv`` text for ``[experience, step, metric, value]`` rows (header included)."""
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(METRICS_HEADER)
    w.writerows(rows)
    return buf.getvalue()


# ------------------------------------------------------------------------------ grouping rows


def rows_by_experience(rows: Sequence[Row]) -> Dict[int, List[Row]]:
    """A run's rows grouped by the experience trained before they were logged, in experience order."""
    out: Dict[int, List[Row]] = {}
    for r in sorted(rows, key=lambda r: int(r["experience"])):
        out.setdefault(int(r["experience"]), []).append(r)
    return out


def n_experiences(rows: Sequence[Row]) -> int:
    """How many experiences the rows cover (highest experience index + 1; 0 without rows)."""
    return max((int(r["experience"]) for r in rows), default=-1) + 1


def last_values(rows: Sequence[Row]) -> Dict[str, float]:
    """The last value logged for each metric name."""
    return {r["metric"]: r["value"] for r in rows}


def replay_bytes(rows: Sequence[Row]) -> Optional[int]:
    """Bytes the method stores, as last logged by the ``replay_bytes`` metric; None when it was not measured.

    None and 0 differ: 0 is a method measured to store nothing (LwF, EWC), None a run whose
    ``evaluation.metrics`` left ``replay_bytes`` out, so nobody knows what it stores.
    """
    value = last_values(rows).get(REPLAY_BYTES)
    return None if value is None or math.isnan(float(value)) else int(value)


# ------------------------------------------------------------------------------ accuracy


def is_stream_accuracy(metric: str) -> bool:
    """True for Avalanche's stream accuracy, with or without a task suffix."""
    return metric.startswith(STREAM_ACC_PREFIX) and bool(_TASK_SUFFIX.match(metric[len(STREAM_ACC_PREFIX):]))


def stream_accuracy(values: Dict[str, float]) -> Optional[float]:
    """Accuracy on the evaluated stream from one evaluation's metric values.

    The task-free key if present, else the mean over the per-task keys (task-incremental
    streams report one stream accuracy per task label; equal-size tasks make the mean the
    overall accuracy).
    """
    if STREAM_ACC_PREFIX in values:
        return float(values[STREAM_ACC_PREFIX])
    per_task = [float(v) for k, v in values.items() if is_stream_accuracy(k)]
    return sum(per_task) / len(per_task) if per_task else None


def _stream_values(rows: Sequence[Row]) -> Dict[str, float]:
    """The stream accuracy keys among ``rows`` (last value of each)."""
    return {r["metric"]: r["value"] for r in rows if is_stream_accuracy(r["metric"])}


def accuracy_per_experience(rows: Sequence[Row]) -> List[float]:
    """Stream accuracy after each evaluated experience, in experience order (experiences never evaluated left out).

    :func:`accuracy_curve` keeps those in place (NaN), so that ``curve[t]`` is always experience t.
    """
    out = []
    for exp_rows in rows_by_experience(rows).values():
        acc = stream_accuracy(_stream_values(exp_rows))
        if acc is not None:
            out.append(acc)
    return out


def _dense_curve(rows: Sequence[Row], prefix: str) -> List[float]:
    """Per trained experience, the stream accuracy logged under ``prefix`` (optionally /TaskNNN), NaN where absent.

    Read like the top-1 stream accuracy (task-free key, else mean over per-task keys) by renaming
    the metric to Top-1's; ``[]`` when no row has the metric.
    """
    renamed = [dict(r, metric=STREAM_ACC_PREFIX + r["metric"][len(prefix):]) for r in rows
               if r["metric"].startswith(prefix)]
    by_exp = rows_by_experience(renamed)
    out = []
    for t in range(n_experiences(rows)):
        acc = stream_accuracy(_stream_values(by_exp.get(t, [])))
        out.append(math.nan if acc is None else acc)
    return [] if all(math.isnan(v) for v in out) else out


def accuracy_curve(rows: Sequence[Row]) -> List[float]:
    """Top-1 accuracy on seen classes after each trained experience, NaN for an experience never evaluated.

    Unlike :func:`accuracy_per_experience`, a missing step stays in place, so ``curve[t]`` is always
    experience t (needed to pair a run's steps with an offline run's, and to plot them).
    """
    return _dense_curve(rows, STREAM_ACC_PREFIX)


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


def task_agnostic_curve(rows: Sequence[Row]) -> List[float]:
    """Accuracy when the model must infer the task (arg-max over all heads), per trained experience.

    Reads ``TaskAgnostic_Acc_Stream/eval_phase/test_stream`` (with or without /TaskNNN); NaN for an
    experience without it, ``[]`` when the metric was not logged.
    """
    return _dense_curve(rows, TASK_AGNOSTIC_ACC)


def experience_accuracies(rows: Sequence[Row]) -> List[Tuple[int, int, float]]:
    """``(trained experience t, evaluated experience j, accuracy)`` for every per-experience accuracy row."""
    out = []
    for r in rows:
        if r["metric"].startswith(EXP_ACC_PREFIX):
            m = _EXP_KEY.match(r["metric"][len(EXP_ACC_PREFIX):])
            if m:
                out.append((r["experience"], int(m.group(1)), r["value"]))
    return out


def accuracy_matrix_from_rows(rows: Sequence[Row]) -> np.ndarray:
    """``acc[t, j]`` from the ``Top1_Acc_Exp`` rows, NaN where not evaluated; square, one row per trained experience."""
    cells = experience_accuracies(rows)
    n = max([n_experiences(rows)] + [max(t, j) + 1 for t, j, _ in cells])
    m = np.full((n, n), np.nan)
    for t, j, v in cells:
        m[t, j] = v
    return m


def task_labels(rows: Sequence[Row]) -> List[int]:
    """Task labels appearing in the per-experience accuracy rows (``.../TaskNNN/ExpMMM``), sorted."""
    labels = set()
    for r in rows:
        if r["metric"].startswith(EXP_ACC_PREFIX):
            m = _EXP_TASK.match(r["metric"][len(EXP_ACC_PREFIX):])
            if m:
                labels.add(int(m.group(1)))
    return sorted(labels)


__all__ = [
    "METRICS_FILE",
    "METRICS_HEADER",
    "STREAM_ACC",
    "STREAM_ACC_PREFIX",
    "EXP_ACC_PREFIX",
    "SUMMARY_FILE",
    "TASK_AGNOSTIC_ACC",
    "TOPK_STREAM_PREFIXES",
    "ResultsError",
    "read_metrics",
    "read_run",
    "read_summary",
    "accuracy_curve",
    "accuracy_matrix_from_rows",
    "accuracy_per_experience",
    "experience_accuracies",
    "n_experiences",
    "replay_bytes",
    "rows_by_experience",
    "stream_accuracy",
    "task_agnostic_curve",
    "task_labels",
    "topk_curve",
]
