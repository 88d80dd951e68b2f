"""Indexing speed of 1,000,000 iLab-2M-Light file names (target: < 60 s on one core).

    OMP_NUM_THREADS=1 python perf/bench_indexing.py [--n 1000000] [--repeat 3]

Generates realistic names (sparse instance/background numbers, short backgrounds,
the ``semi`` class) with ``streamcl.benchmarks.synthetic.full_size_names``, shuffles
them (a directory listing has no order), and times ``ilab.index_names`` on them:
parsing, ranking, the balancing rules and the seeded contiguous runs.
"""

from __future__ import annotations

import argparse
import importlib
import random
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="number of file names (default 1,000,000)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")
    args = ap.parse_args()

    synthetic = importlib.import_module("streamcl.benchmarks.synthetic")
    ilab = importlib.import_module("streamcl.benchmarks.raw.ilab")

    scale = 1.0
    names = synthetic.full_size_names("ilab2mlight", seed=0, scale=scale)
    while len(names) < args.n:
        scale *= 1.1 * args.n / len(names)
        names = synthetic.full_size_names("ilab2mlight", seed=0, scale=scale)
    names = names[: args.n]
    random.Random(0).shuffle(names)

    times = []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        df = ilab.index_names(names, seed=0)
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    wall, cpu = min(times)
    print(f"ilab2mlight.index_names: {len(names):,} names -> {len(df):,} rows "
          f"({df['class'].nunique()} classes) in {wall:.2f} s wall, {cpu:.2f} s CPU "
          f"(best of {args.repeat}; {len(names) / wall / 1e6:.2f} M names/s; target < 60 s)")  # fmt: skip


if __name__ == "__main__":
    main()
