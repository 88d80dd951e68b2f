"""Does WA's weight aligning help on real images, whatever the head? (issue #18)

Real handwritten digits (scikit-learn's ``load_digits``: 1 797 scanned 8x8 images, shipped
inside the package, so nothing is downloaded), split 2/3 train and 1/3 test per class, in a
class-incremental stream of 5 experiences of 2 classes, one class order per seed. A plain
Avalanche loop (``train`` / ``eval`` per experience, no streamcl runner) trains each method on
each head and optimiser:

- heads: ``linear_bias`` (a plain CNN ending in ``nn.Linear(64, 10)`` with its default bias),
  ``linear_nobias`` (the same with ``bias=False``), ``incremental`` (the CNN trunk with Avalanche's
  ``IncrementalClassifier``, which has a bias and grows), ``resnet18`` (torchvision's, random
  weights, its ``fc`` with a bias, one input channel);
- optimisers: SGD (lr 0.05, momentum 0.9, weight decay 5e-4) and Adam (lr 1e-3);
- methods: ``naive``, ``replay`` (Avalanche's ``ReplayPlugin``, 200 images), and WA (200 herded
  exemplars): ``wa`` (its defaults), without aligning (``wa_noalign``, ``wa_noalign_keep`` with a
  trained bias), and aligning at every gamma (``max_gamma: null``) for each ``classifier_bias``.

For every aligning run it also records the accuracy on the seen classes' test images right before
and right after each alignment, which is the claim in question: aligning must not lower it.

    OMP_NUM_THREADS=1 python perf/bench_wa_heads.py                 # everything (about 40 min, 1 thread)
    python perf/bench_wa_heads.py --heads linear_bias --optims sgd --orders 0 1 2 --json out.json

Prints one table per (head, optimiser): final accuracy on all seen classes (mean ± std over the
orders, and each order), and for WA the mean change of seen-class accuracy at alignment.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from torch import nn

HEADS = ("linear_bias", "linear_nobias", "incremental", "resnet18")
OPTIMS = ("sgd", "adam")
# WA variants: name -> WA keyword arguments (``wa`` is WA's defaults: bias-free head, align only when gamma <= 1).
WA_VARIANTS: Dict[str, Dict[str, Any]] = {
    "wa_noalign": {"align": False},
    "wa_noalign_keep": {"align": False, "classifier_bias": "keep"},
    "wa": {},
    "wa_always": {"max_gamma": None},
    "wa_scale_always": {"classifier_bias": "scale", "max_gamma": None},
    "wa_keep_always": {"classifier_bias": "keep", "max_gamma": None},
}
NEEDS_BIAS = ("wa_noalign_keep", "wa_scale_always", "wa_keep_always")  # the same run as another without a bias


def digits_split(seed: int = 0):
    """(x_train, y_train, x_test, y_test): the digits as 1x8x8 float tensors in [0, 1], 2/3 train per class."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == c))
        cut = (2 * len(idx)) // 3
        train_idx += idx[:cut].tolist()
        test_idx += idx[cut:].tolist()
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def class_order(order: int) -> List[int]:
    """Order 0 is 0..9; order k > 0 a seeded permutation."""
    return list(range(10)) if order == 0 else np.random.default_rng(order).permutation(10).tolist()


def make_stream(order: int):
    """Avalanche's ``nc_benchmark`` over the digits: 5 experiences of 2 classes, ids remapped by arrival."""
    from avalanche.benchmarks import nc_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_ds

    xtr, ytr, xte, yte = digits_split()
    return nc_benchmark(tensor_ds(xtr, ytr), tensor_ds(xte, yte), n_experiences=5, task_labels=False,
                        fixed_class_order=class_order(order), class_ids_from_zero_from_first_exp=True)


def make_model(head: str) -> nn.Module:
    """The issue's plain CNN (conv-ReLU-pool, conv-ReLU, GAP, Linear) with the given head, or resnet18."""
    if head == "resnet18":
        from torchvision.models import resnet18

        m = resnet18(num_classes=10)
        m.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
        return m
    trunk = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if head == "incremental":
        from avalanche.models import IncrementalClassifier

        from streamcl.models.classifiers import IncrementalNet

        return IncrementalNet(trunk, IncrementalClassifier(64, 2))
    return nn.Sequential(trunk, nn.Linear(64, 10, bias=head == "linear_bias"))


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return torch.optim.Adam(model.parameters(), lr=1e-3)


@torch.no_grad()
def seen_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seen: Sequence[int]) -> float:
    """Accuracy (%) on the test images of the ``seen`` classes (stream ids), model in eval mode."""
    was = model.training
    model.eval()
    keep = torch.isin(y, torch.as_tensor(list(seen)))
    pred = model(x[keep]).argmax(1)
    model.train(was)
    return 100.0 * float((pred == y[keep]).float().mean())


def run_one(method: str, head: str, optim: str, order: int, epochs: int, memory: int) -> Dict[str, Any]:
    """Train ``method`` on one class order; final accuracy on seen classes and the accuracy around each alignment."""
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin

    from streamcl.strategies.wa import WA, align_gamma

    torch.manual_seed(order)
    bm = make_stream(order)
    test_x = torch.cat([torch.stack([s[0] for s in e.dataset]) for e in bm.test_stream])
    test_y = torch.cat([torch.as_tensor([int(s[1]) for s in e.dataset]) for e in bm.test_stream])
    model = make_model(head)
    opt = make_optimizer(optim, model)
    common = dict(train_mb_size=32, train_epochs=epochs, eval_mb_size=256, evaluator=EvaluationPlugin(loggers=[]))
    around: List[List[float]] = []
    gammas: List[float] = []
    if method == "naive":
        strat = Naive(model=model, optimizer=opt, **common)
    elif method == "replay":
        strat = Naive(model=model, optimizer=opt, plugins=[ReplayPlugin(mem_size=memory)], **common)
    else:
        class Probe(WA):
            def _align_and_log(self) -> None:
                before = seen_accuracy(self.model, test_x, test_y, self.seen_classes)
                if self.old_classes and self.new_classes:  # gamma as computed, whether applied or not
                    gammas.append(align_gamma(self.classifier.weight.detach(), self.old_classes, self.new_classes))
                super()._align_and_log()
                if self.last_gamma is not None:
                    around.append([before, seen_accuracy(self.model, test_x, test_y, self.seen_classes)])

        strat = Probe(model=model, optimizer=opt, memory=memory, **WA_VARIANTS[method], **common)
    seen: List[int] = []
    learned: List[float] = []  # accuracy on each experience's own classes right after training it
    for exp in bm.train_stream:
        strat.train(exp)
        now = [int(c) for c in exp.classes_in_this_experience]
        seen += now
        learned.append(seen_accuracy(strat.model, test_x, test_y, now))
    final = seen_accuracy(strat.model, test_x, test_y, seen)
    return {"final": final, "around_align": around, "gammas": gammas, "learned": learned}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    ap.add_argument("--optims", nargs="+", default=list(OPTIMS), choices=OPTIMS)
    ap.add_argument("--orders", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["naive", "replay", *WA_VARIANTS],
                    choices=["naive", "replay", *WA_VARIANTS])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--memory", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write every run's figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    results: Dict[str, Any] = {}
    for head in args.heads:
        for optim in args.optims:
            key = f"{head}/{optim}"
            results[key] = {}
            t0 = time.perf_counter()
            for method in args.methods:
                if head == "linear_nobias" and method in NEEDS_BIAS:
                    continue  # no bias: the same run as its bias-free twin
                results[key][method] = [run_one(method, head, optim, o, args.epochs, args.memory)
                                        for o in args.orders]
            print(f"\n## {key} (final accuracy on seen classes %, orders {args.orders}; "
                  f"{time.perf_counter() - t0:.0f} s)\n")
            print("| method | mean ± std | per order | seen-class change at alignment (mean, n) | gamma (computed) |")
            print("|---|---:|---|---:|---|")
            for method, runs in results[key].items():
                finals = [r["final"] for r in runs]
                sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
                deltas = [b - a for r in runs for a, b in r["around_align"]]
                gam = [g for r in runs for g in r["gammas"]]
                dtxt = f"{statistics.mean(deltas):+.2f} ({len(deltas)})" if deltas else ""
                gtxt = f"{min(gam):.2f}-{max(gam):.2f}" if gam else ""
                print(f"| {method} | {statistics.mean(finals):.2f} ± {sd:.2f} | "
                      f"{' / '.join(f'{v:.1f}' for v in finals)} | {dtxt} | {gtxt} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
