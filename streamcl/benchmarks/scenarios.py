"""Avalanche ``CLScenario``s from dirmaps: ``from_dirmap`` and the per-dataset factories.

Every factory follows Avalanche's classic benchmarks (``run`` picks the class
order, ``train_transform``/``eval_transform`` override the defaults) and
returns a scenario built with the current Avalanche API
(``benchmark_from_datasets`` + ``with_classes_timeline`` + ``with_task_labels``).
Experience datasets carry ``targets`` (remapped labels), ``targets_task_labels``
(always 0) and ``sample_id`` (the dirmap row of each sample), and yield
``(x, y, t)``. ``scenario.n_classes`` and ``scenario.streamcl_info`` (a
:class:`StreamInfo`) describe the stream; :func:`subset_by_sample_id` rebuilds
any subset of training samples from their ids (replay buffers after a restart).

Online streams: with ``online_mb_size`` the train stream is cut by Avalanche's
``split_online_stream`` into mini-experiences of that size, in stream order
(no reshuffling, so ``class_instance`` frames stay consecutive). Beware that
every mini-experience fires every plugin's ``before/after_training_exp``
(buffer updates, EWC/MAS importances): such plugins should gate that work on
``strategy.experience.is_last_subexp`` (made visible in training here).
"""

import hashlib
import importlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, EagerCLStream
from avalanche.benchmarks.scenarios.online import split_online_stream
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils.classification_dataset import (
    ClassificationDataset,
    TaskAwareSupervisedClassificationDataset,
)
from avalanche.benchmarks.utils.data_attribute import DataAttribute, TaskLabels
from avalanche.benchmarks.utils.flat_data import ConstantSequence
from avalanche.benchmarks.utils.transform_groups import TransformGroups
from filelock import FileLock
from PIL import Image

from streamcl.benchmarks.dirmap import load_dirmap
from streamcl.benchmarks.frame_cache import CachedFrameDataset, FrameCache, open_frame_cache, open_rgb
from streamcl.benchmarks.protocols import ProtocolName, SplitView, StreamSplit, make_stream
from streamcl.benchmarks.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    default_eval_transform,
    default_train_transform,
)
from streamcl.errors import ConfigError, DatasetError
from streamcl.registry import register_benchmark
from streamcl.utils import atomic_write_text

PathLike = Union[str, Path]
Transform = Optional[Callable[..., Any]]
LayoutName = Literal["toybox", "ilab2mlight", "core50", "icubworld"]

# Public factory name -> module of streamcl.benchmarks holding NAME, CLASSES, TEST_SESSIONS, CLASSES_PER_EXPERIENCE.
_DATASET_MODULES = {"toybox": "toybox", "ilab2mlight": "ilab", "core50": "core50", "icubworld": "icubworld"}


class DirmapImageDataset(torch.utils.data.Dataset):
    """Plain torch dataset of ``(PIL RGB image, label)`` read from ``image_root / path``.

    ``draft_size`` lets PIL decode JPEGs at a reduced DCT scale (never below
    ``draft_size``) before the resize: several times faster on large frames.
    """

    def __init__(
        self,
        image_root: PathLike,
        paths: Sequence[str],
        labels: Sequence[int],
        *,
        draft_size: Optional[int] = None,
    ):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.image_root = Path(image_root)
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tuple[Image.Image, int]:
        # open_rgb is shared with the frame-cache writer, so cached rows are these images resized
        return open_rgb(self.image_root / self.paths[i], self.draft_size), int(self.labels[i])


class StreamDataset(TaskAwareSupervisedClassificationDataset, ClassificationDataset):
    """Avalanche classification dataset of a stream benchmark: ``targets``, task labels (0) and ``sample_id``."""


@dataclass
class StreamInfo(SplitView):
    """What a scenario was built from (attached as ``scenario.streamcl_info``)."""

    name: str
    dirmap: pd.DataFrame
    image_root: Path
    split: StreamSplit
    input_shape: Tuple[int, int, int]
    dataset: StreamDataset  # every dirmap row; experiences and buffers are subsets of it
    train_sample_ids: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, np.int64))
    #: ``(mean, std)`` when inputs are uint8 CHW frames from a frame cache that the device must normalise
    #: (``DeviceNormalize``; ``streamcl.build`` adds a ``DeviceTransformPlugin``); None: float tensors, normalised.
    device_normalize: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None
    #: The frame cache the inputs come from (``cache:`` key), else None (decode path).
    frame_cache: Optional[Path] = None

    @property
    def input_dtype(self) -> torch.dtype:
        """dtype of the dataset's inputs: uint8 with a frame cache, else float32."""
        return torch.uint8 if self.device_normalize is not None else torch.float32

    @property
    def train_shuffle(self) -> bool:
        """Whether training may reshuffle mini-batches: False for clip-ordered protocols (pass ``shuffle=False``)."""
        return self.split.protocol not in ("class_instance", "instance")


def make_stream_dataset(
    image_root: PathLike,
    dirmap: pd.DataFrame,
    labels: Sequence[int],
    *,
    train_transform: Transform,
    eval_transform: Transform,
    draft_size: Optional[int] = None,
    frame_cache: Optional[FrameCache] = None,
) -> StreamDataset:
    """One Avalanche dataset over every row of ``dirmap`` (``sample_id`` = row position), in the 'train' group.

    With ``frame_cache`` the rows come from the cache as uint8 CHW tensors (no decoding; pass
    ``None`` transforms: normalisation happens on the device).
    """
    n = len(dirmap)
    labels = [int(v) for v in labels]
    if frame_cache is not None:
        raw = CachedFrameDataset(frame_cache.path, labels, source_hw=frame_cache.source_hw)
    else:
        raw = DirmapImageDataset(image_root, dirmap["im_path"].tolist(), labels, draft_size=draft_size)
    return StreamDataset(
        [raw],
        data_attributes=[
            DataAttribute(labels, "targets"),
            TaskLabels(ConstantSequence(0, n)),
            DataAttribute(list(range(n)), "sample_id"),
        ],
        transform_groups=TransformGroups({"train": train_transform, "eval": eval_transform}),
    )


def build_scenario(
    split: StreamSplit,
    dirmap: pd.DataFrame,
    image_root: PathLike,
    *,
    name: str = "dirmap",
    image_size: int = 224,
    train_transform: Transform = None,
    eval_transform: Transform = None,
    online_mb_size: Optional[int] = None,
    frame_cache: Optional[FrameCache] = None,
) -> CLScenario:
    """Turn a :class:`StreamSplit` into an Avalanche ``CLScenario`` (see module doc).

    With ``frame_cache`` (an open cache of ``image_size`` px frames of this dirmap) the datasets
    yield uint8 CHW tensors and ``streamcl_info.device_normalize`` says how to normalise them.
    """
    image_root = Path(image_root)
    custom = train_transform is not None or eval_transform is not None
    if frame_cache is not None:
        if custom:
            raise ConfigError("a frame cache serves uint8 frames normalised on the device; it cannot be combined "
                              "with custom train/eval transforms (use cache: null)", key="cache")
        if frame_cache.size != image_size or frame_cache.n != len(dirmap):
            raise ValueError(f"{frame_cache.path}: holds {frame_cache.n} frames of {frame_cache.size} px, "
                             f"expected {len(dirmap)} of {image_size} px")
        train_t = eval_t = None
    else:
        train_t = train_transform or default_train_transform(image_size)
        eval_t = eval_transform or default_eval_transform(image_size)
    labels = dirmap["class"].map(split.label_map).fillna(-1).astype(np.int64).to_numpy()
    base = make_stream_dataset(
        image_root, dirmap, labels, train_transform=train_t, eval_transform=eval_t, draft_size=image_size,
        frame_cache=frame_cache,
    )
    train_ids = split.train_ids()
    bm = benchmark_from_datasets(
        train=[base.subset(ids.tolist()).train() for ids in train_ids],
        test=[base.subset(ids.tolist()).eval() for ids in split.test_ids()],
    )
    bm = with_task_labels(with_classes_timeline(bm))
    if online_mb_size is not None:
        if isinstance(online_mb_size, bool) or online_mb_size < 1:
            raise ValueError(f"online_mb_size must be a positive integer, got {online_mb_size!r}")
        online = list(
            split_online_stream(
                bm.train_stream, experience_size=online_mb_size, shuffle=False, access_task_boundaries=True
            )
        )
        # avalanche 0.6 leaves is_last_subexp False when the experience size is a multiple of online_mb_size
        for cur, nxt in zip(online, online[1:] + [None]):
            cur.is_last_subexp = nxt is None or nxt.origin_experience is not cur.origin_experience
        bm = with_task_labels(
            with_classes_timeline(CLScenario([EagerCLStream("train", online), bm.test_stream]))
        )

    if custom:  # ask the eval transform what it produces
        x = base.subset([int(train_ids[0][0])]).eval()[0][0]
        input_shape = tuple(int(s) for s in x.shape) if hasattr(x, "shape") else (3, image_size, image_size)
    else:
        input_shape = (3, image_size, image_size)
    bm.n_classes = split.n_classes
    bm.streamcl_info = StreamInfo(
        name=name,
        dirmap=dirmap,
        image_root=image_root,
        split=split,
        input_shape=input_shape,
        dataset=base,
        train_sample_ids=np.sort(np.concatenate(train_ids)),
        device_normalize=(IMAGENET_MEAN, IMAGENET_STD) if frame_cache is not None else None,
        frame_cache=frame_cache.path if frame_cache is not None else None,
    )
    return bm


def subset_by_sample_id(scenario: CLScenario, ids: Sequence[int]) -> ClassificationDataset:
    """Training samples with these ``sample_id`` values, in this order, as the train stream serves them (train transforms)."""
    info: StreamInfo = getattr(scenario, "streamcl_info", None)
    if info is None:
        raise ValueError("this scenario was not built by streamcl (no `streamcl_info`)")
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    known = np.isin(ids, info.train_sample_ids)
    if not known.all():
        raise ValueError(
            f"{int((~known).sum())} sample id(s) are not training samples of this scenario "
            f"(e.g. {ids[~known][:5].tolist()}): was the buffer saved with another benchmark, protocol or run?"
        )
    return info.dataset.subset(ids.tolist()).train()


def _check_root(image_root: Path, dirmap: pd.DataFrame, what: str) -> None:
    """Fail early, naming the fix, when the image root is missing or does not hold the dirmap's images."""
    hint = "prepare the dataset with `streamcl prepare NAME RAW --out ROOT` and pass ROOT"
    if not image_root.is_dir():
        raise DatasetError(f"{image_root}: {what} image root not found; {hint}")
    for p in dirmap["im_path"].iloc[[0, -1]]:
        if not (image_root / p).is_file():
            raise DatasetError(
                f"{image_root / p}: image listed in the dirmap not found under {image_root}; {hint}"
            )


@register_benchmark("from_dirmap")
def from_dirmap(
    dirmap: Union[str, Path, pd.DataFrame],
    root: Union[str, Path],
    *,
    test_sessions: List[int],
    protocol: ProtocolName = "class_instance",
    run: int = 0,
    classes_per_exp: int = 2,
    n_experiences: Optional[int] = None,
    image_size: int = 224,
    test_subsample: Optional[Union[int, float]] = None,
    online_mb_size: Optional[int] = None,
    train_transform: Transform = None,
    eval_transform: Transform = None,
) -> CLScenario:
    """Stream benchmark from any dirmap (DataFrame or CSV, e.g. an original CRUMB CSV) over images under ``root``.

    ``protocol``: class_instance | class_iid | instance | iid | offline (see
    ``streamcl.benchmarks.protocols``); ``run`` picks the class order;
    ``test_subsample`` keeps N test images per class (int) or a fraction of
    every test clip (float); ``n_experiences`` applies to iid/instance.
    """
    root = Path(root)
    if isinstance(dirmap, (str, Path)) and not Path(dirmap).is_file() and (root / dirmap).is_file():
        dirmap = root / dirmap  # a CSV named relative to the image root
    table = load_dirmap(dirmap)
    _check_root(root, table, "dirmap")
    split = make_stream(
        table,
        test_sessions=test_sessions,
        protocol=protocol,
        run=run,
        classes_per_exp=classes_per_exp,
        n_experiences=n_experiences,
        test_subsample=test_subsample,
    )
    name = Path(dirmap).stem if isinstance(dirmap, (str, Path)) else "dirmap"
    return build_scenario(
        split,
        table,
        root,
        name=name,
        image_size=image_size,
        train_transform=train_transform,
        eval_transform=eval_transform,
        online_mb_size=online_mb_size,
    )


CacheArg = Optional[Union[bool, int]]


def cache_size(cache: CacheArg, image_size: int) -> Optional[int]:
    """The frame-cache size a ``cache:`` value asks for (None: decode path); ConfigError(key="cache") if invalid.

    ``null``/``false``: decode every image (default); ``true``: the cache at ``image_size``;
    an int: the same, stated explicitly (it must equal ``image_size``: a cache holds one size).
    """
    if cache is None or cache is False:
        return None
    if cache is True:
        return int(image_size)
    if isinstance(cache, int) and cache == image_size:
        return int(cache)
    raise ConfigError(f"must be null, true or the image size {image_size} (a frame cache holds frames at the "
                      f"model's input size), got {cache!r}", key="cache")


def _check_cache_arg(*, cache: CacheArg = None, image_size: int = 224, **_: Any) -> None:
    """``config_validate`` of the prepared-dataset factories: a ``cache:`` value that fits ``image_size``."""
    cache_size(cache, image_size)


def _from_prepared(
    dataset: str,
    root: PathLike,
    *,
    test_sessions: Optional[Sequence[int]],
    classes_per_exp: Optional[int],
    **kwargs: Any,
) -> CLScenario:
    """Scenario over a directory written by ``streamcl prepare`` for ``dataset`` (its test sessions by default)."""
    from streamcl.benchmarks import prepare

    mod = importlib.import_module(f"streamcl.benchmarks.raw.{_DATASET_MODULES[dataset]}")
    if root is None:
        raise DatasetError(f"{mod.NAME}: the benchmark root is null; give the folder `streamcl prepare` wrote")
    if not Path(root).is_dir():
        raise DatasetError(
            f"{root}: {mod.NAME} root not found; prepare the dataset with "
            f"`streamcl prepare {mod.NAME} RAW_ROOT --out {root}`"
        )
    table, image_root, name = prepare.load_index(root, expected=mod.NAME)
    table = load_dirmap(table)
    _check_root(Path(image_root), table, mod.NAME)
    opts = dict(kwargs)
    build = {k: opts.pop(k) for k in ("image_size", "train_transform", "eval_transform", "online_mb_size")}
    size = cache_size(opts.pop("cache", None), build["image_size"])
    if size is not None:
        build["frame_cache"] = open_frame_cache(root, size, table, name=mod.NAME)
    split = make_stream(
        table,
        test_sessions=mod.TEST_SESSIONS if test_sessions is None else test_sessions,
        classes_per_exp=mod.CLASSES_PER_EXPERIENCE if classes_per_exp is None else classes_per_exp,
        **opts,
    )
    return build_scenario(split, table, image_root, name=name, **build)


@register_benchmark("toybox")
def toybox(
    root: Union[str, Path],
    *,
    protocol: ProtocolName = "class_instance",
    run: int = 0,
    classes_per_exp: Optional[int] = None,
    n_experiences: Optional[int] = None,
    test_sessions: Optional[List[int]] = None,
    image_size: int = 224,
    test_subsample: Optional[Union[int, float]] = None,
    online_mb_size: Optional[int] = None,
    cache: CacheArg = None,
    train_transform: Transform = None,
    eval_transform: Transform = None,
) -> CLScenario:
    """Toybox (12 classes, test sessions 3, 6, 9; 6 experiences) from a ``streamcl prepare toybox`` directory."""
    return _from_prepared("toybox", **locals())


@register_benchmark("ilab2mlight")
def ilab2mlight(
    root: Union[str, Path],
    *,
    protocol: ProtocolName = "class_instance",
    run: int = 0,
    classes_per_exp: Optional[int] = None,
    n_experiences: Optional[int] = None,
    test_sessions: Optional[List[int]] = None,
    image_size: int = 224,
    test_subsample: Optional[Union[int, float]] = None,
    online_mb_size: Optional[int] = None,
    cache: CacheArg = None,
    train_transform: Transform = None,
    eval_transform: Transform = None,
) -> CLScenario:
    """iLab-2M-Light (14 classes, test sessions 4, 8; 7 experiences) from a ``streamcl prepare`` directory."""
    return _from_prepared("ilab2mlight", **locals())


@register_benchmark("core50")
def core50(
    root: Union[str, Path],
    *,
    protocol: ProtocolName = "class_instance",
    run: int = 0,
    classes_per_exp: Optional[int] = None,
    n_experiences: Optional[int] = None,
    test_sessions: Optional[List[int]] = None,
    image_size: int = 224,
    test_subsample: Optional[Union[int, float]] = None,
    online_mb_size: Optional[int] = None,
    cache: CacheArg = None,
    train_transform: Transform = None,
    eval_transform: Transform = None,
) -> CLScenario:
    """CORe50 (10 categories, test sessions 3, 7, 10; 5 experiences) from a ``streamcl prepare`` directory."""
    return _from_prepared("core50", **locals())


@register_benchmark("icubworld")
def icubworld(
    root: Union[str, Path],
    *,
    protocol: ProtocolName = "class_instance",
    run: int = 0,
    classes_per_exp: Optional[int] = None,
    n_experiences: Optional[int] = None,
    test_sessions: Optional[List[int]] = None,
    image_size: int = 224,
    test_subsample: Optional[Union[int, float]] = None,
    online_mb_size: Optional[int] = None,
    cache: CacheArg = None,
    train_transform: Transform = None,
    eval_transform: Transform = None,
) -> CLScenario:
    """iCubWorld Transformations (20 classes, test session 0 = MIX; 10 experiences) from a ``streamcl prepare`` directory."""
    return _from_prepared("icubworld", **locals())


# `cache:` on the prepared datasets: null decodes every image; true (or the image size) reads the
# frames from `streamcl prepare NAME RAW --out ROOT --cache SIZE`'s cache (see frame_cache.py).
for _factory in (toybox, ilab2mlight, core50, icubworld):
    _factory.config_validate = _check_cache_arg  # type: ignore[attr-defined]


@register_benchmark("synthetic")
def synthetic(
    root: Union[str, Path],
    *,
    layout: LayoutName = "toybox",
    protocol: ProtocolName = "class_instance",
    run: int = 0,
    image_size: int = 64,
    n_classes: int = 6,
    n_objects: int = 3,
    seed: int = 0,
    first_class: int = 0,
    classes_per_exp: Optional[int] = None,
    n_experiences: Optional[int] = None,
    test_sessions: Optional[List[int]] = None,
    test_subsample: Optional[Union[int, float]] = None,
    online_mb_size: Optional[int] = None,
    cache: CacheArg = None,
    train_transform: Transform = None,
    eval_transform: Transform = None,
) -> CLScenario:
    """Small learnable dataset in ``layout``'s native tree (generated and prepared once under ``root``), as ``layout``'s factory builds it.

    The default (6 classes x 3 objects, 3 experiences of 2 classes, 64 px) is
    the demo experiment's benchmark. Generation is cached under
    ``root/<layout>-<hash of the sizes>``; the same sizes reuse it. ``first_class``
    skips that many classes of the layout's class table: a pretraining set with
    ``first_class: 6`` shares no class with a 6-class stream (see
    ``experiments/synthetic/paper_toybox.yaml``). ``cache: true`` also writes the decoded-frame
    cache of the generated tree (once; later runs read it) and serves uint8 frames from it.
    """
    _check_synthetic_args(root=root, layout=layout, n_classes=n_classes, n_objects=n_objects, image_size=image_size,
                          first_class=first_class, cache=cache)
    prepared = ensure_synthetic(
        root, layout, n_classes=n_classes, n_objects=n_objects, image_size=image_size, seed=seed,
        first_class=first_class,
    )
    size = cache_size(cache, image_size)
    if size is not None:
        from streamcl.benchmarks.frame_cache import has_frame_cache, write_frame_cache

        if not has_frame_cache(prepared, size):  # our own generated data: build (or resume) the cache here
            write_frame_cache(prepared, size, progress=False)
    return _from_prepared(
        layout,
        prepared,
        protocol=protocol,
        run=run,
        classes_per_exp=classes_per_exp,
        n_experiences=n_experiences,
        test_sessions=test_sessions,
        image_size=image_size,
        test_subsample=test_subsample,
        online_mb_size=online_mb_size,
        cache=cache,
        train_transform=train_transform,
        eval_transform=eval_transform,
    )


def _check_synthetic_args(
    *, root: Any, layout: str, n_classes: int, n_objects: int, image_size: int, first_class: int,
    cache: CacheArg = None, **_: Any,
) -> None:
    """Ranges of :func:`synthetic`'s arguments, before anything is generated.

    Also run by the config checker (``synthetic.config_validate``), so that ``streamcl run
    --dry-run`` refuses them with the key at fault; the generator's own limits (classes per
    layout) are the bounds.
    """
    from streamcl.benchmarks import synthetic as synth
    from streamcl.errors import ConfigError

    if root is None:
        raise ConfigError("must be a folder to generate the synthetic dataset in, got null (e.g. .cache/streamcl)",
                          key="root")
    if layout not in _DATASET_MODULES:
        raise ConfigError(f"unknown synthetic layout {layout!r}; choose one of {', '.join(_DATASET_MODULES)}",
                          key="layout")
    c_max = synth._LIMITS[synth._ALIASES.get(layout, layout)][0]
    if not 1 <= n_classes <= c_max:
        raise ConfigError(f"must be 1..{c_max} for the synthetic {layout} layout, got {n_classes}", key="n_classes")
    if not 0 <= first_class <= c_max - n_classes:
        raise ConfigError(f"must be 0..{c_max - n_classes} (first_class + n_classes <= {c_max} classes of the "
                          f"{layout} layout), got {first_class}", key="first_class")
    if n_objects < 1:
        raise ConfigError(f"must be >= 1, got {n_objects}", key="n_objects")
    if image_size < 8:
        raise ConfigError(f"must be >= 8 (pixels), got {image_size}", key="image_size")
    cache_size(cache, image_size)


synthetic.config_validate = _check_synthetic_args  # type: ignore[attr-defined]


def ensure_synthetic(
    root: PathLike,
    layout: str,
    *,
    n_classes: int,
    n_objects: int,
    image_size: int,
    seed: int,
    first_class: int = 0,
) -> Path:
    """Generate + prepare a synthetic ``layout`` tree under ``root`` unless already done; returns the prepared dir.

    A ``done.json`` marker written last makes this idempotent: an interrupted
    generation is wiped and redone; a file lock serialises concurrent callers.
    """
    from streamcl.benchmarks import prepare
    from streamcl.benchmarks import synthetic as synth

    if layout not in _DATASET_MODULES:
        raise DatasetError(
            f"unknown synthetic layout {layout!r}; choose one of {', '.join(_DATASET_MODULES)}"
        )
    name = importlib.import_module(f"streamcl.benchmarks.raw.{_DATASET_MODULES[layout]}").NAME
    sizes = dict(n_classes=n_classes, n_objects=n_objects, image_size=image_size, seed=seed)
    if first_class:  # only when set, so trees generated before the option keep their folder
        sizes["first_class"] = first_class
    key = hashlib.sha1(json.dumps([name, sizes], sort_keys=True).encode()).hexdigest()[:10]
    base = Path(root) / f"{layout}-{key}"
    marker = base / "done.json"
    base.mkdir(parents=True, exist_ok=True)
    # filelock (a torch dependency) is portable, unlike fcntl, which does not exist on Windows.
    with FileLock(str(Path(root) / f".{layout}-{key}.lock")):
        if marker.is_file():
            try:
                prepared = base / json.loads(marker.read_text(encoding="utf-8"))["prepared"]
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                raise DatasetError(f"{marker}: damaged cache marker; delete the folder {base} and it is "
                                   "generated again") from None
            if not prepared.is_dir():
                raise DatasetError(f"{prepared}: missing from the synthetic cache; delete the folder {base} and "
                                   "it is generated again")
            return prepared
        for sub in ("raw", "prepared"):
            shutil.rmtree(base / sub, ignore_errors=True)
        raw_root = synth.generate(name, base / "raw", **sizes)
        out = prepare.prepare(name, raw_root, base / "prepared", progress=False, frame_size=image_size)
        atomic_write_text(
            marker, json.dumps({"layout": layout, "sizes": sizes, "prepared": os.path.relpath(out, base)})
        )
        return Path(out)
