"""Training throughput of DyTox vs Naive on the same network and stream.

One synthetic stream (2 experiences of learnable 3 x 32 x 32 tensors, half the
classes each), one network: the paper's CIFAR DyTox transformer (``dytox``: patch 4,
dim 384, 12 heads, 5 SABs + 1 TAB; ``--small`` for a dim-96 one), random init.
Both strategies train the first experience untimed and are timed on the second:

- ``naive``: Avalanche's ``Naive`` on the DyTox network (Avalanche's model adaptation
  adds the task token and head, as DyTox does), cross-entropy, the same optimiser;
- ``dytox``: :class:`streamcl.strategies.DyTox`: the experience plus the rehearsal
  memory, the teacher's forward for KD, the divergence head, the memory update
  (a feature pass over the experience + herding) and the balanced finetuning phase.

Reported: stream images / wall second (what a user waits for), CPU-time figures
(steadier on a shared machine), and the images each method pushed through a
training step. RandAugment is off for both (tensor inputs; it costs the same).

::

    OMP_NUM_THREADS=1 python perf/bench_dytox.py            # ~2 min on 1 core
    python perf/bench_dytox.py --small --n-images 512       # quicker, smaller network
    python perf/bench_dytox.py --device cuda --n-images 4096 --batch 128
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from typing import Any, Dict, List, Optional

import torch


def synthetic_stream(n_images: int, image_size: int, n_classes: int, seed: int = 0):
    """Two experiences of class-dependent tensors (half the classes each), as an Avalanche scenario."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.benchmarks.utils.classification_dataset import (
        ClassificationDataset,
        TaskAwareSupervisedClassificationDataset,
    )
    from avalanche.benchmarks.utils.data_attribute import DataAttribute, TaskLabels
    from avalanche.benchmarks.utils.flat_data import ConstantSequence
    from torch.utils.data import TensorDataset

    class _DS(TaskAwareSupervisedClassificationDataset, ClassificationDataset):
        pass

    g = torch.Generator().manual_seed(seed)
    half = n_classes // 2
    per_exp = n_images // 2
    protos = torch.randn(n_classes, 3, 8, 8, generator=g)
    datasets = []
    for classes in (list(range(half)), list(range(half, n_classes))):
        ys = [classes[i % len(classes)] for i in range(per_exp)]
        x = torch.nn.functional.interpolate(protos[ys], size=(image_size, image_size), mode="bilinear")
        x = x + 0.3 * torch.randn(x.shape, generator=g)
        datasets.append(
            _DS([TensorDataset(x, torch.tensor(ys))],
                data_attributes=[DataAttribute(ys, "targets"), TaskLabels(ConstantSequence(0, len(ys)))])
        )  # fmt: skip
    return with_task_labels(with_classes_timeline(benchmark_from_datasets(train=datasets, test=datasets)))


def image_counter():
    """A plugin counting the images that go through a training step (it sees every phase)."""
    from avalanche.core import SupervisedPlugin

    class Counter(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.images = 0

        def after_training_iteration(self, strategy, **kwargs):
            self.images += int(strategy.mb_x.shape[0])

    return Counter()


def dytox_vs_naive_throughput(
    *,
    n_images: int = 256,
    n_classes: int = 10,
    batch: int = 32,
    epochs: int = 1,
    finetune_epochs: int = 1,
    memory: int = 64,
    small: bool = False,
    device: str = "cpu",
    methods: Optional[List[str]] = None,
) -> Dict[str, Dict[str, Any]]:
    """Time ``strategy.train`` on the second experience for Naive and DyTox on the same DyTox network.

    Returns per method: stream images, wall and CPU seconds, images/s for both, the images
    that went through a training step, and the network's parameter count.
    """
    from avalanche.training import Naive

    from streamcl.models.dytox import dytox, parameter_count
    from streamcl.strategies.dytox import DyTox

    widths = dict(embed_dim=96, depth=4, num_heads=4) if small else {}
    stream = synthetic_stream(n_images, 32, n_classes)
    results: Dict[str, Dict[str, Any]] = {}
    for name in methods or ["naive", "dytox"]:
        torch.manual_seed(0)
        model = dytox(n_classes, **widths)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-6)
        counter = image_counter()
        common = dict(model=model, train_mb_size=batch, eval_mb_size=batch, train_epochs=epochs, device=device,
                      plugins=[counter], evaluator=None)
        if name == "naive":
            strategy = Naive(optimizer=opt, **common)
        elif name == "dytox":
            strategy = DyTox(optimizer=opt, memory=memory, warmup_epochs=0, finetune_epochs=finetune_epochs,
                             augment=None, **common)
        else:
            raise SystemExit(f"unknown method {name!r}; valid: naive, dytox")
        strategy.train(stream.train_stream[0])
        counter.images = 0
        exp = stream.train_stream[1]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        strategy.train(exp)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = len(exp.dataset)
        results[name] = {
            "images": n, "seconds": dt, "images_per_s": n / dt, "cpu_seconds": cpu, "images_per_cpu_s": n / cpu,
            "trained_images": counter.images, "trained_images_per_s": counter.images / dt,
            "parameters": parameter_count(model),
        }  # fmt: skip
    return results


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-images", type=int, default=256, help="images in the stream (2 experiences)")
    ap.add_argument("--n-classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1, help="main-phase epochs (both methods)")
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--memory", type=int, default=64, help="DyTox's rehearsal memory (items)")
    ap.add_argument("--small", action="store_true", help="dim 96, 3 SABs + 1 TAB instead of the paper's network")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or 1)")
    ap.add_argument("--methods", default="naive,dytox")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    results = dytox_vs_naive_throughput(
        n_images=args.n_images, n_classes=args.n_classes, batch=args.batch, epochs=args.epochs,
        finetune_epochs=args.finetune_epochs, memory=args.memory, small=args.small, device=args.device,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
    )  # fmt: skip
    net = "dytox small (dim 96, 3 SABs + 1 TAB)" if args.small else "dytox (paper CIFAR: dim 384, 5 SABs + 1 TAB)"
    print(f"\n{args.device}, {threads} thread(s), {net} @ 32 px, batch {args.batch}, {args.n_images // 2} images "
          f"timed, {args.epochs} epoch(s), DyTox memory {args.memory} + {args.finetune_epochs} finetuning epoch(s)")
    print(f"{'method':<8}{'images':>8}{'wall s':>9}{'images/s':>10}{'CPU s':>9}{'img/CPU s':>10}"
          f"{'trained':>9}{'trained/s':>10}{'params':>11}")  # fmt: skip
    for m, r in results.items():
        print(f"{m:<8}{r['images']:>8}{r['seconds']:>9.2f}{r['images_per_s']:>10.2f}{r['cpu_seconds']:>9.2f}"
              f"{r['images_per_cpu_s']:>10.2f}{r['trained_images']:>9}{r['trained_images_per_s']:>10.2f}"
              f"{r['parameters']:>11}")  # fmt: skip
    if "naive" in results and "dytox" in results:
        ratio = results["dytox"]["images_per_s"] / results["naive"]["images_per_s"]
        print(f"DyTox / Naive stream throughput: {ratio:.2f}x (wall), "
              f"{results['dytox']['images_per_cpu_s'] / results['naive']['images_per_cpu_s']:.2f}x (CPU time)")
    out = {"args": vars(args), "threads": threads, "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
