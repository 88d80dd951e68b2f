"""Paper-scale replay bookkeeping on the CPU (issue 29): buffer vs codec per new image, and GB checkpoints.

Two configurations, driven with random codes/features through the public
:class:`streamcl.plugins.CodeBuffer` and the real codecs (no network: its cost depends on the
trunk and the device, not on the buffer):

- REMIND ImageNet: 959,665 items of 7x7x32 ``uint8`` PQ codes (1.5 GB), 1000 classes,
  largest-class eviction; per new image: draw 50 + admit 1 (buffer), encode 1 feature map
  (512x7x7, 32 codebooks of 256 centroids) + decode the 50 drawn items (codec).
- CRUMB ImageNet: 278,342 items of 13x13x32 codes (5,408 B with the label; 1.5 GB), 1000
  classes, class-balanced; per step: one item per seen class (``sample_per_class``, all 1000
  classes, 1 round) (buffer), encode 1 feature map (512x13x13, 256 blocks of 16) + decode the
  1000 drawn items (codec).

Each runs at 10 k, 100 k and the paper's size; times are medians of repeated calls, 1 thread.
``--checkpoint`` saves the full REMIND buffer the way the runner does (encoded as
``capture_strategy`` does, with live references, then ``streamcl.checkpoint.files.save``: temp
file, fsync, ``os.replace``) and loads it back in a fresh process (``files.load`` +
``CodeBuffer.from_state_dict``), reporting time, the RSS just before the step and the step's
own peak RSS (peak reset after the buffer is filled) against the buffer's size. Run::

    OMP_NUM_THREADS=1 python perf/sim_paper_scale.py              # the per-image table
    OMP_NUM_THREADS=1 python perf/sim_paper_scale.py --checkpoint /tmp/ckpt   # GB checkpoint figures
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from streamcl.plugins import CodeBuffer

REMIND_ITEMS, CRUMB_ITEMS, N_CLASSES = 959_665, 278_342, 1000


def median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()
    times: List[float] = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def filled(n_items: int, code_shape, policy: str, n_codes: int = 256) -> CodeBuffer:
    """A full buffer of random codes, labels spread over the 1000 classes, written in chunks."""
    buf = CodeBuffer(n_items, code_shape, policy, seed=0)
    if policy == "class_balanced":
        buf.begin_experience(n_items=n_items, classes=range(N_CLASSES))
    g = torch.Generator().manual_seed(0)
    chunk = 50_000
    for s in range(0, n_items, chunk):
        k = min(chunk, n_items - s)
        codes = torch.randint(0, n_codes, (k, *code_shape), dtype=torch.uint8, generator=g)
        buf.add(codes, torch.arange(s, s + k) % N_CLASSES)
    # class-balanced: the quota floor(n / 1000) per class leaves up to 999 slots free
    assert len(buf) == n_items or (policy == "class_balanced" and len(buf) > n_items - N_CLASSES)
    return buf


def remind_codec():
    from streamcl.models.pq import PQCodec

    codec = PQCodec(num_codebooks=32, nbits=8, niter=5, max_train_vectors=20_000, seed=0, use_gpu=False)
    codec.fit(torch.randn(400, 512, 7, 7))
    return codec


def crumb_codec():
    from streamcl.models.codebook import MemoryBlockCodec

    return MemoryBlockCodec(n_blocks=256, block_dim=16, seed=0)


def remind_row(codec, feat: torch.Tensor, n: int, reps: int, g: torch.Generator) -> Dict[str, float]:
    """REMIND's per-image figures with a full buffer of ``n`` items."""
    one = codec.encode(feat)
    buf = filled(n, tuple(one.shape[1:]), "largest_class")
    labels = iter(torch.randint(N_CLASSES, (10 * reps + 10,), generator=g).tolist())
    row = {"buffer": median_ms(lambda: (buf.sample(50, generator=g),
                                        buf.add(one, torch.tensor([next(labels)]))), reps)}
    drawn, _ = buf.sample(50, generator=g)
    row["encode"] = median_ms(lambda: codec.encode(feat), reps)
    row["decode"] = median_ms(lambda: codec.decode(drawn), reps)
    row["codec"] = row["encode"] + row["decode"]
    return row


def crumb_row(codec, feat: torch.Tensor, n: int, reps: int, g: torch.Generator) -> Dict[str, float]:
    """CRUMB's per-step figures with a full buffer of ``n`` items."""
    buf = filled(n, tuple(codec.encode(feat).shape[1:]), "class_balanced")
    classes = list(range(N_CLASSES))
    row = {"buffer": median_ms(lambda: buf.sample_per_class(classes, 1, generator=g), reps)}
    drawn, _ = buf.sample_per_class(classes, 1, generator=g)
    row["encode"] = median_ms(lambda: codec.encode(feat), reps)
    with torch.no_grad():
        row["decode"] = median_ms(lambda: codec.decode(drawn), max(3, reps // 10))
    row["codec"] = row["encode"] + row["decode"]
    return row


def remind_rows(sizes: List[int], reps: int) -> Dict[int, Dict[str, float]]:
    codec, g = remind_codec(), torch.Generator().manual_seed(1)
    return {n: remind_row(codec, torch.randn(1, 512, 7, 7), n, reps, g) for n in sizes}


def crumb_rows(sizes: List[int], reps: int) -> Dict[int, Dict[str, float]]:
    codec, g = crumb_codec(), torch.Generator().manual_seed(1)
    return {n: crumb_row(codec, torch.randn(1, 512, 13, 13).abs(), n, reps, g) for n in sizes}


def print_table(name: str, rows: Dict[int, Dict[str, float]]) -> None:
    sizes = sorted(rows)
    print(f"\n{name} (ms per new image / step, median, 1 thread)")
    print("| | " + " | ".join(f"{n:,} items" for n in sizes) + f" | growth {sizes[0]:,} -> {sizes[-1]:,} |")
    print("|---|" + "---:|" * (len(sizes) + 1))
    for key in ("buffer", "encode", "decode", "codec"):
        vals = [rows[n][key] for n in sizes]
        print(f"| {key} | " + " | ".join(f"{v:.4g}" for v in vals) + f" | {vals[-1] / vals[0]:.2f}x |")
    share = [rows[n]["buffer"] / (rows[n]["buffer"] + rows[n]["codec"]) for n in sizes]
    print("| buffer share | " + " | ".join(f"{100 * s:.1f} %" for s in share) + " | |")


# ----------------------------------------------------------------------------- checkpoints
def _rss() -> int:
    """Current resident set (bytes)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0), so that the next peak is the step's own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _payload(buf: CodeBuffer) -> Dict[str, object]:
    """What the runner writes, with the buffer as its only plugin (as a LatentReplayPlugin's entry holds it)."""
    from streamcl import checkpoint
    from streamcl.checkpoint.encode import live_tensors

    with live_tensors():  # what capture_strategy does: the buffer's live memory goes to torch.save, no copy
        state = {"cls": "sim", "model": {}, "optimizer": {}, "clock": {}, "metrics": [],
                 "plugins": [{"cls": "sim:buffer", "state": checkpoint.encode(buf)}],
                 "metric_results": checkpoint.encode({}), "last_metric_results": checkpoint.encode({})}
    return {"strategy": state, "rng": checkpoint.rng_state()}


def _checkpoint_child(mode: str, path: str) -> None:
    """One measurement per process: RSS just before the step, and the step's own peak."""
    from streamcl.checkpoint import files

    torch.set_num_threads(1)
    if mode == "save":
        buf = filled(REMIND_ITEMS, (7, 7, 32), "largest_class")
        _reset_peak()
        base = _rss()
        t0 = time.perf_counter()
        files.save(Path(path), _payload(buf))  # the runner's path: capture (live references), atomic + fsync'd save
        dt = time.perf_counter() - t0
        print(f"save {buf.nbytes()} {dt:.3f} {base} {_peak_rss()} {os.path.getsize(path)}")
    else:
        _reset_peak()
        base = _rss()
        t0 = time.perf_counter()
        payload = files.load(Path(path))  # the runner's path: checked torch.load(weights_only=True) ...
        buf = CodeBuffer.from_state_dict(payload["strategy"]["plugins"][0]["state"]["state"])  # ... restore
        dt = time.perf_counter() - t0
        assert len(buf) == REMIND_ITEMS
        print(f"load {buf.nbytes()} {dt:.3f} {base} {_peak_rss()} {len(buf)}")


def checkpoint_figures(directory: str) -> None:
    path = str(Path(directory) / "buffer_checkpoint.pt")
    Path(directory).mkdir(parents=True, exist_ok=True)
    print("\n| step | buffer (GB) | time (s) | RSS before (GB) | peak RSS (GB) | peak / buffer "
          "| (peak - RSS before) / buffer |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in ("save", "load"):
        res = subprocess.run([sys.executable, __file__, "--_child", mode, path], capture_output=True, text=True,
                             check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        _, nbytes, dt, base, peak, extra = res.stdout.split()[-6:]
        gb, n = 1e-9, int(nbytes)
        print(f"| {mode} | {n * gb:.2f} | {float(dt):.2f} | {int(base) * gb:.2f} | {int(peak) * gb:.2f} "
              f"| {int(peak) / n:.2f} | {(int(peak) - int(base)) / n:.2f} |")
    os.unlink(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="10k and 100k only")
    ap.add_argument("--only", choices=["remind", "crumb"], default=None, help="one configuration only")
    ap.add_argument("--checkpoint", default=None, help="directory for the GB checkpoint figures")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args._child:
        _checkpoint_child(*args._child)
        return
    if args.checkpoint:
        checkpoint_figures(args.checkpoint)
        return
    remind_sizes = [10_000, 100_000] + ([] if args.quick else [REMIND_ITEMS])
    crumb_sizes = [10_000, 100_000] + ([] if args.quick else [CRUMB_ITEMS])
    if args.only != "crumb":
        print_table("REMIND ImageNet: draw 50 + admit 1 | encode 1 + decode 50", remind_rows(remind_sizes, args.reps))
    if args.only != "remind":
        print_table("CRUMB ImageNet: one item per class, 1000 classes | encode 1 + decode 1000",
                    crumb_rows(crumb_sizes, args.reps))


if __name__ == "__main__":
    main()
