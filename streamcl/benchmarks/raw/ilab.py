"""iLab-2M-Light: layout constants and the seeded balanced indexer (indexes in place, copies nothing).

Raw layout: every image flat in ``<root>/train_img/`` named
``<class>-i<instance>-b<background>-c<camera>-r<rotation>-l<light>[...].jpg``
(e.g. ``mil-i0001-b0001-c09-r07-l0-f2.jpg``).

Rows are ordered by class, instance, background, camera, rotation, light;
object = instance rank within its class, session = background rank within its
object, im_num = position within its session, each re-ranked after every step:

1. drop the ``semi`` class;
2. drop sessions with fewer than 15 images;
3. keep objects with at least 8 sessions;
4. keep sessions 1..8 and objects 1..28;
5. keep a seeded random contiguous run of 15 images from each session.

Full dataset: 14 x 28 x 8 x 15 = 47 040 images; test sessions 4, 8.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

import numpy as np
import pandas as pd

from streamcl.benchmarks.raw import _indexing as ix
from streamcl.errors import DatasetError

NAME = "ilab2mlight"
#: The full iLab-2M-Light class table, ``semi`` included (it is dropped).
ALL_CLASSES: Dict[str, int] = {
    "boat": 1, "bus": 2, "car": 3, "equip": 4, "f1car": 5, "heli": 6, "mil": 7, "monster": 8,
    "pickup": 9, "plane": 10, "semi": 11, "tank": 12, "train": 13, "ufo": 14, "van": 15,
}  # fmt: skip
DROPPED_CLASSES: Tuple[str, ...] = ("semi",)
#: The 14 classes used, with their fixed ids (11 is unused: it was ``semi``).
CLASSES: Dict[str, int] = {k: v for k, v in ALL_CLASSES.items() if k not in DROPPED_CLASSES}
TEST_SESSIONS: Tuple[int, ...] = (4, 8)
CLASSES_PER_EXPERIENCE: int = 2

FRAMES_PER_SESSION = 15
SESSIONS_PER_OBJECT = 8
OBJECTS_PER_CLASS = 28
IMAGES_DIR = "train_img"

LAYOUT = "<root>/train_img/<class>-i<instance>-b<background>-c<camera>-r<rotation>-l<light>...jpg"
_NAME = r"^(?P<cls>[a-z0-9]+)-i(?P<i>\d+)-b(?P<b>\d+)-c(?P<c>\d+)-r(?P<r>\d+)-l(?P<l>\d+)[^/\n]*\.(?i:jpg)$"
_NAME_RE = re.compile(_NAME)
_LINES_RE = re.compile(
    r"^(?:[^\n]*/)?([a-z0-9]+)-i(\d+)-b(\d+)-c(\d+)-r(\d+)-l(\d+)[^/\n]*\.(?i:jpg)$", re.MULTILINE
)
_FIX = "remove or rename the files listed; iLab images must keep their original names."


def _split_bad_names(jpgs: List[str], probs: ix.Problems) -> Tuple[List[str], list]:
    ok, found = [], []
    for n in jpgs:
        m = _NAME_RE.match(n.rsplit("/", 1)[-1])
        if m is None:
            probs.add(n, "name does not match '<class>-i<inst>-b<bg>-c<cam>-r<rot>-l<light>...jpg'")
        else:
            ok.append(n)
            found.append(m.groups())
    return ok, found


def image_name(cls: str, instance: int, background: int, camera: int, rotation: int, light: int = 0) -> str:
    """File name of one iLab-2M-Light image in the real naming scheme."""
    return f"{cls}-i{instance:04d}-b{background:04d}-c{camera:02d}-r{rotation:02d}-l{light}-f2.jpg"


def image_root(root: ix.PathLike) -> Path:
    """Folder holding the jpgs: ``<root>/train_img``, or ``root`` itself when it holds them directly."""
    return ix.subfolder_or_root(root, IMAGES_DIR)


@ix.gc_paused
def index_names(
    paths: Iterable[str],
    *,
    seed: int = 0,
    frames_per_session: int = FRAMES_PER_SESSION,
    sessions_per_object: int = SESSIONS_PER_OBJECT,
    objects_per_class: int = OBJECTS_PER_CLASS,
) -> pd.DataFrame:
    """Balanced iLab dirmap from file names (no filesystem access); the contiguous runs depend on ``seed`` only.

    Vectorised (regex extraction + numpy ranking): about 1M names in a few seconds.
    """
    names = [n.replace("\\", "/") for n in ix.as_list(paths)]
    jpgs = [n for n in names if n[-4:].lower() == ".jpg" and not n.rsplit("/", 1)[-1].startswith(".")]
    # one regex pass over the joined names (C speed), instead of one call per name
    found = _LINES_RE.findall("\n".join(jpgs))
    probs = ix.Problems(NAME)
    if len(found) != len(jpgs):  # slow path, only to name the culprits
        jpgs, found = _split_bad_names(jpgs, probs)
    if not found:
        probs.raise_if_any(_FIX)
        return ix.finish(pd.DataFrame({c: [] for c in ix.COLUMNS}), CLASSES)
    # found[k] parses jpgs[k]
    cls_s, i_s, b_s, c_s, r_s, l_s = (np.array(col) for col in zip(*found))
    path = np.array(jpgs)
    uniq, inv = np.unique(cls_s, return_inverse=True)
    unknown_names = [u for u in uniq if u not in ALL_CLASSES]
    if unknown_names:
        bad = np.isin(cls_s, unknown_names)
        for p, c in zip(path[bad], cls_s[bad]):
            probs.add(p, f"unknown iLab class {c!r} (known: {', '.join(ALL_CLASSES)})")
    probs.raise_if_any(_FIX)
    cls = np.array([ALL_CLASSES[u] for u in uniq], dtype=np.int64)[inv]
    keep = ~np.isin(cls, [ALL_CLASSES[c] for c in DROPPED_CLASSES])
    num = {
        k: v[keep].astype(np.int64) for k, v in (("i", i_s), ("b", b_s), ("c", c_s), ("r", r_s), ("l", l_s))
    }
    cls, path = cls[keep], path[keep]
    # order by class, instance, background, camera, rotation, light (then name, for determinism)
    order = np.lexsort((path, num["l"], num["r"], num["c"], num["b"], num["i"], cls))
    cls, path = cls[order], path[order]
    inst, bg = num["i"][order], num["b"][order]

    # 2. drop sessions with fewer than `frames_per_session` images
    sess_new = ix.group_flags([cls, inst, bg])
    m = ix.group_sizes(sess_new) >= frames_per_session
    cls, inst, bg, path = cls[m], inst[m], bg[m], path[m]
    # 3. keep objects with at least `sessions_per_object` sessions
    obj_new = ix.group_flags([cls, inst])
    sess_new = ix.group_flags([cls, inst, bg])
    n_sess = _per_row_max(ix.rank_within(sess_new, obj_new), obj_new)
    m = n_sess >= sessions_per_object
    cls, inst, bg, path = cls[m], inst[m], bg[m], path[m]
    # 4. re-rank; keep sessions 1..S and objects 1..O
    cls_new = ix.group_flags([cls])
    obj_new = ix.group_flags([cls, inst])
    sess_new = ix.group_flags([cls, inst, bg])
    obj = ix.rank_within(obj_new, cls_new)
    sess = ix.rank_within(sess_new, obj_new)
    m = (obj <= objects_per_class) & (sess <= sessions_per_object)
    cls, obj, sess, path, sess_new = (
        cls[m],
        obj[m],
        sess[m],
        path[m],
        ix.group_flags([cls[m], inst[m], bg[m]]),
    )
    # 5. a seeded random contiguous run per session
    pos = ix.position_within(sess_new) - 1
    size = ix.group_sizes(sess_new)
    starts_per_session = np.random.default_rng(seed).integers(0, size[sess_new] - frames_per_session + 1)
    start = starts_per_session[np.cumsum(sess_new) - 1]
    m = (pos >= start) & (pos < start + frames_per_session)
    df = pd.DataFrame(
        {
            "class": cls[m],
            "object": obj[m],
            "session": sess[m],
            "im_num": pos[m] - start[m] + 1,
            "im_path": path[m],
        }
    )
    return ix.finish(df, CLASSES)


def _per_row_max(values: np.ndarray, new_group: np.ndarray) -> np.ndarray:
    gid = np.cumsum(new_group) - 1
    if len(gid) == 0:
        return values
    mx = np.zeros(gid[-1] + 1, dtype=values.dtype)
    np.maximum.at(mx, gid, values)
    return mx[gid]


def index(raw_root: ix.PathLike, *, seed: int = 0, progress: bool = True, **rules) -> pd.DataFrame:
    """List ``<raw_root>/train_img`` (one os.scandir pass) and return the balanced dirmap; paths relative to it."""
    root = ix.require_dir(raw_root, NAME, LAYOUT)
    img = image_root(root)
    names = _list_flat(img, progress)
    if not names:
        raise DatasetError(f"{NAME}: no .jpg images in {img}; expected layout: {LAYOUT}")
    return ix.rooted(index_names, names, img, seed=seed, **rules)


def _list_flat(img: Path, progress: bool) -> List[str]:
    from tqdm.auto import tqdm

    names: List[str] = []
    with (
        os.scandir(img) as it,
        tqdm(desc="ilab2mlight: listing", unit=" files", disable=not progress, leave=False) as bar,
    ):
        for e in it:
            if e.name.lower().endswith(".jpg") and not ix.is_hidden(e.name):
                names.append(e.name)
                if len(names) % 10000 == 0:
                    bar.update(10000)
    return names
