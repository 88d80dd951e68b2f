"""``streamcl prepare``: turn a raw dataset download into an indexed folder the benchmarks read.

An index folder holds ``dirmap.csv`` (one row per image: class, object, session, im_num,
im_path, class_name) and ``streamcl_index.json`` ({"dataset", "image_root", "n_images",
"seed", "format", ...}); both are written atomically, the JSON last, so a folder either
has a complete index or none. :func:`load_index` reads it back.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional, Tuple, Union

import pandas as pd

from streamcl.benchmarks.raw import _indexing as ix
from streamcl.benchmarks.raw import _video
from streamcl.errors import DatasetError, StreamclError

PathLike = Union[str, Path]
INDEX_FILE = "streamcl_index.json"
DIRMAP_FILE = "dirmap.csv"
FORMAT = 1

#: dataset name -> module holding its layout constants and indexer. (Loaded with importlib:
#: ``streamcl.benchmarks`` exports scenario functions under the same names as these modules.)
DATASETS: Dict[str, ModuleType] = {
    name: importlib.import_module(f"streamcl.benchmarks.raw.{mod}")
    for name, mod in (
        ("toybox", "toybox"),
        ("ilab2mlight", "ilab"),
        ("core50", "core50"),
        ("icubworld", "icubworld"),
    )
}
PREPARERS = DATASETS
ALIASES = {
    "ilab": "ilab2mlight",
    "ilab2m": "ilab2mlight",
    "icub": "icubworld",
    "icubworldtransf": "icubworld",
}


def get_dataset(name: str) -> ModuleType:
    """The dataset module for ``name`` (aliases accepted); StreamclError listing the valid names otherwise."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in DATASETS:
        raise StreamclError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[key]


def prepare(
    name: str,
    raw_root: PathLike,
    out: Optional[PathLike] = None,
    *,
    workers: int = 2,
    progress: bool = True,
    seed: int = 0,
    frame_size: int = 224,
    verbose: Optional[bool] = None,
    **rules: Any,
) -> Path:
    """Index a raw dataset (extracting Toybox frames first) and write the index to ``out``; returns ``out``.

    ``out`` defaults to ``raw_root``. iLab, CORe50 and iCub are indexed in place (nothing is
    copied; the index points at the raw images). Toybox frames are extracted at 1 fps,
    ``frame_size`` square, into ``<out>/images/`` with ``workers`` parallel decoders; the
    extraction is resumable (finished videos are skipped). ``seed`` drives iLab's random
    runs; ``rules`` override the balancing thresholds (for scaled-down trees).
    Problems (unreadable videos, odd names, missing folders) raise one DatasetError listing them.
    """
    mod = get_dataset(name)
    valid = [p for p in inspect.signature(mod.index_names).parameters if p not in ("paths", "seed")]
    if set(rules) - set(valid):
        raise StreamclError(
            f"{mod.NAME}: unknown balancing rule(s) {', '.join(sorted(set(rules) - set(valid)))}; valid: {', '.join(valid)}"
        )
    root = ix.require_dir(raw_root, mod.NAME, mod.LAYOUT)
    out_dir = Path(out).expanduser() if out is not None else root
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(
            f"cannot create the output folder {out_dir} ({e}); pass --out DIR to write elsewhere"
        ) from e
    if mod.NAME == "toybox":
        extract_toybox(root, out_dir, workers=workers, progress=progress, frame_size=frame_size)
        df = mod.index(out_dir, seed=seed, progress=progress, **rules)
        img_root = mod.image_root(out_dir)
    else:
        df = mod.index(root, seed=seed, progress=progress, **rules)
        img_root = mod.image_root(root)
    if len(df) == 0:
        raise DatasetError(
            f"{mod.NAME}: no image of {root} survives the balancing rules (too few objects/sessions/frames); "
            f"check that RAW_ROOT is the full dataset, expected layout: {mod.LAYOUT}"
        )
    try:
        write_index(out_dir, mod.NAME, df, img_root, seed=seed, rules=rules)
    except OSError as e:
        raise DatasetError(
            f"cannot write the index into {out_dir} ({e}); pass --out DIR to write it elsewhere"
        ) from e
    if progress if verbose is None else verbose:  # the counts table (default: with the progress bars)
        print(dirmap_stats(df, test_sessions=mod.TEST_SESSIONS))
        print(f"{mod.NAME}: wrote {out_dir / DIRMAP_FILE} ({len(df)} images) and {out_dir / INDEX_FILE}")
    return out_dir


def extract_toybox(
    raw_root: PathLike, out: PathLike, *, workers: int = 2, progress: bool = True, frame_size: int = 224
) -> int:
    """Extract 1-fps frames of every Toybox session video into ``<out>/images`` (resumable); returns videos done now.

    With ``workers`` > 1 videos are decoded in that many worker processes (never forked from
    this one: see :mod:`streamcl.benchmarks.workers`), else in this process with FFmpeg's own
    decoder threads.
    """
    from concurrent.futures import as_completed

    from tqdm.auto import tqdm

    from streamcl.benchmarks.workers import process_pool

    mod = DATASETS["toybox"]
    videos = mod.list_videos(raw_root)
    img_root = mod.image_root(out)
    todo, existing = [], {}
    for v in videos:
        d = img_root / v.rel_dir
        if d not in existing:
            existing[d] = set(os.listdir(d)) if d.is_dir() else set()
        if not _video.is_done(d, v.stem, frame_size, existing[d]):
            todo.append((str(v.path), str(d), v.stem, frame_size, mod.EXTRACT_FPS, 1 if workers > 1 else 0))
    probs = ix.Problems(mod.NAME)
    with tqdm(
        total=len(todo), desc="toybox: extracting frames", unit="video", disable=not progress or not todo
    ) as bar:
        if workers <= 1 or len(todo) <= 1:
            _collect(map(_video.extract_job, todo), bar, probs)
        else:
            # On Ctrl-C the workers are ended; a video cut short has no marker and is redone next time.
            with process_pool(workers, preload=[_video.__name__]) as pool:
                futs = [pool.submit(_video.extract_job, j) for j in todo]
                _collect((f.result() for f in as_completed(futs)), bar, probs)
    probs.raise_if_any(
        "re-download the videos listed (or delete them if the copy you have never had them), then run "
        "`streamcl prepare toybox RAW_ROOT` again: finished videos are skipped."
    )
    return len(todo)


def _collect(results, bar, probs: ix.Problems) -> None:
    for video, _, err in results:
        bar.update(1)
        if err:
            probs.add(video, err)


# --------------------------------------------------------------------------- index files


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_index(out: PathLike, dataset: str, df: pd.DataFrame, image_root: PathLike, *, seed: int = 0,
                rules: Optional[Dict[str, Any]] = None) -> None:  # fmt: skip
    """Write ``dirmap.csv`` then ``streamcl_index.json`` into ``out``, each atomically (temp file + rename)."""
    out = Path(out)
    csv = df.to_csv(index=False).encode()
    img = Path(image_root).resolve()
    try:
        img_str = img.relative_to(out.resolve()).as_posix() or "."
    except ValueError:
        img_str = str(img)
    meta = {
        "dataset": dataset,
        "image_root": img_str,
        "n_images": int(len(df)),
        "seed": int(seed),
        "format": FORMAT,
        "dirmap_sha256": hashlib.sha256(csv).hexdigest(),
    }
    if rules:
        meta["rules"] = rules
    _atomic_write_bytes(out / DIRMAP_FILE, csv)
    _atomic_write_bytes(out / INDEX_FILE, (json.dumps(meta, indent=2) + "\n").encode())


def load_index(root: PathLike, expected: Optional[str] = None) -> Tuple[pd.DataFrame, Path, str]:
    """Read the index written by :func:`prepare`: (dirmap, absolute image root, dataset name)."""
    from streamcl.benchmarks.dirmap import load_dirmap

    root = Path(root).expanduser()
    meta_path, csv_path = root / INDEX_FILE, root / DIRMAP_FILE
    what = expected or "NAME"
    if not meta_path.is_file():
        raise DatasetError(
            f"no streamcl index in {root}: run `streamcl prepare {what} RAW_ROOT --out {root}` first"
        )
    try:
        meta = json.loads(meta_path.read_text())
        name, img_rel, n = meta["dataset"], meta["image_root"], int(meta["n_images"])
        if not isinstance(name, str) or not isinstance(img_rel, str):
            raise TypeError("dataset and image_root must be strings")
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise DatasetError(
            f"{meta_path}: malformed streamcl index ({type(e).__name__}: {e}); "
            f"re-run `streamcl prepare {what} RAW_ROOT --out {root}`"
        ) from e
    if expected is not None and get_dataset(expected).NAME != name:
        raise DatasetError(
            f"{meta_path}: indexes dataset {name!r}, not {expected!r}; point at a {expected} index"
        )
    if int(meta.get("format", FORMAT)) > FORMAT:
        raise DatasetError(
            f"{meta_path}: index format {meta['format']} is newer than this streamcl; upgrade streamcl"
        )
    if not csv_path.is_file():
        raise DatasetError(
            f"{csv_path}: missing (the index in {root} is incomplete); re-run `streamcl prepare {name} RAW_ROOT --out {root}`"
        )
    data = csv_path.read_bytes()
    sha = meta.get("dirmap_sha256")
    if sha and hashlib.sha256(data).hexdigest() != sha:
        raise DatasetError(
            f"{csv_path}: does not match {meta_path} (edited or half-written); re-run `streamcl prepare {name} RAW_ROOT --out {root}`"
        )
    df = load_dirmap(csv_path)
    if len(df) != n:
        raise DatasetError(
            f"{csv_path}: has {len(df)} rows but {meta_path} says {n}; re-run `streamcl prepare {name} RAW_ROOT --out {root}`"
        )
    img = Path(img_rel)
    img = (img if img.is_absolute() else root / img).resolve()
    if not img.is_dir():
        raise DatasetError(
            f"{meta_path}: image root {img} does not exist (moved?); re-run `streamcl prepare {name} RAW_ROOT --out {root}`"
        )
    return df, img, name


# --------------------------------------------------------------------------- stats


def dirmap_stats(df: pd.DataFrame, test_sessions: Optional[Tuple[int, ...]] = None) -> str:
    """Per-class / per-object / per-session counts of a dirmap, to check a prepared dataset is balanced."""
    if len(df) == 0:
        return "empty dirmap (0 images)"
    lines: List[str] = []
    per_sess = df.groupby(["class", "object", "session"]).size()
    per_obj = df.groupby(["class", "object"])["session"].nunique()
    per_cls = df.groupby("class")["object"].nunique()
    lines.append(
        f"{len(df)} images, {df['class'].nunique()} classes, {len(per_obj)} objects, {len(per_sess)} sessions"
    )
    for label, s in (
        ("objects per class", per_cls),
        ("sessions per object", per_obj),
        ("images per session", per_sess),
    ):
        lines.append(f"  {label}: min {s.min()}, mean {s.mean():.2f}, max {s.max()}")
    lines.append(f"  sessions: {', '.join(map(str, sorted(df['session'].unique())))}"
                 + (f" (test: {', '.join(map(str, test_sessions))})" if test_sessions else ""))  # fmt: skip
    names = df.groupby("class")["class_name"].first() if "class_name" in df.columns else None
    test = df["session"].isin(test_sessions) if test_sessions else pd.Series(False, index=df.index)
    counts = pd.DataFrame({
        "images": df.groupby("class").size(),
        "train": df[~test].groupby("class").size(),
        "test": df[test].groupby("class").size(),
        "objects": per_cls,
    }).fillna(0).astype(int)  # fmt: skip
    lines.append(
        "  class" + (" name            " if names is not None else "") + "  images  train   test  objects"
    )
    for cls, r in counts.iterrows():
        nm = f" {str(names[cls])[:16]:<16}" if names is not None else ""
        lines.append(f"  {cls!s:>5}{nm}  {r['images']:>6} {r['train']:>6} {r['test']:>6} {r['objects']:>8}")
    return "\n".join(lines)
