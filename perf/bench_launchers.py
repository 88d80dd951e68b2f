"""Issue 10's launcher targets on one small grid: same tables, each unit once, wall-time ratios.

One tiny synthetic experiment (4 cells x 2 runs by default, each unit a few seconds, one torch
thread per unit) is run, each into its own output folder, by:

* ``seq``: the local launcher (sequential, the reference);
* ``ray1`` / ``ray2``: ``--launcher ray`` on a local Ray started on 127.0.0.1 with 2 CPUs,
  ``workers: 1`` / ``workers: 2`` (``num_cpus: 1`` per unit);
* ``sub1`` / ``sub2``: submitit's local executor with ``array_parallelism: 1`` / ``2``
  (submitit's LocalExecutor has no array throttle: the launcher submits the next job when
  one ends);
* ``two``: two ``streamcl run FILE`` processes (local launcher) started at once on one YAML.

Every configuration is timed as the ``streamcl run`` command a user types (interpreter start,
imports, Ray start-up and worker imports included). Checks: (a) summary.csv minus its
wall-time columns is identical everywhere; (b) every unit ran exactly once (its first
experience was trained once, counted from the progress lines / submitit logs / Ray's
per-unit lines) and each ``metrics.csv`` holds the sequential run's rows, none duplicated or
missing; (c) overhead at parallelism 1 (ray1, sub1) < 10 % over seq, and ray2/sub2 <= 0.65x
seq; (d) the two concurrent processes both succeed and share the units without overlap.

    OMP_NUM_THREADS=1 .venv/bin/python perf/bench_launchers.py --out /tmp/bench_launchers
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

REPO = Path(__file__).resolve().parents[1]
STREAMCL = [sys.executable, "-m", "streamcl"]
NONDETERMINISTIC = ("Time", "RAM", "CPU")
METHODS = {
    "naive": {},
    "replay": {"plugins": [{"name": "replay", "mem_size": 16}]},
    "ewc": {"plugins": [{"name": "ewc", "ewc_lambda": 5.0}]},
    "lwf": {"plugins": [{"name": "lwf", "alpha": 1.0, "temperature": 2.0}]},
    "mas": {"plugins": [{"name": "mas", "lambda_reg": 0.5}]},
    "replay_big": {"plugins": [{"name": "replay", "mem_size": 48}]},
}
LAUNCHERS: Dict[str, Any] = {
    "seq": None,
    "ray1": {"name": "ray", "num_cpus_total": 2, "workers": 1, "num_cpus": 1},
    "ray2": {"name": "ray", "num_cpus_total": 2, "workers": 2, "num_cpus": 1},
    "sub1": {"name": "slurm", "executor": "local", "array_parallelism": 1, "cpus_per_task": 1, "time": 60},
    "sub2": {"name": "slurm", "executor": "local", "array_parallelism": 2, "cpus_per_task": 1, "time": 60},
}


def experiment(folder: Path, data: Path, cells: int, runs: int, epochs: int, launcher: Any) -> Path:
    doc = {
        "name": "grid",
        "runs": list(range(runs)),
        "threads": 1,
        "output_dir": str(folder / "runs"),
        "benchmark": {"name": "synthetic", "root": str(data), "layout": "toybox", "n_classes": 4, "n_objects": 2,
                      "image_size": 32},
        "model": {"name": "small_cnn_cut", "width": 8},
        "strategy": {"name": "naive", "train_mb_size": 16, "train_epochs": epochs, "first_experience_epochs": epochs,
                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "evaluation": {"loggers": ["csv"]},
        "methods": dict(list(METHODS.items())[:cells]),
    }
    if launcher is not None:
        doc["launcher"] = launcher
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def table(root: Path) -> List[Dict[str, str]]:
    with open(root / "summary.csv", newline="") as f:
        return [{k: v for k, v in r.items() if not k.startswith("wall_time")} for r in csv.DictReader(f)]


def metric_rows(run_dir: Path) -> List[Tuple[str, ...]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [tuple(r.values()) for r in csv.DictReader(f) if not any(k in r["metric"] for k in NONDETERMINISTIC)]


def first_experience_lines(text: str) -> Dict[str, int]:
    """How many times each unit's first experience was trained, from the runner's progress lines."""
    counts: Dict[str, int] = {}
    for cell, run in re.findall(r"^\[(\S+) run(\d+)\] experience 1/", text, flags=re.M):
        counts[f"{cell}/run{run}"] = counts.get(f"{cell}/run{run}", 0) + 1
    return counts


def timed(cmds: List[List[str]]) -> Tuple[float, List[subprocess.CompletedProcess]]:
    """Start the commands at once, wait for all; wall seconds and their results."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in cmds]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    return wall, [subprocess.CompletedProcess(c, p.returncode, o, "") for c, p, o in zip(cmds, procs, outs)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/streamcl_bench_launchers"))
    ap.add_argument("--cells", type=int, default=4, choices=range(1, len(METHODS) + 1))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per experience (unit length)")
    ap.add_argument("--only", nargs="*", default=list(LAUNCHERS) + ["two"], help="configurations to run")
    ap.add_argument("--json", type=Path, default=None, help="default: OUT/bench_launchers.json")
    args = ap.parse_args()
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    data = out / "data"
    units = [f"{c}/run{r}" for c in list(METHODS)[: args.cells] for r in range(args.runs)]

    # Warm-up (not timed): generate the synthetic dataset, load the libraries into the page cache.
    warm = experiment(out / "warmup", data, 1, 1, 1, None)
    subprocess.run(STREAMCL + ["run", str(warm), "-q"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)

    load_before = os.getloadavg()
    results: Dict[str, Dict[str, Any]] = {}
    for name in args.only:
        launcher = LAUNCHERS.get(name)
        path = experiment(out / name, data, args.cells, args.runs, args.epochs, launcher)
        n_proc = 2 if name == "two" else 1
        wall, procs = timed([STREAMCL + ["run", str(path)] for _ in range(n_proc)])
        root = out / name / "runs" / "grid"
        text = "".join(p.stdout for p in procs)
        if name.startswith("sub"):  # the units' own progress lines are in submitit's per-task logs
            text += "".join(f.read_text() for f in sorted((root / ".slurm").glob("*_log.out")))
        counts = first_experience_lines(text)
        if name.startswith("ray"):  # Ray workers' output stays in Ray's logs: one driver line per unit that ran
            counts = {}
            for cell, run in re.findall(r"^\[(\S+) run(\d+)\] finished \(", text, flags=re.M):
                counts[f"{cell}/run{run}"] = counts.get(f"{cell}/run{run}", 0) + 1
        unit_wall = 0.0
        for u in units:
            s = root / u / "summary.json"
            unit_wall += json.loads(s.read_text())["wall_time_s"] if s.exists() else float("nan")
        results[name] = {
            "wall_s": round(wall, 2),
            "returncodes": [p.returncode for p in procs],
            "ran_once": all(counts.get(u) == 1 for u in units) and set(counts) == set(units),
            "ran_counts": counts,
            "sum_unit_wall_s": round(unit_wall, 2),
        }
        print(f"{name}: {wall:.1f} s, rc {results[name]['returncodes']}, ran once: {results[name]['ran_once']}",
              flush=True)
        for p in procs:
            if p.returncode != 0:
                print(p.stdout[-3000:], file=sys.stderr)
    load_after = os.getloadavg()

    ref = out / "seq" / "runs" / "grid"
    checks: Dict[str, bool] = {}
    for name, r in results.items():
        root = out / name / "runs" / "grid"
        ok_rc = all(rc == 0 for rc in r["returncodes"])
        same = ok_rc and (root / "summary.csv").exists() and table(root) == table(ref)
        rows_ok = ok_rc
        for u in units:
            if not rows_ok:
                break
            rows = metric_rows(root / u)
            rows_ok = rows == metric_rows(ref / u) and len(rows) == len(set(rows))
        r.update(same_table=same, metrics_rows_ok=rows_ok)
        checks[f"(a) {name}: summary table == seq"] = same
        checks[f"(b) {name}: every unit ran once, metrics.csv rows == seq's"] = r["ran_once"] and rows_ok
    seq = results.get("seq", {}).get("wall_s")
    targets = {"ray1": ("<", 1.10), "sub1": ("<", 1.10), "ray2": ("<=", 0.65), "sub2": ("<=", 0.65)}
    for name, (op, limit) in targets.items():
        if name in results and seq:
            ratio = results[name]["wall_s"] / seq
            results[name]["ratio_to_seq"] = round(ratio, 3)
            checks[f"(c) {name}: wall / seq = {ratio:.2f} {op} {limit}"] = ratio < limit if op == "<" else \
                ratio <= limit
    if "two" in results:
        checks["(d) two processes at once: both exit 0, each unit once, rows neither duplicated nor missing"] = (
            results["two"]["ran_once"] and results["two"]["metrics_rows_ok"]
            and all(rc == 0 for rc in results["two"]["returncodes"]))

    print(f"\n{'config':<6} {'wall s':>8} {'x seq':>6} {'units s':>8}  table  once")
    for name, r in results.items():
        ratio = r["wall_s"] / seq if seq else float("nan")
        print(f"{name:<6} {r['wall_s']:>8.1f} {ratio:>6.2f} {r['sum_unit_wall_s']:>8.1f}  "
              f"{'same' if r['same_table'] else 'DIFF':<5}  {'yes' if r['ran_once'] and r['metrics_rows_ok'] else 'NO'}")
    print(f"\nload average (1, 5, 15 min) before {load_before}, after {load_after}; cores: {os.cpu_count()}")
    for what, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {what}")
    report = {"grid": {"cells": args.cells, "runs": args.runs, "epochs": args.epochs}, "results": results,
              "checks": checks, "loadavg_before": load_before, "loadavg_after": load_after, "cpus": os.cpu_count()}
    path = args.json or out / "bench_launchers.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written {path}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
