"""Peak memory of a streaming run vs stream length (issue target: no growth beyond the buffer).

Runs one method on synthetic Toybox class-instance streams of 2, 4 and 6 experiences (4, 8, 12
classes), each in a fresh process, and prints the process's peak RSS together with the bytes
the replay buffer holds. A method whose memory grows with the stream shows it here.

    python perf/bench_memory.py --method crumb
    python perf/bench_memory.py --method remind --classes 4 8 12
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

METHODS = {
    "naive": [],
    "replay": [{"name": "replay", "memory": {"bytes": "100KB"}}],
    "crumb": [{"name": "crumb", "memory": {"bytes": "100KB"}, "plus_direct_loss": True}],
    "remind": [{"name": "remind", "memory": {"bytes": "100KB"}, "num_codebooks": 8, "lr_schedule": "constant",
                "n_replay": 20}],
}

CHILD = """
import json, resource, sys
from streamcl.config import load_experiment
from streamcl.runner import run_experiment
root = run_experiment(load_experiment(sys.argv[1]), progress=False, restart=True)
summary = json.loads(next(root.glob("*/run0/summary.json")).read_text())
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "stored_bytes": summary["stored_bytes"], "experiences": summary["n_experiences"],
                  "final_accuracy": summary["final_accuracy"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=sorted(METHODS), default="crumb")
    ap.add_argument("--classes", type=int, nargs="+", default=[4, 8, 12])
    ap.add_argument("--data", default=".cache/streamcl")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.classes:
            doc = {
                "name": f"mem{n}", "output_dir": tmp, "runs": [0],
                "benchmark": {"name": "synthetic", "layout": "toybox", "root": args.data, "n_classes": n,
                              "n_objects": 3, "image_size": 32},
                "model": {"name": "small_cnn_cut", "width": 16},
                "strategy": {"name": "naive", "train_mb_size": 21, "first_experience_epochs": 2,
                             "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}},
                "plugins": METHODS[args.method],
                "evaluation": {"metrics": ["accuracy", "replay_bytes"], "loggers": ["csv"]},
            }
            path = Path(tmp) / f"mem{n}.yaml"
            path.write_text(yaml.safe_dump(doc))
            out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"method {args.method}")
    print(f"{'experiences':>11} {'peak RSS (MB)':>14} {'buffer bytes':>13} {'final acc':>9}")
    for r in rows:
        stored = "–" if r["stored_bytes"] is None else r["stored_bytes"]  # None: not measured
        print(f"{r['experiences']:>11} {r['peak_rss_mb']:>14.1f} {stored:>13} {r['final_accuracy']:>9.3f}")
    growth = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    print(f"peak RSS growth from {rows[0]['experiences']} to {rows[-1]['experiences']} experiences: {growth:+.1f} MB")


if __name__ == "__main__":
    main()
