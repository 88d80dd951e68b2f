"""Synthetic native-layout trees: layout, balanced counts after prepare, determinism, learnability."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _raw_fixtures import SMALL, check_balanced, core50, icub, ilab, prepare, synthetic, toybox
from PIL import Image

from streamcl.errors import DatasetError, StreamclError


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """Each dataset generated small and prepared once (frames extracted at 32 px for Toybox)."""
    out = {}
    for name, kw in SMALL.items():
        root = synthetic.generate(name, tmp_path_factory.mktemp(name) / "raw", **kw)
        prepare.prepare(name, root, workers=1, progress=False, frame_size=32)
        out[name] = root
    return out


def _load(trees, name):
    df, img, got = prepare.load_index(trees[name], expected=name)
    assert got == name
    return df, img


def test_native_layouts(trees):
    t = trees["toybox"]
    assert (t / "households/cup_01_pivothead/cup_01_pivothead_rxplus.mp4").is_file()
    assert (t / "households/mug_02_pivothead/mug_02_pivothead_hodgepodge.mp4").is_file()
    assert (
        t / "households/cup_03_pivothead/cup_03_pivothead_ty.mp4"
    ).is_file()  # the incomplete extra object
    assert not (t / "households/cup_03_pivothead/cup_03_pivothead_hodgepodge.mp4").exists()
    assert (t / "households/cup_01_pivothead/cup_01_pivothead_present.mp4").is_file()
    i = trees["ilab2mlight"] / "train_img"
    assert (i / "boat-i0002-b0003-c00-r01-l0-f2.jpg").is_file()
    assert any(p.name.startswith("semi-") for p in i.iterdir())
    c = trees["core50"] / "core50_128x128"
    assert (c / "s1/o1/C_01_01_010.png").is_file() and (c / "s4/o7/C_04_07_290.png").is_file()
    assert (c / "s1/o1/C_01_01_000.png").is_file()  # an extra frame that is not sampled
    b = trees["icubworld"]
    assert (b / "part4/bodylotion/bodylotion1/MIX/day3/left/00001000.jpg").is_file()
    assert (b / "part1/book/book2/TRANSL/day3/left").is_dir()
    assert (b / "part4/bodylotion/bodylotion1/MIX/day3/right").is_dir()
    assert (b / "part4/bodylotion/bodylotion1/MIX/day5/left").is_dir()


def test_toybox_counts_follow_the_rules(trees):
    df, img = _load(trees, "toybox")
    check_balanced(df, classes=2, objects=2, sessions=10, frames=15)
    assert set(df["session"]) >= set(toybox.TEST_SESSIONS)
    assert not df["im_path"].str.contains("_present_|cup_03_").any()
    # a 10 s video was padded palindromically, an 18 s one cut at 15
    k = df["im_path"].str.extract(r"_(\d+)\.png$")[0].astype(int)
    assert (
        k.max() == 15
        and (df.groupby(["class", "object", "session"]).apply(lambda g: g["im_path"].nunique()) == 10).any()
    )
    assert Image.open(img / df["im_path"].iloc[0]).size == (32, 32)


def test_ilab_counts_follow_the_rules(trees):
    df, img = _load(trees, "ilab2mlight")
    check_balanced(df, classes=2, objects=2, sessions=8, frames=15)
    assert set(df["class"]) == {1, 2} and img.name == "train_img"
    assert not df["im_path"].str.contains("semi-|-i0011-").any()  # dropped class, object with 6 backgrounds


def test_core50_counts_follow_the_rules(trees):
    df, img = _load(trees, "core50")
    check_balanced(df, classes=2, objects=2, sessions=4, frames=15)
    assert set(df["im_num"]) == set(range(10, 300, 20)) and img.name == "core50_128x128"
    assert set(df[df["class"] == 2]["im_path"].str[3:5]) == {"o6", "o7"}


def test_icub_counts_follow_the_rules(trees):
    df, img = _load(trees, "icubworld")
    assert df["class"].nunique() == 2 and set(df.groupby("class")["object"].nunique()) == {2}
    assert set(df.groupby(["class", "object"])["session"].nunique()) == {5}
    # every 10th of 12, 19, 26 frames -> 2 or 3 frames per session (not balanced, as in iCub)
    assert set(df.groupby(["class", "object", "session"]).size()) == {2, 3}
    assert df["im_path"].str.contains("/day3/left/").all() and 0 in set(df["session"])
    assert list(icub.CLASSES)[:2] == sorted(set(df["class_name"]))


def test_generate_is_idempotent_and_deterministic(tmp_path, trees):
    kw = dict(n_classes=1, n_objects=1, n_sessions=2, image_size=24)
    a = synthetic.generate("core50", tmp_path / "a", **kw)
    marker = (a / synthetic.MARKER).read_text()
    f = a / "core50_128x128/s2/o1/C_02_01_150.png"
    mtime = f.stat().st_mtime_ns
    assert synthetic.generate("core50", a, **kw) == a and f.stat().st_mtime_ns == mtime
    assert (a / synthetic.MARKER).read_text() == marker and json.loads(marker)["n_sessions"] == 2
    b = synthetic.generate("core50", tmp_path / "b", **kw)
    assert f.read_bytes() == (b / "core50_128x128/s2/o1/C_02_01_150.png").read_bytes()
    c = synthetic.generate("core50", tmp_path / "c", seed=1, **kw)
    assert f.read_bytes() != (c / "core50_128x128/s2/o1/C_02_01_150.png").read_bytes()
    with pytest.raises(DatasetError, match="other parameters"):
        synthetic.generate("core50", a, n_classes=2, n_objects=1, n_sessions=2, image_size=24)


def test_generate_resumes_a_killed_run_and_refuses_foreign_folders(tmp_path):
    kw = dict(n_classes=1, n_objects=1, n_sessions=1, image_size=24)
    root = tmp_path / "r"
    root.mkdir()
    (root / synthetic._PARTIAL).write_text(json.dumps({"name": "core50"}))  # a killed run
    (root / "core50_128x128").mkdir()
    synthetic.generate("core50", root, **kw)
    assert (root / synthetic.MARKER).is_file() and not (root / synthetic._PARTIAL).exists()
    foreign = tmp_path / "f"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        synthetic.generate("core50", foreign, **kw)
    with pytest.raises(StreamclError, match="unknown dataset"):
        synthetic.generate("mnist", tmp_path / "m")


def test_images_are_learnable_and_move_smoothly(trees):
    """Nearest-class-mean on 8x8 thumbnails, trained on train sessions, must classify test sessions."""
    df, img = _load(trees, "core50")

    def thumbs(rows):
        return np.stack(
            [np.asarray(Image.open(img / p).convert("RGB").resize((8, 8)), np.float32).ravel() for p in rows]
        )

    test = df["session"].isin(core50.TEST_SESSIONS)
    tr, te = df[~test], df[test]
    xtr, xte = thumbs(tr["im_path"]), thumbs(te["im_path"])
    classes = sorted(df["class"].unique())
    means = np.stack([xtr[(tr["class"] == c).to_numpy()].mean(0) for c in classes])
    pred = np.array(classes)[np.argmin(((xte[:, None] - means[None]) ** 2).sum(-1), 1)]
    assert (pred == te["class"].to_numpy()).mean() > 0.9
    # consecutive frames of a clip are closer than frames of another object of the same class
    clip = df[(df["class"] == 1) & (df["object"] == 1) & (df["session"] == 1)].sort_values("im_num")
    other = df[(df["class"] == 1) & (df["object"] == 2) & (df["session"] == 1)].sort_values("im_num")
    a, b = thumbs(clip["im_path"]), thumbs(other["im_path"])
    step = np.abs(np.diff(a, axis=0)).mean()
    assert step < np.abs(a - b).mean()


def test_full_size_names_only_for_known_models():
    with pytest.raises(StreamclError):
        synthetic.full_size_names("icubworld")
    assert ilab.image_name("boat", 1, 2, 3, 4) == "boat-i0001-b0002-c03-r04-l0-f2.jpg"


def test_generate_rejects_bad_options(tmp_path):
    with pytest.raises(StreamclError, match="unknown option.*colour; valid: household_spelling, fps, extras"):
        synthetic.generate("toybox", tmp_path / "t", colour="red")
    with pytest.raises(StreamclError, match="n_sessions must be 1..5"):
        synthetic.generate("icubworld", tmp_path / "i", n_sessions=6)
    with pytest.raises(StreamclError, match="n_classes must be 1..10"):
        synthetic.generate("core50", tmp_path / "c", n_classes=11)
    with pytest.raises(StreamclError, match="first_class must be 0..6 .first_class \\+ n_classes <= 12"):
        synthetic.generate("toybox", tmp_path / "t", n_classes=6, first_class=7)
    assert not (tmp_path / "t").exists()


def test_first_class_gives_a_disjoint_class_set(tmp_path):
    # a pretraining set with first_class=2 shares no class (folder, label or look) with the first two
    kw = dict(n_classes=2, n_objects=1, n_sessions=1, image_size=16, extras=False)
    a = synthetic.generate("core50", tmp_path / "a", **kw)
    b = synthetic.generate("core50", tmp_path / "b", first_class=2, **kw)
    objs = lambda root: {p.name for p in (root / "core50_128x128" / "s1").iterdir()}  # noqa: E731
    assert objs(a) == {"o1", "o6"} and objs(b) == {"o11", "o16"}  # 5 objects per CORe50 class
    assert json.loads((b / synthetic.MARKER).read_text())["first_class"] == 2
    assert "first_class" not in json.loads((a / synthetic.MARKER).read_text())  # older trees stay valid
    t = synthetic.generate("toybox", tmp_path / "t", n_classes=1, n_objects=1, n_sessions=1, n_frames=1,
                           image_size=16, first_class=11, extras=False)
    names = {p.name.split("_")[0] for p in t.rglob("*.mp4")}
    assert len(names) == 1 and names.isdisjoint(
        {p.name.split("_")[0] for p in synthetic.generate(
            "toybox", tmp_path / "t0", n_classes=1, n_objects=1, n_sessions=1, n_frames=1, image_size=16,
            extras=False).rglob("*.mp4")})
