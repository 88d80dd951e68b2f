"""Decoded-frame cache: every frame of a prepared dataset, decoded and resized once, as one uint8 ``.npy`` memmap.

``streamcl prepare NAME RAW --out ROOT --cache 224`` (or :func:`write_frame_cache`) writes
``ROOT/frames_224.npy``, shape ``(N, 3, 224, 224)`` uint8 (CHW, the layout the network takes,
so reading an item is one contiguous copy; PIL's HWC rows are transposed once, when written),
row ``i`` = dirmap row ``i`` = ``sample_id`` ``i``, next to ``ROOT/frames_224.json``, its manifest
(N, size, shape, dtype, a digest of the dirmap's paths and classes, the format version).
A scenario built with ``cache: true`` reads uint8 CHW tensors from it and normalises them on
the device (:mod:`streamcl.benchmarks.device_transforms`), so data-loader workers only copy
bytes instead of decoding JPEG/PNG and resizing every frame of every run.

Rows equal the decode path's images exactly: the same PIL open (+ ``draft`` at the target
size for JPEGs), ``convert("RGB")`` and torchvision ``Resize((S, S), antialias=True)`` as
:class:`streamcl.benchmarks.scenarios.DirmapImageDataset` + the default transforms.

Writing is atomic and resumable: rows go into ``frames_S.npy.partial`` (a real ``.npy``
allocated at full size) and, after every flush (``flush_rows`` rows), ``frames_S.json.partial``
records how many rows are on disk (plus size, shape, dtype and the dirmap digest). A killed
write resumes at the last flushed row; finished rows are not decoded again. At the end the
``.npy`` is renamed into place and the manifest is written last: it is the commit marker, so
a cache without a manifest is never read. :func:`open_frame_cache` refuses a missing,
interrupted, truncated or mismatched cache with one line naming the file and the command
that rebuilds it.

Why a numpy memmap and not WebDataset, LitData or FFCV: replay buffers and Avalanche
subsets address frames by ``sample_id`` in any order, which a memmap serves with one slice
(shard/stream formats are built for sequential reads and need an index on top for random
access); it needs no dependency beyond numpy; and the OS page cache is shared by every
data-loader worker and every concurrent ``streamcl run`` on the machine (each process maps
the same file; nothing is copied per process). The cost: no compression, so it takes
``N * S * S * 3`` bytes of disk (measured speed: ``perf/bench_cache.py``).

Disk needs (``N * S * S * 3`` bytes; frame counts from the prepared indexes):

==============  =======  ========  ========  ========
dataset         frames   64 px     128 px    224 px
==============  =======  ========  ========  ========
Toybox           52 200   0.64 GB   2.57 GB   7.86 GB
iLab-2M-Light    47 040   0.58 GB   2.31 GB   7.08 GB
CORe50 (1 fps)   16 500   0.20 GB   0.81 GB   2.48 GB
iCubWorld T.     ~N       N*12 KB   N*48 KB   N*147 KB
==============  =======  ========  ========  ========

(CORe50: 50 objects x 11 sessions x 15 frames. iCubWorld's frame count depends on the
download's unbalanced sessions; ``streamcl prepare`` prints N.) Writing needs the full size
free once; ``write_frame_cache`` checks the free space before it starts.

Public API (stable; ``perf/bench_gpu_stream.py`` imports it): :func:`frame_cache_path`,
:func:`write_frame_cache`, :func:`open_frame_cache`, :class:`FrameCache`,
:class:`CachedFrameDataset`, :func:`dirmap_digest`, :func:`cache_nbytes`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from streamcl.errors import DatasetError
from streamcl.faults import failpoint

PathLike = Union[str, Path]

#: Version of the cache layout (file names, manifest keys); a newer one is refused.
FORMAT = 2  # 2: rows are CHW (format 1, HWC, is refused and rebuilt by `prepare --cache`)
DTYPE = np.dtype(np.uint8)
#: Failpoint hit after every flushed chunk of rows (tests kill a write there).
FAILPOINT = "frame_cache_flush"

__all__ = [
    "FORMAT",
    "FrameCache",
    "CacheWriteResult",
    "CachedFrameDataset",
    "frame_cache_path",
    "manifest_path",
    "write_frame_cache",
    "open_frame_cache",
    "has_frame_cache",
    "dirmap_digest",
    "cache_nbytes",
    "open_rgb",
    "decode_frame",
]


# --------------------------------------------------------------------------- names


def frame_cache_path(index_root: PathLike, size: int) -> Path:
    """The cache's ``.npy`` file for frames of ``size`` px under a prepared index folder: ``ROOT/frames_SIZE.npy``."""
    return Path(index_root).expanduser() / f"frames_{int(size)}.npy"


def manifest_path(cache: PathLike) -> Path:
    """The manifest next to a cache file: ``frames_SIZE.json`` (written last: a cache's commit marker)."""
    return Path(cache).with_suffix(".json")


def _partial(p: Path) -> Path:
    return p.with_name(p.name + ".partial")


def cache_nbytes(n: int, size: int) -> int:
    """Bytes of pixel data in a cache of ``n`` frames at ``size`` px (the .npy header adds ~128 B)."""
    return int(n) * int(size) * int(size) * 3


def dirmap_digest(dirmap: pd.DataFrame) -> str:
    """SHA-256 of the dirmap's ``im_path`` and ``class`` columns in row order: a cache belongs to exactly one dirmap."""
    h = hashlib.sha256()
    for p, c in zip(dirmap["im_path"].astype(str), dirmap["class"].astype(str)):
        h.update(f"{p}\t{c}\n".encode())
    return h.hexdigest()


def _fix(name: Optional[str], root: Path, size: int) -> str:
    return f"streamcl prepare {name or 'NAME'} RAW --out {root} --cache {int(size)}"


def _dataset_name(index_root: Path) -> Optional[str]:
    """The dataset named by a prepared folder's ``streamcl_index.json`` (None when unreadable)."""
    try:
        name = json.loads((index_root / "streamcl_index.json").read_text())["dataset"]
        return name if isinstance(name, str) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------- decoding (shared with the decode path)


def open_rgb(path: PathLike, draft_size: Optional[int] = None) -> Image.Image:
    """Decode one image as PIL RGB (JPEGs at a reduced DCT scale not below ``draft_size``); DatasetError if unreadable.

    The decode path (:class:`~streamcl.benchmarks.scenarios.DirmapImageDataset`) and the cache
    writer both call this, so cached rows are the decode path's images.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            if draft_size:
                im.draft("RGB", (draft_size, draft_size))
            return im.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: image listed in the dirmap is missing (is the image root right? "
            f"re-run `streamcl prepare NAME RAW --out ROOT` if the tree changed)"
        ) from None
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"{path}: cannot read image ({e}); re-extract or remove it from the dirmap") from e


_RESIZERS: Dict[int, Callable[[Image.Image], Image.Image]] = {}


def _resizer(size: int) -> Callable[[Image.Image], Image.Image]:
    """The default pipeline's resize op itself (``transforms.transform_list(size)[0]``), built once per size."""
    if size not in _RESIZERS:
        from streamcl.benchmarks.transforms import transform_list

        _RESIZERS[size] = transform_list(size)[0]
    return _RESIZERS[size]


def decode_frame(path: PathLike, size: int) -> Tuple[np.ndarray, Tuple[int, int]]:
    """One cache row: ``(uint8 array (3, size, size), decoded source (height, width))`` as the decode path sees it."""
    img = open_rgb(path, draft_size=size)
    src = (img.height, img.width)
    out = np.asarray(_resizer(size)(img), dtype=np.uint8)
    if out.shape != (size, size, 3):  # defensive: the resize must give exactly this shape
        raise DatasetError(f"{path}: resized to {out.shape}, expected {(size, size, 3)}")
    return np.ascontiguousarray(out.transpose(2, 0, 1)), src


def _decode_chunk(job: Tuple[str, List[str], int]) -> Tuple[np.ndarray, List[Tuple[int, int]]]:
    """Worker: decode a run of consecutive rows."""
    root, paths, size = job
    out = np.empty((len(paths), 3, size, size), dtype=DTYPE)
    srcs = []
    for k, p in enumerate(paths):
        out[k], src = decode_frame(Path(root) / p, size)
        srcs.append(src)
    return out, srcs


# --------------------------------------------------------------------------- writing


@dataclass
class CacheWriteResult:
    """What :func:`write_frame_cache` did: the final cache file, its rows, and where this call started."""

    path: Path
    n: int
    size: int
    resumed_from: int  # rows already on disk (flushed by an earlier, interrupted call); N when already complete
    decoded: int  # rows decoded by this call


def _manifest(n: int, size: int, digest: str, **extra: Any) -> Dict[str, Any]:
    return {
        "format": FORMAT,
        "n": int(n),
        "size": int(size),
        "shape": [int(n), 3, int(size), int(size)],
        "dtype": DTYPE.str,
        "layout": "NCHW",
        "dirmap_sha256": digest,
        **extra,
    }


def _write_json(path: Path, obj: Dict[str, Any]) -> None:
    from streamcl.utils import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def has_frame_cache(index_root: PathLike, size: int) -> bool:
    """Whether a committed cache (manifest present) exists for ``size``; :func:`open_frame_cache` validates it."""
    return manifest_path(frame_cache_path(index_root, size)).is_file()


def write_frame_cache(
    index_root: PathLike,
    size: int,
    *,
    dirmap: Optional[pd.DataFrame] = None,
    image_root: Optional[PathLike] = None,
    name: Optional[str] = None,
    workers: int = 1,
    progress: bool = True,
    chunk_rows: int = 32,
    flush_rows: int = 1024,
    force: bool = False,
) -> CacheWriteResult:
    """Decode every dirmap row at ``size`` px into ``frame_cache_path(index_root, size)`` (atomic, resumable).

    ``dirmap``/``image_root`` default to the prepared index in ``index_root``. A valid cache
    for the same dirmap is kept (``force`` rewrites it); an interrupted write for the same
    dirmap and size resumes at its last flushed row; anything else starts over. ``workers`` > 1
    decodes chunks of ``chunk_rows`` rows in that many processes. A file lock serialises
    writers of the same cache (``prepare`` and a ``cache: true`` synthetic run, say).
    """
    from filelock import FileLock

    index_root = Path(index_root).expanduser()
    size = int(size)
    if size < 1:
        raise DatasetError(f"--cache {size}: the cache size must be a positive number of pixels (e.g. 224)")
    if dirmap is None or image_root is None:
        from streamcl.benchmarks.dirmap import load_dirmap
        from streamcl.benchmarks.prepare import load_index

        table, img_root, idx_name = load_index(index_root)
        dirmap = load_dirmap(table) if dirmap is None else dirmap
        image_root = img_root if image_root is None else image_root
        name = name or idx_name
    name = name or _dataset_name(index_root)
    image_root = Path(image_root)
    n = len(dirmap)
    paths = dirmap["im_path"].astype(str).tolist()
    digest = dirmap_digest(dirmap)
    final = frame_cache_path(index_root, size)
    man, part, part_man = manifest_path(final), _partial(final), _partial(manifest_path(final))
    index_root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.with_name(f".{final.name}.lock"))):
        if not force and man.is_file():
            try:
                open_frame_cache(index_root, size, dirmap, name=name).close()
                return CacheWriteResult(final, n, size, resumed_from=n, decoded=0)
            except DatasetError:
                pass  # stale or damaged: rebuild below
        start, sources = _resume_point(part, part_man, n, size, digest)
        if start == 0:
            part.unlink(missing_ok=True)
            need = cache_nbytes(n, size) + (1 << 20)
            free = shutil.disk_usage(index_root).free
            if free < need:
                raise DatasetError(
                    f"{final}: needs {need / 1e9:.2f} GB free for {n} frames at {size} px, {index_root} has "
                    f"{free / 1e9:.2f} GB; free space or choose a smaller --cache size"
                )
            from numpy.lib.format import open_memmap

            arr = open_memmap(part, mode="w+", dtype=DTYPE, shape=(n, 3, size, size))
            _write_json(part_man, _manifest(n, size, digest, rows_done=0, source_hw=[]))
        else:
            arr = np.load(part, mmap_mode="r+")
        # Uncommit an old cache before replacing its data: a manifest never describes other bytes.
        man.unlink(missing_ok=True)
        decoded, seen = _fill(arr, paths, image_root, size, start, sources, part_man, n, digest, name=name,
                        workers=workers, progress=progress, chunk_rows=max(1, int(chunk_rows)),
                        flush_rows=max(1, int(flush_rows)))
        del arr
        os.replace(part, final)
        srcs = sorted(seen)
        _write_json(man, _manifest(n, size, digest, dataset=name,
                                   source_hw=list(srcs[0]) if len(srcs) == 1 else None))
        part_man.unlink(missing_ok=True)
    return CacheWriteResult(final, n, size, resumed_from=start, decoded=decoded)


def _resume_point(part: Path, part_man: Path, n: int, size: int, digest: str) -> Tuple[int, List[List[int]]]:
    """Rows already flushed by an interrupted write of this same cache (0 when there is none or it does not match)."""
    if not (part.is_file() and part_man.is_file()):
        return 0, []
    try:
        meta = json.loads(part_man.read_text())
        want = _manifest(n, size, digest)
        if any(meta.get(k) != v for k, v in want.items()):
            return 0, []
        done = int(meta["rows_done"])
        sources = [list(s) for s in meta.get("source_hw", [])]
        arr = np.load(part, mmap_mode="r")
        ok = arr.shape == (n, 3, size, size) and arr.dtype == DTYPE and 0 <= done <= n
        del arr
        return (done, sources) if ok else (0, [])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, []


def _fill(arr: np.ndarray, paths: Sequence[str], image_root: Path, size: int, start: int,
          sources: List[List[int]], part_man: Path, n: int, digest: str, *, name: Optional[str],
          workers: int, progress: bool, chunk_rows: int, flush_rows: int) -> Tuple[int, set]:  # fmt: skip
    """Decode rows ``start..n`` into ``arr`` in order, flushing + recording progress every ``flush_rows`` rows.

    Returns (rows decoded, set of source (height, width) of all rows so far)."""
    from tqdm.auto import tqdm

    from streamcl.benchmarks.workers import process_pool

    seen = {tuple(s) for s in sources}
    jobs = [(str(image_root), list(paths[i : i + chunk_rows]), size) for i in range(start, n, chunk_rows)]
    done, since_flush = start, 0

    def flush() -> None:
        arr.flush()  # msync: the rows are on disk before the progress file says so
        _write_json(part_man, _manifest(n, size, digest, rows_done=done, source_hw=sorted(map(list, seen))))
        failpoint(FAILPOINT)

    def results():
        if workers <= 1 or len(jobs) <= 1:
            yield from map(_decode_chunk, jobs)
            return
        # The same pool as Toybox frame extraction (streamcl.benchmarks.workers: never forked).
        # A sliding window of 2 chunks per worker keeps results in row order with bounded memory.
        with process_pool(workers, preload=[__name__]) as pool:
            window: deque = deque()
            it = iter(jobs)
            for job in it:
                window.append(pool.submit(_decode_chunk, job))
                if len(window) >= 2 * workers:
                    break
            while window:
                res = window.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    window.append(pool.submit(_decode_chunk, nxt))
                yield res

    desc = f"{name or 'frames'}: caching frames at {size} px"
    with tqdm(total=n, initial=start, desc=desc, unit="img", disable=not progress or start >= n) as bar:
        for block, srcs in results():
            arr[done : done + len(block)] = block
            seen.update(srcs)
            done += len(block)
            since_flush += len(block)
            bar.update(len(block))
            if since_flush >= flush_rows or done == n:
                flush()
                since_flush = 0
    if start >= n:
        arr.flush()
    return n - start, seen


# --------------------------------------------------------------------------- reading


@dataclass
class FrameCache:
    """A validated cache: ``frames`` is the read-only ``(N, 3, S, S)`` uint8 memmap (row = sample_id)."""

    path: Path
    manifest: Dict[str, Any]
    frames: np.ndarray = field(repr=False)

    @property
    def n(self) -> int:
        return int(self.manifest["n"])

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    @property
    def source_hw(self) -> Optional[Tuple[int, int]]:
        """(height, width) of the decoded sources (after JPEG draft, as the decode path's untransformed items)
        when they all share one size, else None."""
        s = self.manifest.get("source_hw")
        return (int(s[0]), int(s[1])) if s else None

    def __len__(self) -> int:
        return self.n

    def close(self) -> None:
        """Drop the mapping (the file stays)."""
        self.frames = None  # type: ignore[assignment]


def open_frame_cache(
    index_root: PathLike,
    size: int,
    expected_dirmap: Optional[pd.DataFrame] = None,
    *,
    name: Optional[str] = None,
) -> FrameCache:
    """Open and validate the ``size`` px cache of ``index_root`` (read-only memmap).

    Checks the manifest (format, size, N, dtype, shape), the dirmap digest against
    ``expected_dirmap`` (when given) and the file's length; any problem (missing,
    interrupted, truncated, garbage, other size or dirmap) raises one-line DatasetError
    naming the file and ``streamcl prepare NAME RAW --out ROOT --cache SIZE``.
    """
    index_root = Path(index_root).expanduser()
    size = int(size)
    name = name or _dataset_name(index_root)
    final = frame_cache_path(index_root, size)
    man = manifest_path(final)
    fix = f"build it with `{_fix(name, index_root, size)}`"

    def fail(where: Path, why: str) -> DatasetError:
        return DatasetError(f"{where}: {why}; {fix}")

    if not man.is_file():
        if _partial(final).is_file() or _partial(man).is_file():
            raise fail(_partial(final), f"frame cache at {size} px was interrupted while being written "
                                        "(run the command again to resume it)")
        others = sorted(p.name for p in index_root.glob("frames_*.json")) if index_root.is_dir() else []
        also = f" (found: {', '.join(others)})" if others else ""
        raise fail(final, f"no frame cache at {size} px{also}")
    try:
        meta = json.loads(man.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise TypeError("not a JSON object")
        fmt, n, m_size = int(meta["format"]), int(meta["n"]), int(meta["size"])
        digest, dtype, shape = str(meta["dirmap_sha256"]), np.dtype(meta["dtype"]), tuple(meta["shape"])
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise fail(man, f"damaged frame-cache manifest ({type(e).__name__})") from None
    if fmt > FORMAT:
        raise DatasetError(f"{man}: frame-cache format {fmt} is newer than this streamcl (format {FORMAT}); "
                           f"upgrade streamcl or rebuild it with `{_fix(name, index_root, size)}`")
    if m_size != size or shape != (n, 3, size, size) or dtype != DTYPE:
        raise fail(man, f"holds {shape} {dtype} frames, not {size} px uint8")
    if expected_dirmap is not None:
        if n != len(expected_dirmap):
            raise fail(man, f"cache has {n} frames but the dirmap has {len(expected_dirmap)} rows (re-prepared?)")
        if digest != dirmap_digest(expected_dirmap):
            raise fail(man, "cache was written for another dirmap (paths or classes changed since)")
    if not final.is_file():
        raise fail(final, "frame cache file missing (its manifest exists)")
    try:
        frames = np.load(final, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:  # bad header, or shorter than the header says
        raise fail(final, f"damaged frame cache ({type(e).__name__}: {str(e).splitlines()[0][:80]})") from None
    expected_len = frames.offset + cache_nbytes(n, size)
    actual_len = final.stat().st_size
    if frames.shape != (n, 3, size, size) or frames.dtype != DTYPE or actual_len != expected_len:
        raise fail(final, f"damaged frame cache ({actual_len} bytes, expected {expected_len} for {n} frames "
                          f"of {size} px)")
    return FrameCache(path=final, manifest=meta, frames=frames)


class CachedFrameDataset:
    """Torch map-style dataset of ``(uint8 CHW tensor, label)`` read from a frame cache (row = dirmap row).

    The memmap is opened lazily in each process (pickling to spawned workers sends the
    path, not the pixels). An item is a contiguous CHW copy of one row (``S*S*3`` bytes);
    normalisation happens later, on the batch, on the device
    (:class:`~streamcl.benchmarks.device_transforms.DeviceNormalize`).
    """

    def __init__(self, path: PathLike, labels: Sequence[int], *, source_hw: Optional[Tuple[int, int]] = None):
        self.path = Path(path)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.source_hw = source_hw
        self._frames: Optional[np.ndarray] = None

    @property
    def frames(self) -> np.ndarray:
        if self._frames is None:
            self._frames = np.load(self.path, mmap_mode="r")
        return self._frames

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Tuple[Any, int]:
        import torch

        # One contiguous copy out of the read-only mapping (rows are stored CHW, as the network takes them).
        row = np.array(self.frames[i])
        return torch.from_numpy(row), int(self.labels[i])

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_frames"] = None
        return state
