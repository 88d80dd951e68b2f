"""One short run that shows whether a GPU stream is limited by the GPU: trunk, loaders, CRUMB and REMIND.

Measured in one process, on one device (``--device cuda`` by default when CUDA is present):

1. **trunk-only inference** img/s of the frozen ``squeezenet_cut`` trunk (SqueezeNet 1.0
   ``features[:12]``, the model of ``experiments/paper/*.yaml``, random init, no download) at
   batch 21 (the paper's) and 256, for float32 / bf16 / fp16 (fp16 on CUDA only, unless
   ``--amps`` names it) and ``channels_last`` off / on. It runs through the same code the
   plugins use (:meth:`streamcl.plugins.latent_replay.cut.SplitNetCut.features` with
   ``set_precision``), so the autocast region, the layout change and the float32 cast of the
   features are all counted;
2. **loader** img/s to the device, normalised, for (a) the decode path: JPEG frames of a
   synthetic tree (``perf/bench_loading.write_images``) through the real scenario dataset
   (``from_dirmap``: PIL decode + resize + normalise in ``--workers`` DataLoader workers) and
   (b) the decoded-frame cache of the same frames (``streamcl.benchmarks.frame_cache``: uint8
   memmap rows, pinned memory, ``non_blocking`` copies, normalisation on the device);
3. **end-to-end stream** img/s of CRUMB and REMIND (``streamcl.strategies.CRUMB`` /
   ``REMIND``, frozen trunk, 1 epoch) on a class-instance-like stream of random uint8 frames
   read from a frame cache, at batch 21 and 256, each as a ratio to trunk-only img/s of the
   same batch and precision measured above. The first experience is the untimed warm-up
   (CRUMB: a normal epoch; REMIND: the base initialisation: a head epoch, the PQ fit, the base
   encoding); the second is timed, in steady state (the first ``--skip-iters`` iterations,
   with the data-loader start-up, are excluded; the whole epoch's rate is reported too).

Targets (printed PASS/FAIL): end-to-end CRUMB >= 0.8x trunk-only at batch 256; loader (cache)
>= 2x the fastest trunk-only configuration at the loader's batch size.

``--check-amp`` measures instead how much mixed precision changes the results against float32
on a fixed stream (``perf/bench_latent_replay.synthetic_stream``): the fraction of CRUMB codes
(memory-block indices) and of REMIND PQ codes that stay identical when the trunk runs under
autocast (same weights, same fitted codebook / quantiser), and the final accuracy of a CRUMB
and a REMIND run with ``amp`` on vs off (target: CRUMB codes identical for >= 99 % of blocks).

::

    python perf/bench_gpu_stream.py                           # GPU: every figure, < 4 min on an H100/H200
    python perf/bench_gpu_stream.py --check-amp               # GPU: fp16 / bf16 agreement with float32
    OMP_NUM_THREADS=1 python perf/bench_gpu_stream.py --device cpu --image-size 64 \\
        --trunk-seconds 1 --loader-images 64 --e2e-images 256 --remind-images 64 --workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reuse the sibling perf scripts' helpers

AMP_NAMES = {"fp32": None, "bf16": "bf16", "fp16": "fp16"}
# ImageNet statistics, as streamcl.benchmarks.transforms (imported lazily there)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# =====================================================================================
# small helpers
# =====================================================================================
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` on CUDA, else the CPU's model name (or the platform's)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return "CPU: " + (platform.processor() or platform.machine())


def parse_precision(spec: str) -> Tuple[str, bool]:
    """``"bf16+cl"`` -> ("bf16", True); ``"fp32"`` -> ("fp32", False)."""
    amp, _, layout = spec.partition("+")
    if amp not in AMP_NAMES or layout not in ("", "cl"):
        raise SystemExit(f"bad precision {spec!r}: use fp32|bf16|fp16, optionally +cl (channels_last)")
    return amp, layout == "cl"


def precision_key(amp: str, cl: bool) -> str:
    return f"{amp}+cl" if cl else amp


def make_trunk_cut(n_classes: int, device: torch.device, amp: str, cl: bool, seed: int = 0,
                   weights: Optional[str] = None) -> Any:
    """A ``squeezenet_cut`` (the paper YAMLs' model; random init unless ``weights``) on ``device``, cut set to ``amp`` / ``cl``."""
    from streamcl.models import squeezenet_cut
    from streamcl.plugins.latent_replay.cut import SplitNetCut, amp_dtype

    torch.manual_seed(seed)
    model = squeezenet_cut(n_classes, weights=weights).to(device)
    cut = SplitNetCut(model)
    cut.set_precision(amp_dtype(AMP_NAMES[amp]), cl)
    return cut


def device_normalizer(device: torch.device) -> Tuple[Callable[[Tensor], Tensor], str]:
    """uint8 NCHW batch on the device -> normalised float32 (the package's DeviceNormalize)."""
    from streamcl.benchmarks.device_transforms import DeviceNormalize

    return DeviceNormalize(MEAN, STD), "streamcl.benchmarks.device_transforms.DeviceNormalize"


# =====================================================================================
# 1. trunk-only inference
# =====================================================================================
def trunk_rate(cut: Any, batch: int, image_size: int, seconds: float, device: torch.device,
               warmup: int = 3) -> float:
    """Images/s of ``cut.features`` (frozen trunk, eval, no_grad) on one resident batch, after ``warmup`` calls."""
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    for _ in range(warmup):
        cut.features(x)
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        cut.features(x)
        n += batch
        if n >= batch * 2 and time.perf_counter() - t0 >= seconds:
            break
    _sync(device)
    return n / (time.perf_counter() - t0)


def measure_trunk(args: argparse.Namespace, device: torch.device, amps: Sequence[str],
                  batches: Sequence[int]) -> Dict[str, Dict[str, float]]:
    """``{precision_key: {batch: img/s}}`` for every amp x channels_last x batch."""
    out: Dict[str, Dict[str, float]] = {}
    for amp in amps:
        for cl in (False, True):
            cut = make_trunk_cut(args.n_classes, device, amp, cl)
            key = precision_key(amp, cl)
            out[key] = {}
            for b in batches:
                out[key][str(b)] = trunk_rate(cut, b, args.image_size, args.trunk_seconds, device)
                print(f"  trunk {key:<10} batch {b:>4}: {out[key][str(b)]:>10.1f} img/s", flush=True)
    return out


# =====================================================================================
# 2. loaders: decode path vs decoded-frame cache
# =====================================================================================
def loader_rate(dataset: Any, *, batch: int, workers: int, device: torch.device,
                normalize: Optional[Callable[[Tensor], Tensor]], passes: int) -> float:
    """Images/s of ``passes`` passes over ``dataset`` into normalised device batches.

    Pinned memory and ``non_blocking`` copies on CUDA (as Avalanche's strategies do); the first
    batch (worker start-up) is excluded.
    """
    from torch.utils.data import DataLoader

    pin = device.type == "cuda"
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers, pin_memory=pin,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
    n, elapsed = 0, 0.0
    for p in range(passes):
        it = iter(loader)
        if p == 0:
            x = next(it)[0].to(device, non_blocking=pin)
            if normalize is not None:
                normalize(x)
        _sync(device)
        t0 = time.perf_counter()
        for b in it:
            x = b[0].to(device, non_blocking=pin)
            if normalize is not None:
                x = normalize(x)
            n += len(x)
        _sync(device)
        elapsed += time.perf_counter() - t0
    if n == 0:
        raise SystemExit(f"loader timing: {len(dataset)} frames make no batch after the first one; "
                         "raise --loader-images or the passes, or lower --loader-batch")
    return n / elapsed


def write_cache_of(index_root: Path, dirmap: Any, image_root: Path, size: int, workers: int) -> Tuple[Any, str]:
    """The decoded-frame cache of a tree's frames: ``(torch dataset of (uint8 CHW, label), how)``."""
    labels = dirmap["class"].astype(int).tolist()
    from streamcl.benchmarks.frame_cache import CachedFrameDataset, frame_cache_path, write_frame_cache

    write_frame_cache(index_root, size, dirmap=dirmap, image_root=image_root, workers=max(1, workers),
                      progress=False)
    return CachedFrameDataset(frame_cache_path(index_root, size), labels), "streamcl.benchmarks.frame_cache"


def measure_loaders(args: argparse.Namespace, device: torch.device, tmp: Path) -> Dict[str, Any]:
    """Decode path and frame cache over the same synthetic JPEG tree (see the module docstring)."""
    from bench_loading import write_images

    from streamcl.benchmarks.scenarios import from_dirmap

    root = tmp / "tree"
    t0 = time.perf_counter()
    dirmap = write_images(root, args.loader_images, args.loader_format)
    print(f"  wrote {len(dirmap)} {args.loader_format} frames in {time.perf_counter() - t0:.1f} s", flush=True)
    test_session = int(dirmap["session"].max())  # the scenario needs one; its frames are left out of both paths
    sc = from_dirmap(dirmap, root, test_sessions=[test_session], protocol="offline", image_size=args.image_size)
    decode_ds = sc.train_stream[0].dataset
    decode = loader_rate(decode_ds, batch=args.loader_batch, workers=args.workers, device=device,
                         normalize=None, passes=args.decode_passes)
    print(f"  loader decode ({len(decode_ds)} frames, {args.workers} workers): {decode:.1f} img/s", flush=True)
    t0 = time.perf_counter()
    cache_all, cache_api = write_cache_of(tmp / "index", dirmap, root, args.image_size, args.workers)
    cache_ds = torch.utils.data.Subset(cache_all, np.flatnonzero(dirmap["session"].to_numpy() != test_session).tolist())
    write_s = time.perf_counter() - t0
    normalize, norm_api = device_normalizer(device)
    cache = loader_rate(cache_ds, batch=args.loader_batch, workers=args.workers, device=device,
                        normalize=normalize, passes=args.cache_passes)
    print(f"  loader cache ({len(cache_ds)} frames x {args.cache_passes} passes): {cache:.1f} img/s", flush=True)
    return {"decode_images_per_s": decode, "cache_images_per_s": cache, "cache_over_decode": cache / decode,
            "decode_frames": len(decode_ds), "cache_frames": len(cache_ds), "cache_write_seconds": write_s,
            "batch": args.loader_batch, "workers": args.workers, "format": args.loader_format,
            "pin_memory": device.type == "cuda", "cache_api": cache_api, "normalize": norm_api}


# =====================================================================================
# 3. end-to-end CRUMB / REMIND streams from a frame cache
# =====================================================================================
def random_frame_cache(path: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` random uint8 CHW frames in an ``.npy`` memmap (a pool of 32 frames repeated: cheap to write)."""
    from numpy.lib.format import open_memmap

    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, size=(32, 3, size, size), dtype=np.uint8)
    arr = open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    for s in range(0, n, 32):
        arr[s : s + 32] = pool[: min(32, n - s)]
    arr.flush()
    del arr


def cached_stream(path: Path, n_base: int, n_timed: int, n_classes: int) -> Any:
    """Two experiences over a frame cache: half the classes each, every class one block of consecutive frames.

    Class blocks in stream order are what the class-instance protocol gives (each object's
    video in turn). Items are ``(uint8 CHW, label, task)``; normalisation happens on the device.
    """
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.benchmarks.utils.classification_dataset import (
        ClassificationDataset,
        TaskAwareSupervisedClassificationDataset,
    )
    from avalanche.benchmarks.utils.data_attribute import DataAttribute, TaskLabels
    from avalanche.benchmarks.utils.flat_data import ConstantSequence
    from torch.utils.data import Subset

    class _DS(TaskAwareSupervisedClassificationDataset, ClassificationDataset):
        pass

    half = n_classes // 2
    labels: List[int] = []
    for n, classes in ((n_base, list(range(half))), (n_timed, list(range(half, n_classes)))):
        labels += [classes[i * len(classes) // n] for i in range(n)]
    from streamcl.benchmarks.frame_cache import CachedFrameDataset

    frames: Any = CachedFrameDataset(path, labels)
    datasets = []
    for lo, hi in ((0, n_base), (n_base, n_base + n_timed)):
        ys = labels[lo:hi]
        datasets.append(_DS([Subset(frames, range(lo, hi))],
                            data_attributes=[DataAttribute(ys, "targets"), TaskLabels(ConstantSequence(0, len(ys)))]))
    return with_task_labels(with_classes_timeline(benchmark_from_datasets(train=datasets, test=datasets)))


class U8Normalize(nn.Module):
    """First layer of the frozen trunk in the fallback: a uint8 batch (already on the device) -> normalised float."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean) / self.std


def _timer_plugin(device: torch.device, skip: int) -> Any:
    """A plugin timing the training epoch: whole epoch, and steady state after ``skip`` iterations."""
    from avalanche.core import SupervisedPlugin

    class Timer(SupervisedPlugin):
        def __init__(self) -> None:
            super().__init__()
            self.reset()

        def reset(self) -> None:
            self.iters, self.n_all, self.n_steady = 0, 0, 0
            self.t_start = self.t_steady = self.t_end = None

        def before_training_epoch(self, strategy: Any, *a: Any, **k: Any) -> None:
            self.reset()
            _sync(device)
            self.t_start = time.perf_counter()

        def after_training_iteration(self, strategy: Any, *a: Any, **k: Any) -> None:
            self.iters += 1
            n = len(strategy.mb_y)
            self.n_all += n
            if self.iters == skip:
                _sync(device)
                self.t_steady = time.perf_counter()
            elif self.iters > skip:
                self.n_steady += n

        def after_training_epoch(self, strategy: Any, *a: Any, **k: Any) -> None:
            _sync(device)
            self.t_end = time.perf_counter()

        def rates(self) -> Dict[str, float]:
            whole = self.n_all / (self.t_end - self.t_start)
            steady = self.n_steady / (self.t_end - self.t_steady) if self.n_steady else whole
            return {"images_per_s": steady, "images_per_s_whole_epoch": whole, "images": self.n_all,
                    "iterations": self.iters, "seconds": self.t_end - self.t_start}

    return Timer()


def device_transform_plugin(device: torch.device) -> Tuple[Optional[Any], str]:
    """The package's DeviceTransformPlugin (uint8 batches normalised on the device) when present."""
    from streamcl.benchmarks.device_transforms import DeviceTransformPlugin

    return DeviceTransformPlugin(MEAN, STD), "streamcl.benchmarks.device_transforms.DeviceTransformPlugin"


def run_stream(method: str, batch: int, amp: str, cl: bool, args: argparse.Namespace, device: torch.device,
               stream: Any) -> Dict[str, Any]:
    """Train ``method`` on the stream's first experience (untimed) then time its second; see the docstring."""
    from streamcl.models import squeezenet_cut
    from streamcl.strategies import CRUMB, REMIND

    torch.manual_seed(0)
    model = squeezenet_cut(args.n_classes, weights=None)
    plugin, how = (None, "fallback") if args.device_transform == "trunk" else device_transform_plugin(device)
    if plugin is None:
        model.trunk = nn.Sequential(U8Normalize(), *model.trunk)
        model.trunk.eval()
    timer = _timer_plugin(device, args.skip_iters)
    extra = [p for p in (plugin, timer) if p is not None]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9,
                          weight_decay=1e-5)
    common = dict(model=model, optimizer=opt, train_mb_size=batch, eval_mb_size=batch, train_epochs=1,
                  device=device, plugins=extra, evaluator=None, amp=AMP_NAMES[amp], channels_last=cl)
    if method == "crumb":
        strategy: Any = CRUMB(memory={"bytes": args.memory}, **common)
    else:
        mode = method.split("_", 1)[1] if "_" in method else "per_sample"
        strategy = REMIND(memory={"bytes": args.memory}, mode=mode, n_replay=args.n_replay, lr_schedule="constant",
                          crop_scale=(4 / 13, 1.0), pq_train_vectors=args.pq_train_vectors, pq_niter=args.pq_niter,
                          **common)
    loader_kw = dict(num_workers=args.workers, persistent_workers=False, shuffle=False)
    t0 = time.perf_counter()
    strategy.train(stream.train_stream[0], **loader_kw)
    setup = time.perf_counter() - t0
    strategy.train(stream.train_stream[1], **loader_kw)
    out = timer.rates()
    out.update(setup_seconds=setup, normalize=how, buffer_items=_buffer_len(strategy.latent_plugin))
    return out


def _buffer_len(plugin: Any) -> int:
    return len(plugin.buffer) if plugin.buffer is not None else 0


def measure_e2e(args: argparse.Namespace, device: torch.device, tmp: Path, precisions: Sequence[Tuple[str, bool]],
                batches: Sequence[int], methods: Sequence[str]) -> Dict[str, Any]:
    """``{precision_key: {method: {batch: figures}}}`` (the ratios are added by the caller)."""
    n_total = args.e2e_base_images + max(args.e2e_images, args.remind_images)
    path = tmp / f"stream_{args.image_size}.npy"
    random_frame_cache(path, n_total, args.image_size)
    out: Dict[str, Any] = {}
    for amp, cl in precisions:
        key = precision_key(amp, cl)
        out[key] = {}
        for method in methods:
            n_timed = args.e2e_images if method == "crumb" else args.remind_images
            stream = cached_stream(path, args.e2e_base_images, n_timed, args.n_classes)
            out[key][method] = {}
            for b in batches:
                r = run_stream(method, b, amp, cl, args, device, stream)
                out[key][method][str(b)] = r
                print(f"  {method:<18} {key:<8} batch {b:>4}: {r['images_per_s']:>9.1f} img/s "
                      f"(whole epoch {r['images_per_s_whole_epoch']:.1f}, {r['images']} images)", flush=True)
    return out


# =====================================================================================
# --check-amp: agreement of mixed precision with float32
# =====================================================================================
def code_agreement(args: argparse.Namespace, device: torch.device, amp: str, cl: bool) -> Dict[str, float]:
    """Fraction of identical CRUMB / REMIND codes when only the trunk's precision changes.

    One random-init trunk, one stream of images; the CRUMB codebook (distmatch init measured on
    the float32 features, as CRUMB's first batch does) and the REMIND PQ are fitted once on the
    float32 features, then both feature sets are encoded with them.
    """
    from bench_latent_replay import synthetic_stream

    from streamcl.models.codebook import MemoryBlockCodec
    from streamcl.models.pq import PQCodec

    stream = synthetic_stream(args.check_images, args.image_size, args.n_classes, seed=1)
    x = torch.stack([exp.dataset[i][0] for exp in stream.train_stream for i in range(len(exp.dataset))])
    ref_cut = make_trunk_cut(args.n_classes, device, "fp32", False, weights=args.weights)
    amp_cut = make_trunk_cut(args.n_classes, device, amp, cl, weights=args.weights)

    def feats(cut: Any) -> Tensor:
        return torch.cat([cut.features(x[i : i + 64].to(device)) for i in range(0, len(x), 64)])

    f32, fam = feats(ref_cut), feats(amp_cut)
    crumb = MemoryBlockCodec(256, 16, init="distmatch_sparse", match_features=True, seed=0).to(device)
    crumb.fit(f32[:21])
    c32, cam = crumb.encode(f32), crumb.encode(fam)
    pq = PQCodec(32, 8, niter=args.pq_niter, seed=0)
    pq.fit(f32)
    p32, pam = pq.encode(f32), pq.encode(fam)
    rel = float((fam - f32).norm() / f32.norm())
    return {"crumb_code_agreement": float((c32 == cam).float().mean()),
            "remind_code_agreement": float((p32 == pam).float().mean()),
            "feature_relative_error": rel, "blocks": int(c32.numel()), "pq_codes": int(p32.numel())}


def final_accuracy(method: str, args: argparse.Namespace, device: torch.device, amp: str, cl: bool) -> float:
    """Accuracy over the whole test stream after training on a fixed synthetic stream (same seeds for every amp)."""
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin
    from bench_latent_replay import synthetic_stream

    from streamcl.models import squeezenet_cut
    from streamcl.strategies import CRUMB, REMIND

    stream = synthetic_stream(args.check_images, args.image_size, args.n_classes, seed=1)
    torch.manual_seed(0)
    model = squeezenet_cut(args.n_classes, weights=args.weights)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.check_lr, momentum=0.9)
    evaluator = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    common = dict(model=model, optimizer=opt, train_mb_size=21, eval_mb_size=64, train_epochs=args.check_epochs,
                  device=device, evaluator=evaluator, amp=AMP_NAMES[amp], channels_last=cl,
                  first_experience_epochs=args.check_epochs)
    if method == "crumb":
        strategy: Any = CRUMB(memory={"items": 40}, **common)
    else:
        strategy = REMIND(memory={"items": 40}, mode="batched", n_replay=16, lr_schedule="constant",
                          pq_train_vectors=max(256, min(args.pq_train_vectors, 4096)), pq_niter=args.pq_niter,
                          crop_scale=(4 / 13, 1.0), **common)
    for exp in stream.train_stream:
        strategy.train(exp, shuffle=False, num_workers=0)
    res = strategy.eval(stream.test_stream, num_workers=0)
    return float(next(v for k, v in res.items() if k.startswith("Top1_Acc_Stream")))


def check_amp(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """The ``--check-amp`` mode: code agreement and final accuracy of every amp setting vs float32."""
    amps = [a for a in args.amps.split(",") if a and a != "fp32"]
    acc32 = {m: final_accuracy(m, args, device, "fp32", False) for m in ("crumb", "remind")}
    out: Dict[str, Any] = {"fp32": {f"{m}_accuracy": a for m, a in acc32.items()}, "checks": {}}
    for amp in amps:
        cl = bool(args.check_channels_last)
        key = precision_key(amp, cl)
        r = code_agreement(args, device, amp, cl)
        for m in ("crumb", "remind"):
            acc = final_accuracy(m, args, device, amp, cl)
            r[f"{m}_accuracy"] = acc
            r[f"{m}_accuracy_diff"] = acc - acc32[m]
        out[key] = r
        ok = r["crumb_code_agreement"] >= 0.99
        out["checks"][f"CRUMB codes identical ({key})"] = {"value": r["crumb_code_agreement"], "target": ">= 0.99",
                                                           "verdict": "PASS" if ok else "FAIL"}
    print()
    print(f"{'precision':<11}{'CRUMB codes':>12}{'REMIND codes':>13}{'feat rel err':>13}"
          f"{'CRUMB acc':>10}{'d acc':>8}{'REMIND acc':>11}{'d acc':>8}")
    print(f"{'fp32':<11}{1:>12.4f}{1:>13.4f}{0:>13.2e}{acc32['crumb']:>10.4f}{0:>8.4f}{acc32['remind']:>11.4f}"
          f"{0:>8.4f}")
    for amp in amps:
        key = precision_key(amp, bool(args.check_channels_last))
        r = out[key]
        print(f"{key:<11}{r['crumb_code_agreement']:>12.4f}{r['remind_code_agreement']:>13.4f}"
              f"{r['feature_relative_error']:>13.2e}{r['crumb_accuracy']:>10.4f}{r['crumb_accuracy_diff']:>8.4f}"
              f"{r['remind_accuracy']:>11.4f}{r['remind_accuracy_diff']:>8.4f}")
    for name, c in out["checks"].items():
        print(f"{name:<40}{c['value']:>8.4f}   {c['target']}  {c['verdict']}")
    # A random trunk gives the paper's head (conv -> ReLU -> pool) nothing to learn this stream from:
    # logits die at 0 and every precision predicts the same class. Then the accuracy columns compare nothing.
    chance = 1.0 / args.n_classes
    out["accuracy_informative"] = {m: a > 1.5 * chance for m, a in acc32.items()}
    for m, a in acc32.items():
        if not out["accuracy_informative"][m]:
            print(f"note: {m} fp32 accuracy {a:.4f} is at chance ({chance:.4f}), so its accuracy columns compare "
                  f"nothing; give trained weights: --weights imagenet (torch hub cache) or a state_dict file")
    return out


# =====================================================================================
# main
# =====================================================================================
def build_parser() -> argparse.ArgumentParser:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", default="cuda" if cuda else "cpu", help="cuda (default when present) or cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch (and faiss) threads of this process (default: 1 on CPU, 4 on CUDA)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--n-classes", type=int, default=10)
    ap.add_argument("--batches", default="21,256", help="batch sizes of the trunk and end-to-end figures")
    ap.add_argument("--amps", default=None, help="trunk precisions (default fp32,bf16,fp16 on CUDA, fp32,bf16 on CPU)")
    ap.add_argument("--trunk-seconds", type=float, default=1.5, help="timed seconds per trunk configuration")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default min(8, CPUs))")
    ap.add_argument("--loader-images", type=int, default=2048, help="JPEG frames of the synthetic tree")
    ap.add_argument("--loader-format", default="jpg256", help="frame format (perf/bench_loading.py FORMATS)")
    ap.add_argument("--loader-batch", type=int, default=256)
    ap.add_argument("--decode-passes", type=int, default=2)
    ap.add_argument("--cache-passes", type=int, default=5)
    ap.add_argument("--e2e-precisions", default=None,
                    help="precisions of the end-to-end runs, e.g. fp32,bf16+cl (default: fp32,bf16+cl on CUDA, fp32 on CPU)")
    ap.add_argument("--methods", default="crumb,remind_per_sample,remind_batched")
    ap.add_argument("--e2e-base-images", type=int, default=1024, help="frames of the untimed first experience")
    ap.add_argument("--e2e-images", type=int, default=5120, help="timed frames of CRUMB's second experience")
    ap.add_argument("--remind-images", type=int, default=1024, help="timed frames of REMIND's second experience")
    ap.add_argument("--skip-iters", type=int, default=2, help="timed epoch: iterations left out of the steady rate")
    ap.add_argument("--memory", default="2.26MB", help="replay budget (bytes) of CRUMB and REMIND")
    ap.add_argument("--n-replay", type=int, default=50)
    ap.add_argument("--pq-train-vectors", type=int, default=16384)
    ap.add_argument("--pq-niter", type=int, default=10)
    ap.add_argument("--device-transform", choices=("auto", "trunk"), default="auto",
                    help="auto: DeviceTransformPlugin when present; trunk: normalise as the trunk's first layer")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: trunk, loader, e2e")
    ap.add_argument("--check-amp", action="store_true", help="measure agreement of amp with float32 instead")
    ap.add_argument("--check-images", type=int, default=420, help="--check-amp: images in the fixed stream")
    ap.add_argument("--check-epochs", type=int, default=4, help="--check-amp: epochs per experience")
    ap.add_argument("--check-lr", type=float, default=0.01, help="--check-amp: SGD learning rate")
    ap.add_argument("--check-channels-last", action="store_true", help="--check-amp: also channels_last")
    ap.add_argument("--weights", default=None,
                    help="--check-amp: squeezenet_cut weights (imagenet from the torch hub cache, or a state_dict "
                         "file); default random init, with which the accuracy columns are at chance")
    ap.add_argument("--json", default=None, help="write the results here (default: bench_gpu_stream.json in cwd)")
    return ap


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the benchmark (or ``--check-amp``), print the tables, write and return the JSON."""
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu")
    threads = args.threads or (1 if device.type == "cpu" else 4)
    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    warnings.filterwarnings("ignore")
    args.workers = min(8, os.cpu_count() or 1) if args.workers is None else args.workers
    amps = (args.amps or ("fp32,bf16,fp16" if device.type == "cuda" else "fp32,bf16")).split(",")
    args.amps = ",".join(amps)
    batches = [int(b) for b in args.batches.split(",")]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    t_start = time.perf_counter()
    name = device_name(device)
    out: Dict[str, Any] = {"device": name, "device_type": device.type, "torch": torch.__version__,
                           "threads": threads, "config": vars(args).copy()}
    print(f"device: {name}; torch {torch.__version__}; {threads} torch thread(s); {args.workers} loader worker(s)",
          flush=True)
    if args.check_amp:
        out["amp_check"] = check_amp(args, device)
        return _finish(out, args, t_start)

    e2e_precisions = [parse_precision(p) for p in
                      (args.e2e_precisions or ("fp32,bf16+cl" if device.type == "cuda" else "fp32")).split(",")]
    methods = [m for m in args.methods.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="bench_gpu_stream_") as tmp_s:
        tmp = Path(tmp_s)
        trunk: Dict[str, Dict[str, float]] = {}
        if "trunk" not in skip:
            print("trunk-only inference ...", flush=True)
            trunk = measure_trunk(args, device, amps, sorted(set(batches) | {args.loader_batch}))
        for amp, cl in e2e_precisions:  # an e2e precision outside the grid still gets its trunk figure
            key = precision_key(amp, cl)
            if key not in trunk and "e2e" not in skip:
                cut = make_trunk_cut(args.n_classes, device, amp, cl)
                trunk[key] = {str(b): trunk_rate(cut, b, args.image_size, args.trunk_seconds, device) for b in batches}
        out["trunk"] = trunk
        if "loader" not in skip:
            print("loaders ...", flush=True)
            out["loader"] = measure_loaders(args, device, tmp)
        if "e2e" not in skip:
            print("end-to-end streams ...", flush=True)
            e2e = measure_e2e(args, device, tmp, e2e_precisions, batches, methods)
            for key, per_method in e2e.items():
                for per_batch in per_method.values():
                    for b, r in per_batch.items():
                        r["trunk_images_per_s"] = trunk[key][b]
                        r["ratio_to_trunk"] = r["images_per_s"] / trunk[key][b]
            out["e2e"] = e2e
    out["checks"] = _checks(out, args)
    _print_tables(out, args)
    return _finish(out, args, t_start)


def _checks(out: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    checks: Dict[str, Any] = {}
    big = str(max(int(b) for b in args.batches.split(",")))
    for key, per_method in out.get("e2e", {}).items():
        r = per_method.get("crumb", {}).get(big)
        if r is not None:
            checks[f"CRUMB end-to-end / trunk, batch {big}, {key}"] = {
                "value": r["ratio_to_trunk"], "target": ">= 0.8", "verdict": "PASS" if r["ratio_to_trunk"] >= 0.8 else "FAIL"}
    loader, trunk = out.get("loader"), out.get("trunk")
    lb = str(args.loader_batch)
    if loader and trunk and any(lb in v for v in trunk.values()):
        best_key = max((k for k in trunk if lb in trunk[k]), key=lambda k: trunk[k][lb])
        ratio = loader["cache_images_per_s"] / trunk[best_key][lb]
        loader["cache_over_fastest_trunk"] = ratio
        loader["fastest_trunk"] = {"precision": best_key, "batch": int(lb), "images_per_s": trunk[best_key][lb]}
        checks[f"loader (cache) / fastest trunk ({best_key}, batch {lb})"] = {
            "value": ratio, "target": ">= 2", "verdict": "PASS" if ratio >= 2 else "FAIL"}
    return checks


def _print_tables(out: Dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print(f"device: {out['device']}   image size {args.image_size}   threads {out['threads']}")
    trunk = out.get("trunk") or {}
    if trunk:
        bs = sorted({b for v in trunk.values() for b in v}, key=int)
        print(f"{'trunk-only img/s':<20}" + "".join(f"{'batch ' + b:>14}" for b in bs))
        for key, v in trunk.items():
            print(f"{key:<20}" + "".join(f"{v.get(b, float('nan')):>14.1f}" for b in bs))
    if out.get("loader"):
        ld = out["loader"]
        print(f"loader img/s (batch {ld['batch']}, {ld['workers']} workers): decode {ld['decode_images_per_s']:.1f}, "
              f"cache {ld['cache_images_per_s']:.1f} (cache/decode {ld['cache_over_decode']:.1f}x)")
    if out.get("e2e"):
        print(f"{'end-to-end':<30}{'batch':>6}{'img/s':>11}{'trunk img/s':>13}{'ratio':>8}{'whole epoch':>13}")
        for key, per_method in out["e2e"].items():
            for m, per_batch in per_method.items():
                for b, r in per_batch.items():
                    print(f"{m + ' ' + key:<30}{b:>6}{r['images_per_s']:>11.1f}{r['trunk_images_per_s']:>13.1f}"
                          f"{r['ratio_to_trunk']:>8.3f}{r['images_per_s_whole_epoch']:>13.1f}")
    for name, c in out.get("checks", {}).items():
        print(f"{name:<58}{c['value']:>8.3f}   {c['target']:<6} {c['verdict']}")


def _finish(out: Dict[str, Any], args: argparse.Namespace, t_start: float) -> Dict[str, Any]:
    out["total_seconds"] = time.perf_counter() - t_start
    path = Path(args.json or "bench_gpu_stream.json")
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"total {out['total_seconds']:.1f} s; results in {path}")
    return out


if __name__ == "__main__":
    main()
