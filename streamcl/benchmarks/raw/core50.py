"""CORe50: layout constants and the frame-sampling indexer (indexes in place).

Raw layout: ``<root>/core50_128x128/s{1..11}/o{1..50}/C_{ss}_{oo}_{fff}.png`` (20 fps clips).
Class = category of 5 consecutive objects (o1-5 -> 1, o6-10 -> 2, ...); object = 1..5 within
the class; session = s1..s11 -> 1..11; frames 10, 30, ..., 290 are kept (15 per session, ~1 fps),
``im_num`` is the raw frame number. Per class 600 train + 225 test images (test sessions 3, 7, 10).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

import pandas as pd

from streamcl.benchmarks.raw import _indexing as ix
from streamcl.errors import DatasetError

NAME = "core50"
#: Categories in object order (o1-5 are plug adapters, o6-10 mobile phones, ...).
CLASSES: Dict[str, int] = {
    "plug_adapter": 1, "mobile_phone": 2, "scissors": 3, "light_bulb": 4, "can": 5,
    "glasses": 6, "ball": 7, "marker": 8, "cup": 9, "remote_control": 10,
}  # fmt: skip
OBJECTS_PER_CLASS = 5
N_SESSIONS = 11
TEST_SESSIONS: Tuple[int, ...] = (3, 7, 10)
CLASSES_PER_EXPERIENCE: int = 2

FIRST_FRAME = 10
FRAME_STEP = 20
FRAMES_PER_SESSION = 15
IMAGES_DIR = "core50_128x128"

LAYOUT = "<root>/core50_128x128/s<1..11>/o<1..50>/C_<ss>_<oo>_<fff>.png"
_FRAME = re.compile(r"^C_(?P<s>\d{2})_(?P<o>\d{2})_(?P<f>\d{3})\.png$")
_SDIR = re.compile(r"^s(\d+)$")
_ODIR = re.compile(r"^o(\d+)$")


def frame_path(session: int, obj: int, frame: int) -> str:
    """Path of one raw frame relative to the image root (``s1/o1/C_01_01_010.png``); ``obj`` is 1..50."""
    return f"s{session}/o{obj}/C_{session:02d}_{obj:02d}_{frame:03d}.png"


def class_of(obj: int) -> int:
    """Class id of raw object ``obj`` (1..50)."""
    return (obj - 1) // OBJECTS_PER_CLASS + 1


def image_root(root: ix.PathLike) -> Path:
    """``<root>/core50_128x128``, or ``root`` itself when it holds the ``s*`` folders directly."""
    return ix.subfolder_or_root(root, IMAGES_DIR)


@ix.gc_paused
def index_names(
    paths: Iterable[str],
    *,
    seed: int = 0,
    first_frame: int = FIRST_FRAME,
    frame_step: int = FRAME_STEP,
    frames_per_session: int = FRAMES_PER_SESSION,
) -> pd.DataFrame:
    """CORe50 dirmap from frame paths (no filesystem access): keep frames 10, 30, ..., 290 of every session.

    A session missing one of those frames is an error (the published counts need all of them).
    ``seed`` is unused (the rule is deterministic).
    """
    del seed
    probs = ix.Problems(NAME)
    wanted = set(range(first_frame, first_frame + frame_step * frames_per_session, frame_step))
    rows: Dict[str, list] = {c: [] for c in ix.COLUMNS}
    seen: Dict[Tuple[int, int], set] = {}
    for raw in ix.as_list(paths):
        parents, base = ix.split_name(raw)
        path = "/".join(parents + [base])
        m = _FRAME.match(base)
        if m is None:
            if base.lower().endswith(".png") and not ix.is_hidden(base):
                probs.add(path, "frame name does not match 'C_<ss>_<oo>_<fff>.png'")
            continue
        s, o, f = int(m["s"]), int(m["o"]), int(m["f"])
        if len(parents) >= 2 and (parents[-2] != f"s{s}" or parents[-1] != f"o{o}"):
            probs.add(path, f"frame of session {s}, object {o} is not in s{s}/o{o}/")
            continue
        if not 1 <= o <= OBJECTS_PER_CLASS * len(CLASSES):
            probs.add(path, f"object {o} is outside o1..o{OBJECTS_PER_CLASS * len(CLASSES)}")
            continue
        got = seen.setdefault((s, o), set())
        if f not in wanted:
            continue
        got.add(f)
        rows["class"].append(class_of(o))
        rows["object"].append((o - 1) % OBJECTS_PER_CLASS + 1)
        rows["session"].append(s)
        rows["im_num"].append(f)
        rows["im_path"].append(path)
    for (s, o), got in sorted(seen.items()):
        if got != wanted:
            miss = sorted(wanted - got)
            probs.add(
                frame_path(s, o, miss[0]),
                f"session s{s}/o{o} lacks {len(miss)} of the sampled frames {miss[:5]}",
            )
    probs.raise_if_any("restore the missing frames from the CORe50 archive (core50_128x128.zip).")
    return ix.finish(pd.DataFrame(rows), CLASSES)


def index(raw_root: ix.PathLike, *, seed: int = 0, progress: bool = True, **rules) -> pd.DataFrame:
    """Walk ``<raw_root>/core50_128x128/s*/o*`` (os.scandir) and return the dirmap; paths relative to that folder."""
    from tqdm.auto import tqdm

    root = ix.require_dir(raw_root, NAME, LAYOUT)
    img = image_root(root)
    sdirs, _ = ix.list_dir(img)
    sdirs = [d for d in sdirs if _SDIR.match(d)]
    if not sdirs:
        raise DatasetError(f"{NAME}: no session folders s1..s11 in {img}; expected layout: {LAYOUT}")
    probs = ix.Problems(NAME, img)
    names: List[str] = []
    for sd in tqdm(sdirs, desc="core50: listing", disable=not progress, leave=False):
        odirs, _ = ix.list_dir(img / sd)
        odirs = [d for d in odirs if _ODIR.match(d)]
        if not odirs:
            probs.add(sd, "session folder holds no object folders o1..o50")
        for od in odirs:
            before = len(names)
            names.extend(ix.walk_files(img / sd / od, f"{sd}/{od}"))
            if len(names) == before:
                probs.add(f"{sd}/{od}", "object folder holds no frames")
    probs.raise_if_any("restore the missing folders from the CORe50 archive (core50_128x128.zip).")
    return ix.rooted(index_names, names, img, seed=seed, **rules)
