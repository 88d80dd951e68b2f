"""Training throughput (images/s) of WA (and DyTox) vs Naive on the same model and class-incremental stream.

A synthetic tree in CIFAR-100's layout (``synthetic_classic``) is cut into class-incremental
experiences; each method trains the same freshly initialised model on every experience and the
images it trains on (exemplars included) are divided by the training time (from the start of an
experience to the end of its ``after_training_exp``, so WA's teacher forward passes, herding and
alignment count; evaluation does not). One function per method builds its strategy
(:func:`naive_strategy`, :func:`wa_strategy`); add a method by adding a function to ``METHODS``.

    OMP_NUM_THREADS=1 python perf/bench_wa_dytox.py                      # CPU, ResNet-32
    python perf/bench_wa_dytox.py --device cuda --classes 20 --train-per-class 200
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any, Callable, Dict, List

import torch
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin

ModelFn = Callable[[], torch.nn.Module]


class Throughput(SupervisedPlugin):
    """Counts training images and the time spent training each experience (after_training_exp included)."""

    def __init__(self) -> None:
        super().__init__()
        self.images = 0
        self.seconds = 0.0
        self._t0 = 0.0

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if strategy.device.type == "cuda":
            torch.cuda.synchronize(strategy.device)
        self._t0 = time.perf_counter()

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self.images += len(strategy.mb_x)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if strategy.device.type == "cuda":
            torch.cuda.synchronize(strategy.device)
        self.seconds += time.perf_counter() - self._t0


def _common(model: torch.nn.Module, args: argparse.Namespace) -> Dict[str, Any]:
    return dict(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4),
        train_mb_size=args.batch,
        eval_mb_size=args.batch,
        train_epochs=args.epochs,
        device=args.device,
        evaluator=EvaluationPlugin(loggers=[]),
    )


def naive_strategy(model: torch.nn.Module, args: argparse.Namespace, probe: Throughput):
    """Avalanche's Naive: cross-entropy finetuning, no memory."""
    from avalanche.training import Naive

    return Naive(plugins=[probe], **_common(model, args))


def wa_strategy(model: torch.nn.Module, args: argparse.Namespace, probe: Throughput):
    """streamcl's WA: KD against the previous model, herded exemplars, clipping and weight aligning."""
    from streamcl.strategies.wa import WA

    return WA(plugins=[probe], memory=args.memory, **_common(model, args))


def dytox_strategy(model: torch.nn.Module, args: argparse.Namespace, probe: Throughput):
    """streamcl's DyTox (needs ``--model dytox`` or ``dytox_small``): memory, KD, divergence head, finetuning.

    AdamW at the paper's base lr (scaled by batch / 512), 1 finetuning epoch, RandAugment on;
    ``perf/bench_dytox.py`` times it against Naive in more detail (CPU time, phases).
    """
    from streamcl.strategies.dytox import DyTox

    common = _common(model, args)
    common["optimizer"] = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-6)
    return DyTox(plugins=[probe], memory=args.memory, warmup_epochs=0, finetune_epochs=1, **common)


METHODS: Dict[str, Callable[..., Any]] = {"naive": naive_strategy, "wa": wa_strategy, "dytox": dytox_strategy}


def model_factory(name: str, n_classes: int) -> ModelFn:
    from streamcl.models.classifiers import cifar_resnet, resnet18

    if name == "resnet32":
        return lambda: cifar_resnet(n_classes, depth=32, bias=False)
    if name == "resnet8":
        return lambda: cifar_resnet(n_classes, depth=8, bias=False)
    if name == "resnet18":
        return lambda: resnet18(n_classes, stem="cifar", bias=False)
    if name in ("dytox", "dytox_small"):  # the paper's CIFAR DyTox network, or a dim-96 one for CPU
        from streamcl.models.dytox import dytox

        widths = dict(embed_dim=96, depth=4, num_heads=4) if name == "dytox_small" else {}
        return lambda: dytox(n_classes, **widths)
    raise SystemExit(f"unknown model {name!r}; choose resnet32, resnet8, resnet18, dytox or dytox_small")


def measure(method: str, make_model: ModelFn, stream: Any, args: argparse.Namespace) -> Dict[str, Any]:
    """Train ``method`` on every experience of ``stream``; returns images, seconds and images/s."""
    torch.manual_seed(0)
    probe = Throughput()
    strategy = METHODS[method](make_model(), args, probe)
    for exp in stream:
        strategy.train(exp, num_workers=args.workers)
    return {"method": method, "images": probe.images, "seconds": probe.seconds,
            "images_per_s": probe.images / probe.seconds if probe.seconds else float("nan")}


def main(argv: List[str] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=sorted(METHODS))
    ap.add_argument("--model", default="resnet32")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--increment", type=int, default=2)
    ap.add_argument("--train-per-class", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--memory", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--data", default=".cache/streamcl")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from streamcl.benchmarks.classic import synthetic_classic

    bm = synthetic_classic(args.data, n_classes=args.classes, train_per_class=args.train_per_class,
                           test_per_class=5, increment=args.increment)
    make_model = model_factory(args.model, args.classes)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"{args.model}, {args.classes} classes in {len(bm.train_stream)} experiences, {args.epochs} epochs, "
          f"batch {args.batch}, {args.device} ({device}, {torch.get_num_threads()} threads)")
    print("| method | images trained | seconds | images/s |\n|---|---:|---:|---:|")
    for method in args.methods:
        r = measure(method, make_model, bm.train_stream, args)
        print(f"| {r['method']} | {r['images']} | {r['seconds']:.1f} | {r['images_per_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
