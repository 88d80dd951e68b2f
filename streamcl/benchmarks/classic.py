"""Class-incremental CIFAR-100 and ImageNet-100, task-incremental Tiny-ImageNet, as Avalanche scenarios.

The benchmarks the WA, DyTox and MAS papers report on, read from a local root in
the datasets' own layouts (nothing is downloaded):

- ``cifar100(root)``: the python pickles ``cifar-100-python/{train,test,meta}``
  of https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz;
- ``imagenet_subset(root)``: an ImageFolder ``train/<wnid>/*.JPEG`` and
  ``val/<wnid>/*.JPEG`` (ILSVRC2012 with the validation images sorted into
  class folders; a full 1000-class tree works too) restricted to
  ImageNet-100, the 100 classes of PODNet's and DyTox's split files
  ``imagenet_split/{train,val}_100.txt`` (the first 100 ILSVRC2012 wnids in
  sorted order, ``n01440764`` ... ``n01855672``; labels 0..99 in that order);
- ``tiny_imagenet(root)``: ``tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG,
  val/images/*.JPEG, val/val_annotations.txt}`` of
  http://cs231n.stanford.edu/tiny-imagenet-200.zip (its labelled ``val`` split
  is the test set).

Splits are continuum's: ``ClassIncremental(dataset, increment, initial_increment,
class_order)`` remaps class ``class_order[k]`` to label ``k`` and cuts the labels
into consecutive tasks (``initial_increment=0``: every task has ``increment``
classes, the "B0" setting; ``initial_increment=50``: "B50"). Class orders:
``run`` k uses the k-th published order when there is one, else a permutation
drawn from ``numpy.random.default_rng(k)``; ``class_order`` overrides both.

- CIFAR-100: the three orders of PODNet (``options/data/cifar100_3orders.yaml``
  in arthurdouillard/incremental_learning.pytorch), which DyTox uses as
  ``options/data/cifar100_order{1,2,3}.yaml``; the first is iCaRL's order.
- ImageNet-100: PODNet's and DyTox's single order (``imagenet100_1order.yaml`` /
  ``imagenet100_order1.yaml``).
- Tiny-ImageNet: run 0 keeps the order of ``wnids.txt`` (continuum's labels).

Each factory returns a ``CLScenario`` built like the stream benchmarks
(:mod:`streamcl.benchmarks.scenarios`): one Avalanche dataset over train + test
images whose ``sample_id`` is the position (train first), ``targets`` the
remapped labels and task labels 0 (class-incremental) or the task index
(task-incremental, labels then restart at 0 in every task: one head per task);
``scenario.streamcl_info`` (:class:`ClassicInfo`) lets
:func:`streamcl.benchmarks.scenarios.subset_by_sample_id` rebuild replay
buffers after a restart. Test experience ``t`` holds the test images of train
experience ``t``'s classes.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils.data_attribute import DataAttribute, TaskLabels
from avalanche.benchmarks.utils.transform_groups import TransformGroups
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as T

from streamcl.benchmarks.scenarios import StreamDataset
from streamcl.benchmarks.transforms import IMAGENET_MEAN, IMAGENET_STD
from streamcl.errors import ConfigError, DatasetError
from streamcl.registry import register_benchmark

PathLike = Union[str, Path]
Transform = Optional[Callable[..., Any]]

__all__ = [
    "cifar100",
    "imagenet_subset",
    "tiny_imagenet",
    "synthetic_classic",
    "ClassicInfo",
    "CIFAR100_ORDERS",
    "IMAGENET100_ORDERS",
    "IMAGENET100_WNIDS",
    "read_cifar100",
    "read_image_folder",
    "read_tiny_imagenet",
    "class_incremental_split",
]

from streamcl.benchmarks.class_orders import CIFAR100_ORDERS, IMAGENET100_ORDERS, IMAGENET100_WNIDS  # noqa: E402

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

CIFAR_HINT = ("download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it into {root} "
              "(giving {root}/cifar-100-python/{{train,test,meta}})")
IMAGENET_HINT = ("get ILSVRC2012 from https://image-net.org/download.php, sort the validation images into "
                 "class folders and lay it out as {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG "
                 "(the 100 ImageNet-100 classes or all 1000)")
TINY_HINT = ("download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into {root} "
             "(giving {root}/tiny-imagenet-200/{{wnids.txt,train/<wnid>/images,val/images,val/val_annotations.txt}})")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


# --------------------------------------------------------------------------- scenario info


@dataclass
class ClassicInfo:
    """What a classic scenario was built from (``scenario.streamcl_info``).

    ``dataset`` and ``train_sample_ids`` make
    :func:`streamcl.benchmarks.scenarios.subset_by_sample_id` work on these scenarios.
    """

    name: str
    root: Path
    run: int
    class_order: List[Any]  # original class (CIFAR id or wnid) of each label, in label order
    class_names: List[str]  # readable name of each label
    increments: List[int]  # classes per experience
    task_incremental: bool
    input_shape: Tuple[int, int, int]
    dataset: StreamDataset = field(repr=False)
    raw: Any = field(repr=False, default=None)  # the ArrayImages / PathImages under ``dataset`` (index = sample_id)
    train_sample_ids: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, np.int64))
    protocol: str = "class_incremental"
    train_shuffle: bool = True

    @property
    def n_classes(self) -> int:
        """Number of classes of the stream (all tasks together)."""
        return len(self.class_order)

    @property
    def n_experiences(self) -> int:
        return len(self.increments)

    @property
    def label_map(self) -> Dict[Any, int]:
        """Original class -> global label (position in the class order)."""
        return {c: i for i, c in enumerate(self.class_order)}


# --------------------------------------------------------------------------- raw datasets


class ArrayImages(torch.utils.data.Dataset):
    """``(PIL image, label)`` from a uint8 ``(N, H, W, 3)`` array (CIFAR)."""

    def __init__(self, images: np.ndarray, labels: Sequence[int]):
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Tuple[Image.Image, int]:
        return Image.fromarray(self.images[i]), int(self.labels[i])


class PathImages(torch.utils.data.Dataset):
    """``(PIL RGB image, label)`` read from ``root / paths[i]``; an unreadable file is a one-line DatasetError."""

    def __init__(self, root: PathLike, paths: Sequence[str], labels: Sequence[int]):
        self.root = Path(root)
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Tuple[Image.Image, int]:
        path = self.root / self.paths[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except FileNotFoundError:
            raise DatasetError(f"{path}: image missing (was the dataset tree changed while running?)") from None
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetError(f"{path}: cannot read image ({e}); re-extract the dataset or delete it") from None
        return img, int(self.labels[i])


# --------------------------------------------------------------------------- readers


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR's python files that resolves only numpy's array reconstruction (no arbitrary code).

    torchvision's and continuum's CIFAR readers call ``pickle.load`` unrestricted
    and check the archive's md5 (which tiny test trees cannot match), so the
    files are read here with an allow-list instead.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> Dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DatasetError(f"{path}: CIFAR-100 file missing; {CIFAR_HINT.format(root=path.parent.parent)}") from None
    except Exception as e:  # truncated files, wrong format, refused globals ...
        raise DatasetError(f"{path}: not a CIFAR-100 python pickle ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:120] if str(e) else ''}); {CIFAR_HINT.format(root=path.parent.parent)}") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: not a CIFAR-100 python pickle (a {type(obj).__name__}); {CIFAR_HINT.format(root=path.parent.parent)}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def cifar100_dir(root: PathLike) -> Path:
    """``root/cifar-100-python`` (or ``root`` itself when it is that folder); DatasetError when absent."""
    root = Path(root).expanduser()
    for cand in (root / "cifar-100-python", root):
        if (cand / "train").is_file() and (cand / "test").is_file():
            return cand
    if not root.exists():
        raise DatasetError(f"{root}: CIFAR-100 root not found; {CIFAR_HINT.format(root=root)}")
    raise DatasetError(f"{root}: no cifar-100-python/train and test files under it; {CIFAR_HINT.format(root=root)}")


def read_cifar100(root: PathLike) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, List[str]]:
    """(train images N x 32 x 32 x 3 uint8, train fine labels, test images, test labels, the 100 fine label names)."""
    base = cifar100_dir(root)
    out: List[Any] = []
    for split in ("train", "test"):
        d = _load_pickle(base / split)
        try:
            data = np.asarray(d["data"], dtype=np.uint8)
            labels = np.asarray(d["fine_labels"], dtype=np.int64)
        except KeyError as e:
            raise DatasetError(f"{base / split}: CIFAR-100 pickle without key {e}; {CIFAR_HINT.format(root=base.parent)}") from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise DatasetError(f"{base / split}: expected 'data' of shape (N, 3072) and N fine labels, got "
                               f"{data.shape} and {len(labels)}; {CIFAR_HINT.format(root=base.parent)}")
        if len(labels) and (labels.min() < 0 or labels.max() > 99):
            raise DatasetError(f"{base / split}: fine labels outside 0..99; {CIFAR_HINT.format(root=base.parent)}")
        out += [data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels]
    names = [str(i) for i in range(100)]
    if (base / "meta").is_file():
        meta = _load_pickle(base / "meta")
        fine = meta.get("fine_label_names")
        if isinstance(fine, (list, tuple)) and len(fine) == 100:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in fine]
    return out[0], out[1], out[2], out[3], names


def _list_images(folder: Path) -> List[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))


def read_image_folder(root: PathLike, wnids: Sequence[str]) -> Tuple[List[str], np.ndarray, List[str], np.ndarray]:
    """Relative paths and labels (index in ``wnids``) of ``root/{train,val}/<wnid>/*``; DatasetError when incomplete."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: ImageNet root not found; {IMAGENET_HINT.format(root=root)}")
    out: List[Any] = []
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DatasetError(f"{root}: no '{split}' folder under it; {IMAGENET_HINT.format(root=root)}")
        missing = [w for w in wnids if not (root / split / w).is_dir()]
        if missing:
            raise DatasetError(f"{root / split}: {len(missing)} of the {len(wnids)} ImageNet-100 class folders are "
                               f"missing (e.g. {', '.join(missing[:3])}); {IMAGENET_HINT.format(root=root)}")
        paths, labels = [], []
        for k, w in enumerate(wnids):
            files = _list_images(root / split / w)
            if not files:
                raise DatasetError(f"{root / split / w}: no images in this class folder; {IMAGENET_HINT.format(root=root)}")
            paths += [f"{split}/{w}/{f}" for f in files]
            labels += [k] * len(files)
        out += [paths, np.asarray(labels, dtype=np.int64)]
    return out[0], out[1], out[2], out[3]


def tiny_imagenet_dir(root: PathLike) -> Path:
    """``root/tiny-imagenet-200`` (or ``root`` itself when it is that folder); DatasetError when absent."""
    root = Path(root).expanduser()
    for cand in (root / "tiny-imagenet-200", root):
        if (cand / "wnids.txt").is_file():
            return cand
    if not root.exists():
        raise DatasetError(f"{root}: Tiny-ImageNet root not found; {TINY_HINT.format(root=root)}")
    raise DatasetError(f"{root}: no tiny-imagenet-200/wnids.txt under it; {TINY_HINT.format(root=root)}")


def read_tiny_imagenet(root: PathLike) -> Tuple[Path, List[str], np.ndarray, List[str], np.ndarray, List[str]]:
    """(base folder, train paths, train labels, val paths, val labels, wnids in ``wnids.txt`` order); paths relative to base."""
    base = tiny_imagenet_dir(root)
    wnids = [w.strip() for w in (base / "wnids.txt").read_text().split() if w.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DatasetError(f"{base / 'wnids.txt'}: empty or with duplicate wnids; {TINY_HINT.format(root=base.parent)}")
    index = {w: k for k, w in enumerate(wnids)}
    train_paths, train_y = [], []
    for w in wnids:
        folder = base / "train" / w / "images"
        if not folder.is_dir():
            raise DatasetError(f"{folder}: training folder of class {w} (listed in wnids.txt) missing; {TINY_HINT.format(root=base.parent)}")
        files = _list_images(folder)
        if not files:
            raise DatasetError(f"{folder}: no images; {TINY_HINT.format(root=base.parent)}")
        train_paths += [f"train/{w}/images/{f}" for f in files]
        train_y += [index[w]] * len(files)
    ann = base / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DatasetError(f"{ann}: missing (the labels of the val images); {TINY_HINT.format(root=base.parent)}")
    val_paths, val_y = [], []
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        parts = line.split("\t") if "\t" in line else line.split()
        if not line.strip():
            continue
        if len(parts) < 2 or parts[1] not in index:
            raise DatasetError(f"{ann}: line {n} does not read '<file>\\t<wnid listed in wnids.txt>...'; {TINY_HINT.format(root=base.parent)}")
        val_paths.append(f"val/images/{parts[0]}")
        val_y.append(index[parts[1]])
    if not val_paths:
        raise DatasetError(f"{ann}: no annotated val images; {TINY_HINT.format(root=base.parent)}")
    if not (base / val_paths[0]).is_file():
        raise DatasetError(f"{base / val_paths[0]}: val image listed in val_annotations.txt missing; {TINY_HINT.format(root=base.parent)}")
    return base, train_paths, np.asarray(train_y, np.int64), val_paths, np.asarray(val_y, np.int64), wnids


# --------------------------------------------------------------------------- splits


def resolve_class_order(
    classes: Sequence[int], run: int, published: Sequence[Sequence[int]], class_order: Optional[Sequence[Any]],
    what: str,
) -> List[int]:
    """The class order of ``run`` over the present ``classes`` (see module doc); ``class_order`` wins."""
    present = [int(c) for c in classes]
    if class_order is not None:
        order = [int(c) for c in class_order]
        if sorted(order) != sorted(present):
            extra = sorted(set(order) - set(present))[:5]
            lacking = sorted(set(present) - set(order))[:5]
            raise ConfigError(
                f"class_order must list each of the {len(present)} {what} classes exactly once"
                f"{'; unknown ' + str(extra) if extra else ''}{'; missing ' + str(lacking) if lacking else ''}",
                key="class_order",
            )
        return order
    if 0 <= run < len(published) and set(present) <= set(published[run]):
        keep = set(present)
        return [int(c) for c in published[run] if c in keep]
    return [present[i] for i in np.random.default_rng(run).permutation(len(present))]


def _increments(n_classes: int, increment: int, initial_increment: int) -> List[int]:
    if isinstance(increment, bool) or not isinstance(increment, int) or increment < 1:
        raise ConfigError(f"increment must be a positive integer, got {increment!r}", key="increment")
    if isinstance(initial_increment, bool) or not isinstance(initial_increment, int) or initial_increment < 0:
        raise ConfigError(f"initial_increment must be an integer >= 0, got {initial_increment!r}",
                          key="initial_increment")
    rest = n_classes - initial_increment
    if rest < 0 or rest % increment:
        raise ConfigError(
            f"{n_classes} classes cannot be cut into a first task of {initial_increment or increment} and tasks of "
            f"{increment}; pick an increment that divides {rest if rest > 0 else n_classes}",
            key="increment",
        )
    return ([initial_increment] if initial_increment else []) + [increment] * (rest // increment)


def class_incremental_split(
    train_y: np.ndarray, test_y: np.ndarray, class_order: Sequence[int], increment: int, initial_increment: int = 0,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, List[int]]:
    """continuum's ``ClassIncremental`` labels and tasks for train and test labels (any class ids, compacted first).

    Returns ``(train labels, train task ids, test labels, test task ids,
    increments)``; label ``k`` is class ``class_order[k]``.
    """
    from continuum.datasets import InMemoryDataset
    from continuum.scenarios import ClassIncremental
    from continuum.tasks import TaskType

    present = np.array(sorted(int(c) for c in class_order), dtype=np.int64)
    order = np.searchsorted(present, np.asarray(class_order, dtype=np.int64))
    increments = _increments(len(present), increment, initial_increment)
    out: List[Any] = []
    for y in (train_y, test_y):
        y = np.asarray(y, dtype=np.int64)
        keep = np.isin(y, present)
        if not keep.all():
            raise DatasetError(f"{int((~keep).sum())} samples belong to classes outside the class order")
        compact = np.searchsorted(present, y)
        scenario = ClassIncremental(
            InMemoryDataset(np.arange(len(y)), compact, data_type=TaskType.TENSOR),
            increment=increment, initial_increment=initial_increment, class_order=order.tolist(),
        )
        x, labels, tasks = scenario.dataset
        if not np.array_equal(np.asarray(x), np.arange(len(y))):
            raise AssertionError("continuum reordered the samples")  # pragma: no cover
        out += [np.asarray(labels, dtype=np.int64), np.asarray(tasks).astype(np.int64)]
    return out[0], out[1], out[2], out[3], increments


# --------------------------------------------------------------------------- scenario


def _transforms(kind: str, image_size: int) -> Tuple[Callable, Callable]:
    if kind == "cifar":
        norm = [T.ToTensor(), T.Normalize(CIFAR100_MEAN, CIFAR100_STD)]
        resize = [] if image_size == 32 else [T.Resize(image_size, antialias=True)]
        train = T.Compose(resize + [T.RandomCrop(image_size, padding=image_size // 8), T.RandomHorizontalFlip()]
                          + norm)
        return train, T.Compose(resize + norm)
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if kind == "imagenet":
        train = T.Compose([T.RandomResizedCrop(image_size, antialias=True), T.RandomHorizontalFlip()] + norm)
        evalt = T.Compose([T.Resize(int(round(image_size * 256 / 224)), antialias=True), T.CenterCrop(image_size)]
                          + norm)
        return train, evalt
    resize = [T.Resize((image_size, image_size), antialias=True)]  # tiny: 64 px natively
    return T.Compose(resize + [T.RandomHorizontalFlip()] + norm), T.Compose(resize + norm)


def build_classic_scenario(
    *,
    name: str,
    root: Path,
    raw: Union[ArrayImages, PathImages],
    n_train: int,
    labels: np.ndarray,
    tasks: np.ndarray,
    increments: List[int],
    class_order: List[Any],
    class_names: List[str],
    run: int,
    task_incremental: bool,
    image_size: int,
    transforms: Tuple[Callable, Callable],
) -> CLScenario:
    """One Avalanche dataset over train + test (``sample_id`` = position), cut into experiences by ``tasks``."""
    n = len(labels)
    offsets = np.concatenate([[0], np.cumsum(increments)])
    targets = labels - offsets[tasks] if task_incremental else labels
    task_labels = tasks if task_incremental else np.zeros(n, np.int64)
    raw.labels = np.asarray(targets, dtype=np.int64)  # what __getitem__ yields as y: the remapped label
    base = StreamDataset(
        [raw],
        data_attributes=[
            DataAttribute(targets.tolist(), "targets"),
            TaskLabels(task_labels.tolist()),
            DataAttribute(list(range(n)), "sample_id"),
        ],
        transform_groups=TransformGroups({"train": transforms[0], "eval": transforms[1]}),
    )
    is_train = np.arange(n) < n_train
    train_parts, test_parts = [], []
    for t in range(len(increments)):
        train_ids = np.flatnonzero(is_train & (tasks == t))
        test_ids = np.flatnonzero(~is_train & (tasks == t))
        if len(train_ids) == 0:
            raise DatasetError(f"{root}: task {t} has no training images (classes {class_order[offsets[t]:offsets[t+1]]})")
        train_parts.append(base.subset(train_ids.tolist()).train())
        test_parts.append(base.subset(test_ids.tolist()).eval())
    bm = with_task_labels(with_classes_timeline(benchmark_from_datasets(train=train_parts, test=test_parts)))
    bm.n_classes = len(class_order)
    bm.streamcl_info = ClassicInfo(
        name=name, root=root, run=run, class_order=list(class_order), class_names=list(class_names),
        increments=list(increments), task_incremental=task_incremental, input_shape=(3, image_size, image_size),
        dataset=base, raw=raw, train_sample_ids=np.flatnonzero(is_train).astype(np.int64),
    )
    return bm


def _custom(transforms: Tuple[Callable, Callable], train_transform: Transform,
            eval_transform: Transform) -> Tuple[Callable, Callable]:
    return (train_transform or transforms[0], eval_transform or transforms[1])


@register_benchmark("cifar100")
def cifar100(
    root: Union[str, Path],
    *,
    increment: int = 10,
    initial_increment: int = 0,
    run: int = 0,
    class_order: Optional[List[int]] = None,
    image_size: int = 32,
    train_transform: Transform = None,
    eval_transform: Transform = None,
) -> CLScenario:
    """Class-incremental CIFAR-100 from ``root/cifar-100-python`` (B0: ``initial_increment: 0``; B50: 50).

    ``increment`` classes per task (10 / 5 / 2 for 10 / 20 / 50 steps); ``run``
    k uses PODNet/DyTox's k-th class order (k < 3). Augmentation: random crop
    (padding 4) + flip, CIFAR-100 normalisation.
    """
    root = Path(root).expanduser()
    train_x, train_y, test_x, test_y, names = read_cifar100(root)
    present = sorted(set(train_y.tolist()))
    order = resolve_class_order(present, run, CIFAR100_ORDERS, class_order, "CIFAR-100")
    lab_tr, task_tr, lab_te, task_te, incs = class_incremental_split(train_y, test_y, order, increment,
                                                                     initial_increment)
    raw = ArrayImages(np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y]))
    return build_classic_scenario(
        name="cifar100", root=root, raw=raw, n_train=len(train_y),
        labels=np.concatenate([lab_tr, lab_te]), tasks=np.concatenate([task_tr, task_te]), increments=incs,
        class_order=order, class_names=[names[c] for c in order], run=run, task_incremental=False,
        image_size=image_size, transforms=_custom(_transforms("cifar", image_size), train_transform, eval_transform),
    )


@register_benchmark("imagenet_subset")
def imagenet_subset(
    root: Union[str, Path],
    *,
    increment: int = 10,
    initial_increment: int = 0,
    run: int = 0,
    class_order: Optional[List[int]] = None,
    wnids: Optional[List[str]] = None,
    image_size: int = 224,
    train_transform: Transform = None,
    eval_transform: Transform = None,
) -> CLScenario:
    """Class-incremental ImageNet-100 (PODNet/DyTox's 100 classes) from an ImageFolder ``root/{train,val}/<wnid>``.

    ``wnids`` replaces the class list (e.g. another 100-class subset; labels
    follow its order and runs then draw seeded orders). ``class_order`` lists
    label indices (0..99). Augmentation: random resized crop + flip; eval:
    resize to 256/224 of ``image_size`` + centre crop.
    """
    root = Path(root).expanduser()
    classes = list(wnids) if wnids is not None else list(IMAGENET100_WNIDS)
    if len(set(classes)) != len(classes) or not classes:
        raise ConfigError("wnids must be a non-empty list of distinct wnids", key="wnids")
    tr_paths, tr_y, va_paths, va_y = read_image_folder(root, classes)
    published = IMAGENET100_ORDERS if wnids is None else []
    order = resolve_class_order(range(len(classes)), run, published, class_order, "ImageNet-100")
    lab_tr, task_tr, lab_te, task_te, incs = class_incremental_split(tr_y, va_y, order, increment, initial_increment)
    raw = PathImages(root, tr_paths + va_paths, np.concatenate([tr_y, va_y]))
    return build_classic_scenario(
        name="imagenet_subset", root=root, raw=raw, n_train=len(tr_y),
        labels=np.concatenate([lab_tr, lab_te]), tasks=np.concatenate([task_tr, task_te]), increments=incs,
        class_order=[classes[c] for c in order], class_names=[classes[c] for c in order], run=run,
        task_incremental=False, image_size=image_size,
        transforms=_custom(_transforms("imagenet", image_size), train_transform, eval_transform),
    )


@register_benchmark("tiny_imagenet")
def tiny_imagenet(
    root: Union[str, Path],
    *,
    n_tasks: int = 4,
    task_incremental: bool = True,
    run: int = 0,
    class_order: Optional[List[int]] = None,
    image_size: int = 64,
    train_transform: Transform = None,
    eval_transform: Transform = None,
) -> CLScenario:
    """Tiny-ImageNet (200 classes, 64 px) in ``n_tasks`` tasks of equal size, one head per task by default.

    ``task_incremental: true`` gives each experience task label t and labels
    0..(200 / n_tasks - 1) (the MAS experiment: 4 tasks of 50 classes);
    ``false`` makes it class-incremental (task label 0, labels 0..199). The
    labelled ``val`` split is the test set. ``class_order`` lists label
    indices in ``wnids.txt`` order; run 0 keeps that order.
    """
    base, tr_paths, tr_y, va_paths, va_y, wnids = read_tiny_imagenet(root)
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1 or len(wnids) % n_tasks:
        raise ConfigError(f"n_tasks must divide the {len(wnids)} classes, got {n_tasks!r}", key="n_tasks")
    order = resolve_class_order(range(len(wnids)), run, [list(range(len(wnids)))], class_order, "Tiny-ImageNet")
    lab_tr, task_tr, lab_te, task_te, incs = class_incremental_split(tr_y, va_y, order, len(wnids) // n_tasks, 0)
    raw = PathImages(base, tr_paths + va_paths, np.concatenate([tr_y, va_y]))
    return build_classic_scenario(
        name="tiny_imagenet", root=base, raw=raw, n_train=len(tr_y),
        labels=np.concatenate([lab_tr, lab_te]), tasks=np.concatenate([task_tr, task_te]), increments=incs,
        class_order=[wnids[c] for c in order], class_names=[wnids[c] for c in order], run=run,
        task_incremental=bool(task_incremental), image_size=image_size,
        transforms=_custom(_transforms("tiny", image_size), train_transform, eval_transform),
    )


@register_benchmark("synthetic_classic")
def synthetic_classic(
    root: Union[str, Path],
    *,
    layout: Literal["cifar100", "imagenet_subset", "tiny_imagenet"] = "cifar100",
    n_classes: int = 10,
    train_per_class: int = 60,
    test_per_class: int = 20,
    seed: int = 0,
    run: int = 0,
    increment: int = 2,
    initial_increment: int = 0,
    n_tasks: int = 4,
    task_incremental: bool = True,
    image_size: Optional[int] = None,
    class_order: Optional[List[int]] = None,
    train_transform: Transform = None,
    eval_transform: Transform = None,
) -> CLScenario:
    """A small learnable tree in the real CIFAR-100 / ImageNet-100 / Tiny-ImageNet layout, read by that benchmark.

    Generated once under ``root/<layout>-<hash of the sizes>`` (see
    :mod:`streamcl.benchmarks.classic_synthetic`). ``increment`` and
    ``initial_increment`` apply to ``cifar100`` and ``imagenet_subset``,
    ``n_tasks`` and ``task_incremental`` to ``tiny_imagenet``. Run k's class
    order is drawn from ``numpy.random.default_rng(k)`` over the classes present
    (the published orders are for the real datasets).
    """
    from streamcl.benchmarks.classic_synthetic import ensure_classic_synthetic

    tree = ensure_classic_synthetic(root, layout, n_classes=n_classes, train_per_class=train_per_class,
                                    test_per_class=test_per_class, seed=seed)
    common = dict(run=run, train_transform=train_transform, eval_transform=eval_transform)
    if layout == "cifar100":
        present = list(range(n_classes))  # the writer's fine label ids
        order = class_order if class_order is not None else resolve_class_order(present, run, [], None, "")
        return cifar100(tree, increment=increment, initial_increment=initial_increment, class_order=order,
                        image_size=image_size or 32, **common)
    if layout == "imagenet_subset":
        wn = IMAGENET100_WNIDS[:n_classes]
        return imagenet_subset(tree, increment=increment, initial_increment=initial_increment, wnids=wn,
                               class_order=class_order, image_size=image_size or 32, **common)
    if layout == "tiny_imagenet":
        order = class_order if class_order is not None else resolve_class_order(range(n_classes), run, [], None, "")
        return tiny_imagenet(tree, n_tasks=n_tasks, task_incremental=task_incremental, class_order=order,
                             image_size=image_size or 64, **common)
    raise ConfigError(f"unknown layout {layout!r}; choose cifar100, imagenet_subset or tiny_imagenet", key="layout")
