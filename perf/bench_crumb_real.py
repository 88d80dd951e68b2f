"""Does CRUMB learn every experience of a real image stream, and beat raw-image replay at equal bytes? (issue #26)

Real handwritten digits (scikit-learn's ``load_digits``: 1 797 scanned 8x8 images shipped with the
package, nothing downloaded), bilinearly upsampled to 28x28 (the size of the issue's images) and
split 2/3 train, 1/3 test per class. REMIND's base-initialisation protocol, per class order:

- pretraining: ``small_cnn_cut`` (width 16, 1 channel; trunk included) and CRUMB's 256 x 16
  codebook on 4 base classes, 10 epochs (SGD lr 0.01, batch 32), with the pretraining of the
  recipe being measured (``paper``: the gradient-trained codebook; ``balanced``: refit by k-means);
- stream: the 6 other classes, 3 experiences of 2, one pass, batch 4, SGD lr 0.01 momentum 0.9,
  the trunk frozen, the head's classifier new (6 outputs), trunk and head loaded from the file.

Every replay method gets the same bytes (default 24 kB: 30 raw 28x28 uint8 images, ~4 % of the
stream as in the issue, or a 16 kB float32 codebook + 76 CRUMB items of 98 code bytes).
Accuracy is measured on the direct path ``head(trunk(x))`` among the classes seen so far, for
every method alike. Printed per method: accuracy on the classes just trained after each experience
(the minimum over orders and experiences), final accuracy on the 6 classes (mean ± std over orders),
and for CRUMB the codebook's relative reconstruction error on new data and on stored classes.

``--probe`` also instruments CRUMB's steps (every 4th step, without changing training): the
gradient norm on the head's parameters of the new data's loss and of the weighted replay loss,
and the new-vs-old logit margin (largest new-class logit minus largest old-class logit) on new
items and on replayed old items: the head separates them when the first is positive and the
second negative.

    OMP_NUM_THREADS=1 python perf/bench_crumb_real.py                       # ~5 min, 1 thread
    python perf/bench_crumb_real.py --methods crumb crumb_paper replay --orders 0 1 2 --probe
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_wa_heads import class_order, digits_split  # noqa: E402  (the same digits split and class orders)

SIZE = 28
N_BASE = 4
# method -> (CRUMBPlugin keyword arguments, or None for a non-CRUMB method)
METHODS: Dict[str, Optional[Dict[str, Any]]] = {
    "naive": None,
    "replay": None,  # raw-image replay (Avalanche's ReplayPlugin), same bytes
    "crumb": {},  # the default recipe (balanced)
    "crumb_paper": {"recipe": "paper"},  # the authors' settings
    "crumb_paper_kmeans": {"recipe": "paper", "init": "kmeans"},  # paper replay step, k-means codebook
    "crumb_paper_w1": {"recipe": "paper", "replay_weight": 1.0},  # paper, replay weight 1
    "crumb_gradient_codebook": {"init": "distmatch_sparse"},  # balanced replay, the paper's codebook
    "crumb_separate_w1": {"replay_mode": "separate"},  # balanced but the paper's separate step
    "crumb_no_replay": {"no_replay": True},
}
DEFAULT_METHODS = ("naive", "replay", "crumb", "crumb_paper", "crumb_paper_kmeans", "crumb_paper_w1",
                   "crumb_gradient_codebook", "crumb_separate_w1")


def digits(seed: int = 0):
    """(x_train, y_train, x_test, y_test): bench_wa_heads' split of the digits, upsampled to 1 x 28 x 28."""
    x_tr, y_tr, x_te, y_te = digits_split(seed)
    return _upsample(x_tr), y_tr, _upsample(x_te), y_te


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp_(0, 1)


def _tensor_ds(x, y):
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

    return _make_taskaware_tensor_classification_dataset(x, y)


def pretrain(order: int, recipe: str, workdir: Path, *, epochs: int = 10, init: Optional[str] = None) -> Path:
    """Trunk + head + codebook on the base classes of ``order`` (cached per order / recipe / init)."""
    from streamcl.models.splitnet import small_cnn_cut
    from streamcl.plugins.crumb import CRUMBPlugin

    path = workdir / f"pretrained_o{order}_{recipe}_{init or 'recipe'}_e{epochs}.pt"
    if path.exists():
        return path
    xtr, ytr, _, _ = digits()
    base = class_order(order)[:N_BASE]
    keep = torch.isin(ytr, torch.tensor(base))
    remap = {c: i for i, c in enumerate(base)}
    yb = torch.tensor([remap[int(c)] for c in ytr[keep]])
    torch.manual_seed(order)
    model = small_cnn_cut(N_BASE, width=16, in_channels=1, seed=order)
    plugin = CRUMBPlugin(recipe=recipe, init=init, seed=order)
    plugin.pretrain(model, _tensor_ds(xtr[keep], yb), epochs=epochs, mb_size=32, lr=0.01, train_trunk=True)
    plugin.save_pretrained(path, model)
    return path


def stream(order: int):
    """The 6 non-base classes as Avalanche's ``nc_benchmark``: 3 experiences of 2, ids 0..5 by arrival."""
    from avalanche.benchmarks import nc_benchmark

    xtr, ytr, xte, yte = digits()
    cls = class_order(order)[N_BASE:]
    mtr, mte = torch.isin(ytr, torch.tensor(cls)), torch.isin(yte, torch.tensor(cls))
    return nc_benchmark(_tensor_ds(xtr[mtr], ytr[mtr]), _tensor_ds(xte[mte], yte[mte]), n_experiences=3,
                        task_labels=False, fixed_class_order=cls, class_ids_from_zero_from_first_exp=True)


def _probe_class():
    """A CRUMBPlugin that measures the new data's and the replay's pull on the head every 4th step."""
    from streamcl.plugins.crumb import CRUMBPlugin

    class ProbedCRUMB(CRUMBPlugin):
        def __init__(self, **kw: Any):
            super().__init__(**kw)
            self.probes: List[Dict[str, Any]] = []
            self._step = 0

        def before_backward(self, strategy: Any, *a: Any, **k: Any) -> None:
            self._step += 1
            if self._step % 4 == 0 and self._feats is not None:
                self._probe(strategy)
            super().before_backward(strategy, *a, **k)

        def _probe(self, strategy: Any) -> None:
            sample = self.sample_replay(strategy, strategy.mb_y)
            if sample is None or self.codec is None:
                return
            params = [p for p in strategy.model.parameters() if p.requires_grad]
            new_cls = torch.unique(strategy.mb_y)
            f = self._feats if self.train_path == "direct" else self.codec.reconstruct(self._feats)
            out_new = self.mask(self.head(strategy, f))
            loss_new = strategy._criterion(out_new, strategy.mb_y)
            out_rep = self.mask(self.head(strategy, self.codec.decode(sample[0].to(strategy.device))))
            loss_rep = float(self.replay_weight or 1.0) * strategy._criterion(out_rep, sample[1].to(strategy.device))
            g_new = torch.autograd.grad(loss_new, params, retain_graph=False, allow_unused=True)
            g_rep = torch.autograd.grad(loss_rep, params, retain_graph=False, allow_unused=True)

            def norm(gs):
                return math.sqrt(sum(float(g.pow(2).sum()) for g in gs if g is not None))

            old_cls = torch.as_tensor([c for c in self.seen_classes if c not in set(new_cls.tolist())])

            def margin(out):  # largest new-class logit minus largest old-class logit, mean over items
                out = out.detach()
                return float((out[:, new_cls].max(1).values - out[:, old_cls].max(1).values).mean())

            self.probes.append({
                "exp": int(strategy.clock.train_exp_counter), "g_new": norm(g_new), "g_replay": norm(g_rep),
                "margin_new": margin(out_new), "margin_replay": margin(out_rep),
            })

    return ProbedCRUMB


@torch.no_grad()
def _accuracy(model, x, y, seen: int, classes: Sequence[int], codec=None) -> float:
    """% correct among the ``seen`` first classes on test items of ``classes`` (direct path, or the codec's)."""
    keep = torch.isin(y, torch.as_tensor(list(classes)))
    was = model.training
    model.eval()
    f = model.trunk(x[keep])
    out = model.head(codec.reconstruct(f) if codec is not None else f)[:, :seen]
    model.train(was)
    return 100.0 * float((out.argmax(1) == y[keep]).float().mean())


def run_one(method: str, order: int, *, memory: int = 24_000, mb: int = 4, lr: float = 0.01,
            workdir: Path = Path(".cache/bench_crumb_real"), probe: bool = False) -> Dict[str, Any]:
    """Train ``method`` on one class order; accuracy on the just-trained classes per experience and final."""
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    from streamcl.models.splitnet import small_cnn_cut
    from streamcl.plugins.crumb import CRUMBPlugin
    from streamcl.plugins.raw_replay import RawReplayPlugin

    workdir.mkdir(parents=True, exist_ok=True)
    kw = METHODS[method]
    recipe = (kw or {}).get("recipe", "balanced")
    path = pretrain(order, recipe, workdir, init=(kw or {}).get("init"))
    t0 = time.time()
    torch.manual_seed(order)
    bm = stream(order)
    model = small_cnn_cut(6, width=16, in_channels=1, weights=str(path), seed=order)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    plugins: List[Any] = []
    crumb = None
    if kw is not None:
        cls = _probe_class() if probe else CRUMBPlugin
        crumb = cls(memory={"bytes": memory}, pretrained=None if kw.get("storage") else str(path), seed=order, **kw)
        plugins.append(crumb)
    elif method == "replay":
        plugins.append(RawReplayPlugin(memory={"bytes": memory}))
    strategy = Naive(model=model, optimizer=opt, train_mb_size=mb, train_epochs=1, eval_mb_size=256,
                     plugins=plugins, evaluator=EvaluationPlugin(loggers=[]))
    test_x = torch.cat([torch.stack([s[0] for s in e.dataset]) for e in bm.test_stream])
    test_y = torch.cat([torch.as_tensor([int(s[1]) for s in e.dataset]) for e in bm.test_stream])
    just, just_rec, errors = [], [], []
    for i, exp in enumerate(bm.train_stream):
        strategy.train(exp)
        seen = 2 * (i + 1)
        just.append(_accuracy(model, test_x, test_y, seen, exp.classes_in_this_experience))
        if crumb is not None and crumb.storage == "codes":
            just_rec.append(_accuracy(model, test_x, test_y, seen, exp.classes_in_this_experience, crumb.codec))
            metrics = strategy.evaluator.get_all_metrics()
            errors.append({k: metrics[f"CodecError_{n}/train_phase/train_stream"][1][-1]
                           for k, n in (("new", "New"), ("stored", "Stored"), ("base", "Base"))
                           if f"CodecError_{n}/train_phase/train_stream" in metrics})
    out: Dict[str, Any] = {
        "method": method, "order": order, "just_trained": just, "just_trained_reconstructed": just_rec,
        "final": _accuracy(model, test_x, test_y, 6, range(6)), "codec_errors": errors,
        "bytes": crumb.replay_nbytes() if crumb is not None else memory, "seconds": time.time() - t0,
    }
    if crumb is not None and probe:
        out["probes"] = crumb.probes
    return out


def summarize(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    finals = [r["final"] for r in runs]
    summary = {"final_mean": statistics.mean(finals), "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
               "min_just_trained": min(min(r["just_trained"]) for r in runs), "finals": finals}
    errs = [e for r in runs for e in r["codec_errors"]]
    for k in ("new", "stored", "base"):
        vals = [e[k] for e in errs if k in e]
        if vals:
            summary[f"codec_error_{k}"] = statistics.mean(vals)
    probes = [p for r in runs for p in r.get("probes", []) if p["exp"] > 0]
    if probes:
        for k in ("g_new", "g_replay", "margin_new", "margin_replay"):
            summary[k] = statistics.mean(p[k] for p in probes)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    ap.add_argument("--orders", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--memory", type=int, default=24_000, help="bytes per replay method")
    ap.add_argument("--mb", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--probe", action="store_true", help="instrument CRUMB's steps (gradient norms, logits)")
    ap.add_argument("--workdir", default=".cache/bench_crumb_real")
    ap.add_argument("--json", help="write every run's numbers there")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    results: Dict[str, Any] = {}
    print(f"digits 28x28, base-init: 4 base classes, 3 experiences of 2, one pass, batch {args.mb}, lr {args.lr}, "
          f"{args.memory} bytes per replay method, orders {args.orders}")
    print("| method | final acc. (mean ± std) | min acc. on just-trained classes | codebook error new / stored |")
    print("|---|---:|---:|---:|")
    for method in args.methods:
        runs = [run_one(method, o, memory=args.memory, mb=args.mb, lr=args.lr, workdir=Path(args.workdir),
                        probe=args.probe) for o in args.orders]
        s = summarize(runs)
        results[method] = {"summary": s, "runs": runs}
        err = (f"{100 * s['codec_error_new']:.1f} / {100 * s.get('codec_error_stored', float('nan')):.1f} %"
               if "codec_error_new" in s else "")
        print(f"| {method} | {s['final_mean']:.1f} ± {s['final_std']:.1f} | {s['min_just_trained']:.1f} | {err} |",
              flush=True)
        if args.probe and "g_new" in s:
            print(f"    probe (experiences 2-3): |grad new| {s['g_new']:.2f}, |grad replay x weight| {s['g_replay']:.2f}, "
                  f"new-minus-old logit margin on new items {s['margin_new']:.2f}, on replayed items "
                  f"{s['margin_replay']:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
