"""Per-call cost of the replay buffer's bookkeeping at 10 k, 100 k and 1 M items (issue 29).

Measures, through the public :class:`streamcl.plugins.CodeBuffer` (32-byte ``uint8`` codes,
1 torch thread, median of repeated calls on a full buffer):

- REMIND, per new image: ``sample(50)`` (the replay draw) and ``add`` of one item when full
  (largest-class eviction), and their sum, the "REMIND step";
- CRUMB, per step: ``sample_per_class(all classes, 1)`` (one item per class) and ``add`` of one
  item to a class at its quota (class-balanced truncation);
- ``sample(50, classes=10 classes)``, a class-restricted draw.

Items are spread evenly over the classes (``label = i % classes``). Run::

    OMP_NUM_THREADS=1 python perf/bench_buffer.py            # 10k/100, 100k/1000, 1M/1000
    OMP_NUM_THREADS=1 python perf/bench_buffer.py --sizes 10000:100 1000000:1000 --json out.json

Done-when (issue 29): at 1 M / 1000 the REMIND step <= 0.2 ms and CRUMB's draw <= 2 ms, each
within 3x of its 10 k / 100 figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch

from streamcl.plugins import CodeBuffer

CODE_BYTES = 32


def median_ms(fn: Callable[[], object], *, min_reps: int = 7, max_reps: int = 2000, budget_s: float = 1.0) -> float:
    """Median wall time of ``fn()`` in ms over repeated calls (at least ``min_reps``, about ``budget_s``)."""
    fn()  # warm-up (first-call allocations, lazy imports)
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def full_buffer(n_items: int, n_classes: int, policy: str, seed: int = 0) -> CodeBuffer:
    """A full buffer of ``n_items`` random 32-byte codes spread evenly over ``n_classes``."""
    buf = CodeBuffer(n_items, (CODE_BYTES,), policy, seed=seed)
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, (n_items, CODE_BYTES), dtype=torch.uint8, generator=g)
    labels = torch.arange(n_items) % n_classes
    if policy == "class_balanced":
        buf.begin_experience(n_items=n_items, classes=range(n_classes))
    buf.add(codes, labels)
    assert len(buf) == n_items, (len(buf), n_items)
    return buf


def bench(n_items: int, n_classes: int, budget_s: float) -> Dict[str, float]:
    """The table row of one buffer size: each operation's median ms."""
    out: Dict[str, float] = {}
    g = torch.Generator().manual_seed(1)
    remind = full_buffer(n_items, n_classes, "largest_class")
    one_code = torch.randint(0, 256, (1, CODE_BYTES), dtype=torch.uint8)
    labels_stream = iter(torch.randint(n_classes, (1_000_000,), generator=g).tolist())

    def admit_remind() -> None:
        remind.add(one_code, torch.tensor([next(labels_stream)]))

    out["draw50"] = median_ms(lambda: remind.sample(50, generator=g), budget_s=budget_s)
    out["admit1_largest"] = median_ms(admit_remind, budget_s=budget_s)
    out["remind_step"] = out["draw50"] + out["admit1_largest"]
    some = list(range(0, n_classes, max(1, n_classes // 10)))[:10]
    out["draw50_10classes"] = median_ms(lambda: remind.sample(50, classes=some, generator=g), budget_s=budget_s)
    all_classes = list(range(n_classes))
    out["per_class_all"] = median_ms(lambda: remind.sample_per_class(all_classes, 1, generator=g),
                                     min_reps=5, budget_s=budget_s)

    crumb = full_buffer(n_items, n_classes, "class_balanced")

    def admit_crumb() -> None:
        crumb.add(one_code, torch.tensor([next(labels_stream)]))

    out["admit1_balanced"] = median_ms(admit_crumb, budget_s=budget_s)
    return out


COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("draw50", "draw 50 (REMIND)"),
    ("admit1_largest", "admit 1 when full, largest-class (REMIND)"),
    ("remind_step", "REMIND step: draw 50 + admit 1"),
    ("draw50_10classes", "draw 50 from 10 classes"),
    ("per_class_all", "one item per class, all classes (CRUMB)"),
    ("admit1_balanced", "admit 1 at quota, class-balanced (CRUMB)"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["10000:100", "100000:1000", "1000000:1000"],
                    help="ITEMS:CLASSES per column")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of repetitions per operation")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes]
    results = {f"{n}:{c}": bench(n, c, args.budget) for n, c in sizes}
    head = "| operation (ms, median) | " + " | ".join(f"{n:,} items / {c:,} classes" for n, c in sizes) + " |"
    print(head)
    print("|---|" + "---:|" * len(sizes))
    for key, name in COLUMNS:
        print(f"| {name} | " + " | ".join(f"{results[f'{n}:{c}'][key]:.4g}" for n, c in sizes) + " |")
    if len(sizes) > 1:
        lo, hi = f"{sizes[0][0]}:{sizes[0][1]}", f"{sizes[-1][0]}:{sizes[-1][1]}"
        print(f"\ngrowth {hi} / {lo}: REMIND step {results[hi]['remind_step'] / results[lo]['remind_step']:.2f}x, "
              f"CRUMB draw {results[hi]['per_class_all'] / results[lo]['per_class_all']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
