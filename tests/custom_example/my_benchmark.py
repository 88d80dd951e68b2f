"""A benchmark of your own: any function that returns an Avalanche scenario.

Named in YAML by its import path, ``benchmark: {name: my_benchmark:colour_blobs, ...}``;
its keyword arguments are the YAML keys. A parameter called ``run`` receives the run's
class-order seed from streamcl (the run id unless ``class_order_seed`` fixes it).
"""

from __future__ import annotations

import torch
from avalanche.benchmarks import class_incremental_benchmark
from torch.utils.data import TensorDataset


def colour_blobs(run: int = 0, n_classes: int = 4, n_experiences: int = 2, per_class: int = 24,
                 image_size: int = 16):
    """Images of one noisy colour per class, in a class order that depends on ``run``."""
    g = torch.Generator().manual_seed(1234)  # the same images for every run
    colours = torch.rand(n_classes, 3, 1, 1, generator=g)

    def split(n: int) -> TensorDataset:
        y = torch.arange(n_classes).repeat_interleave(n)
        x = colours[y] + 0.2 * torch.randn(len(y), 3, image_size, image_size, generator=g)
        return TensorDataset(x, y)

    return class_incremental_benchmark({"train": split(per_class), "test": split(per_class // 2)},
                                       num_experiences=n_experiences, seed=run)
