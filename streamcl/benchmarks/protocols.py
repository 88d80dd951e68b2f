"""Stream protocols over any dirmap: which images each experience holds, in which order, with which labels.

Pure pandas/numpy so that the stream logic is testable without images or
Avalanche. :func:`make_stream` returns a :class:`StreamSplit`; scenario
builders (Avalanche in ``scenarios.py``, continuum in ``continuum_bridge.py``)
only turn its tables into datasets.

Protocols (per run ``r``; every random choice comes from a local
``numpy.random.default_rng(r)``, global RNGs are never touched):

- ``class_iid``: the classes, shuffled, are grouped ``classes_per_exp`` per
  experience; an experience holds all training images of its classes, shuffled.
- ``class_instance``: same classes per experience; its (class, object, session)
  clips are shuffled and each clip's frames come in ``im_num`` order. Train with
  shuffling off so that mini-batches are consecutive frames.
- ``iid``: all training images shuffled, cut into ``n_experiences``.
- ``instance``: all training clips shuffled (frames in order), cut into
  ``n_experiences`` at clip boundaries.
- ``offline``: one experience with all training images shuffled (pretraining,
  joint-training upper bound).

Train/test are split by session. Labels: for the class protocols experience
``t`` holds labels ``k*t .. k*t+k-1`` (``k = classes_per_exp``), i.e.
``class_order[label] == class``; for the other protocols labels follow the
order of first appearance in the training stream. Test experiences: for the
class protocols, test experience ``t`` holds the test images of train
experience ``t``'s classes, so ``test_stream[:t+1]`` covers exactly the classes
seen so far; ``iid``/``instance``/``offline`` see every class from the start and
have a single test experience with all test images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence, Union, get_args

import numpy as np
import pandas as pd

from streamcl.benchmarks.dirmap import DirmapSource, load_dirmap
from streamcl.errors import DatasetError

ProtocolName = Literal["class_instance", "class_iid", "instance", "iid", "offline"]
PROTOCOLS = get_args(ProtocolName)
CLASS_PROTOCOLS = ("class_instance", "class_iid")

_CLIP = ["class", "object", "session"]


@dataclass
class StreamSplit:
    """Per-experience train/test tables of one protocol run (index = ``sample_id``, column ``label`` added)."""

    protocol: str
    run: int
    train: List[pd.DataFrame]
    test: List[pd.DataFrame]
    class_order: List[Any]
    label_map: Dict[Any, int]
    test_sessions: List[int] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        """Number of classes (labels run 0..n_classes-1)."""
        return len(self.class_order)

    @property
    def n_experiences(self) -> int:
        """Number of training experiences."""
        return len(self.train)

    def train_ids(self) -> List[np.ndarray]:
        """``sample_id``s of each training experience, in stream order."""
        return [df.index.to_numpy(dtype=np.int64) for df in self.train]

    def test_ids(self) -> List[np.ndarray]:
        """``sample_id``s of each test experience."""
        return [df.index.to_numpy(dtype=np.int64) for df in self.test]


class SplitView:
    """Read-through properties for objects that carry a ``split: StreamSplit`` (scenario info, bridges)."""

    split: StreamSplit

    @property
    def protocol(self) -> str:
        return self.split.protocol

    @property
    def run(self) -> int:
        return self.split.run

    @property
    def class_order(self) -> List[Any]:
        """Original class ids in label order (``class_order[label]``)."""
        return self.split.class_order

    @property
    def label_map(self) -> Dict[Any, int]:
        """Original class id -> label."""
        return self.split.label_map

    @property
    def n_classes(self) -> int:
        return self.split.n_classes


def make_stream(
    dirmap: DirmapSource,
    *,
    test_sessions: Sequence[int],
    protocol: ProtocolName = "class_instance",
    run: int = 0,
    classes_per_exp: int = 2,
    n_experiences: Optional[int] = None,
    test_subsample: Optional[Union[int, float]] = None,
) -> StreamSplit:
    """Split a dirmap into the train/test experiences of ``protocol`` for run ``run`` (see module doc)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if (
        isinstance(classes_per_exp, bool)
        or not isinstance(classes_per_exp, (int, np.integer))
        or classes_per_exp < 1
    ):
        raise ValueError(f"classes_per_exp must be a positive integer, got {classes_per_exp!r}")
    if n_experiences is not None:
        if protocol in CLASS_PROTOCOLS or protocol == "offline":
            raise ValueError(
                f"n_experiences applies to the 'iid' and 'instance' protocols only; "
                f"'{protocol}' derives it ({'classes_per_exp' if protocol != 'offline' else 'always 1'})"
            )
        if isinstance(n_experiences, bool) or n_experiences < 1:
            raise ValueError(f"n_experiences must be a positive integer, got {n_experiences!r}")

    df = load_dirmap(dirmap)
    df.index.name = "sample_id"
    test_sessions = [int(s) for s in test_sessions]
    is_test = df["session"].isin(test_sessions).to_numpy()
    sessions = sorted(df["session"].unique().tolist())
    if not is_test.any():
        raise DatasetError(
            f"none of the test sessions {test_sessions} is in the dirmap (sessions: {sessions})"
        )
    if is_test.all():
        raise DatasetError(f"every session of the dirmap is a test session ({sessions}): no training data")
    train_df, test_df = df[~is_test], df[is_test]
    if test_subsample is not None:
        test_df = subsample_test(test_df, test_subsample)

    rng = np.random.default_rng(run)
    classes = sorted(df["class"].unique().tolist())
    perm = rng.permutation(len(classes))

    if protocol in CLASS_PROTOCOLS:
        class_order = [classes[i] for i in perm]
        label_map = {c: i for i, c in enumerate(class_order)}
        train_parts, test_parts = [], []
        for start in range(0, len(class_order), classes_per_exp):
            group = class_order[start : start + classes_per_exp]
            rows = train_df[train_df["class"].isin(group)]
            if len(rows) == 0:
                raise DatasetError(
                    f"classes {group} have no training images outside test sessions {test_sessions}"
                )
            if protocol == "class_iid":
                rows = rows.iloc[rng.permutation(len(rows))]
            else:
                rows = _clip_ordered(rows, rng)
            train_parts.append(rows)
            test_parts.append(test_df[test_df["class"].isin(group)])
    else:
        n_exp = 1 if protocol == "offline" else (n_experiences or math.ceil(len(classes) / classes_per_exp))
        if protocol == "instance":
            rows = _clip_ordered(train_df, rng)
            clip_id = rows.groupby(_CLIP, sort=False).ngroup().to_numpy()
            n_clips = int(clip_id.max()) + 1
            if n_exp > n_clips:
                raise DatasetError(
                    f"{n_exp} experiences requested but the training set has only {n_clips} clips"
                )
            bounds = [int(c[0]) for c in np.array_split(np.arange(n_clips), n_exp)] + [n_clips]
            starts = np.searchsorted(clip_id, bounds)  # clip ids are increasing along the stream
            train_parts = [rows.iloc[starts[i] : starts[i + 1]] for i in range(n_exp)]
        else:
            rows = train_df.iloc[rng.permutation(len(train_df))]
            if n_exp > len(rows):
                raise DatasetError(
                    f"{n_exp} experiences requested but there are only {len(rows)} training images"
                )
            train_parts = [rows.iloc[idx] for idx in np.array_split(np.arange(len(rows)), n_exp)]
        seen = pd.unique(pd.concat(train_parts)["class"]).tolist()
        class_order = seen + [c for c in classes if c not in set(seen)]
        label_map = {c: i for i, c in enumerate(class_order)}
        test_parts = [test_df]

    train_parts = [_with_labels(p, label_map) for p in train_parts]
    test_parts = [
        _with_labels(p, label_map).sort_values(["label", "object", "session", "im_num"], kind="stable")
        for p in test_parts
    ]
    return StreamSplit(
        protocol=protocol,
        run=run,
        train=train_parts,
        test=test_parts,
        class_order=class_order,
        label_map=label_map,
        test_sessions=test_sessions,
    )


def subsample_test(test_df: pd.DataFrame, keep: Union[int, float]) -> pd.DataFrame:
    """Deterministic, evenly spaced test subsample: ``int`` N per class, or ``float`` fraction per clip.

    An int keeps N images per class spread uniformly over its (object, session,
    frame)-sorted rows; a float in (0, 1] keeps that fraction (at least one
    frame) of every (class, object, session) clip. No randomness: the same
    subset for every run and protocol.
    """
    if isinstance(keep, bool):
        raise ValueError(f"test_subsample must be an int >= 1 or a float in (0, 1], got {keep!r}")
    if isinstance(keep, (int, np.integer)):
        if keep < 1:
            raise ValueError(f"test_subsample must be >= 1 image per class, got {keep}")
        groups, count = ["class"], lambda n: min(int(keep), n)
    elif isinstance(keep, float):
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"a fractional test_subsample must be in (0, 1], got {keep}")
        groups, count = _CLIP, lambda n: max(1, int(round(keep * n)))
    else:
        raise ValueError(f"test_subsample must be an int or a float, got {type(keep).__name__}")
    ordered = test_df.sort_values(["class", "object", "session", "im_num"], kind="stable")
    keep_pos = []
    pos = 0
    for _, size in ordered.groupby(groups, sort=False).size().items():
        m = count(size)
        keep_pos.append(pos + (np.arange(m) * size) // m)
        pos += size
    return ordered.iloc[np.concatenate(keep_pos)] if keep_pos else ordered


def _clip_ordered(rows: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Rows regrouped into (class, object, session) clips in random clip order, frames in ``im_num`` order."""
    clip = rows.groupby(_CLIP, sort=True).ngroup().to_numpy()
    rank = np.empty(clip.max() + 1, dtype=np.int64)
    rank[rng.permutation(len(rank))] = np.arange(len(rank))
    order = np.lexsort((np.arange(len(rows)), rows["im_num"].to_numpy(), rank[clip]))
    return rows.iloc[order]


def _with_labels(rows: pd.DataFrame, label_map: Dict[Any, int]) -> pd.DataFrame:
    """Copy of ``rows`` with the remapped ``label`` column."""
    out = rows.copy()
    out["label"] = out["class"].map(label_map).astype(np.int64)
    return out
