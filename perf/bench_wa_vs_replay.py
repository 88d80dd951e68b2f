"""WA against Avalanche's replay with the same number of exemplars, on real digits (issue #27).

Where do WA's old classes go? The stream is ``perf/bench_wa_heads.py``'s: scikit-learn's 8x8
digits (shipped with the package), 2/3 train per class, 5 experiences of 2 classes, one class
order per seed, the plain CNN with a given head, SGD (lr 0.05, momentum 0.9, wd 5e-4) or Adam
(lr 1e-3), batch 32, a plain Avalanche ``train`` loop. Methods:

- ``naive``; ``replay``: Avalanche's ``Naive`` + ``ReplayPlugin(mem_size=memory)`` (random
  exemplars; its loader puts a memory batch of 32 beside every batch of 32 new images);
- ``wa``: ``streamcl.strategies.WA`` with its defaults (200 herded exemplars concatenated to the
  experience's data and shuffled into one loader, as the paper, PyCIL and DER; ``loss_scale: ce``);
- ``wa_balanced``: WA with the batches replay uses (``exemplar_sampling: balanced``);
- ``wa_paperloss``: WA with the paper's and DER's ``(1 - l) CE + l KD`` (``loss_scale: paper``);
- ablations: ``wa_noclip`` (``clip_weights: false``), ``wa_noalign`` (``align: false``),
  ``wa_always`` (``max_gamma: null``: align at every gamma, as the reference code), ``wa_pycil``
  (PyCIL's head: no clipping, a trained bias, aligned at every gamma), and combinations.

``--diagnose`` adds, for every experience t > 0 (averaged over its training steps and the
orders), what the old classes receive in training: the share of exemplars in a batch, the
per-image cross-entropy (CE) and distillation (KD, temperature 2, old classes' logits) on the
exemplar (old) and new rows, the share of the loss gradient w.r.t. the logits that falls on the
old rows, the student's and the previous model's true-class logit on the exemplars next to the
student's largest new-class logit there, and for WA the share of classifier weights that
clipping sets to 0 after a step. Replay gets the same figures against its own copy of the model
from the end of the previous experience (it does not train on it).

    OMP_NUM_THREADS=1 python perf/bench_wa_vs_replay.py --diagnose             # linear_bias, sgd+adam
    OMP_NUM_THREADS=1 python perf/bench_wa_vs_replay.py --heads linear_bias linear_nobias incremental \\
        --methods replay wa wa_balanced --json out.json                         # the docs' table

Prints, per (head, optimiser), final accuracy on all classes (mean ± std over the orders and per
order), the accuracy on the old classes (experiences 0-3) and the newest (experience 4) after
the last experience, and the lowest accuracy an experience's classes reach right after it is
trained (``learned``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_wa_heads import make_model, make_optimizer, make_stream  # noqa: E402  (same stream and models)

HEADS = ("linear_bias", "linear_nobias", "incremental", "resnet18")
OPTIMS = ("sgd", "adam")
# name -> WA keyword arguments; ``wa`` is WA's defaults (exemplars concatenated, loss_scale "ce")
WA_METHODS: Dict[str, Dict[str, Any]] = {
    "wa": {},
    "wa_balanced": {"exemplar_sampling": "balanced"},  # a memory batch beside every batch, as replay
    "wa_paperloss": {"loss_scale": "paper"},  # (1 - l) CE + l KD, as the paper and DER
    "wa_paperloss_balanced": {"loss_scale": "paper", "exemplar_sampling": "balanced"},
    "wa_noclip": {"clip_weights": False},
    "wa_noalign": {"align": False},
    "wa_always": {"max_gamma": None},  # align at every gamma, as the reference code
    "wa_paperloss_noclip": {"loss_scale": "paper", "clip_weights": False},
    # PyCIL's head: no clipping, a trained bias, aligned at every gamma
    "wa_pycil": {"clip_weights": False, "classifier_bias": "keep", "max_gamma": None},
}
METHODS = ("naive", "replay", *WA_METHODS)
DIAG_KEYS = ("share", "ce_old", "ce_new", "kd_old", "kd_new", "grad_old", "grad", "logit_s", "logit_t", "logit_new",
             "clip")


def per_class_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Dict[int, float]:
    """Test accuracy (%) of every class id in ``y``, model in eval mode."""
    was = model.training
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    model.train(was)
    return {int(c): 100.0 * float((pred[y == c] == c).float().mean()) for c in torch.unique(y)}


class Diagnostics(SupervisedPlugin):
    """Per-step figures on the old (exemplar) vs the new rows of each training batch (module docstring).

    The KD figures use WA's own temperature-2 KL on the old classes' logits against the model
    from the end of the previous experience (WA's ``old_model``; for other strategies a copy
    this plugin keeps); the gradient share is that of WA's loss for WA and of plain CE otherwise.
    """

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        self.temperature = temperature
        self.teacher: Optional[nn.Module] = None
        self.old: List[int] = []
        self.seen: List[int] = []
        self.steps: List[Dict[str, float]] = []
        self.per_exp: List[Dict[str, float]] = []  # per experience t > 0: mean over its steps

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.old = list(self.seen)
        self.seen = sorted(set(self.seen) | {int(c) for c in strategy.experience.classes_in_this_experience})
        self.steps = []

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        if not self.old:
            return
        teacher = getattr(strategy, "old_model", None) or self.teacher
        y, out = strategy.mb_y, strategy.mb_output.detach()
        old = torch.as_tensor(self.old)
        is_old = torch.isin(y, old)
        with torch.no_grad():
            t_logits = teacher(strategy.mb_x)
        logits = out.clone().requires_grad_(True)
        ce = F.cross_entropy(logits, y, reduction="none")
        tt = self.temperature
        kd = (F.softmax(t_logits[:, old] / tt, 1) * (F.log_softmax(t_logits[:, old] / tt, 1)
                                                     - F.log_softmax(logits[:, old] / tt, 1))).sum(1)
        lam = float(getattr(strategy, "kd_lambda", 0.0)) if hasattr(strategy, "memory") else 0.0
        if getattr(strategy, "loss_scale", "paper") == "ce" and lam < 1.0:
            loss = ce.mean() + lam / (1 - lam) * kd.mean()
        else:
            loss = (1 - lam) * ce.mean() + lam * kd.mean()
        (g,) = torch.autograd.grad(loss, logits)
        gn = g.norm(dim=1)
        new_cols = torch.as_tensor([c for c in self.seen if c not in set(self.old)])
        rows = torch.arange(len(y))
        n_old = int(is_old.sum())

        def mean(v: torch.Tensor, m: torch.Tensor) -> float:
            return float(v[m].mean()) if bool(m.any()) else float("nan")

        self.steps.append({
            "share": n_old / len(y),
            "ce_old": mean(ce.detach(), is_old), "ce_new": mean(ce.detach(), ~is_old),
            "kd_old": mean(kd.detach(), is_old), "kd_new": mean(kd.detach(), ~is_old),
            "grad_old": float(gn[is_old].sum() / gn.sum()), "grad": float(gn.sum()),
            "logit_s": mean(out[rows, y], is_old), "logit_t": mean(t_logits[rows, y], is_old),
            "logit_new": mean(out[:, new_cols].max(1).values, is_old),
            "clip": float(getattr(strategy, "_clip_frac", float("nan"))),
        })

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self.steps:
            self.per_exp.append({k: float(np.nanmean([s[k] for s in self.steps])) for k in DIAG_KEYS})
        self.teacher = copy.deepcopy(strategy.model).eval()


def make_wa(**kw: Any):
    """``WA`` that records the share of classifier weights its clipping zeroes on each step."""
    from streamcl.strategies.wa import WA

    class ProbedWA(WA):
        _clip_frac = float("nan")

        @torch.no_grad()
        def _constrain_classifier(self, clip: bool) -> None:
            if clip:
                self._clip_frac = float((self.classifier.weight < 0).float().mean())
            super()._constrain_classifier(clip)

    return ProbedWA(**kw)


def run_one(method: str, head: str, optim: str, order: int, epochs: int, memory: int,
            diagnose: bool = False) -> Dict[str, Any]:
    """One method on one class order: final, old- and new-class accuracy, per-experience accuracy, diagnostics."""
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin

    torch.manual_seed(order)
    bm = make_stream(order)
    test_x = torch.cat([torch.stack([s[0] for s in e.dataset]) for e in bm.test_stream])
    test_y = torch.cat([torch.as_tensor([int(s[1]) for s in e.dataset]) for e in bm.test_stream])
    model = make_model(head)
    opt = make_optimizer(optim, model)
    diag = Diagnostics() if diagnose else None
    common = dict(model=model, optimizer=opt, train_mb_size=32, train_epochs=epochs, eval_mb_size=256,
                  evaluator=EvaluationPlugin(loggers=[]), plugins=[diag] if diag else [])
    if method == "naive":
        strat = Naive(**common)
    elif method == "replay":
        common["plugins"] = [ReplayPlugin(mem_size=memory), *common["plugins"]]
        strat = Naive(**common)
    else:
        strat = make_wa(memory=memory, **WA_METHODS[method], **common)
    exps: List[List[int]] = []
    matrix: List[List[float]] = []  # matrix[t][k]: accuracy on experience k's classes after experience t
    for exp in bm.train_stream:
        strat.train(exp)
        exps.append([int(c) for c in exp.classes_in_this_experience])
        acc = per_class_accuracy(strat.model, test_x, test_y)
        matrix.append([statistics.mean(acc[c] for c in cls) for cls in exps])
    acc = per_class_accuracy(strat.model, test_x, test_y)
    old = [c for cls in exps[:-1] for c in cls]
    return {"final": statistics.mean(acc.values()), "old": statistics.mean(acc[c] for c in old),
            "new": statistics.mean(acc[c] for c in exps[-1]), "learned": [row[-1] for row in matrix],
            "matrix": matrix, "diag": diag.per_exp if diag else []}


def print_tables(key: str, runs: Dict[str, List[Dict[str, Any]]], orders: Sequence[int], seconds: float) -> None:
    print(f"\n## {key} (accuracy %, orders {list(orders)}; {seconds:.0f} s)\n")
    print("| method | final, mean ± std | per order | old classes | newest classes | learned (min) |")
    print("|---|---:|---|---:|---:|---:|")
    for method, rs in runs.items():
        fin = [r["final"] for r in rs]
        sd = statistics.stdev(fin) if len(fin) > 1 else 0.0
        print(f"| {method} | {statistics.mean(fin):.2f} ± {sd:.2f} | {' / '.join(f'{v:.1f}' for v in fin)} | "
              f"{statistics.mean(r['old'] for r in rs):.1f} | {statistics.mean(r['new'] for r in rs):.1f} | "
              f"{min(min(r['learned']) for r in rs):.1f} |")
    if not any(r["diag"] for rs in runs.values() for r in rs):
        return
    print("\nPer experience t = 1..4, mean over steps and orders: exemplar share of a batch; CE and KD per image "
          "on old | new rows; old rows' share of the loss gradient on the logits and its norm summed over a batch; on exemplars, the student's | "
          "previous model's true-class logit and the student's largest new-class logit; share of classifier "
          "weights clipped per step.\n")
    print("| method | t | exemplars | CE old \\| new | KD old \\| new | grad on old | grad norm | logit student "
          "\\| teacher \\| new | clipped |")
    print("|---|---:|---:|---|---|---:|---:|---|---:|")
    for method, rs in runs.items():
        for t in range(len(rs[0]["diag"])):
            d = {k: float(np.nanmean([r["diag"][t][k] for r in rs])) for k in DIAG_KEYS}
            print(f"| {method} | {t + 1} | {d['share']:.2f} | {d['ce_old']:.2f} \\| {d['ce_new']:.2f} | "
                  f"{d['kd_old']:.3f} \\| {d['kd_new']:.3f} | {d['grad_old']:.2f} | {d['grad']:.2f} | {d['logit_s']:.1f} \\| "
                  f"{d['logit_t']:.1f} \\| {d['logit_new']:.1f} | "
                  + ("" if np.isnan(d["clip"]) else f"{d['clip']:.3f}") + " |")
    for method, rs in runs.items():
        print(f"\n{method}, order {orders[0]}: accuracy on each experience's classes after experience 1..5")
        print("  " + " | ".join(" ".join(f"{v:3.0f}" for v in row) for row in rs[0]["matrix"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", nargs="+", default=["linear_bias"], choices=HEADS)
    ap.add_argument("--optims", nargs="+", default=list(OPTIMS), choices=OPTIMS)
    ap.add_argument("--orders", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["naive", "replay", "wa", "wa_concat"], choices=METHODS)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--memory", type=int, default=200)
    ap.add_argument("--diagnose", action="store_true", help="per-step figures on old vs new rows (slower)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write every run's figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    results: Dict[str, Any] = {}
    for head in args.heads:
        for optim in args.optims:
            key = f"{head}/{optim}"
            t0 = time.perf_counter()
            results[key] = {m: [run_one(m, head, optim, o, args.epochs, args.memory, args.diagnose)
                                for o in args.orders] for m in args.methods}
            print_tables(key, results[key], args.orders, time.perf_counter() - t0)
            sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
