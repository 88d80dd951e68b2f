"""Tiny dataset trees in the exact raw layouts of Toybox, iLab-2M-Light, CORe50 and iCubWorld.

Used by the tests and the demo in place of the real downloads. Images are learnable:
the class fixes the shape and colour, the object shifts hue, size and inner pattern,
the session fixes the motion (rotation about x/y/z, translation, zoom, a mix) and the
background tint, and frames move smoothly within a session over mild pixel noise.

Default sizes are small (seconds to write) but keep the real balancing rules meaningful,
so ``streamcl prepare NAME ROOT`` on a generated tree runs the real indexer unchanged:

- toybox: 10 sessions per object of 15 s (some 10 s, padded palindromically; some 18 s,
  cut), plus an object missing a session (dropped) and a ``present`` video (ignored);
  videos written at 2 fps so 1-fps extraction samples every other frame.
- ilab2mlight: 9 backgrounds of 16 images per object plus a short background (dropped)
  and an object with too few backgrounds (dropped), a ``semi`` instance (dropped);
  instance/background numbers are sparse so the ranking rules matter.
- core50: frames 10, 30, ..., 290 plus a few extra frames per session (not sampled).
- icubworld: two days (the second ignored) and both cameras (right ignored) for the
  first object; every 10th frame of an unbalanced number per session is kept.

:func:`full_size_names` returns the relative names of a full-size download (no files),
with realistic irregularities, for checking that the indexers reproduce the published totals.
"""

from __future__ import annotations

import colorsys
import inspect
import json
import math
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from streamcl.benchmarks.raw import core50 as core50_mod
from streamcl.benchmarks.raw import icubworld as icub_mod
from streamcl.benchmarks.raw import ilab as ilab_mod
from streamcl.benchmarks.raw import toybox as toybox_mod
from streamcl.errors import DatasetError, StreamclError

MARKER = ".streamcl_synthetic.json"
_PARTIAL = ".streamcl_synthetic.partial.json"
NAMES = ("toybox", "ilab2mlight", "core50", "icubworld")
_ALIASES = {"ilab": "ilab2mlight", "icub": "icubworld", "icubworldtransf": "icubworld"}
#: name: (max classes, max sessions) of the real layout
_LIMITS = {"toybox": (12, 10), "ilab2mlight": (14, 60), "core50": (10, 11), "icubworld": (20, 5)}
_DEFAULTS = {
    # name: (n_classes, n_sessions, n_frames)
    "toybox": (4, 10, 15),  # n_frames: seconds per video
    "ilab2mlight": (4, 9, 16),  # n_frames: images per background
    "core50": (4, 11, 15),  # n_frames: sampled frames per session (10, 30, ...)
    "icubworld": (4, 5, 40),  # n_frames: raw frames per session (about; every 10th kept)
}

# --------------------------------------------------------------------------- rendering

_KINDS = ("triangle", "square", "pentagon", "star", "hexagon", "cross", "circle")
MOTIONS = ("rx", "ry", "rz", "rx-", "ry-", "rz-", "tx", "ty", "tz", "mix")

__all__ = ["MARKER", "MOTIONS", "NAMES", "full_size_names", "generate", "render", "write_video"]


def _poly(kind: str, r: float) -> np.ndarray:
    """Unit-centred outline of a shape kind (N x 2), radius r."""
    if kind == "star":
        a = np.arange(10) * math.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    elif kind == "cross":
        w = 0.35 * r
        pts = [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
        return np.array(pts, dtype=np.float64)
    else:
        n = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "circle": 28}[kind]
        a = np.arange(n) * 2 * math.pi / n - math.pi / 2
        rad = np.full(n, r)
    return np.stack([rad * np.cos(a), rad * np.sin(a)], axis=1)


def _rgb(h: float, s: float, v: float) -> Tuple[int, int, int]:
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))  # type: ignore[return-value]


def render(
    cls: int, obj: int, session: int, t: float, *, size: int = 64, motion: Optional[str] = None, seed: int = 0
) -> np.ndarray:
    """One frame (size x size x 3 uint8) of object ``obj`` of class ``cls`` in ``session`` at clip time t in [0, 1].

    Deterministic in its arguments. Class: shape and hue; object: hue offset, size, inner
    pattern; session: motion and background tint; t: smooth motion along the clip.
    """
    from PIL import Image, ImageDraw

    motion = motion or MOTIONS[session % len(MOTIONS)]
    hue = (cls * 0.618034) % 1.0
    kind = _KINDS[cls % len(_KINDS)]
    ohue = hue + 0.035 * ((obj % 5) - 2)
    radius = size * (0.22 + 0.03 * (obj % 4))
    # smooth motion within the clip
    ang, sx, sy, dx, dy, zoom = 0.15 * obj, 1.0, 1.0, 0.0, 0.0, 1.0
    sweep = (t - 0.5) * 2  # -1 .. 1
    sign = -1.0 if motion.endswith("-") else 1.0
    base = motion.rstrip("-")
    if base == "rx":
        sy = 0.35 + 0.65 * abs(math.cos(sign * t * 0.9 * math.pi))
    elif base == "ry":
        sx = 0.35 + 0.65 * abs(math.cos(sign * t * 0.9 * math.pi))
    elif base == "rz":
        ang += sign * t * math.pi
    elif base == "tx":
        dx = 0.22 * size * sweep
    elif base == "ty":
        dy = 0.22 * size * sweep
    elif base == "tz":
        zoom = 1.0 + 0.35 * sweep
    else:  # mix / hodgepodge / present / absent
        ang += 0.8 * math.sin(2 * math.pi * t)
        dx, dy = 0.15 * size * math.sin(math.pi * t), 0.12 * size * math.cos(math.pi * t)
        zoom = 1.0 + 0.15 * math.sin(3 * math.pi * t)
    # background: session tint, gentle gradient, pixel noise
    rng = np.random.default_rng(zlib.crc32(f"{seed}/{cls}/{obj}/{session}/{t:.5f}".encode()))
    tint = np.array(_rgb(0.13 * session + 0.5, 0.18, 0.55), dtype=np.float32)
    yy = np.linspace(-1, 1, size, dtype=np.float32)[:, None, None]
    bg = tint + 25 * yy + rng.normal(0, 7, (size, size, 3)).astype(np.float32)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    c, s = math.cos(ang), math.sin(ang)
    centre = np.array([size / 2 + dx, size / 2 + dy])

    def place(pts: np.ndarray) -> List[Tuple[float, float]]:
        p = pts * zoom * np.array([sx, sy])
        p = p @ np.array([[c, s], [-s, c]])
        return [tuple(q) for q in (p + centre)]

    draw.polygon(place(_poly(kind, radius)), fill=_rgb(ohue, 0.85, 0.95))
    inner = _KINDS[(cls + obj + 2) % len(_KINDS)]  # object-specific inner pattern
    draw.polygon(place(_poly(inner, radius * 0.42)), fill=_rgb(ohue + 0.5, 0.6, 0.35 + 0.1 * (obj % 3)))
    return np.asarray(img)


# --------------------------------------------------------------------------- generation


def generate(
    name: str,
    root: os.PathLike | str,
    *,
    n_classes: Optional[int] = None,
    n_objects: int = 3,
    n_sessions: Optional[int] = None,
    n_frames: Optional[int] = None,
    image_size: int = 64,
    seed: int = 0,
    first_class: int = 0,
    **kw: Any,
) -> Path:
    """Write a small learnable tree in ``name``'s native raw layout under ``root`` and return ``root``.

    Idempotent: a complete tree with the same parameters is left as it is; a tree killed
    half-way is rewritten. ``n_frames`` is per dataset: toybox seconds per video, iLab
    images per background, CORe50 sampled frames per session, iCub raw frames per session.
    ``first_class`` skips that many classes of the dataset's class table, so that, e.g., a
    pretraining set (``first_class=6``) shares no class with the stream (``first_class=0``).
    Extra keywords: toybox ``household_spelling`` (bool), ``fps`` (video frame rate, 2);
    all: ``extras`` (bool, default True: add the irregular items the balancing rules drop).
    """
    name = _ALIASES.get(name, name)
    if name not in _GENERATORS:
        raise StreamclError(f"unknown dataset {name!r}: choose one of {', '.join(NAMES)}")
    d_cls, d_sess, d_frames = _DEFAULTS[name]
    params = {
        "name": name,
        # None takes the dataset's default; 0 is an error below (it used to become the default silently)
        "n_classes": int(d_cls if n_classes is None else n_classes),
        "n_objects": int(n_objects),
        "n_sessions": int(d_sess if n_sessions is None else n_sessions),
        "n_frames": int(d_frames if n_frames is None else n_frames),
        "image_size": int(image_size),
        "seed": int(seed),
        **({"first_class": int(first_class)} if first_class else {}),  # absent when 0: older trees stay valid
        **kw,
    }
    gen = _GENERATORS[name]
    extra = inspect.signature(gen).parameters
    unknown = [k for k in kw if k not in extra or k in ("root", "first_class")]
    if unknown:
        options = [k for k in extra if k not in ("root", "first_class", *params)]
        raise StreamclError(
            f"synthetic {name}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(options)}"
        )
    c_max, s_max = _LIMITS[name]
    if not 1 <= params["n_classes"] <= c_max:
        raise StreamclError(f"synthetic {name}: n_classes must be 1..{c_max}, got {params['n_classes']}")
    if not 0 <= int(first_class) <= c_max - params["n_classes"]:
        raise StreamclError(f"synthetic {name}: first_class must be 0..{c_max - params['n_classes']} "
                            f"(first_class + n_classes <= {c_max} classes), got {first_class}")
    if not 1 <= params["n_sessions"] <= s_max:
        raise StreamclError(f"synthetic {name}: n_sessions must be 1..{s_max}, got {params['n_sessions']}")
    if params["n_objects"] < 1 or params["n_frames"] < 1 or params["image_size"] < 8:
        raise StreamclError(f"synthetic {name}: n_objects and n_frames must be >= 1 and image_size >= 8")
    root = Path(root)
    marker, partial = root / MARKER, root / _PARTIAL
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except ValueError:
            old = None
        if old == params:
            return root
        raise DatasetError(
            f"{root} already holds a synthetic {old.get('name') if isinstance(old, dict) else '?'} tree "
            f"with other parameters ({marker}); delete the folder or choose another root."
        )
    if root.exists() and any(not e.name.startswith(".") for e in os.scandir(root)) and not partial.is_file():
        raise DatasetError(f"{root} is not empty and is not a synthetic tree; choose an empty or new folder.")
    root.mkdir(parents=True, exist_ok=True)
    _write_json(partial, params)
    gen(root, **{k: v for k, v in params.items() if k != "name"})
    _write_json(marker, params)
    partial.unlink()
    return root


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, sort_keys=True))
    os.replace(tmp, path)


def _save(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        Image.fromarray(arr).save(path, compress_level=1)
    else:
        Image.fromarray(arr).save(path, quality=90)


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int) -> None:
    """Write RGB frames as an H.264 (or MPEG-4 Part 2) mp4 with PyAV."""
    import av

    from streamcl.benchmarks.raw._video import check_not_forked_after_decoding

    check_not_forked_after_decoding()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        try:
            stream = out.add_stream("libx264", rate=fps)
            stream.options = {"preset": "ultrafast", "crf": "16"}
        except Exception:  # noqa: BLE001 - builds without x264
            stream = out.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        out.mux(stream.encode())
    os.replace(tmp, path)


_TOYBOX_MOTION = {
    "rxplus": "rx", "ryplus": "ry", "rzplus": "rz", "rxminus": "rx-", "ryminus": "ry-",
    "rzminus": "rz-", "tx": "tx", "ty": "ty", "tz": "tz", "hodgepodge": "mix",
    "present": "mix", "absent": "mix",
}  # fmt: skip


def _toybox(root: Path, *, n_classes, n_objects, n_sessions, n_frames, image_size, seed, first_class=0,
            household_spelling: bool = False, fps: int = 2, extras: bool = True) -> None:  # fmt: skip
    size = image_size + image_size % 2  # yuv420p needs even sides
    transforms = list(toybox_mod.SESSIONS)[:n_sessions]
    cats = sorted(toybox_mod.CLASSES, key=toybox_mod.CLASSES.get)[first_class : first_class + n_classes]
    for ci, cat in enumerate(cats, start=first_class):
        sup = toybox_mod.SUPERCATEGORY_OF[cat]
        if sup == "households" and household_spelling:
            sup = "household"
        objs = [(nn, transforms) for nn in range(1, n_objects + 1)]
        if extras and ci == first_class:  # one object missing a session: dropped by the balancing rules
            objs.append((n_objects + 1, transforms[:-1]))
        for nn, trs in objs:
            todo = list(trs) + (["present"] if extras and ci == first_class and nn == 1 else [])
            for si, tr in enumerate(todo):
                seconds = n_frames
                if (nn + si) % 4 == 1:
                    seconds = max(1, n_frames - 5)  # short: padded palindromically
                elif (nn + si) % 4 == 3:
                    seconds = n_frames + 3  # long: cut at n_frames
                n = seconds * fps
                sess = toybox_mod.SESSIONS.get(tr, 0)
                frames = [render(ci, nn, sess, i / max(1, n - 1), size=size, motion=_TOYBOX_MOTION[tr], seed=seed)
                          for i in range(n)]  # fmt: skip
                path = root / sup / toybox_mod.object_dir(cat, nn) / toybox_mod.video_name(cat, nn, tr)
                write_video(path, frames, fps)


def _ilab(
    root: Path, *, n_classes, n_objects, n_sessions, n_frames, image_size, seed, first_class=0, extras: bool = True
) -> None:
    img = root / ilab_mod.IMAGES_DIR
    img.mkdir(parents=True, exist_ok=True)
    classes = sorted(ilab_mod.CLASSES, key=ilab_mod.CLASSES.get)[first_class : first_class + n_classes]
    todo: List[Tuple[str, int, int, int]] = []  # (class, class index, instance, n backgrounds)
    for ci, cls in enumerate(classes, start=first_class):
        for j in range(n_objects):
            todo.append((cls, ci, 3 * j + 2, n_sessions))
        if extras:  # too few backgrounds: dropped
            todo.append((cls, ci, 3 * n_objects + 5, max(1, ilab_mod.SESSIONS_PER_OBJECT - 2)))
    if extras:
        todo.append(("semi", first_class + len(classes), 1, n_sessions))  # dropped class
    n_cam = max(1, math.ceil(n_frames / 8))
    for cls, ci, inst, n_bg in todo:
        bgs = [7 * b + inst % 5 + 1 for b in range(n_bg + (1 if extras else 0))]
        for bi, b in enumerate(bgs):
            short = extras and bi == 2  # this background is too short: dropped before ranking
            shots = [(c, r) for c in range(n_cam) for r in range(1, 9)][: (8 if short else n_frames)]
            for k, (cam, rot) in enumerate(shots):
                arr = render(
                    ci, inst, bi, k / max(1, len(shots) - 1), size=image_size, motion="rz", seed=seed
                )
                _save(arr, img / ilab_mod.image_name(cls, inst, b, cam, rot))


def _core50(
    root: Path, *, n_classes, n_objects, n_sessions, n_frames, image_size, seed, first_class=0, extras: bool = True
) -> None:
    if n_objects > core50_mod.OBJECTS_PER_CLASS:
        raise StreamclError(f"synthetic core50: n_objects must be <= {core50_mod.OBJECTS_PER_CLASS}")
    img = root / core50_mod.IMAGES_DIR
    sampled = [core50_mod.FIRST_FRAME + core50_mod.FRAME_STEP * j for j in range(n_frames)]
    frames = sorted(set(sampled) | ({0, 20, sampled[-1] + 5} if extras else set()))
    for ci in range(first_class, first_class + n_classes):
        for j in range(n_objects):
            o = ci * core50_mod.OBJECTS_PER_CLASS + j + 1
            for s in range(1, n_sessions + 1):
                for f in frames:
                    arr = render(ci, j, s, f / (frames[-1] or 1), size=image_size, seed=seed)
                    _save(arr, img / core50_mod.frame_path(s, o, f))


def _icub(
    root: Path, *, n_classes, n_objects, n_sessions, n_frames, image_size, seed, first_class=0, extras: bool = True
) -> None:
    cats = sorted(icub_mod.CLASSES, key=icub_mod.CLASSES.get)[first_class : first_class + n_classes]
    sessions = list(icub_mod.SESSIONS)[:n_sessions]
    for ci, cat in enumerate(cats, start=first_class):
        for i in range(1, n_objects + 1):
            for si, sess in enumerate(sessions):
                n = n_frames + 7 * ((i + si) % 3)  # unbalanced on purpose
                sdir = root / icub_mod.PART_OF[cat] / cat / f"{cat}{i}" / sess
                first = extras and i == 1
                for day, cams in (("day3", ("left", "right") if first else ("left",)), ("day5", ("left",))):
                    if day == "day5" and not first:
                        continue
                    m = n if day == "day3" else 3
                    for cam in cams:
                        for k in range(m):
                            arr = render(
                                ci, i, si, k / max(1, m - 1), size=image_size, seed=seed + (cam == "right")
                            )
                            _save(arr, sdir / day / cam / f"{1000 + 3 * k:08d}.jpg")


_GENERATORS: Dict[str, Callable[..., None]] = {
    "toybox": _toybox,
    "ilab2mlight": _ilab,
    "core50": _core50,
    "icubworld": _icub,
}

# --------------------------------------------------------------------------- full-size names


def full_size_names(name: str, seed: int = 0, *, scale: float = 1.0) -> List[str]:
    """Relative file names of a full-size download of ``name`` (no files written), with realistic irregularities.

    toybox: extracted-frame names (videos of 10..25 s, ``present``/``absent`` clips, one object
    per class missing a session in half of the classes); ilab2mlight: flat jpg names (extra
    instances/backgrounds, short backgrounds, the ``semi`` class); core50: all ~300 frames per
    session, a few early ones missing. Indexing them gives the published totals.
    ``scale`` (iLab only) multiplies the number of instances, for speed benchmarks.
    """
    name = _ALIASES.get(name, name)
    rng = np.random.default_rng(seed)
    if name == "toybox":
        return _toybox_names(rng)
    if name == "ilab2mlight":
        return _ilab_names(rng, scale)
    if name == "core50":
        return _core50_names(rng)
    raise StreamclError(
        f"full_size_names: no full-size model for {name!r} (choose toybox, ilab2mlight or core50)"
    )


def _toybox_names(rng: np.random.Generator) -> List[str]:
    out: List[str] = []
    transforms = list(toybox_mod.SESSIONS) + list(toybox_mod.DROPPED_TRANSFORMS)
    for ci, cat in enumerate(sorted(toybox_mod.CLASSES, key=toybox_mod.CLASSES.get)):
        sup = toybox_mod.SUPERCATEGORY_OF[cat]
        if sup == "households" and ci % 2:
            sup = "household"  # both spellings in one tree
        broken = int(rng.integers(1, 31)) if ci % 2 == 0 else None  # this object lacks one session
        for nn in range(1, 31):
            for tr in transforms:
                if nn == broken and tr == "tz":
                    continue
                seconds = int(
                    rng.choice(
                        [8, 9, 12, 14, 15, 17, 19, 21, 25],
                        p=[0.04, 0.06, 0.1, 0.1, 0.1, 0.15, 0.2, 0.15, 0.1],
                    )
                )
                d = f"{sup}/{toybox_mod.object_dir(cat, nn)}"
                out += [f"{d}/{toybox_mod.frame_name(cat, nn, tr, k)}" for k in range(1, seconds + 1)]
    return out


def _ilab_names(rng: np.random.Generator, scale: float) -> List[str]:
    out: List[str] = []
    for cls in ilab_mod.ALL_CLASSES:
        n_inst = max(1, int(round(int(rng.integers(33, 41)) * scale)))
        # as in the real data, most instances have >= 8 usable backgrounds ('semi' has few such)
        p_good = 0.2 if cls in ilab_mod.DROPPED_CLASSES else 0.9
        good = rng.random(n_inst) < p_good
        good[: min(30, n_inst)] |= cls not in ilab_mod.DROPPED_CLASSES and scale >= 1.0  # >= 28 per class
        rng.shuffle(good)
        for inst in range(1, n_inst + 1):
            n_long = int(rng.integers(8, 13)) if good[inst - 1] else int(rng.integers(2, 8))
            n_short = int(rng.integers(0, 3))  # backgrounds with 8 images only: dropped first
            kinds = rng.permutation(np.array([True] * n_long + [False] * n_short))
            bgs = np.sort(rng.choice(np.arange(1, 140), size=len(kinds), replace=False))
            for b, long in zip(bgs, kinds):
                n_cam = int(rng.choice([2, 3, 11], p=[0.35, 0.35, 0.3])) if long else 1
                for c in np.sort(rng.choice(11, size=n_cam, replace=False)):
                    for r in range(1, 9):
                        out.append(ilab_mod.image_name(cls, inst, int(b), int(c), r))
    return out


def _core50_names(rng: np.random.Generator) -> List[str]:
    out: List[str] = []
    for s in range(1, 12):
        for o in range(1, 51):
            start = int(rng.integers(0, 8)) if rng.random() < 0.2 else 0  # a few early frames missing
            n = int(rng.integers(292, 301))
            out += [core50_mod.frame_path(s, o, f) for f in range(start, n)]
    return out
