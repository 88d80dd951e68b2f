"""Training-stream loading throughput vs the frozen SqueezeNet trunk's inference throughput.

Loading = what a streamcl train experience costs per image: PIL decode + resize
to 224 + ImageNet normalisation, through a ``DataLoader(num_workers=2)`` over
the experience dataset exactly as a strategy iterates it. Trunk =
``torchvision.models.squeezenet1_0().features[:12]`` (random weights, eval,
no_grad) at batch 21 and 64. Target: loading >= 2x trunk, so the data pipeline
never starves a CRUMB/REMIND run on the same machine.

Images are written to a temporary folder in a real dataset's format: ``png224``
(Toybox frames, the default), ``png128`` (CORe50), ``jpg256`` (iLab) or
``jpg640x480`` (iCubWorld)::

    OMP_NUM_THREADS=1 python perf/bench_loading.py             # Toybox-like
    python perf/bench_loading.py --format jpg640x480 --images 512
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

FORMATS = {"png224": ("png", 224, 224), "png128": ("png", 128, 128), "jpg256": ("jpg", 256, 256),
           "jpg640x480": ("jpg", 640, 480)}  # fmt: skip


def write_images(root: Path, n: int, fmt: str, seed: int = 0) -> pd.DataFrame:
    """``n`` natural-looking images (smooth colour field + sensor noise) and their dirmap."""
    ext, w, h = FORMATS[fmt]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        low = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
        field = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.float32)
        img = np.clip(field + rng.normal(0, 6, field.shape), 0, 255).astype(np.uint8)
        c, o, s, f = i % 4, (i // 4) % 3, (i // 12) % 5 + 1, i // 60 + 1
        path = f"c{c}/o{o}/s{s}_{i:05d}.{ext}"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / path, quality=90) if ext == "jpg" else Image.fromarray(img).save(
            root / path
        )
        rows.append({"class": c, "object": o, "session": s, "im_num": f, "im_path": path})
    return pd.DataFrame(rows)


def loading_rate(dataset, workers: int, batch: int, passes: int) -> float:
    """Images/s of full passes over ``dataset`` through a DataLoader (first batch excluded: worker start-up)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=False,
                                         persistent_workers=workers > 0)  # fmt: skip
    best = 0.0
    for _ in range(passes):
        it = iter(loader)
        next(it)
        t0, n = time.perf_counter(), 0
        for x, *_ in it:
            n += len(x)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def trunk_rate(batch: int, seconds: float, size: int = 224, device: str = "cpu") -> float:
    """Images/s of the frozen SqueezeNet trunk (features[:12]) at ``batch``."""
    from torchvision.models import squeezenet1_0

    trunk = squeezenet1_0().features[:12].eval().to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        trunk(x)  # warm-up
        sync()
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            trunk(x)
            n += batch
        sync()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", choices=sorted(FORMATS), default="png224")
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="loader batch size")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8.0, help="trunk timing per batch size")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads for the trunk (default: torch's)"
    )
    ap.add_argument("--device", default="cpu", help="device of the trunk (cpu, cuda)")
    args = ap.parse_args()

    from streamcl.benchmarks.scenarios import from_dirmap

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dirmap = write_images(root, args.images, args.format)
        sc = from_dirmap(dirmap, root, test_sessions=[5], protocol="offline", image_size=224)
        ds = sc.train_stream[0].dataset
        load = loading_rate(ds, args.workers, args.batch, args.passes)
    trunk = {b: trunk_rate(b, args.seconds, device=args.device) for b in (21, 64)}
    print(f"machine: {os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}")  # fmt: skip
    print(f"loading ({args.format} -> 224, normalise, DataLoader num_workers={args.workers}, {len(ds)} images): "
          f"{load:.0f} images/s")  # fmt: skip
    for b, r in trunk.items():
        verdict = "OK" if load >= 2 * r else "BELOW TARGET"
        print(f"squeezenet1_0.features[:12] trunk ({args.device}), batch {b}: {r:.0f} images/s -> loading/trunk = {load / r:.1f}x "
              f"(target >= 2x: {verdict})")  # fmt: skip


if __name__ == "__main__":
    main()
