"""Walking an experience's data outside Avalanche's training loop (fitting a codec, filling the buffer).

A latent-replay plugin sometimes needs the trunk features of a whole experience, in stream
order and without augmentation: to fit a codec on them (``fit_codec="first_experience"``,
REMIND's base initialisation) or to encode the items it keeps (``store="experience"``). These
helpers find that dataset and batch it; the plugin runs the cut's frozen part on the batches.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["experience_dataset", "iterate_batches", "dataset_targets"]


def experience_dataset(strategy: Any, dataset: Any = None) -> Any:
    """``dataset``, else the strategy's adapted training dataset, else its experience's dataset."""
    ds = dataset if dataset is not None else getattr(strategy, "adapted_dataset", None)
    if ds is None:
        ds = strategy.experience.dataset
    return ds


def iterate_batches(strategy: Any, dataset: Any = None, desc: Optional[str] = None) -> Iterator[Tuple[Tensor, Tensor]]:
    """``(x, y)`` batches of ``dataset`` (default: :func:`experience_dataset`) in order, on the strategy's device.

    Batches hold ``eval_mb_size`` items (else ``train_mb_size``, else 32); no shuffling, no workers.
    With ``desc``, a transient tqdm bar shows the pass (on a terminal only: tqdm's ``disable=None``).
    uint8 frame-cache batches are normalised on the device as the strategy's own loop does
    (its ``DeviceTransformPlugin``), since these passes feed the trunk outside that loop.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from streamcl.benchmarks.device_transforms import maybe_normalize

    ds = experience_dataset(strategy, dataset)
    mb = int(getattr(strategy, "eval_mb_size", None) or getattr(strategy, "train_mb_size", 32) or 32)
    loader = DataLoader(ds, batch_size=mb, shuffle=False, num_workers=0)
    if desc is not None:
        loader = tqdm(loader, desc=desc, unit="batch", leave=False, disable=None)
    for batch in loader:
        yield maybe_normalize(batch[0].to(strategy.device), strategy), batch[1].to(strategy.device)


def dataset_targets(ds: Any) -> Optional[Tensor]:
    """A dataset's labels as an int64 tensor without loading its inputs (Avalanche's
    ``targets`` attribute), or None when it has none of the right length."""
    t = getattr(ds, "targets", None)
    if t is None:
        return None
    try:
        t = torch.as_tensor(list(t) if not isinstance(t, Tensor) else t, dtype=torch.long)
    except (TypeError, ValueError, RuntimeError):
        return None
    return t if t.dim() == 1 and len(t) == len(ds) else None
