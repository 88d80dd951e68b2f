"""WA keeps its old classes against Avalanche's replay with the same number of exemplars (issue #27).

Real images (scikit-learn's 8x8 digits), 5 experiences of 2 classes, 200 exemplars, 20 epochs,
batch 32, 3 class orders, a plain CNN with several heads and both optimisers: the runs are
``perf/bench_wa_vs_replay.py``'s, whose tables (and the docs' WA section) hold the full figures.
Averaged over the orders, WA with its defaults must end within 2 points of Avalanche's
``Naive`` + ``ReplayPlugin(mem_size=200)`` (or above it), keep its old classes (experiences 0-3)
well above chance after the last experience, and have learned each experience's new classes.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

PERF = Path(__file__).resolve().parents[1] / "perf"
ORDERS = (0, 1, 2)


@pytest.fixture(scope="module")
def bench(perf_script):
    return perf_script("bench_wa_vs_replay")


# (head, optimiser): the biased nn.Linear head with SGD runs in the default suite (about 1 min on
# one thread); the rest are slow.
@pytest.mark.parametrize("head, optim", [
    ("linear_bias", "sgd"),
    pytest.param("linear_bias", "adam", marks=pytest.mark.slow),
    pytest.param("linear_nobias", "sgd", marks=pytest.mark.slow),
    pytest.param("linear_nobias", "adam", marks=pytest.mark.slow),
    pytest.param("incremental", "sgd", marks=pytest.mark.slow),
    # measured 70.67 against replay's 72.91 (-2.24; orders 62.2 / 70.8 / 79.0 against 73.4 / 69.1 / 76.2):
    # the one case of six outside the 2-point margin, kept visible rather than loosened
    pytest.param("incremental", "adam", marks=[pytest.mark.slow, pytest.mark.xfail(
        strict=False, reason="WA 70.67 vs replay 72.91 over 3 orders (perf/bench_wa_vs_replay.py)")]),
])
def test_wa_keeps_old_classes_at_least_as_well_as_replay(bench, head, optim):
    import torch

    torch.set_num_threads(1)
    wa = [bench.run_one("wa", head, optim, o, epochs=20, memory=200) for o in ORDERS]
    replay = [bench.run_one("replay", head, optim, o, epochs=20, memory=200) for o in ORDERS]

    def mean(runs, key):
        return statistics.mean(r[key] for r in runs)

    summary = {k: (round(mean(wa, k), 1), round(mean(replay, k), 1)) for k in ("final", "old", "new")}
    assert mean(wa, "final") >= mean(replay, "final") - 2.0, summary
    # the old classes (experiences 0-3) survive the last experience: well above chance (10 %), and not far
    # below what replay keeps
    assert mean(wa, "old") >= max(30.0, mean(replay, "old") - 10.0), summary
    # every experience's new classes were learned when trained (2 of 10 classes; 50 % = one of the two)
    assert min(statistics.mean(r["learned"][t] for r in wa) for t in range(5)) >= 60.0, [r["learned"] for r in wa]


# The commands docs/methods.md shows (tests/test_readme.py maps them here), run as shown but on one
# class order and one epoch: the table's figures need the full runs (minutes each).
DOC_COMMANDS = (
    "--epochs 20 --methods replay wa wa_balanced wa_paperloss --diagnose",
    "--epochs 20 --heads linear_nobias incremental --methods replay wa",
)


@pytest.mark.parametrize("args", DOC_COMMANDS)
def test_bench_commands_as_the_docs_show_them(args):
    import os
    import subprocess

    argv = args.replace("--epochs 20", "--epochs 1").split() + ["--orders", "0", "--optims", "sgd"]
    proc = subprocess.run([sys.executable, str(PERF / "bench_wa_vs_replay.py"), *argv], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    for method in args.split("--methods ")[1].split(" --")[0].split():
        assert method in proc.stdout, (method, proc.stdout[-2000:])
