"""The same stream protocols as continuum scenarios (for the continuum-based WA and DyTox code).

A continuum ``ContinualScenario`` takes its experiences from an explicit task-id
vector and keeps the sample order inside each task, so the continuum stream
holds exactly the Avalanche stream's samples, labels and (``class_instance``)
frame order. Images are passed as paths through ``InMemoryDataset(...,
data_type=TaskType.IMAGE_PATH)`` (``ImageFolderDataset`` would cut paths at
255 bytes). Labels are already remapped by the protocol, so no ``class_order``
is given to continuum. The ``t`` continuum yields is the experience index
(as float64 in some continuum code paths: cast before using it as an index).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
from continuum.datasets import InMemoryDataset
from continuum.scenarios import ContinualScenario
from continuum.tasks import TaskType

from streamcl.benchmarks.dirmap import DirmapSource, load_dirmap
from streamcl.benchmarks.protocols import ProtocolName, SplitView, StreamSplit, make_stream
from streamcl.benchmarks.transforms import transform_list

__all__ = ["ContinuumStreams", "continuum_stream", "split_to_continuum", "to_continuum"]


@dataclass
class ContinuumStreams(SplitView):
    """Train and test continuum scenarios of one protocol run, with its class order and label map."""

    train: ContinualScenario
    test: ContinualScenario
    split: StreamSplit


def split_to_continuum(
    split: StreamSplit,
    image_root: Union[str, Path],
    *,
    image_size: int = 224,
    train_transformations: Optional[List[Callable]] = None,
    eval_transformations: Optional[List[Callable]] = None,
) -> ContinuumStreams:
    """Continuum train/test scenarios holding exactly the experiences of ``split``."""
    image_root = Path(image_root)
    train_t = train_transformations if train_transformations is not None else transform_list(image_size)
    eval_t = eval_transformations if eval_transformations is not None else transform_list(image_size)
    return ContinuumStreams(
        train=_scenario(split.train, image_root, train_t, train=True),
        test=_scenario(split.test, image_root, eval_t, train=False),
        split=split,
    )


def continuum_stream(
    dirmap: DirmapSource,
    root: Union[str, Path],
    *,
    test_sessions: Sequence[int],
    protocol: ProtocolName = "class_instance",
    run: int = 0,
    classes_per_exp: int = 2,
    n_experiences: Optional[int] = None,
    image_size: int = 224,
    test_subsample: Optional[Union[int, float]] = None,
    train_transformations: Optional[List[Callable]] = None,
    eval_transformations: Optional[List[Callable]] = None,
) -> ContinuumStreams:
    """Continuum counterpart of :func:`streamcl.benchmarks.scenarios.from_dirmap` (same arguments, same streams)."""
    split = make_stream(
        load_dirmap(dirmap),
        test_sessions=test_sessions,
        protocol=protocol,
        run=run,
        classes_per_exp=classes_per_exp,
        n_experiences=n_experiences,
        test_subsample=test_subsample,
    )
    return split_to_continuum(
        split,
        root,
        image_size=image_size,
        train_transformations=train_transformations,
        eval_transformations=eval_transformations,
    )


def to_continuum(
    scenario: Any,
    *,
    train_transformations: Optional[List[Callable]] = None,
    eval_transformations: Optional[List[Callable]] = None,
) -> ContinuumStreams:
    """Continuum streams of an Avalanche scenario built by streamcl (same experiences, order and labels)."""
    info = getattr(scenario, "streamcl_info", None)
    if info is None:
        raise ValueError("this scenario was not built by streamcl (no `streamcl_info`)")
    return split_to_continuum(
        info.split,
        info.image_root,
        image_size=info.input_shape[-1],
        train_transformations=train_transformations,
        eval_transformations=eval_transformations,
    )


def _scenario(
    parts: List[pd.DataFrame], image_root: Path, trsf: List[Callable], *, train: bool
) -> ContinualScenario:
    """One ContinualScenario whose task ``i`` is ``parts[i]`` in its row order."""
    x = np.array([str(image_root / p) for df in parts for p in df["im_path"]])
    y = np.concatenate([df["label"].to_numpy(dtype=np.int64) for df in parts])
    t = np.concatenate([np.full(len(df), i, dtype=np.int64) for i, df in enumerate(parts)])
    dataset = InMemoryDataset(x, y, t, data_type=TaskType.IMAGE_PATH, train=train)
    return ContinualScenario(dataset, transformations=trsf)
