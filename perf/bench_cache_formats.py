"""Why the frame cache is a NumPy memmap: the same uint8 frames stored three ways, read three ways.

Formats (each holding N ``3 x S x S`` uint8 frames + labels, uncompressed):

- **memmap**: streamcl's frame cache, one ``.npy`` read through
  :class:`streamcl.benchmarks.frame_cache.CachedFrameDataset` (what ``cache: true`` scenarios use);
- **WebDataset**: tar shards of raw frame bytes (``webdataset.TarWriter`` / ``WebDataset``);
- **LitData**: ``litdata.optimize`` chunks read by ``litdata.StreamingDataset``.

Reads, images/s by this process's CPU time (1 torch thread, 0 loader workers, batches of 64,
best of ``--passes`` interleaved passes), all returning ``(uint8 CHW tensor, label)``:

- *stream order*: a full pass in sample order, what a class-instance stream does;
- *shuffled*: a full pass in a random order (WebDataset: its shuffle buffer, not a permutation);
- *by sample id*: ``--ids`` random single items by id, what replay buffers and Avalanche subsets
  ask (WebDataset has no random access: n/a).

Also the write time and the bytes on disk. WebDataset and LitData are not dependencies of
streamcl: install them to run this (``pip install webdataset litdata``); a missing one is skipped.

    OMP_NUM_THREADS=1 python perf/bench_cache_formats.py             # 2048 frames at 224 px (0.3 GB)
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional

import numpy as np
import torch


def _cpu_rate(fn: Callable[[], int]) -> float:
    """Items/s of ``fn()`` (which returns how many items it read) by this process's CPU time."""
    c0 = time.process_time()
    n = fn()
    return n / max(1e-9, time.process_time() - c0)


def _drain(loader: Iterable) -> int:
    n = 0
    for x, _ in loader:
        assert x.dtype == torch.uint8
        n += len(x)
    return n


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


# ------------------------------------------------------------------------------------ the formats
def write_memmap(root: Path, frames: np.ndarray) -> Path:
    from numpy.lib.format import open_memmap

    from streamcl.benchmarks import frame_cache as fc

    n, _, s, _ = frames.shape
    root.mkdir(parents=True, exist_ok=True)
    path = fc.frame_cache_path(root, s)
    arr = open_memmap(path, mode="w+", dtype=np.uint8, shape=frames.shape)
    arr[:] = frames
    arr.flush()
    del arr
    fc.manifest_path(path).write_text(json.dumps(fc._manifest(n, s, "random-bytes", dataset="bench")))
    return path


def memmap_dataset(path: Path, labels: np.ndarray) -> Any:
    from streamcl.benchmarks.frame_cache import CachedFrameDataset

    return CachedFrameDataset(path, labels)


def write_webdataset(root: Path, frames: np.ndarray, labels: np.ndarray, per_shard: int = 1000) -> Path:
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(frames), per_shard):
        with wds.TarWriter(str(root / f"shard-{start // per_shard:05d}.tar")) as sink:
            for i in range(start, min(start + per_shard, len(frames))):
                sink.write({"__key__": f"{i:08d}", "u8": frames[i].tobytes(), "cls": str(int(labels[i]))})
    return root


def webdataset_loader(root: Path, shape: tuple, batch: int, shuffle: bool) -> Any:
    import webdataset as wds

    def decode(sample: Dict[str, Any]) -> Any:
        x = torch.from_numpy(np.frombuffer(sample["u8"], dtype=np.uint8).reshape(shape).copy())
        return x, int(sample["cls"])

    shards = sorted(str(p) for p in root.glob("*.tar"))
    ds = wds.WebDataset(shards, shardshuffle=False, empty_check=False)
    if shuffle:
        ds = ds.shuffle(1000, rng=random.Random(0))
    return torch.utils.data.DataLoader(ds.map(decode), batch_size=batch, num_workers=0)


def _lit_item(npy: str, labels: np.ndarray, i: int) -> Dict[str, Any]:
    """One sample for ``litdata.optimize`` (module level and reading the memmap: its workers are spawned)."""
    return {"x": np.array(np.load(npy, mmap_mode="r")[i]), "y": int(labels[i])}


def write_litdata(root: Path, npy: Path, labels: np.ndarray) -> Path:
    from functools import partial

    from litdata import optimize

    optimize(fn=partial(_lit_item, str(npy), labels), inputs=list(range(len(labels))), output_dir=str(root),
             chunk_bytes="64MB", num_workers=1, mode="overwrite")
    return root


class _LitPairs(torch.utils.data.Dataset):
    """(uint8 tensor, label) items of a litdata StreamingDataset, by index."""

    def __init__(self, root: Path):
        from litdata import StreamingDataset

        self.ds = StreamingDataset(str(root))

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Any:
        d = self.ds[i]
        return torch.as_tensor(d["x"]), int(d["y"])


def litdata_stream_loader(root: Path, batch: int, shuffle: bool) -> Any:
    from litdata import StreamingDataLoader, StreamingDataset

    ds = StreamingDataset(str(root), shuffle=shuffle, seed=0)
    collate = lambda items: (torch.stack([torch.as_tensor(d["x"]) for d in items]),  # noqa: E731
                             torch.tensor([int(d["y"]) for d in items]))
    return StreamingDataLoader(ds, batch_size=batch, num_workers=0, collate_fn=collate)


# ------------------------------------------------------------------------------------ main
def main(argv: Optional[list] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ids", type=int, default=512, help="random single reads by sample id")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--tmp", default=None, help="folder for the three copies (default: system tmp)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    n, s = args.images, args.size
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(n, 3, s, s), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    ids = rng.integers(0, n, size=args.ids)
    results: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        readers: Dict[str, Dict[str, Callable[[], int]]] = {}

        t = time.perf_counter()
        mm = write_memmap(tmp / "memmap", frames)
        results["memmap"] = {"write_s": time.perf_counter() - t, "bytes": _size(mm)}
        mds = memmap_dataset(mm, labels)
        g = torch.Generator().manual_seed(0)
        readers["memmap"] = {
            "stream": lambda: _drain(torch.utils.data.DataLoader(mds, batch_size=args.batch)),
            "shuffled": lambda: _drain(torch.utils.data.DataLoader(mds, batch_size=args.batch, shuffle=True,
                                                                   generator=g)),
            "by_id": lambda: sum(1 for i in ids if mds[int(i)][0].numel()),
        }
        try:
            t = time.perf_counter()
            wd = write_webdataset(tmp / "wds", frames, labels)
            results["webdataset"] = {"write_s": time.perf_counter() - t, "bytes": _size(wd)}
            readers["webdataset"] = {
                "stream": lambda: _drain(webdataset_loader(wd, (3, s, s), args.batch, False)),
                "shuffled": lambda: _drain(webdataset_loader(wd, (3, s, s), args.batch, True)),
            }
        except ImportError as e:
            results["webdataset"] = {"skipped": f"{e} (pip install webdataset)"}
        try:
            t = time.perf_counter()
            ld = write_litdata(tmp / "litdata", mm, labels)
            results["litdata"] = {"write_s": time.perf_counter() - t, "bytes": _size(ld)}
            lpairs = _LitPairs(ld)
            readers["litdata"] = {
                "stream": lambda: _drain(litdata_stream_loader(ld, args.batch, False)),
                "shuffled": lambda: _drain(litdata_stream_loader(ld, args.batch, True)),
                "by_id": lambda: sum(1 for i in ids if lpairs[int(i)][0].numel()),
            }
        except ImportError as e:
            results["litdata"] = {"skipped": f"{e} (pip install litdata)"}

        best: Dict[str, Dict[str, float]] = {k: {} for k in readers}
        for _ in range(args.passes):  # interleaved, best of each: other load hits every format alike
            for fmt, modes in readers.items():
                for mode, fn in modes.items():
                    best[fmt][mode] = max(best[fmt].get(mode, 0.0), _cpu_rate(fn))
        for fmt in readers:
            results[fmt].update(best[fmt])

    print(f"\n{n} frames, 3 x {s} x {s} uint8 ({frames.nbytes / 1e6:.0f} MB), batch {args.batch}, 0 loader "
          f"workers, 1 torch thread; images/s by CPU time, best of {args.passes}\n")
    print("| format | write s | MB on disk | stream order | shuffled | by sample id |\n|---|---:|---:|---:|---:|---:|")
    for fmt, r in results.items():
        if "skipped" in r:
            print(f"| {fmt} | skipped: {r['skipped']} | | | | |")
            continue
        cells = [f"{r[m]:,.0f}" if m in r else "n/a" for m in ("stream", "shuffled", "by_id")]
        print(f"| {fmt} | {r['write_s']:.1f} | {r['bytes'] / 1e6:.0f} | " + " | ".join(cells) + " |")
    return results


if __name__ == "__main__":
    main()
