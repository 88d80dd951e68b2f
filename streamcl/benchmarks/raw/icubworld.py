"""iCubWorld Transformations: layout constants and the sparse-frame indexer (indexes in place).

Raw layout: ``<root>/part{1..4}/<cat>/<cat><i>/<SESSION>/<day>/<cam>/*.jpg``.
Sessions MIX 0, ROT2D 1, ROT3D 2, SCALE 3, TRANSL 4; from each session the first day
(sorted names), the left camera and every 10th frame (10 fps -> 1 fps) are kept.
20 classes with ids from their sorted names, 10 objects per class (object = ``i``),
frames per session not balanced. Test session 0 (MIX).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

import pandas as pd

from streamcl.benchmarks.raw import _indexing as ix
from streamcl.errors import DatasetError

NAME = "icubworld"
#: Where each category lives in the four archive parts.
PARTS: Dict[str, Tuple[str, ...]] = {
    "part1": ("book", "cellphone", "mouse", "pencilcase", "ringbinder"),
    "part2": ("hairbrush", "hairclip", "perfume", "sunglasses", "wallet"),
    "part3": ("flower", "glass", "mug", "remote", "soapdispenser"),
    "part4": ("bodylotion", "ovenglove", "sodabottle", "sprayer", "squeezer"),
}
PART_OF = {c: p for p, cats in PARTS.items() for c in cats}
CLASSES: Dict[str, int] = {c: i + 1 for i, c in enumerate(sorted(PART_OF))}
SESSIONS: Dict[str, int] = {"MIX": 0, "ROT2D": 1, "ROT3D": 2, "SCALE": 3, "TRANSL": 4}
TEST_SESSIONS: Tuple[int, ...] = (0,)
CLASSES_PER_EXPERIENCE: int = 2

OBJECTS_PER_CLASS = 10
FRAME_STEP = 10
CAMERA = "left"

LAYOUT = "<root>/part{1..4}/<cat>/<cat><i>/{MIX,ROT2D,ROT3D,SCALE,TRANSL}/<day>/{left,right}/*.jpg"
_PART = re.compile(r"^part\d+$")


def image_root(root: ix.PathLike) -> Path:
    """The dataset root itself (``im_path`` starts with ``partK/``)."""
    return Path(root)


@ix.gc_paused
def index_names(
    paths: Iterable[str],
    *,
    seed: int = 0,
    frame_step: int = FRAME_STEP,
    camera: str = CAMERA,
) -> pd.DataFrame:
    """iCub dirmap from image paths (no filesystem access): first day, ``camera``, every ``frame_step``-th frame.

    ``seed`` is unused (the rule is deterministic).
    """
    del seed
    probs = ix.Problems(NAME)
    # (class, object, session) -> day -> camera -> [file names]
    tree: Dict[Tuple[int, int, int], Dict[str, Dict[str, List[str]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    prefix: Dict[Tuple[int, int, int], str] = {}
    for raw in ix.as_list(paths):
        parents, base = ix.split_name(raw)
        path = "/".join(parents + [base])
        if not base.lower().endswith(".jpg") or ix.is_hidden(base):
            continue
        if len(parents) != 6:
            probs.add(path, "not at <part>/<cat>/<cat><i>/<SESSION>/<day>/<cam>/<file>.jpg")
            continue
        part, cat, obj, sess, day, cam = parents
        if cat not in CLASSES:
            probs.add(path, f"unknown iCubWorld category {cat!r}")
            continue
        if not obj.startswith(cat) or not obj[len(cat) :].isdigit():
            probs.add(path, f"object folder {obj!r} is not '{cat}<number>'")
            continue
        if sess not in SESSIONS:
            probs.add(path, f"unknown session {sess!r} (known: {', '.join(SESSIONS)})")
            continue
        key = (CLASSES[cat], int(obj[len(cat) :]), SESSIONS[sess])
        tree[key][day][cam].append(base)
        prefix[key] = f"{part}/{cat}/{obj}/{sess}"
    rows: Dict[str, list] = {c: [] for c in ix.COLUMNS}
    for key, days in tree.items():
        day = sorted(days)[0]
        files = sorted(days[day].get(camera, []))
        if not files:
            probs.add(f"{prefix[key]}/{day}", f"first day has no '{camera}' camera images")
            continue
        kept = files[::frame_step]
        cls, obj, sess = key
        rows["class"] += [cls] * len(kept)
        rows["object"] += [obj] * len(kept)
        rows["session"] += [sess] * len(kept)
        rows["im_num"] += list(range(1, len(kept) + 1))
        rows["im_path"] += [f"{prefix[key]}/{day}/{camera}/{f}" for f in kept]
    probs.raise_if_any("restore the folders listed from the iCubWorld Transformations archives.")
    return ix.finish(pd.DataFrame(rows), CLASSES)


def index(raw_root: ix.PathLike, *, seed: int = 0, progress: bool = True, **rules) -> pd.DataFrame:
    """Walk only the needed folders (first day, one camera) of every session and return the dirmap."""
    from tqdm.auto import tqdm

    root = ix.require_dir(raw_root, NAME, LAYOUT)
    parts = [d for d in ix.list_dir(root)[0] if _PART.match(d)]
    if not parts:
        raise DatasetError(f"{NAME}: no part1..part4 folders in {root}; expected layout: {LAYOUT}")
    camera = rules.get("camera", CAMERA)
    probs = ix.Problems(NAME, root)
    names: List[str] = []
    for part in parts:
        cats, _ = ix.list_dir(root / part)
        if not cats:
            probs.add(part, "part folder holds no category folders")
        for cat in tqdm(cats, desc=f"icubworld: listing {part}", disable=not progress, leave=False):
            if cat not in CLASSES:
                probs.add(f"{part}/{cat}", f"unknown iCubWorld category (known: {', '.join(CLASSES)})")
                continue
            objs, _ = ix.list_dir(root / part / cat)
            if not objs:
                probs.add(f"{part}/{cat}", "category folder holds no object folders")
            for obj in objs:
                sessions = [s for s in ix.list_dir(root / part / cat / obj)[0] if s in SESSIONS]
                if not sessions:
                    probs.add(
                        f"{part}/{cat}/{obj}",
                        f"object folder holds none of the sessions {', '.join(SESSIONS)}",
                    )
                for sess in sessions:
                    rel = f"{part}/{cat}/{obj}/{sess}"
                    days, _ = ix.list_dir(root / rel)
                    if not days:
                        probs.add(rel, "session folder holds no day folder")
                        continue
                    cam_dir = root / rel / days[0] / camera
                    if not cam_dir.is_dir():
                        probs.add(f"{rel}/{days[0]}", f"missing '{camera}' camera folder")
                        continue
                    before = len(names)
                    names.extend(ix.walk_files(cam_dir, f"{rel}/{days[0]}/{camera}"))
                    if len(names) == before:
                        probs.add(f"{rel}/{days[0]}/{camera}", "camera folder holds no images")
    probs.raise_if_any("restore the folders listed from the iCubWorld Transformations archives.")
    return ix.rooted(index_names, names, root, seed=seed, **rules)
