"""Decoded-frame cache vs the decode path: images/s, input equality, and memory while streaming a large cache.

Speed mode (default), in one run on the same frames:

- decode path: the real scenario dataset (``make_stream_dataset`` as ``build_scenario`` makes it:
  PIL decode + draft + Resize + ToTensor + Normalize) through a ``DataLoader``;
- cache path: the same dataset built over the frame cache (uint8 rows from the memmap) through
  the same ``DataLoader``, then :class:`DeviceNormalize` on each batch (on ``--device``);
- the same, normalising into a fresh float32 batch each time (what DeviceNormalize's reused CPU
  output buffer saves);
- the ratio (target >= 10x on CPU) and the largest absolute difference between the two
  paths' normalised inputs (target: within fp32 rounding; in fact 0 on CPU).

RSS mode (``--rss N``): writes an N-frame cache of random bytes at ``--rss-size`` px straight
with ``numpy.lib.format.open_memmap`` (+ its manifest, so ``open_frame_cache`` validates it),
streams it all through the cached dataset + DeviceNormalize, and prints the process's memory
at 10 %, 50 % and 100 % of the stream. A memmap's pages that the process touched count in its
RSS as *file-backed* pages (``RssFile``): they belong to the page cache, are shared with every
other process mapping the file and are dropped by the kernel under pressure, so RssFile (and
``ru_maxrss``, which includes it) follows the page cache, bounded by free RAM, not by N. What
must not grow is the *anonymous* memory (``RssAnon``: the process's own heap, tensors,
batches), which stays flat.

Examples::

    OMP_NUM_THREADS=1 python perf/bench_cache.py                       # 512 jpg256 frames -> 224
    python perf/bench_cache.py --format png224 --images 512 --size 224
    python perf/bench_cache.py --rss 50000 --rss-size 224              # 7.5 GB of disk, temporarily
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_loading's image writer

from streamcl.benchmarks import frame_cache as fc  # noqa: E402
from streamcl.benchmarks.device_transforms import DeviceNormalize  # noqa: E402
from streamcl.benchmarks.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def _pass(loader, device, norm=None):
    """(images/s by wall clock, images/s by this process's CPU time) of one full pass through ``loader``
    (+ ``norm`` per batch). CPU time is robust to other jobs sharing the cores (with 0 loader workers
    and 1 torch thread all the work is in this process); wall time is what a user sees."""
    w0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for x, *_ in loader:
        x = x.to(device, non_blocking=True)
        if norm is not None:
            x = norm(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        n += len(x)
    return n / (time.perf_counter() - w0), n / max(1e-9, time.process_time() - c0)


def _max_diff(a, b, device, norm) -> float:
    """Largest |decode-path input - normalised cache input| over the whole dataset (untimed)."""
    d = 0.0
    for (xa, *_), (xb, *_) in zip(a, b):
        d = max(d, float((xa.to(device) - norm(xb.to(device))).abs().max()))
    return d


def speed(args) -> None:
    from bench_loading import write_images

    from streamcl.benchmarks.scenarios import make_stream_dataset
    from streamcl.benchmarks.transforms import default_eval_transform

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        dirmap = write_images(tmp / "img", args.images, args.format)
        print(f"wrote {args.images} {args.format} frames in {time.perf_counter() - t:.1f} s")
        labels = dirmap["class"].to_numpy()
        t = time.perf_counter()
        res = fc.write_frame_cache(tmp / "idx", args.size, dirmap=dirmap, image_root=tmp / "img",
                                   workers=args.cache_workers, progress=False, name="bench")
        t_write = time.perf_counter() - t
        cache = fc.open_frame_cache(tmp / "idx", args.size, dirmap)
        tf = default_eval_transform(args.size)
        dec_ds = make_stream_dataset(tmp / "img", dirmap, labels, train_transform=tf, eval_transform=tf,
                                     draft_size=args.size).eval()
        cac_ds = make_stream_dataset(tmp / "img", dirmap, labels, train_transform=None, eval_transform=None,
                                     frame_cache=cache).eval()
        norm = DeviceNormalize(IMAGENET_MEAN, IMAGENET_STD)
        mean, std = norm._stats(device)

        def fresh(x):  # the same ops into a new float32 batch each time: what DeviceNormalize's CPU pool avoids
            return x.to(torch.float32).div_(255).sub_(mean).div_(std)

        def loader(ds, shuffle=False):
            g = torch.Generator().manual_seed(0)
            return torch.utils.data.DataLoader(ds, batch_size=args.batch, num_workers=args.workers, shuffle=shuffle,
                                               generator=g, pin_memory=device.type == "cuda",
                                               persistent_workers=False)

        runs = {"dec": [], "cac": [], "shuf": [], "fresh": [], "bytes": []}
        for _ in range(args.passes):  # interleaved, best of each: load from other jobs hits all paths alike
            runs["dec"].append(_pass(loader(dec_ds), device))
            runs["cac"].append(_pass(loader(cac_ds), device, norm))
            runs["shuf"].append(_pass(loader(cac_ds, True), device, norm))
            runs["fresh"].append(_pass(loader(cac_ds), device, fresh))
            runs["bytes"].append(_pass(loader(cac_ds), device))
        best = {k: (max(r[0] for r in v), max(r[1] for r in v)) for k, v in runs.items()}
        diff = _max_diff(loader(dec_ds), loader(cac_ds), device, norm)
        rows = [("decode path (PIL decode+resize+ToTensor+Normalize)", best["dec"]),
                ("cache read + DeviceNormalize, stream order", best["cac"]),
                ("cache read + DeviceNormalize, shuffled", best["shuf"]),
                ("cache read + normalise into a fresh batch (no output reuse)", best["fresh"]),
                ("cache read only (uint8 batches, normalised later on a GPU)", best["bytes"])]
        print(f"\n{args.images} frames {args.format} -> {args.size} px, batch {args.batch}, loader workers "
              f"{args.workers}, torch threads {args.threads}, device {device}")
        print(f"cache write: {t_write:.1f} s ({res.n / t_write:.0f} img/s with {args.cache_workers} worker(s)), "
              f"{fc.cache_nbytes(res.n, args.size) / 1e6:.1f} MB")
        print("\n| path | images/s (wall) | x decode | images/s (CPU time) | x decode |\n|---|---:|---:|---:|---:|")
        for name, (w, c) in rows:
            print(f"| {name} | {w:,.0f} | {w / best['dec'][0]:.1f} | {c:,.0f} | {c / best['dec'][1]:.1f} |")
        print(f"\nmax |decode - cache| of the normalised inputs: {diff:.3g} "
              f"({'bit-identical' if diff == 0 else 'within fp32 rounding' if diff < 1e-5 else 'MISMATCH'})")
        ok = best["cac"][1] / best["dec"][1] >= 10 and diff < 1e-5
        print(f"target (>= 10x by CPU time in stream order, inputs equal): {'met' if ok else 'NOT met'}")


def _mem() -> dict:
    """RssAnon / RssFile / VmRSS / VmHWM of this process in MB (Linux /proc), and ru_maxrss."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("RssAnon", "RssFile", "VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024
    out["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def rss(args) -> None:
    from numpy.lib.format import open_memmap

    from streamcl.benchmarks.frame_cache import CachedFrameDataset

    torch.set_num_threads(args.threads)
    n, s = args.rss, args.rss_size
    need = fc.cache_nbytes(n, s)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        path = fc.frame_cache_path(root, s)
        t = time.perf_counter()
        arr = open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3, s, s))
        rng = np.random.default_rng(0)
        step = max(1, (64 << 20) // (s * s * 3))
        for i in range(0, n, step):
            arr[i : i + step] = rng.integers(0, 256, size=(min(step, n - i), 3, s, s), dtype=np.uint8)
            arr.flush()
        del arr
        man = fc._manifest(n, s, "random-bytes", dataset="bench")
        fc.manifest_path(path).write_text(json.dumps(man))
        t_write = time.perf_counter() - t
        cache = fc.open_frame_cache(root, s)  # validates manifest, shape and file length
        print(f"wrote a {n}-frame {s} px cache ({need / 1e9:.2f} GB) in {t_write:.0f} s: {path}")
        ds = CachedFrameDataset(cache.path, np.zeros(n, dtype=np.int64))
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, num_workers=0, shuffle=False)
        norm = DeviceNormalize(IMAGENET_MEAN, IMAGENET_STD)
        marks = {int(n * 0.1), int(n * 0.5), n}
        base = _mem()
        rows = [("start", 0, base)]
        done, checksum = 0, 0.0
        t = time.perf_counter()
        for x, _ in loader:
            checksum += float(norm(x)[:, 0, 0, 0].sum())  # touch the result: the batch is really computed
            done += len(x)
            for m in sorted(marks):
                if done >= m and m not in {r[1] for r in rows}:
                    rows.append((f"{100 * m // n} %", m, _mem()))
        rate = n / (time.perf_counter() - t)
        print(f"streamed {n} frames at {rate:,.0f} img/s (batch {args.batch}, torch threads {args.threads}); "
              f"checksum {checksum:.3f}\n")
        print("| point | frames read | RssAnon MB | RssFile MB | VmRSS MB | peak VmHWM MB | ru_maxrss MB |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, m, mem in rows:
            print(f"| {name} | {m} | {mem['RssAnon']:.0f} | {mem['RssFile']:.0f} | {mem['VmRSS']:.0f} | "
                  f"{mem['VmHWM']:.0f} | {mem['ru_maxrss']:.0f} |")
        grow = rows[-1][2]["RssAnon"] - rows[1][2]["RssAnon"]
        print(f"\nanonymous RSS growth from 10 % to 100 % of the stream: {grow:+.0f} MB "
              f"(cache size {need / 1e6:,.0f} MB); file-backed pages are page cache (shared, reclaimable).")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--format", default="jpg256", help="png224 | png128 | jpg256 | jpg640x480 (bench_loading's)")
    p.add_argument("--size", type=int, default=224, help="model input size (cache size)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of both paths")
    p.add_argument("--cache-workers", type=int, default=1, help="decoder processes writing the cache")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (torch.set_num_threads)")
    p.add_argument("--passes", type=int, default=2, help="best of this many passes per path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tmp", default=None, help="folder for the temporary frames and caches (default: system tmp)")
    p.add_argument("--rss", type=int, default=None, metavar="N", help="RSS mode: stream an N-frame cache")
    p.add_argument("--rss-size", type=int, default=224, help="frame size of the RSS mode's cache")
    args = p.parse_args()
    if args.rss:
        rss(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
