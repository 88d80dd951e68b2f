"""Helpers shared by the dataset indexers: problem collection, fast tree walks, dirmap finishing."""

from __future__ import annotations

import functools
import gc
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import pandas as pd

from streamcl.errors import DatasetError

PathLike = Union[str, Path]
F = TypeVar("F", bound=Callable)

#: The dirmap columns, in order (extra columns follow them).
COLUMNS = ("class", "object", "session", "im_num", "im_path")
_SORT = ["class", "object", "session", "im_num"]
#: How many offending paths an error message lists before summarising the rest.
MAX_LISTED = 10


class Problems:
    """Collects (path, reason) pairs while scanning a tree, then raises one DatasetError listing them."""

    def __init__(self, dataset: str, root: Optional[PathLike] = None):
        self.dataset = dataset
        self.root = Path(root) if root is not None else None
        self.items: List[Tuple[str, str]] = []
        self.unlisted = 0  # problems counted but not kept (vectorised indexers keep only the first few)

    def add(self, path: PathLike, reason: str) -> None:
        """Record one problem (``path`` relative to the root or absolute)."""
        if len(self.items) >= 1000:  # enough to list; count the rest
            self.unlisted += 1
            return
        p = str(path)
        if self.root is not None and not os.path.isabs(p):
            p = str(self.root / p)
        self.items.append((p, reason))

    def __len__(self) -> int:
        return len(self.items) + self.unlisted

    def raise_if_any(self, fix: str) -> None:
        """Raise a DatasetError naming the first paths at fault, how many there are, and how to fix them."""
        if not self.items and not self.unlisted:
            return
        self.items.sort()
        where = f" in {self.root}" if self.root is not None else ""
        lines = [f"{self.dataset}: {len(self)} problem(s){where}:"]
        lines += [f"  {p}: {r}" for p, r in self.items[:MAX_LISTED]]
        if len(self) > MAX_LISTED:
            lines.append(f"  ... and {len(self) - min(len(self.items), MAX_LISTED)} more")
        lines.append(f"Fix: {fix}")
        raise DatasetError("\n".join(lines))


def require_dir(path: PathLike, dataset: str, layout: str) -> Path:
    """Return ``path`` as a Path if it is a directory, else raise a DatasetError describing the layout."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{dataset}: dataset root {p} does not exist; expected layout: {layout}")
    if not p.is_dir():
        raise DatasetError(f"{dataset}: dataset root {p} is not a directory; expected layout: {layout}")
    return p


def is_hidden(name: str) -> bool:
    """Hidden entries (``.DS_Store``, our own ``.done`` markers, temp folders) are never dataset content."""
    return name.startswith(".") or name.startswith("__MACOSX") or name == "Thumbs.db"


def list_dir(path: PathLike) -> Tuple[List[str], List[str]]:
    """(sub-directory names, file names) of ``path``, hidden entries left out, both sorted."""
    dirs, files = [], []
    with os.scandir(path) as it:
        for e in it:
            if is_hidden(e.name):
                continue
            (dirs if e.is_dir() else files).append(e.name)
    dirs.sort()
    files.sort()
    return dirs, files


def walk_files(root: PathLike, prefix: str = "") -> Iterator[str]:
    """Yield every non-hidden file below ``root`` as a '/'-joined path relative to ``root`` (os.scandir, no stat)."""
    stack = [(os.fspath(root), prefix)]
    while stack:
        path, rel = stack.pop()
        with os.scandir(path) as it:
            for e in it:
                if is_hidden(e.name):
                    continue
                r = f"{rel}/{e.name}" if rel else e.name
                if e.is_dir():
                    stack.append((e.path, r))
                else:
                    yield r


def split_name(path: str) -> Tuple[List[str], str]:
    """('a/b/c.png') -> (['a', 'b'], 'c.png'), accepting either separator."""
    parts = path.replace("\\", "/").split("/")
    return parts[:-1], parts[-1]


def bounce(n: int, length: int) -> np.ndarray:
    """Palindromic (ping-pong) positions 0..n-1, n-2..0, 1.. cut to ``length``: pads a short clip without jumps."""
    if n <= 0:
        raise ValueError("bounce needs at least one frame")
    if n == 1:
        return np.zeros(length, dtype=np.int64)
    cycle = np.concatenate([np.arange(n), np.arange(n - 2, 0, -1)])
    return np.resize(cycle, length)


def finish(df: pd.DataFrame, class_names: Optional[dict] = None) -> pd.DataFrame:
    """Cast, order the columns, sort by (class, object, session, im_num) and reset the index of a dirmap."""
    if len(df) == 0:
        df = pd.DataFrame(
            {c: pd.Series(dtype=np.int64) for c in COLUMNS[:-1]} | {"im_path": pd.Series(dtype=object)}
        )
    for c in COLUMNS[:-1]:
        df[c] = df[c].astype(np.int64)
    df["im_path"] = df["im_path"].astype(str)
    extra = [c for c in df.columns if c not in COLUMNS]
    if class_names is not None and "class_name" not in df.columns:
        inv = {v: k for k, v in class_names.items()}
        df["class_name"] = df["class"].map(inv).astype(object)
        extra.append("class_name")
    df = df[list(COLUMNS) + extra]
    return df.sort_values(_SORT, kind="stable").reset_index(drop=True)


def group_flags(keys: Sequence[np.ndarray]) -> np.ndarray:
    """For rows sorted by ``keys``, True where a new group (of all keys together) starts."""
    n = len(keys[0])
    new = np.zeros(n, dtype=bool)
    if n:
        new[0] = True
        for k in keys:
            new[1:] |= k[1:] != k[:-1]
    return new


def rank_within(new_inner: np.ndarray, new_outer: np.ndarray) -> np.ndarray:
    """1-based rank of each row's inner group within its outer group (rows sorted, flags from group_flags)."""
    inner_id = np.cumsum(new_inner)
    outer_start = np.maximum.accumulate(np.where(new_outer, np.arange(len(new_outer)), 0))
    return inner_id - inner_id[outer_start] + 1


def position_within(new_group: np.ndarray) -> np.ndarray:
    """1-based position of each row within its group (rows sorted, flags from group_flags)."""
    idx = np.arange(len(new_group))
    start = np.maximum.accumulate(np.where(new_group, idx, 0))
    return idx - start + 1


def group_sizes(new_group: np.ndarray) -> np.ndarray:
    """Per-row size of the row's group (rows sorted, flags from group_flags)."""
    gid = np.cumsum(new_group) - 1
    return np.bincount(gid)[gid] if len(gid) else np.zeros(0, dtype=np.int64)


def gc_paused(fn: F) -> F:
    """Decorator pausing the cyclic garbage collector during ``fn``: parsing a million names allocates
    millions of small acyclic objects, and the collections they trigger would double the run time."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was:
                gc.enable()

    return wrapper  # type: ignore[return-value]


def as_list(paths: Iterable[str]) -> List[str]:
    """Materialise an iterable of names once (index_names may be handed a generator)."""
    return paths if isinstance(paths, list) else list(paths)


def rooted(index_names, names: List[str], root: PathLike, **kw) -> pd.DataFrame:
    """Call ``index_names(names, **kw)``; a DatasetError it raises is re-raised naming the root the paths are in."""
    try:
        return index_names(names, **kw)
    except DatasetError as e:
        raise DatasetError(f"{e}\n(paths above are relative to {root})") from None


def subfolder_or_root(root: PathLike, name: str) -> Path:
    """``<root>/<name>`` when it exists, else ``root`` (users point at either level of a download)."""
    root = Path(root)
    return root / name if (root / name).is_dir() else root
