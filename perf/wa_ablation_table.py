"""Markdown table of a WA ablation run folder (e.g. ``runs/synthetic_wa_ablation`` from experiments/synthetic/wa_ablation.yaml).

Per cell, over its runs (class orders): final and average incremental accuracy on the seen classes,
the classifier's norm ratio ``mean ||w_new|| / mean ||w_old||`` before and after aligning (mean over
experiences t > 0), and the share of test predictions on the newest classes at the end next to their
true share. Reads only ``metrics.csv`` files.

    python perf/wa_ablation_table.py runs/synthetic_wa_ablation
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Dict, List

import numpy as np

ACC_PREFIX = "Top1_Acc_Stream/eval_phase/test_stream/Task"
BEFORE = "WA_NormRatio_BeforeAlign/train_phase/train_stream"
AFTER = "WA_NormRatio_AfterAlign/train_phase/train_stream"
PRED = "WA_NewClassPredShare/eval_phase/test_stream"
TRUE = "WA_NewClassTrueShare/eval_phase/test_stream"


def read_run(path: Path) -> Dict[str, Dict[int, float]]:
    """metric -> {experience: value} of one run's metrics.csv."""
    out: Dict[str, Dict[int, float]] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            out.setdefault(r["metric"], {})[int(r["experience"])] = float(r["value"])
    return out


def accuracy_per_experience(run: Dict[str, Dict[int, float]]) -> List[float]:
    names = [m for m in run if m.startswith(ACC_PREFIX)]
    if not names:
        return []
    exps = sorted({e for m in names for e in run[m]})
    return [float(np.mean([run[m][e] for m in names if e in run[m]])) for e in exps]


def _pm(values: List[float], scale: float = 1.0, digits: int = 2) -> str:
    v = np.asarray(values, dtype=float) * scale
    sd = v.std(ddof=1) if len(v) > 1 else 0.0  # sample std, as streamcl report's summary tables
    return f"{v.mean():.{digits}f} ± {sd:.{digits}f}" if len(v) else "-"


def table(root: Path) -> str:
    lines = ["| cell | runs | final accuracy (%) | avg. incremental accuracy (%) | norm ratio new/old before "
             "aligning | after aligning | newest-class share of predictions (true share) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for cell in sorted(p for p in root.iterdir() if p.is_dir()):
        runs = [read_run(p) for p in sorted(cell.glob("run*/metrics.csv"))]
        if not runs:
            continue
        accs = [accuracy_per_experience(r) for r in runs]
        final = [a[-1] for a in accs if a]
        avg_inc = [float(np.mean(a)) for a in accs if a]
        before = [float(np.mean(list(r.get(BEFORE, {}).values()))) for r in runs if r.get(BEFORE)]
        after = [float(np.mean(list(r.get(AFTER, {}).values()))) for r in runs if r.get(AFTER)]
        pred = [r[PRED][max(r[PRED])] for r in runs if r.get(PRED)]
        true = [r[TRUE][max(r[TRUE])] for r in runs if r.get(TRUE)]
        lines.append(f"| {cell.name} | {len(runs)} | {_pm(final, 100)} | {_pm(avg_inc, 100)} | {_pm(before)} | "
                     f"{_pm(after, digits=3)} | {_pm(pred)} ({np.mean(true):.2f}) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="the experiment's run folder (output_dir/name)")
    print(table(ap.parse_args().root))


if __name__ == "__main__":
    main()
