"""Tiny trees in the real CIFAR-100, ImageNet-100 and Tiny-ImageNet layouts, for tests and CPU-sized runs.

The readers of :mod:`streamcl.benchmarks.classic` run unchanged on them:

- :func:`write_cifar100`: ``cifar-100-python/{train,test,meta}`` python pickles
  (``data`` as N x 3072 uint8 rows, channel-planar; ``fine_labels``,
  ``coarse_labels``, ``filenames``, ``batch_label``; ``meta`` with the 100 fine
  and 20 coarse names), written with pickle protocol 2 like the originals;
- :func:`write_image_folder`: ``train/<wnid>/<wnid>_<i>.JPEG`` and
  ``val/<wnid>/ILSVRC2012_val_<n>.JPEG``;
- :func:`write_tiny_imagenet`: ``tiny-imagenet-200/{wnids.txt, words.txt,
  train/<wnid>/images/<wnid>_<i>.JPEG, train/<wnid>/<wnid>_boxes.txt,
  val/images/val_<n>.JPEG, val/val_annotations.txt, test/images}``.

Images come from :func:`streamcl.benchmarks.synthetic.render`: the class fixes
shape and hue, a random object / motion / time varies each sample, so a small
CNN learns them in a few epochs. :func:`ensure_classic_synthetic` generates a
tree once per set of sizes (cached, locked, marked done last).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from filelock import FileLock

from streamcl.benchmarks.synthetic import render
from streamcl.errors import DatasetError

PathLike = Union[str, Path]
LAYOUTS = ("cifar100", "imagenet_subset", "tiny_imagenet")

__all__ = ["write_cifar100", "write_image_folder", "write_tiny_imagenet", "ensure_classic_synthetic",
           "tiny_wnids", "LAYOUTS"]


def _images(classes: Sequence[int], per_class: int, size: int, rng: np.random.Generator, seed: int,
            split: int) -> np.ndarray:
    """``len(classes) * per_class`` rendered images (class-major), size x size x 3 uint8."""
    out = np.empty((len(classes) * per_class, size, size, 3), dtype=np.uint8)
    i = 0
    for c in classes:
        for _ in range(per_class):
            out[i] = render(int(c), int(rng.integers(5)), int(rng.integers(10)), float(rng.random()), size=size,
                            seed=seed * 7 + split)
            i += 1
    return out


def write_cifar100(root: PathLike, *, classes: Sequence[int] = tuple(range(10)), train_per_class: int = 20,
                   test_per_class: int = 5, seed: int = 0) -> Path:
    """Write ``root/cifar-100-python`` holding ``classes`` (CIFAR-100 fine label ids); returns ``root``."""
    root = Path(root)
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = [int(c) for c in classes]
    if not classes or min(classes) < 0 or max(classes) > 99 or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct CIFAR-100 fine label ids in 0..99, got {classes}")
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        imgs = _images(classes, per, 32, rng, seed, 0 if split == "train" else 1)
        labels = np.repeat(classes, per)
        perm = rng.permutation(len(labels))  # the real files are not sorted by class
        imgs, labels = imgs[perm], labels[perm]
        doc = {
            "filenames": [f"synthetic_{split}_{i:05d}.png" for i in range(len(labels))],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": [int(v) for v in labels],
            "coarse_labels": [int(v) // 5 for v in labels],
            "data": imgs.transpose(0, 3, 1, 2).reshape(len(labels), 3072),
        }
        with open(base / split, "wb") as f:
            pickle.dump(doc, f, protocol=2)
    meta = {"fine_label_names": [f"class_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"superclass_{i:02d}" for i in range(20)]}
    with open(base / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return root


def _save_jpeg(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=92)


def write_image_folder(root: PathLike, wnids: Sequence[str], *, train_per_class: int = 4, val_per_class: int = 2,
                       image_size: int = 48, seed: int = 0) -> Path:
    """Write an ImageNet-style ``root/{train,val}/<wnid>/*.JPEG`` tree for ``wnids``; returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_val = 0
    for k, w in enumerate(wnids):
        for i, img in enumerate(_images([k], train_per_class, image_size, rng, seed, 0)):
            _save_jpeg(img, root / "train" / w / f"{w}_{i}.JPEG")
        for img in _images([k], val_per_class, image_size, rng, seed, 1):
            n_val += 1
            _save_jpeg(img, root / "val" / w / f"ILSVRC2012_val_{n_val:08d}.JPEG")
    return root


def tiny_wnids(n_classes: int) -> List[str]:
    """``n_classes`` distinct wnid-like ids (``n9xxxxxxx``, outside WordNet's noun range used by ImageNet)."""
    return [f"n9{1000000 + 7919 * k:07d}" for k in range(n_classes)]


def write_tiny_imagenet(root: PathLike, *, n_classes: int = 8, train_per_class: int = 10, val_per_class: int = 4,
                        seed: int = 0, wnids: Optional[Sequence[str]] = None) -> Path:
    """Write ``root/tiny-imagenet-200`` (64 px JPEGs) with ``n_classes`` classes; returns ``root``."""
    root = Path(root)
    base = root / "tiny-imagenet-200"
    wnids = list(wnids) if wnids is not None else tiny_wnids(n_classes)
    rng = np.random.default_rng(seed)
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (base / "words.txt").write_text("".join(f"{w}\tsynthetic class {k}\n" for k, w in enumerate(wnids)))
    for k, w in enumerate(wnids):
        boxes = []
        for i, img in enumerate(_images([k], train_per_class, 64, rng, seed, 0)):
            name = f"{w}_{i}.JPEG"
            _save_jpeg(img, base / "train" / w / "images" / name)
            boxes.append(f"{name}\t8\t8\t56\t56\n")
        (base / "train" / w / f"{w}_boxes.txt").write_text("".join(boxes))
    lines = []
    order = rng.permutation(np.repeat(np.arange(len(wnids)), val_per_class))
    for n, k in enumerate(order):
        img = _images([int(k)], 1, 64, rng, seed, 1)[0]
        name = f"val_{n}.JPEG"
        _save_jpeg(img, base / "val" / "images" / name)
        lines.append(f"{name}\t{wnids[int(k)]}\t8\t8\t56\t56\n")
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    for n in range(2):  # the real test split has no labels
        _save_jpeg(_images([0], 1, 64, rng, seed, 2)[0], base / "test" / "images" / f"test_{n}.JPEG")
    return root


def ensure_classic_synthetic(root: PathLike, layout: str, *, n_classes: int, train_per_class: int,
                             test_per_class: int, seed: int = 0) -> Path:
    """Generate a ``layout`` tree under ``root`` unless already done; returns the tree's root (what the reader takes).

    ``done.json`` is written last: an interrupted generation is wiped and redone;
    a file lock serialises concurrent callers.
    """
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown synthetic layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    limit = {"cifar100": 100, "imagenet_subset": 100, "tiny_imagenet": 200}[layout]
    for name, v, lo in (("n_classes", n_classes, 2), ("train_per_class", train_per_class, 1),
                        ("test_per_class", test_per_class, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise DatasetError(f"synthetic {layout}: {name} must be an integer >= {lo}, got {v!r}")
    if n_classes > limit:
        raise DatasetError(f"synthetic {layout}: n_classes must be <= {limit}, got {n_classes}")
    sizes: Dict[str, int] = dict(n_classes=n_classes, train_per_class=train_per_class, test_per_class=test_per_class,
                                 seed=seed)
    key = hashlib.sha1(json.dumps([layout, sizes], sort_keys=True).encode()).hexdigest()[:10]
    root = Path(root)
    base = root / f"{layout}-{key}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{layout}-{key}.lock")):  # portable (fcntl does not exist on Windows)
        marker = base / "done.json"
        if marker.is_file():
            return base / "tree"
        shutil.rmtree(base, ignore_errors=True)
        tree = base / "tree"
        if layout == "cifar100":
            write_cifar100(tree, classes=range(n_classes), train_per_class=train_per_class,
                           test_per_class=test_per_class, seed=seed)
        elif layout == "imagenet_subset":
            from streamcl.benchmarks.class_orders import IMAGENET100_WNIDS

            write_image_folder(tree, IMAGENET100_WNIDS[:n_classes], train_per_class=train_per_class,
                               val_per_class=test_per_class, seed=seed)
        else:
            write_tiny_imagenet(tree, n_classes=n_classes, train_per_class=train_per_class,
                                val_per_class=test_per_class, seed=seed)
        marker.write_text(json.dumps({"layout": layout, "sizes": sizes}))
        return tree
