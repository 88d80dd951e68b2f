"""`streamcl prepare`: Toybox frame extraction (resumable, parallel), index files, errors, load_index."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest
from _raw_fixtures import prepare, synthetic, toybox

from streamcl.benchmarks.raw import _video
from streamcl.errors import DatasetError, StreamclError

TB = dict(n_classes=1, n_objects=1, image_size=32)  # 10 session videos + an incomplete object + 'present'
FS = 24  # extracted frame size in these tests


@pytest.fixture(scope="module")
def toybox_raw(tmp_path_factory):
    return synthetic.generate("toybox", tmp_path_factory.mktemp("tb") / "raw", **TB)


@pytest.fixture()
def raw(toybox_raw, tmp_path):
    """A private copy of the raw Toybox tree (tests modify it)."""
    return shutil.copytree(toybox_raw, tmp_path / "raw")


def _frames(d):
    return sorted(p for p in os.listdir(d) if p.endswith(".png"))


def _stray_temp_files(root):
    return [
        os.path.join(r, f) for r, ds, fs in os.walk(root) for f in fs + ds if ".tmp" in f or ".partial_" in f
    ]


# --------------------------------------------------------------------- Toybox extraction


def test_toybox_prepare_writes_frames_and_index(raw):
    out = prepare.prepare("toybox", raw, workers=1, progress=False, frame_size=FS)
    assert out == raw
    df, img, name = prepare.load_index(out, expected="toybox")
    assert name == "toybox" and img == (raw / "images").resolve() and len(df) == 150
    meta = json.loads((raw / prepare.INDEX_FILE).read_text())
    assert meta["dataset"] == "toybox" and meta["image_root"] == "images" and meta["n_images"] == 150
    assert meta["seed"] == 0 and meta["format"] == 1
    obj = raw / "images/households/cup_01_pivothead"
    # 15 s at 2 fps -> 15 frames, named from 1; 'present' is not extracted
    assert "cup_01_pivothead_ryplus_15.png" in _frames(
        obj
    ) and "cup_01_pivothead_ryplus_16.png" not in _frames(obj)
    assert not any("present" in f for f in _frames(obj))
    assert (obj / ".cup_01_pivothead_rxplus.done").is_file()
    assert _stray_temp_files(raw) == []
    csv = pd.read_csv(raw / prepare.DIRMAP_FILE)
    assert list(csv.columns[:5]) == ["class", "object", "session", "im_num", "im_path"]


def test_toybox_prepare_is_resumable(raw):
    prepare.prepare("toybox", raw, workers=1, progress=False, frame_size=FS)
    first = (raw / prepare.DIRMAP_FILE).read_bytes()
    obj = raw / "images/households/cup_01_pivothead"
    mtimes = {f: (obj / f).stat().st_mtime_ns for f in _frames(obj)}
    assert (
        prepare.extract_toybox(raw, raw, workers=1, progress=False, frame_size=FS) == 0
    )  # all done: skipped
    # a run killed mid-video: marker never written, some frames missing, a temp folder left over
    (obj / ".cup_01_pivothead_tz.done").unlink()
    for k in (7, 8, 9):
        (obj / f"cup_01_pivothead_tz_{k}.png").unlink()
    (obj / ".partial_cup_01_pivothead_tz").mkdir()
    (obj / ".partial_cup_01_pivothead_tz/cup_01_pivothead_tz_1.png").write_bytes(b"half")
    # a marker whose frames vanished is redone too
    (obj / "cup_01_pivothead_ty_3.png").unlink()
    assert prepare.extract_toybox(raw, raw, workers=1, progress=False, frame_size=FS) == 2
    prepare.prepare("toybox", raw, workers=1, progress=False, frame_size=FS)
    assert (raw / prepare.DIRMAP_FILE).read_bytes() == first
    untouched = [f for f in mtimes if "_tz_" not in f and "_ty_" not in f]
    assert all((obj / f).stat().st_mtime_ns == mtimes[f] for f in untouched)
    assert _stray_temp_files(raw) == []
    # another frame size is another extraction
    assert (
        prepare.extract_toybox(raw, raw, workers=1, progress=False, frame_size=FS + 8) == 19
    )  # 10 + 9 sessions


def test_toybox_parallel_extraction_matches_serial(raw, tmp_path):
    a = prepare.prepare("toybox", raw, tmp_path / "serial", workers=1, progress=False, frame_size=FS)
    b = prepare.prepare("toybox", raw, tmp_path / "parallel", workers=2, progress=False, frame_size=FS)
    assert (a / prepare.DIRMAP_FILE).read_bytes() == (b / prepare.DIRMAP_FILE).read_bytes()
    f = "images/households/cup_01_pivothead/cup_01_pivothead_hodgepodge_7.png"
    assert (a / f).read_bytes() == (b / f).read_bytes()
    assert json.loads((b / prepare.INDEX_FILE).read_text())["image_root"] == "images"


def test_corrupt_and_empty_videos_are_reported(raw):
    import av

    obj = raw / "households/cup_01_pivothead"
    (obj / "cup_01_pivothead_rzplus.mp4").write_bytes(b"not a video" * 50)
    data = (obj / "cup_01_pivothead_tx.mp4").read_bytes()
    (obj / "cup_01_pivothead_tx.mp4").write_bytes(data[: len(data) // 2])
    with av.open(str(obj / "cup_01_pivothead_ty.mp4"), "w") as c:  # a video without frames
        s = c.add_stream("mpeg4", rate=2)
        s.width = s.height = 32
        c.start_encoding()
    with pytest.raises(DatasetError) as e:
        prepare.prepare("toybox", raw, workers=2, progress=False, frame_size=FS)
    msg = str(e.value)
    for v in ("rzplus", "tx", "ty"):
        assert str(obj / f"cup_01_pivothead_{v}.mp4") in msg
    assert "3 problem(s)" in msg and "re-download" in msg
    assert not (raw / prepare.DIRMAP_FILE).exists() and not (raw / prepare.INDEX_FILE).exists()
    # the good videos were extracted and will be skipped next time
    assert (raw / "images/households/cup_01_pivothead/.cup_01_pivothead_rxplus.done").is_file()
    assert _stray_temp_files(raw) == []


@pytest.mark.parametrize(
    "make, msg",
    [
        (
            lambda r: (r / "households/cup_01_pivothead/cup_01_pivothead_spin.mp4").write_bytes(b"x"),
            "unknown transformation",
        ),
        (
            lambda r: (r / "households/cup_01_pivothead/cup_1_pivothead_tx.mp4").write_bytes(b"x"),
            "does not match",
        ),
        (lambda r: (r / "households/junk").mkdir(), "not an object folder"),
        (lambda r: (r / "households/cup_05_pivothead").mkdir(), "holds no .mp4 videos"),
        (lambda r: (r / "households/duck_01_pivothead").mkdir(), "belongs in animals/"),
    ],
)
def test_bad_toybox_tree_is_reported(raw, make, msg):
    make(raw)
    with pytest.raises(DatasetError, match=msg) as e:
        prepare.prepare("toybox", raw, workers=1, progress=False, frame_size=FS)
    assert str(raw) in str(e.value)


def test_household_spelling_and_scaled_rules(tmp_path):
    raw = synthetic.generate("toybox", tmp_path / "raw", n_classes=4, n_objects=1, n_sessions=2, n_frames=4,
                             image_size=16, household_spelling=True, extras=False)  # fmt: skip
    assert (raw / "household/ball_01_pivothead").is_dir() and not (raw / "households").exists()
    rules = dict(sessions_per_object=2, frames_per_session=4)
    out = prepare.prepare("toybox", raw, tmp_path / "out", workers=1, progress=False, frame_size=16, **rules)
    df, img, _ = prepare.load_index(out)
    assert len(df) == 4 * 1 * 2 * 4 and set(df["class"]) == {1, 2, 3, 4}
    assert df["im_path"].str.startswith("household/").all() and (img / df["im_path"].iloc[0]).is_file()
    assert json.loads((out / prepare.INDEX_FILE).read_text())["rules"] == rules


# --------------------------------------------------------------------- roots and layouts


@pytest.mark.parametrize("name", ["toybox", "ilab2mlight", "core50", "icubworld"])
def test_missing_or_wrong_root(tmp_path, name):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'} does not exist") as e:
        prepare.prepare(name, tmp_path / "nope", progress=False)
    assert "expected layout" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README").write_text("hi")
    with pytest.raises(DatasetError) as e:
        prepare.prepare(name, empty, progress=False)
    assert str(empty) in str(e.value)
    with pytest.raises(DatasetError, match="not a directory"):
        prepare.prepare(name, empty / "README", progress=False)


def test_in_place_datasets_index_without_copying(tmp_path):
    raw = synthetic.generate(
        "core50", tmp_path / "raw", n_classes=1, n_objects=1, n_sessions=3, image_size=16
    )
    n_files = sum(len(f) for _, _, f in os.walk(raw))
    out = prepare.prepare("core50", raw, tmp_path / "idx", progress=False)
    assert sum(len(f) for _, _, f in os.walk(raw)) == n_files  # nothing written into the raw tree
    assert sorted(os.listdir(out)) == [prepare.DIRMAP_FILE, prepare.INDEX_FILE]
    meta = json.loads((out / prepare.INDEX_FILE).read_text())
    assert meta["image_root"] == str((raw / "core50_128x128").resolve())  # outside out: absolute
    df, img, _ = prepare.load_index(out, expected="core50")
    assert len(df) == 45 and (img / df["im_path"].iloc[0]).is_file()
    # default out = raw root; image root inside it is relative
    prepare.prepare("core50", raw, progress=False)
    assert json.loads((raw / prepare.INDEX_FILE).read_text())["image_root"] == "core50_128x128"


def test_missing_subfolders_are_reported(tmp_path):
    c = synthetic.generate("core50", tmp_path / "c", n_classes=1, n_objects=2, n_sessions=2, image_size=16)
    shutil.rmtree(c / "core50_128x128/s2/o2")
    (c / "core50_128x128/s2/o2").mkdir()
    with pytest.raises(DatasetError, match=r"s2/o2: object folder holds no frames"):
        prepare.prepare("core50", c, progress=False)
    (c / "core50_128x128/s2/o2/C_02_02_010.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"s2/o2/C_02_02_030.png: session s2/o2 lacks 14"):
        prepare.prepare("core50", c, progress=False)

    i = synthetic.generate(
        "icubworld", tmp_path / "i", n_classes=1, n_objects=2, n_sessions=2, n_frames=5, image_size=16
    )
    left = i / "part4/bodylotion/bodylotion2/ROT2D/day3/left"
    shutil.rmtree(left)
    with pytest.raises(DatasetError) as e:
        prepare.prepare("icubworld", i, progress=False)
    assert f"{left.parent}: missing 'left' camera folder" in str(e.value)
    shutil.rmtree(left.parent)
    with pytest.raises(DatasetError, match="ROT2D: session folder holds no day folder"):
        prepare.prepare("icubworld", i, progress=False)


def test_ilab_unparseable_file_is_reported(tmp_path):
    raw = synthetic.generate(
        "ilab2mlight", tmp_path / "raw", n_classes=1, n_objects=1, image_size=16, extras=False
    )
    (raw / "train_img/IMG_0001.jpg").write_bytes(b"")
    with pytest.raises(DatasetError) as e:
        prepare.prepare("ilab2mlight", raw, progress=False)
    assert "IMG_0001.jpg" in str(e.value) and str(raw / "train_img") in str(e.value)
    (raw / "train_img/IMG_0001.jpg").unlink()
    (raw / "train_img/notes.txt").write_text("not an image")
    df, img, _ = prepare.load_index(prepare.prepare("ilab2mlight", raw, progress=False, seed=5))
    assert len(df) == 8 * 15 and json.loads((raw / prepare.INDEX_FILE).read_text())["seed"] == 5


# --------------------------------------------------------------------- index files


def _index(tmp_path):
    raw = synthetic.generate(
        "core50", tmp_path / "raw", n_classes=1, n_objects=1, n_sessions=3, image_size=16
    )
    return prepare.prepare("core50", raw, progress=False)


def test_index_files_are_written_atomically(tmp_path, monkeypatch):
    root = _index(tmp_path)
    before = {f: (root / f).read_bytes() for f in (prepare.DIRMAP_FILE, prepare.INDEX_FILE)}
    real = os.replace

    def crash_on_json(src, dst):
        if str(dst).endswith(prepare.INDEX_FILE):
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(prepare.os, "replace", crash_on_json)
    df = prepare.load_index(root)[0]
    with pytest.raises(OSError):
        prepare.write_index(root, "core50", df.iloc[:10], root / "core50_128x128")
    monkeypatch.setattr(prepare.os, "replace", real)
    assert [f for f in os.listdir(root) if "tmp" in f] == []  # no temp file left behind
    # the CSV was replaced but the JSON was not: the mismatch is detected, not silently used
    with pytest.raises(DatasetError, match=r"dirmap.csv: does not match .*streamcl_index.json"):
        prepare.load_index(root)
    (root / prepare.DIRMAP_FILE).write_bytes(before[prepare.DIRMAP_FILE])
    assert len(prepare.load_index(root)[0]) == 45


def test_load_index_errors(tmp_path):
    with pytest.raises(DatasetError) as e:
        prepare.load_index(tmp_path, expected="toybox")
    assert str(e.value) == (
        f"no streamcl index in {tmp_path}: run `streamcl prepare toybox RAW_ROOT --out {tmp_path}` first"
    )
    root = _index(tmp_path)
    meta_path, csv_path = root / prepare.INDEX_FILE, root / prepare.DIRMAP_FILE
    meta = meta_path.read_text()
    with pytest.raises(DatasetError, match="indexes dataset 'core50', not 'toybox'"):
        prepare.load_index(root, expected="toybox")
    meta_path.write_text("{not json")
    with pytest.raises(DatasetError, match=f"{meta_path}: malformed streamcl index"):
        prepare.load_index(root)
    meta_path.write_text(json.dumps({"dataset": "core50"}))
    with pytest.raises(DatasetError, match="malformed streamcl index .*image_root"):
        prepare.load_index(root)
    meta_path.write_text(meta)
    csv = csv_path.read_bytes()
    csv_path.write_bytes(csv.replace(b"im_path", b"path", 1))
    with pytest.raises(DatasetError, match=f"{csv_path}: does not match"):
        prepare.load_index(root)
    meta_path.write_text(json.dumps({**json.loads(meta), "dirmap_sha256": None}))
    with pytest.raises(DatasetError, match=f"{csv_path}: missing dirmap column"):
        prepare.load_index(root)
    csv_path.unlink()
    with pytest.raises(DatasetError, match=f"{csv_path}: missing"):
        prepare.load_index(root)
    csv_path.write_bytes(csv)
    meta_path.write_text(meta)
    shutil.move(root / "core50_128x128", tmp_path / "moved")
    with pytest.raises(DatasetError, match="does not exist"):
        prepare.load_index(root)


def test_dataset_names_and_stats(tmp_path):
    assert set(prepare.DATASETS) == {"toybox", "ilab2mlight", "core50", "icubworld"}
    assert (
        prepare.get_dataset("ilab") is prepare.DATASETS["ilab2mlight"]
        and prepare.PREPARERS is prepare.DATASETS
    )
    for name, m in prepare.DATASETS.items():
        assert m.NAME == name and callable(m.index) and callable(m.index_names)
    with pytest.raises(
        StreamclError, match="unknown dataset 'mnist'; valid names: toybox, ilab2mlight, core50, icubworld"
    ):
        prepare.prepare("mnist", tmp_path)
    df = toybox.index_names(synthetic.full_size_names("toybox"))
    text = prepare.dirmap_stats(df, test_sessions=toybox.TEST_SESSIONS)
    assert "52200 images, 12 classes, 348 objects, 3480 sessions" in text
    assert "images per session: min 15, mean 15.00, max 15" in text
    assert "helicopter" in text and "4350   3045   1305" in text
    assert prepare.dirmap_stats(df.iloc[:0]) == "empty dirmap (0 images)"


def test_video_marker_helpers(tmp_path):
    assert not _video.is_done(tmp_path, "x", 24)
    (tmp_path / ".x.done").write_text("garbage")
    assert not _video.is_done(tmp_path, "x", 24)
    (tmp_path / ".x.done").write_text(json.dumps({"n_frames": 1, "frame_size": 24}))
    assert not _video.is_done(tmp_path, "x", 24)
    (tmp_path / "x_1.png").write_bytes(b"")
    assert _video.is_done(tmp_path, "x", 24) and not _video.is_done(tmp_path, "x", 32)


@pytest.mark.parametrize("rate, n_in, n_out", [(3, 15, 5), (1, 12, 12), (2, 9, 5)])
def test_extract_samples_the_frame_nearest_each_second(tmp_path, rate, n_in, n_out):
    import numpy as np
    from PIL import Image

    frames = [np.full((16, 16, 3), 12 * i, np.uint8) for i in range(n_in)]
    synthetic.write_video(tmp_path / "v.mp4", frames, rate)
    assert _video.extract(tmp_path / "v.mp4", tmp_path / "out", "v", size=8) == n_out
    got = [int(np.asarray(Image.open(tmp_path / f"out/v_{k}.png")).mean()) for k in range(1, n_out + 1)]
    want = [12 * min(rate * k, n_in - 1) for k in range(n_out)]
    assert np.allclose(got, want, atol=5), (got, want)
    assert sorted(os.listdir(tmp_path / "out")) == [".v.done"] + sorted(
        f"v_{k}.png" for k in range(1, n_out + 1)
    )


def test_bad_rules_and_read_only_output(tmp_path):
    raw = synthetic.generate(
        "core50", tmp_path / "raw", n_classes=1, n_objects=1, n_sessions=1, image_size=16
    )
    with pytest.raises(StreamclError, match="unknown balancing rule.*objects_per_class; valid: first_frame"):
        prepare.prepare("core50", raw, progress=False, objects_per_class=3)
    (tmp_path / "ro").write_text("a file, not a folder")
    with pytest.raises(DatasetError, match="cannot create the output folder .*ro.*--out DIR"):
        prepare.prepare("core50", raw, tmp_path / "ro" / "x", progress=False)


def test_prepare_prints_stats(tmp_path, capsys):
    raw = synthetic.generate(
        "icubworld", tmp_path / "raw", n_classes=2, n_objects=1, n_frames=10, image_size=16
    )
    prepare.prepare("icub", raw, progress=True)
    out = capsys.readouterr().out
    assert "22 images, 2 classes, 2 objects, 10 sessions" in out and "(test: 0)" in out
    assert "bodylotion" in out and f"wrote {raw / prepare.DIRMAP_FILE}" in out
