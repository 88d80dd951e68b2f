"""Reuse streamcl from a plain Avalanche script: no ``streamcl run``, no YAML.

What another Avalanche project would write to use a streamcl benchmark and CRUMB:

1. write a tiny raw dataset in Toybox's real layout (mp4 videos per object and session)
   with ``streamcl.benchmarks.synthetic.generate`` (a real download goes here instead);
2. prepare it once (frame extraction + index) with ``streamcl prepare toybox RAW --out DIR``,
   the command a real download needs too (run here through ``python -m streamcl``);
3. open the prepared folder with ``streamcl.benchmarks.toybox``: an ordinary Avalanche
   ``CLScenario`` (class-instance protocol: clips of consecutive frames, 2 classes per experience);
4. train your own ``nn.Module`` with Avalanche's ``Naive`` strategy and
   ``streamcl.plugins.CRUMBPlugin`` cut at one of its layers (``latent_layer``): the layers up
   to the cut are frozen, their feature maps are stored as codebook indices and replayed.

Runs in well under a minute on a CPU and writes only under ``--workdir`` (default: a temporary
folder, removed at the end)::

    python examples/reuse_with_avalanche.py [--workdir DIR] [--epochs N]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from streamcl.benchmarks import toybox
from streamcl.benchmarks.synthetic import generate
from streamcl.plugins import CRUMBPlugin

IMAGE_SIZE = 32
N_CLASSES = 4  # Toybox layout, 2 classes per experience -> 2 experiences


def small_cnn(num_classes: int) -> nn.Module:
    """Any model works: here a plain CNN whose layer ``trunk2`` is the latent-replay cut (32 x 8 x 8 maps)."""

    def stage(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(OrderedDict(
        trunk1=stage(3, 16),
        trunk2=stage(16, 32),
        head=nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        fc=nn.Linear(32, num_classes),
    ))


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the generated data (default: a temporary folder, removed at the end)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per experience")
    args = parser.parse_args(argv)

    temp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="streamcl-example-")) if temp else args.workdir
    try:
        torch.manual_seed(0)
        raw = generate("toybox", workdir / "raw", n_classes=N_CLASSES, n_objects=2, image_size=IMAGE_SIZE)
        prepared = workdir / "toybox"
        subprocess.run([sys.executable, "-m", "streamcl", "prepare", "toybox", str(raw), "--out", str(prepared),
                        "--workers", "1", "--quiet"], check=True, stdout=subprocess.DEVNULL)
        scenario = toybox(prepared, protocol="class_instance", run=0, image_size=IMAGE_SIZE)

        model = small_cnn(N_CLASSES)
        # metrics are read from strategy.eval's return value: no logger wanted (Avalanche warns otherwise)
        warnings.filterwarnings("ignore", message="No loggers specified")
        strategy = Naive(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=21,
            train_epochs=args.epochs,
            eval_mb_size=64,
            device="cpu",
            plugins=[CRUMBPlugin(latent_layer="trunk2", memory={"bytes": "50KB"}, n_blocks=64, block_dim=16)],
            evaluator=EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[]),
        )

        for t, exp in enumerate(scenario.train_stream):
            strategy.train(exp, shuffle=False)  # class-instance: keep the frames in temporal order
            results = strategy.eval(scenario.test_stream[: t + 1])
            acc = results["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
            print(f"experience {t}: classes {sorted(exp.classes_in_this_experience)}, "
                  f"test accuracy on classes seen so far {acc:.3f}")
        print(f"final accuracy: {acc:.3f}")
        return acc
    finally:
        if temp:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
