"""streamcl.paper_metrics: every metric against hand-worked accuracy matrices and curves."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest

from streamcl.errors import StreamclError
from streamcl.paper_metrics import (
    METRICS,
    RANGES,
    MetricError,
    accuracy_curve,
    accuracy_matrix_from_rows,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    last_accuracy,
    metrics_from_rows,
    omega,
    run_metrics,
    summary_fields,
    task_agnostic_curve,
    task_aware_accuracies,
    topk_curve,
)
from streamcl.results import rows_to_csv_text

NAN = math.nan
STREAM = "Top1_Acc_Stream/eval_phase/test_stream/Task000"
TOP5 = "Topk_5_Acc_Stream/eval_phase/test_stream/Task000"  # Avalanche 0.6's StreamTopkAccuracy name
AGNOSTIC = "TaskAgnostic_Acc_Stream/eval_phase/test_stream"


def exp_acc(task: int, exp: int) -> str:
    return f"Top1_Acc_Exp/eval_phase/test_stream/Task{task:03d}/Exp{exp:03d}"


# acc[t, j] of a 3-experience class-incremental run evaluated on seen experiences (lower triangle).
ACC3 = [[0.90, NAN, NAN],
        [0.95, 0.80, NAN],
        [0.50, 0.70, 0.90]]
CURVE3 = [0.90, 0.80, 0.70]


def run_rows(acc: Sequence[Sequence[float]], curve: Sequence[float], task_of=lambda j: 0,
             skip: Sequence[int] = ()) -> List[list]:
    """Rows as the runner writes them ([experience, step, metric, value]), training rows included.

    ``skip``: trained experiences whose evaluation rows are missing (never evaluated).
    """
    rows = []
    for t, row in enumerate(acc):
        step = 10 * t + 5
        rows.append([t, step - 1, "Top1_Acc_Epoch/train_phase/train_stream/Task000", 0.99])
        rows.append([t, step - 1, "ReplayBytes/train_phase/train_stream", 1000.0 * t])
        if t in skip:
            continue
        for j, v in enumerate(row):
            if not math.isnan(v):
                rows.append([t, step, exp_acc(task_of(j), j), v])
        rows.append([t, step, STREAM, curve[t]])
    return rows


def as_dicts(rows: List[list]) -> List[dict]:
    return [{"experience": e, "step": s, "metric": m, "value": float(v)} for e, s, m, v in rows]


def write_run(run_dir: Path, rows: List[list]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.csv").write_text(rows_to_csv_text(rows))
    return run_dir


# ---- the hand-worked 3x3 matrix -----------------------------------------------------------------

def test_forgetting_hand_worked():
    # T = 3, final row t = 2.
    # j = 0: max(acc[0,0], acc[1,0]) = max(0.90, 0.95) = 0.95; 0.95 - acc[2,0] = 0.95 - 0.50 = 0.45
    # j = 1: max(acc[1,1]) = 0.80; 0.80 - acc[2,1] = 0.80 - 0.70 = 0.10
    # forgetting = (0.45 + 0.10) / 2 = 0.275
    assert forgetting(np.array(ACC3)) == pytest.approx(0.275)


def test_backward_transfer_hand_worked():
    # j = 0: acc[2,0] - acc[0,0] = 0.50 - 0.90 = -0.40
    # j = 1: acc[2,1] - acc[1,1] = 0.70 - 0.80 = -0.10
    # BWT = (-0.40 - 0.10) / 2 = -0.25  (not -forgetting: exp 0 peaked at 0.95 after exp 1)
    assert backward_transfer(np.array(ACC3)) == pytest.approx(-0.25)


def test_forgetting_bwt_positive_transfer():
    # acc[1,0] rises 0.5 -> 0.7: j = 0 forgetting = max(0.5) - 0.7 = -0.2, BWT = 0.7 - 0.5 = +0.2
    acc = np.array([[0.5, NAN], [0.7, 0.9]])
    assert forgetting(acc) == pytest.approx(-0.2)
    assert backward_transfer(acc) == pytest.approx(0.2)


def test_eval_on_all_upper_triangle_ignored():
    # eval_on: all fills acc[t, j] for j > t (unseen experiences); Chaudhry's max runs over t >= j only.
    acc = np.array(ACC3)
    acc[0, 1], acc[0, 2], acc[1, 2] = 0.99, 0.99, 0.99
    assert forgetting(acc) == pytest.approx(0.275)
    assert backward_transfer(acc) == pytest.approx(-0.25)


def test_curve_metrics_hand_worked():
    # (0.90 + 0.80 + 0.70) / 3 = 0.80, first step included; last = 0.70
    assert average_incremental_accuracy(CURVE3) == pytest.approx(0.80)
    assert last_accuracy(CURVE3) == pytest.approx(0.70)


def test_one_experience_and_empty_inputs_are_nan():
    assert math.isnan(forgetting(np.array([[0.9]])))
    assert math.isnan(backward_transfer(np.array([[0.9]])))
    assert math.isnan(forgetting(np.zeros((0, 0))))
    assert math.isnan(backward_transfer(np.zeros((0, 0))))
    assert math.isnan(average_incremental_accuracy([]))
    assert math.isnan(last_accuracy([]))
    assert math.isnan(last_accuracy([NAN, NAN]))


def test_matrix_and_curve_from_rows():
    rows = as_dicts(run_rows(ACC3, CURVE3))
    np.testing.assert_array_equal(accuracy_matrix_from_rows(rows), np.array(ACC3))
    assert accuracy_curve(rows) == pytest.approx(CURVE3)


# ---- missing rows -------------------------------------------------------------------------------

ACC4 = [[0.9, NAN, NAN, NAN],
        [0.6, 0.8, NAN, NAN],
        [0.5, 0.6, 0.9, NAN],  # never written: experience 2 is skipped below
        [0.4, 0.5, 0.7, 0.9]]
CURVE4 = [0.9, 0.7, 0.65, 0.6]


def test_missing_middle_row():
    rows = as_dicts(run_rows(ACC4, CURVE4, skip=[2]))
    acc = accuracy_matrix_from_rows(rows)
    assert acc.shape == (4, 4) and np.isnan(acc[2]).all()
    curve = accuracy_curve(rows)
    assert curve[:2] == pytest.approx([0.9, 0.7]) and math.isnan(curve[2]) and curve[3] == pytest.approx(0.6)
    # missing step skipped: (0.9 + 0.7 + 0.6) / 3 = 0.7333...
    assert average_incremental_accuracy(curve) == pytest.approx(2.2 / 3)
    assert last_accuracy(curve) == pytest.approx(0.6)
    # forgetting, final row t = 3:
    # j = 0: max(acc[0,0], acc[1,0], acc[2,0]=NaN) = 0.9; 0.9 - 0.4 = 0.5
    # j = 1: max(acc[1,1], acc[2,1]=NaN) = 0.8; 0.8 - 0.5 = 0.3
    # j = 2: acc[2,2] NaN, no earlier value -> skipped;  (0.5 + 0.3) / 2 = 0.4
    assert forgetting(acc) == pytest.approx(0.4)
    # BWT: j = 0: 0.4 - 0.9 = -0.5; j = 1: 0.5 - 0.8 = -0.3; j = 2 skipped (acc[2,2] NaN) -> -0.4
    assert backward_transfer(acc) == pytest.approx(-0.4)


def test_missing_final_row_uses_last_evaluated():
    rows = as_dicts(run_rows(ACC3, CURVE3, skip=[2]))  # trained 3 experiences, last one never evaluated
    curve = accuracy_curve(rows)
    assert len(curve) == 3 and math.isnan(curve[2])
    assert last_accuracy(curve) == pytest.approx(0.80)
    acc = accuracy_matrix_from_rows(rows)
    # final evaluated row is t = 1: j = 0: max(acc[0,0]) - acc[1,0] = 0.90 - 0.95 = -0.05; BWT +0.05
    assert forgetting(acc) == pytest.approx(-0.05)
    assert backward_transfer(acc) == pytest.approx(0.05)


def test_run_metrics_with_missing_row_does_not_crash(tmp_path):
    run = write_run(tmp_path / "run0", run_rows(ACC4, CURVE4, skip=[2]))
    m = run_metrics(run)
    assert m["final_accuracy"] == pytest.approx(0.6)
    assert m["average_incremental_accuracy"] == pytest.approx(2.2 / 3)
    assert m["forgetting"] == pytest.approx(0.4)
    assert m["bwt"] == pytest.approx(-0.4)


# ---- omega ----------------------------------------------------------------------------------------

def test_omega_worked_example():
    # (0.9/0.9 + 0.6/0.8 + 0.5/1.0) / 3 = (1 + 0.75 + 0.5) / 3 = 0.75
    assert omega([0.9, 0.6, 0.5], [0.9, 0.8, 1.0]) == pytest.approx(0.75)


def test_omega_skips_steps_the_run_lacks():
    # step 1 missing in the run (even where offline is 0): (1 + 0.5) / 2 = 0.75
    assert omega([0.9, NAN, 0.5], [0.9, 0.0, 1.0]) == pytest.approx(0.75)


@pytest.mark.parametrize("offline, fragment", [
    ([0.9, 0.8], "3 steps but the offline learner has 2"),
    ([0.9, 0.0, 1.0], "after experience 2 "),  # index 1: users count experiences from 1
    ([0.9, NAN, 1.0], "after experience 2 "),
])
def test_omega_errors(offline, fragment):
    with pytest.raises(MetricError, match=fragment) as e:
        omega([0.9, 0.6, 0.5], offline)
    assert isinstance(e.value, StreamclError)


# ---- top-k, multi-task --------------------------------------------------------------------------

def test_topk_curve():
    rows = run_rows(ACC3, CURVE3)
    for t, v in enumerate([1.0, 0.95, 0.90]):
        rows.append([t, 10 * t + 5, TOP5, v])
        rows.append([t, 10 * t + 5, "Topk_50_Acc_Stream/eval_phase/test_stream/Task000", 0.0])  # not k=5
    rows = as_dicts(rows)
    assert topk_curve(rows, 5) == pytest.approx([1.0, 0.95, 0.90])
    assert topk_curve(rows, 3) == []
    assert topk_curve(rows, 1) == pytest.approx(CURVE3)  # Top1_Acc_Stream


def test_topk_curve_alternative_name():
    rows = as_dicts([[0, 5, "Top5_Acc_Stream/eval_phase/test_stream/Task000", 0.8],
                     [1, 15, "Top5_Acc_Stream/eval_phase/test_stream/Task000", 0.6]])
    assert topk_curve(rows, 5) == pytest.approx([0.8, 0.6])


# Multi-head (MAS-like): experience j is task j, each evaluated with its own head.
ACC_MT = [[0.9, NAN, NAN],
          [0.8, 0.9, NAN],
          [0.7, 0.8, 0.9]]


def multi_task_rows(agnostic=(0.9, 0.5, 0.4)) -> List[list]:
    rows = []
    for t, row in enumerate(ACC_MT):
        for j in range(t + 1):
            rows.append([t, 10 * t + 5, exp_acc(j, j), row[j]])
            rows.append([t, 10 * t + 5, f"Top1_Acc_Stream/eval_phase/test_stream/Task{j:03d}", row[j]])
        if agnostic:
            rows.append([t, 10 * t + 5, AGNOSTIC, agnostic[t]])
    return rows


def test_task_aware_multi_head():
    rows = as_dicts(multi_task_rows())
    # per step mean over seen tasks: [0.9, (0.8+0.9)/2 = 0.85, (0.7+0.8+0.9)/3 = 0.8]
    assert task_aware_accuracies(rows) == pytest.approx([0.9, 0.85, 0.8])
    assert task_agnostic_curve(rows) == pytest.approx([0.9, 0.5, 0.4])


def test_task_aware_empty_for_single_task():
    rows = as_dicts(run_rows(ACC3, CURVE3))
    assert task_aware_accuracies(rows) == []
    assert task_agnostic_curve(rows) == []


def test_run_metrics_multi_head(tmp_path):
    m = run_metrics(write_run(tmp_path / "run0", multi_task_rows()))
    assert m["task_aware_final_accuracy"] == pytest.approx(0.8)
    assert m["task_aware_average_accuracy"] == pytest.approx(0.85)  # (0.9 + 0.85 + 0.8) / 3
    assert m["task_agnostic_final_accuracy"] == pytest.approx(0.4)
    # the stream curve is the mean over the per-task stream keys, like results.accuracy_per_experience
    assert m["final_accuracy"] == pytest.approx(0.8)
    # forgetting: j=0: 0.9 - 0.7 = 0.2, j=1: 0.9 - 0.8 = 0.1 -> 0.15
    assert m["forgetting"] == pytest.approx(0.15)
    assert math.isnan(m["top5_final_accuracy"])


# ---- run_metrics ----------------------------------------------------------------------------------

def test_run_metrics_single_task(tmp_path):
    rows = run_rows(ACC3, CURVE3)
    rows += [[t, 10 * t + 5, TOP5, v] for t, v in enumerate([1.0, 0.95, 0.90])]
    run = write_run(tmp_path / "exp" / "cell" / "run0", rows)
    offline = write_run(tmp_path / "exp" / "offline" / "run0", run_rows(ACC3, [0.90, 1.0, 0.875]))
    m = run_metrics(run, offline)
    assert list(m) == list(METRICS)
    assert m["final_accuracy"] == pytest.approx(0.70)
    assert m["average_incremental_accuracy"] == pytest.approx(0.80)
    assert m["forgetting"] == pytest.approx(0.275)
    assert m["bwt"] == pytest.approx(-0.25)
    assert m["top5_final_accuracy"] == pytest.approx(0.90)
    assert m["top5_average_incremental_accuracy"] == pytest.approx(0.95)
    for key in ("task_aware_final_accuracy", "task_aware_average_accuracy", "task_agnostic_final_accuracy"):
        assert math.isnan(m[key])
    # (0.9/0.9 + 0.8/1.0 + 0.7/0.875) / 3 = (1 + 0.8 + 0.8) / 3
    assert m["omega_all"] == pytest.approx(2.6 / 3)
    assert math.isnan(run_metrics(run)["omega_all"])


def test_run_metrics_offline_mismatch_names_folders(tmp_path):
    run = write_run(tmp_path / "cell" / "run0", run_rows(ACC3, CURVE3))
    offline = write_run(tmp_path / "offline" / "run0", run_rows(ACC3[:2], CURVE3[:2]))
    with pytest.raises(MetricError, match="offline run .*offline.*run0"):
        run_metrics(run, offline)


def test_metrics_table():
    for name, (unit, description, higher) in METRICS.items():
        assert unit == ("ratio" if name == "omega_all" else "%")
        assert isinstance(description, str) and description
        assert higher is (name != "forgetting")


def test_import_light():
    code = ("import sys, streamcl.paper_metrics; "
            "heavy = {'scipy', 'torch', 'avalanche', 'matplotlib', 'pandas', 'streamcl.report'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- one computation for summary.json and the tables; the rows read by streamcl.results -------------

def test_summary_fields_are_metrics_from_rows_json_ready():
    rows = as_dicts(run_rows(ACC3, CURVE3))
    m = metrics_from_rows(rows)
    f = summary_fields(rows)
    assert (f["final_accuracy"], f["average_incremental_accuracy"], f["forgetting"], f["bwt"]) == \
        (m["final_accuracy"], m["average_incremental_accuracy"], m["forgetting"], m["bwt"])
    assert f["forgetting"] == pytest.approx(0.275)  # Chaudhry's, whether or not Avalanche's StreamForgetting ran
    assert f["accuracy_per_experience"] == pytest.approx(CURVE3)
    assert f["stored_bytes"] == 2000  # the last ReplayBytes row (1000 * t, t = 2)
    single = summary_fields(as_dicts(run_rows([[0.9]], [0.9])))
    assert single["forgetting"] is None and single["bwt"] is None  # NaN (one experience) -> JSON null


def test_ranges():
    assert RANGES["final_accuracy"] == (0.0, 1.0) and RANGES["top5_final_accuracy"] == (0.0, 1.0)
    assert RANGES["forgetting"] == (-1.0, 1.0) and RANGES["bwt"] == (-1.0, 1.0)  # differences of accuracies
    assert RANGES["omega_all"] == (0.0, math.inf) and set(RANGES) == set(METRICS)


def test_results_groups_rows_and_tells_unmeasured_bytes_from_zero(tmp_path):
    from streamcl import results

    rows = as_dicts(run_rows(ACC3, CURVE3))
    by_exp = results.rows_by_experience(list(reversed(rows)))
    assert list(by_exp) == [0, 1, 2] and all(r["experience"] == t for t, rs in by_exp.items() for r in rs)
    assert results.n_experiences(rows) == 3 and results.n_experiences([]) == 0
    assert results.replay_bytes(rows) == 2000
    assert results.replay_bytes([r for r in rows if not r["metric"].startswith("ReplayBytes")]) is None
    assert results.replay_bytes(as_dicts([[0, 1, "ReplayBytes/train_phase/train_stream", 0.0]])) == 0
    run = write_run(tmp_path / "run0", run_rows(ACC3, CURVE3))
    assert results.read_run(run) == rows
