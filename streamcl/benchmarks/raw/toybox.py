"""Toybox: layout constants, raw-video listing and the balanced frame indexer.

Raw layout (videos)::

    <root>/{animals,households,vehicles}/<cat>_<NN>_pivothead/<cat>_<NN>_pivothead_<transform>.mp4

(``household`` is accepted for ``households``). ``streamcl prepare toybox`` extracts
1-fps 224x224 frames to ``<out>/images/<supercat>/<cat>_<NN>_pivothead/<cat>_<NN>_pivothead_<transform>_<k>.png``
(k from 1) and indexes them with :func:`index_names`:

- keep frames 1..15; pad a shorter session palindromically (1..9, 8, 7, ...);
- drop objects with fewer than 10 sessions (transforms ``present``/``absent`` are not sessions);
- keep the first 29 objects of each class (drops object 30 where a class still has 30);
  renumber objects 1..29.

Full dataset: 12 x 29 x 10 x 15 = 52 200 images; test sessions 3, 6, 9.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

import pandas as pd

from streamcl.benchmarks.raw import _indexing as ix
from streamcl.errors import DatasetError

NAME = "toybox"
#: Supercategory folder -> its categories, in the table's order.
SUPERCATEGORIES: Dict[str, Tuple[str, ...]] = {
    "households": ("cup", "mug", "spoon", "ball"),
    "animals": ("duck", "cat", "horse", "giraffe"),
    "vehicles": ("car", "truck", "airplane", "helicopter"),
}
#: Other spellings of supercategory folders found in some copies.
SUPERCATEGORY_ALIASES = {"household": "households"}
CLASSES: Dict[str, int] = {
    "cup": 1, "mug": 2, "spoon": 3, "ball": 4, "duck": 5, "cat": 6,
    "horse": 7, "giraffe": 8, "car": 9, "truck": 10, "airplane": 11, "helicopter": 12,
}  # fmt: skip
SUPERCATEGORY_OF = {c: s for s, cats in SUPERCATEGORIES.items() for c in cats}
#: Transformation -> session id.
SESSIONS: Dict[str, int] = {
    "rxplus": 1, "ryplus": 2, "rzplus": 3, "rxminus": 4, "ryminus": 5,
    "rzminus": 6, "tx": 7, "ty": 8, "tz": 9, "hodgepodge": 10,
}  # fmt: skip
#: Videos that exist in the raw tree but are not sessions of the benchmark.
DROPPED_TRANSFORMS = ("present", "absent")
TEST_SESSIONS: Tuple[int, ...] = (3, 6, 9)
CLASSES_PER_EXPERIENCE: int = 2

FRAMES_PER_SESSION = 15
SESSIONS_PER_OBJECT = 10
OBJECTS_PER_CLASS = 29
EXTRACT_FPS = 1.0
FRAME_SIZE = 224
IMAGES_DIR = "images"

LAYOUT = "<root>/{animals,households,vehicles}/<cat>_<NN>_pivothead/<cat>_<NN>_pivothead_<transform>.mp4"
_OBJECT_DIR = re.compile(r"^(?P<cat>[a-z]+)_(?P<nn>\d{2})_pivothead$")
_FRAME = re.compile(r"^(?P<cat>[a-z]+)_(?P<nn>\d{2})_pivothead_(?P<tr>[a-z]+)_(?P<k>\d+)\.png$")


def object_dir(cat: str, nn: int) -> str:
    """Folder name of object ``nn`` of category ``cat`` (``cup_07_pivothead``)."""
    return f"{cat}_{nn:02d}_pivothead"


def video_name(cat: str, nn: int, transform: str) -> str:
    """File name of one raw video."""
    return f"{object_dir(cat, nn)}_{transform}.mp4"


def frame_name(cat: str, nn: int, transform: str, k: int) -> str:
    """File name of extracted frame ``k`` (from 1) of one video."""
    return f"{object_dir(cat, nn)}_{transform}_{k}.png"


@dataclass(frozen=True)
class Video:
    """One raw video to extract: where it is and where its frames go (relative to the image root)."""

    path: Path  # absolute path of the .mp4
    rel_dir: str  # '<supercat>/<cat>_<NN>_pivothead' (frame folder, relative to the image root)
    stem: str  # '<cat>_<NN>_pivothead_<transform>'


def list_videos(raw_root: ix.PathLike, *, include_dropped: bool = False) -> List[Video]:
    """List the session videos of a raw Toybox tree; raises DatasetError on a wrong layout or odd names."""
    root = ix.require_dir(raw_root, NAME, LAYOUT)
    probs = ix.Problems(NAME, root)
    top_dirs, _ = ix.list_dir(root)
    supers = [d for d in top_dirs if d in SUPERCATEGORIES or d in SUPERCATEGORY_ALIASES]
    if not supers:
        raise DatasetError(
            f"{NAME}: {root} has none of the folders animals, households (or household), vehicles; "
            f"expected layout: {LAYOUT}. Point RAW_ROOT at the folder holding the extracted Toybox archives."
        )
    if "household" in supers and "households" in supers:
        probs.add("household", "both 'household' and 'households' exist: keep one")
    videos: List[Video] = []
    for sup in supers:
        canon = SUPERCATEGORY_ALIASES.get(sup, sup)
        obj_dirs, _ = ix.list_dir(root / sup)
        if not obj_dirs:
            probs.add(sup, "supercategory folder holds no object folders")
        for od in obj_dirs:
            m = _OBJECT_DIR.match(od)
            if not m or m["cat"] not in CLASSES:
                probs.add(f"{sup}/{od}", "not an object folder '<cat>_<NN>_pivothead' with a Toybox category")
                continue
            if SUPERCATEGORY_OF[m["cat"]] != canon:
                probs.add(f"{sup}/{od}", f"category {m['cat']!r} belongs in {SUPERCATEGORY_OF[m['cat']]}/")
                continue
            _, files = ix.list_dir(root / sup / od)
            n_here = 0
            for f in files:
                if not f.lower().endswith(".mp4"):  # notes, checksums ... are not videos
                    continue
                tr = f[len(od) + 1 : -len(".mp4")]
                if not f.startswith(od + "_") or not f.endswith(".mp4") or not tr.isalpha():
                    probs.add(f"{sup}/{od}/{f}", f"video name does not match '{od}_<transform>.mp4'")
                    continue
                if tr not in SESSIONS and tr not in DROPPED_TRANSFORMS:
                    probs.add(
                        f"{sup}/{od}/{f}", f"unknown transformation {tr!r} (known: {', '.join(SESSIONS)})"
                    )
                    continue
                n_here += 1
                if tr in DROPPED_TRANSFORMS and not include_dropped:
                    continue
                videos.append(Video(root / sup / od / f, f"{sup}/{od}", f[: -len(".mp4")]))
            if n_here == 0:
                probs.add(f"{sup}/{od}", "object folder holds no .mp4 videos")
    probs.raise_if_any(
        "restore or re-download the files listed (or remove stray ones), then run prepare again."
    )
    return videos


def image_root(root: ix.PathLike) -> Path:
    """Folder holding the extracted frames of a prepared Toybox tree (``<root>/images``)."""
    return Path(root) / IMAGES_DIR


@ix.gc_paused
def index_names(
    paths: Iterable[str],
    *,
    seed: int = 0,
    frames_per_session: int = FRAMES_PER_SESSION,
    sessions_per_object: int = SESSIONS_PER_OBJECT,
    objects_per_class: int = OBJECTS_PER_CLASS,
) -> pd.DataFrame:
    """Balanced Toybox dirmap from extracted-frame names (no filesystem access); raises on odd or gappy names.

    ``paths`` are relative to the image root, e.g. ``animals/cat_01_pivothead/cat_01_pivothead_rxplus_3.png``.
    ``seed`` is unused (the Toybox rules are deterministic) and kept for a uniform signature.
    """
    del seed
    probs = ix.Problems(NAME)
    clips: Dict[Tuple[int, int, int], Dict[int, str]] = defaultdict(dict)
    for raw in ix.as_list(paths):
        parents, base = ix.split_name(raw)
        path = "/".join(parents + [base])
        m = _FRAME.match(base)
        if m is None:
            if base.lower().endswith(".png") and not ix.is_hidden(base):
                probs.add(path, "frame name does not match '<cat>_<NN>_pivothead_<transform>_<k>.png'")
            continue
        cat, nn, tr, k = m["cat"], int(m["nn"]), m["tr"], int(m["k"])
        if cat not in CLASSES:
            probs.add(path, f"unknown Toybox category {cat!r}")
            continue
        if parents and parents[-1] != object_dir(cat, nn):
            probs.add(path, f"frame is not in its object folder {object_dir(cat, nn)}/")
            continue
        if tr in DROPPED_TRANSFORMS:
            continue
        if tr not in SESSIONS:
            probs.add(path, f"unknown transformation {tr!r}")
            continue
        clip = clips[(CLASSES[cat], nn, SESSIONS[tr])]
        if k in clip:
            probs.add(path, f"duplicate of frame {clip[k]}")
            continue
        clip[k] = path

    rows: Dict[str, list] = {c: [] for c in ix.COLUMNS}
    for (cls, nn, sess), frames in clips.items():
        ks = sorted(frames)
        if ks != list(range(1, len(ks) + 1)):
            missing = sorted(set(range(1, ks[-1] + 1)) - set(ks))[:5]
            probs.add(frames[ks[0]], f"clip has missing frames (e.g. k={missing}); re-extract this video")
            continue
        use = ks[:frames_per_session]
        order = ix.bounce(len(use), frames_per_session)
        rows["class"] += [cls] * frames_per_session
        rows["object"] += [nn] * frames_per_session
        rows["session"] += [sess] * frames_per_session
        rows["im_num"] += list(range(1, frames_per_session + 1))
        rows["im_path"] += [frames[use[i]] for i in order]
    probs.raise_if_any(
        "re-run `streamcl prepare toybox RAW_ROOT` (it re-extracts incomplete videos) or remove stray files."
    )

    df = pd.DataFrame(rows)
    if len(df):
        n_sess = df.groupby(["class", "object"])["session"].transform("nunique")
        df = df[n_sess >= sessions_per_object]
        # keep the first `objects_per_class` objects of each class (by raw number) and renumber them 1..
        objs = df[["class", "object"]].drop_duplicates().sort_values(["class", "object"])
        objs["new"] = objs.groupby("class").cumcount() + 1
        objs = objs[objs["new"] <= objects_per_class]
        df = df.merge(objs, on=["class", "object"], how="inner")
        df["object"] = df.pop("new")
    return ix.finish(df, CLASSES)


def index(raw_root: ix.PathLike, *, seed: int = 0, progress: bool = True, **rules) -> pd.DataFrame:
    """Walk the extracted frames under ``<raw_root>/images`` (os.scandir) and return the balanced dirmap."""
    root = ix.require_dir(raw_root, NAME, LAYOUT)
    img = image_root(root)
    if not img.is_dir():
        raise DatasetError(
            f"{NAME}: no extracted frames in {img}; run `streamcl prepare toybox {root}` first "
            "(it extracts 1-fps frames from the videos and indexes them)."
        )
    names = _walk_frames(img, progress)
    if not names:
        raise DatasetError(
            f"{NAME}: {img} holds no extracted .png frames; run `streamcl prepare toybox {root}`."
        )
    return ix.rooted(index_names, names, img, seed=seed, **rules)


def _walk_frames(img: Path, progress: bool) -> List[str]:
    from tqdm.auto import tqdm

    sups, _ = ix.list_dir(img)
    names: List[str] = []
    for sup in tqdm(sups, desc="toybox: listing frames", disable=not progress, leave=False):
        names.extend(ix.walk_files(img / sup, sup))
    return names
