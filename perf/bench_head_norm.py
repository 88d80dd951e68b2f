"""Which normalisation for the demo head? The demo's stream, once per head normalisation.

On class-pure streaming batches (the class-instance protocol: 21 consecutive frames of one
object), a BatchNorm head's running statistics follow the latest class, so eval-mode accuracy
can lag train-mode accuracy. This script runs ``experiments/demo.yaml`` (its pretraining
included, since the head is pretrained with its normalisation) for each variant and prints the
final accuracy on seen classes, mean ± std over the runs, per method:

    python perf/bench_head_norm.py                           # batch (momentum 0.1 and 0.01), group, none
    python perf/bench_head_norm.py --methods naive crumb --runs 0 1 2

One process, ``--threads`` torch threads (default 1), sequential variants: compare the rows
with each other, not with timings of other runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Dict, List

VARIANTS = {
    "batch (momentum 0.1)": ["model.head_norm=batch", "model.bn_momentum=0.1"],
    "batch (momentum 0.01)": ["model.head_norm=batch", "model.bn_momentum=0.01"],
    "group (8 groups)": ["model.head_norm=group"],
    "none": ["model.head_norm=none"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default="experiments/demo.yaml")
    ap.add_argument("--methods", nargs="+", default=["naive", "replay", "crumb", "remind"])
    ap.add_argument("--runs", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--json", default=None, help="also write the table here")
    args = ap.parse_args()

    from streamcl.config import load_experiment
    from streamcl.runner import run_experiment

    table: Dict[str, Dict[str, List[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            label = variant.split(" ")[0] + variant.split(" ")[-1].strip(")")
            overrides = VARIANTS[variant] + [f"output_dir={tmp}", f"name=headnorm_{label.replace('.', '_')}",
                                             f"runs={args.runs}", f"threads={args.threads}"]
            exp = load_experiment(args.file, overrides)
            exp.cells = [c for c in exp.cells if c.name in args.methods]
            root = run_experiment(exp, progress=False)
            table[variant] = {}
            for cell in exp.cells:
                accs = [json.loads((root / cell.name / f"run{r}" / "summary.json").read_text())["final_accuracy"]
                        for r in args.runs]
                table[variant][cell.name] = accs
            print(f"done: {variant}", flush=True)

    methods = [m for m in args.methods]
    print("\nfinal accuracy on seen classes (%), mean ± std over runs " + ", ".join(map(str, args.runs)))
    print("| head normalisation | " + " | ".join(methods) + " |")
    print("|---|" + "---:|" * len(methods))
    for variant, per in table.items():
        cells = []
        for m in methods:
            xs = [100 * a for a in per.get(m, [])]
            cells.append(f"{statistics.mean(xs):.2f} ± {(statistics.stdev(xs) if len(xs) > 1 else 0.0):.2f}" if xs else "-")
        print(f"| {variant} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
