"""A run's results on disk: ``metrics.csv`` rows and the accuracy figures read from them.

Below the runner and the report (both import this module, neither imports the
other). Metric names are Avalanche's; they are matched by prefix, so a plain
single-task stream (``Top1_Acc_Stream/eval_phase/test_stream``), a stream with
task label 0 (``.../Task000``) and a multi-task stream (``.../Task000``,
``.../Task001`` ...) all read the same way.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from streamcl.errors import StreamclError

METRICS_HEADER = ["experience", "step", "metric", "value"]
STREAM_ACC_PREFIX = "Top1_Acc_Stream/eval_phase/test_stream"
# The single-task key (kept for callers that read one task's stream accuracy directly).
STREAM_ACC = STREAM_ACC_PREFIX + "/Task000"
EXP_ACC_PREFIX = "Top1_Acc_Exp/eval_phase/test_stream"
REPLAY_BYTES = "ReplayBytes/train_phase/train_stream"
FORGETTING = "StreamForgetting/eval_phase/test_stream"
BWT = "StreamBWT/eval_phase/test_stream"

_TASK_SUFFIX = re.compile(r"^(/Task\d+)?$")
_EXP_KEY = re.compile(r"^(?:/Task\d+)?/Exp(\d+)$")

Row = Dict[str, Any]


class ResultsError(StreamclError):
    """A results file (``metrics.csv``, ``summary.json``) that cannot be read."""


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


def accuracy_per_experience(rows: Sequence[Row]) -> List[float]:
    """Stream accuracy after each trained experience, in experience order."""
    by_exp: Dict[int, Dict[str, float]] = {}
    for r in rows:
        if is_stream_accuracy(r["metric"]):
            by_exp.setdefault(r["experience"], {})[r["metric"]] = r["value"]
    out = []
    for t in sorted(by_exp):
        acc = stream_accuracy(by_exp[t])
        if acc is not None:
            out.append(acc)
    return out


def experience_accuracies(rows: Sequence[Row]) -> List[Tuple[int, int, float]]:
    """``(trained experience t, evaluated experience j, accuracy)`` for every per-experience accuracy row."""
    out = []
    for r in rows:
        if r["metric"].startswith(EXP_ACC_PREFIX):
            m = _EXP_KEY.match(r["metric"][len(EXP_ACC_PREFIX):])
            if m:
                out.append((r["experience"], int(m.group(1)), r["value"]))
    return out


def last_values(rows: Sequence[Row]) -> Dict[str, float]:
    """The last value logged for each metric name."""
    return {r["metric"]: r["value"] for r in rows}


__all__ = [
    "METRICS_HEADER",
    "STREAM_ACC",
    "STREAM_ACC_PREFIX",
    "EXP_ACC_PREFIX",
    "ResultsError",
    "read_metrics",
    "read_summary",
    "accuracy_per_experience",
    "experience_accuracies",
    "stream_accuracy",
]
