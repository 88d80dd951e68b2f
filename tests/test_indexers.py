"""Indexers over file names only: the balancing rules, published totals, fixed ids, errors."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
from _raw_fixtures import check_balanced, core50, icub, ilab, per, synthetic, toybox

from streamcl.errors import DatasetError


@pytest.fixture(scope="module")
def full_names():
    return {n: synthetic.full_size_names(n, seed=0) for n in ("toybox", "ilab2mlight", "core50")}


@pytest.fixture(scope="module")
def ilab_small_names():
    """A third of a full iLab download: enough structure for order/seed checks, 3x faster."""
    return synthetic.full_size_names("ilab2mlight", seed=1, scale=0.35)


def _split_counts(df, test_sessions):
    test = df["session"].isin(test_sessions)
    return set(df[~test].groupby("class").size()), set(df[test].groupby("class").size())


# --------------------------------------------------------------------- published totals


def test_toybox_full_size_totals(full_names):
    df = toybox.index_names(full_names["toybox"])
    check_balanced(df, classes=12, objects=29, sessions=10, frames=15)
    assert len(df) == 52_200 and per(df, "class") == {4350}
    assert _split_counts(df, toybox.TEST_SESSIONS) == ({3045}, {1305})
    assert set(df["session"]) == set(range(1, 11))
    assert set(df["im_num"]) == set(range(1, 16))


def test_ilab_full_size_totals(full_names):
    df = ilab.index_names(full_names["ilab2mlight"])
    check_balanced(df, classes=14, objects=28, sessions=8, frames=15)
    assert len(df) == 47_040
    assert _split_counts(df, ilab.TEST_SESSIONS) == ({2520}, {840})
    assert "semi" not in set(df["class_name"]) and 11 not in set(df["class"])
    assert not df["im_path"].str.startswith("semi-").any()


def test_core50_full_size_totals(full_names):
    df = core50.index_names(full_names["core50"])
    check_balanced(df, classes=10, objects=5, sessions=11, frames=15)
    assert _split_counts(df, core50.TEST_SESSIONS) == ({600}, {225})
    assert set(df["im_num"]) == set(range(10, 300, 20))


@pytest.mark.parametrize("name", ["toybox", "ilab2mlight", "core50"])
def test_listing_order_does_not_matter(full_names, ilab_small_names, name):
    m = {"toybox": toybox, "ilab2mlight": ilab, "core50": core50}[name]
    names = list(ilab_small_names if name == "ilab2mlight" else full_names[name])
    if name == "core50":  # a subset is enough here (totals are checked above)
        names = [n for n in names if n.startswith(("s1/", "s3/", "s7/"))]
    a = m.index_names(names, seed=3)
    random.Random(1).shuffle(names)
    b = m.index_names(names, seed=3)
    pd.testing.assert_frame_equal(a, b)


def test_class_tables_are_fixed():
    assert toybox.CLASSES == {
        "cup": 1, "mug": 2, "spoon": 3, "ball": 4, "duck": 5, "cat": 6, "horse": 7,
        "giraffe": 8, "car": 9, "truck": 10, "airplane": 11, "helicopter": 12,
    }  # fmt: skip
    assert list(toybox.SESSIONS.values()) == list(range(1, 11)) and toybox.SESSIONS["hodgepodge"] == 10
    assert ilab.ALL_CLASSES["semi"] == 11 and "semi" not in ilab.CLASSES and len(ilab.CLASSES) == 14
    assert ilab.CLASSES["van"] == 15 and ilab.CLASSES["boat"] == 1
    assert list(icub.CLASSES) == sorted(icub.CLASSES) and list(icub.CLASSES.values()) == list(range(1, 21))
    assert icub.SESSIONS == {"MIX": 0, "ROT2D": 1, "ROT3D": 2, "SCALE": 3, "TRANSL": 4}
    assert (toybox.TEST_SESSIONS, ilab.TEST_SESSIONS, core50.TEST_SESSIONS, icub.TEST_SESSIONS) == (
        (3, 6, 9), (4, 8), (3, 7, 10), (0,))  # fmt: skip
    for m in (toybox, ilab, core50, icub):
        assert m.CLASSES_PER_EXPERIENCE == 2


# --------------------------------------------------------------------- Toybox rules


def _tb(cat, nn, tr, n, sup=None):
    sup = sup or toybox.SUPERCATEGORY_OF[cat]
    return [
        f"{sup}/{toybox.object_dir(cat, nn)}/{toybox.frame_name(cat, nn, tr, k)}" for k in range(1, n + 1)
    ]


def _tb_object(cat, nn, lengths, sup=None):
    out = []
    for tr, n in zip(toybox.SESSIONS, lengths):
        out += _tb(cat, nn, tr, n, sup)
    return out


def test_toybox_palindromic_padding_and_cut():
    names = _tb_object("cup", 1, [9, 20, 5, 15, 1, 8, 14, 16, 30, 2])
    df = toybox.index_names(names)
    k = df.assign(k=df["im_path"].str.extract(r"_(\d+)\.png$")[0].astype(int))
    seq = {s: g.sort_values("im_num")["k"].tolist() for s, g in k.groupby("session")}
    assert seq[1] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 8, 7, 6, 5, 4, 3]
    assert seq[2] == list(range(1, 16))
    assert seq[3] == [1, 2, 3, 4, 5, 4, 3, 2, 1, 2, 3, 4, 5, 4, 3]
    assert seq[5] == [1] * 15
    assert seq[6] == [1, 2, 3, 4, 5, 6, 7, 8, 7, 6, 5, 4, 3, 2, 1]
    assert seq[10] == [1, 2] * 7 + [1]
    assert per(df, "session") == {15} and list(df["im_num"][:15]) == list(range(1, 16))


def test_toybox_object_dropping_and_renumbering():
    full = [15] * 10
    names = []
    for nn in range(1, 31):  # mug: 30 complete objects -> the 30th is dropped
        names += _tb_object("mug", nn, full)
    for nn in range(1, 31):  # duck: object 4 lacks a session -> dropped, 29 left, all kept
        names += _tb_object("duck", nn, full[:-1] if nn == 4 else full)
    names += _tb("mug", 5, "present", 12) + _tb("duck", 9, "absent", 3)  # not sessions
    df = toybox.index_names(names)
    check_balanced(df, classes=2, objects=29, sessions=10, frames=15)
    mug = df[df["class"] == 2]
    assert not mug["im_path"].str.contains("mug_30_").any()
    duck = df[df["class"] == 5]
    assert (
        not duck["im_path"].str.contains("duck_04_").any() and duck["im_path"].str.contains("duck_30_").any()
    )
    # duck objects 5..30 are renumbered 4..29
    first = duck[duck["object"] == 4]["im_path"].iloc[0]
    assert "duck_05_pivothead" in first
    assert not df["im_path"].str.contains("present|absent").any()


def test_toybox_scaled_rules_and_household_spelling():
    names = []
    for nn in (1, 2, 3):
        names += _tb_object("spoon", nn, [6] * 10, sup="household")
    df = toybox.index_names(names, frames_per_session=4, objects_per_class=2)
    check_balanced(df, classes=1, objects=2, sessions=10, frames=4)
    assert df["im_path"].str.startswith("household/").all() and set(df["class"]) == {3}


@pytest.mark.parametrize(
    "bad, msg",
    [
        ("animals/cat_01_pivothead/cat_01_pivothead_spin_1.png", "unknown transformation"),
        ("animals/cat_01_pivothead/cat_01_pivothead_rxplus.png", "does not match"),
        ("animals/dog_01_pivothead/dog_01_pivothead_rxplus_1.png", "unknown Toybox category"),
        ("animals/cat_02_pivothead/cat_01_pivothead_rxplus_16.png", "not in its object folder"),
    ],
)
def test_toybox_bad_names_are_reported(bad, msg):
    names = _tb_object("cat", 1, [15] * 10) + [bad]
    with pytest.raises(DatasetError) as e:
        toybox.index_names(names)
    assert bad in str(e.value) and msg in str(e.value)


def test_toybox_gap_in_frames_is_reported():
    names = [n for n in _tb_object("cat", 1, [15] * 10) if not n.endswith("_rzplus_7.png")]
    with pytest.raises(DatasetError, match="missing frames"):
        toybox.index_names(names)


def test_toybox_ignores_non_png_and_hidden():
    names = _tb_object("cat", 1, [15] * 10) + [
        "animals/cat_01_pivothead/notes.txt",
        "animals/cat_01_pivothead/.x.png",
    ]
    assert len(toybox.index_names(names, objects_per_class=29)) == 150


# --------------------------------------------------------------------- iLab rules


def test_ilab_ranking_after_each_step():
    n = ilab.image_name
    names = []
    # instance 7: backgrounds 3 (short: 2 images), 5, 9, 12 -> sessions 1..3 are b5, b9, b12
    for b, k in ((3, 2), (5, 4), (9, 4), (12, 4)):
        names += [n("boat", 7, b, c, r) for c in range(1) for r in range(1, k + 1)]
    # instance 2: only one long background -> dropped; instance 11: two -> kept as object 2
    names += [n("boat", 2, 1, 0, r) for r in range(1, 5)] + [n("boat", 2, 4, 0, r) for r in range(1, 3)]
    names += [n("boat", 11, b, 0, r) for b in (2, 8, 40) for r in range(1, 6)]
    names += [n("semi", 1, b, 0, r) for b in (1, 2, 3) for r in range(1, 9)]
    df = ilab.index_names(names, frames_per_session=3, sessions_per_object=2, objects_per_class=5)
    check_balanced(df, classes=1, objects=2, sessions=2, frames=3)
    o1 = df[df["object"] == 1]
    assert o1["im_path"].str.contains("-i0007-").all()
    assert set(o1[o1["session"] == 1]["im_path"].str[11:16]) == {"b0005"}
    assert set(o1[o1["session"] == 2]["im_path"].str[11:16]) == {"b0009"}
    assert df[df["object"] == 2]["im_path"].str.contains("-i0011-").all()
    # each run is contiguous within its session (consecutive rotations here)
    for _, g in df.groupby(["object", "session"]):
        r = g.sort_values("im_num")["im_path"].str.extract(r"-r(\d+)-")[0].astype(int).tolist()
        assert r == list(range(r[0], r[0] + 3))


def test_ilab_seed_changes_runs_only(ilab_small_names):
    names = ilab_small_names
    a, b = ilab.index_names(names, seed=0), ilab.index_names(names, seed=1)
    assert len(a) == len(b) > 10_000
    assert (
        a[["class", "object", "session", "im_num"]].values
        == b[["class", "object", "session", "im_num"]].values
    ).all()
    assert (a["im_path"] != b["im_path"]).any()
    pd.testing.assert_frame_equal(a, ilab.index_names(names, seed=0))


def test_ilab_bad_names_are_reported():
    good = [ilab.image_name("bus", 1, 1, 0, r) for r in range(1, 9)]
    with pytest.raises(DatasetError) as e:
        ilab.index_names(good + ["bus-x.jpg", "rocket-i0001-b0001-c00-r01-l0-f2.jpg"])
    assert "bus-x.jpg" in str(e.value) and "rocket" in str(e.value) and "2 problem" in str(e.value)
    # non-jpg files are not images
    assert len(ilab.index_names(good + ["README.txt"], frames_per_session=8, sessions_per_object=1)) == 8


def test_ilab_many_bad_names_are_counted():
    bad = [f"x{i}.jpg" for i in range(25)]
    with pytest.raises(DatasetError, match=r"25 problem\(s\)[\s\S]*and 15 more"):
        ilab.index_names(bad)


# --------------------------------------------------------------------- CORe50 / iCub rules


def test_core50_sampling_and_errors():
    names = [core50.frame_path(2, 7, f) for f in range(3, 300)]
    df = core50.index_names(names)
    assert (
        len(df) == 15 and set(df["class"]) == {2} and set(df["object"]) == {2} and set(df["session"]) == {2}
    )
    assert df["im_path"].iloc[0] == "s2/o7/C_02_07_010.png"
    with pytest.raises(DatasetError, match=r"s2/o7/C_02_07_050.png[\s\S]*lacks 1"):
        core50.index_names([n for n in names if not n.endswith("_050.png")])
    with pytest.raises(DatasetError, match="not in s2/o8/"):
        core50.index_names(names + ["s2/o7/C_02_08_010.png"])
    with pytest.raises(DatasetError, match="does not match"):
        core50.index_names(names + ["s2/o7/C_2_7_10.png"])
    small = [core50.frame_path(1, 46, f) for f in range(0, 12)]
    df = core50.index_names(small, first_frame=1, frame_step=2, frames_per_session=5)
    assert list(df["im_num"]) == [1, 3, 5, 7, 9] and set(df["class"]) == {10}


def test_icub_first_day_left_camera_every_10th():
    names = []
    for day, cam, n in (("day2", "left", 35), ("day2", "right", 35), ("day4", "left", 50)):
        names += [f"part1/book/book3/ROT2D/{day}/{cam}/{i:08d}.jpg" for i in range(n)]
    names += [f"part4/sprayer/sprayer10/MIX/day1/left/{i:08d}.jpg" for i in range(10)]
    random.Random(0).shuffle(names)
    df = icub.index_names(names)
    book = df[df["class"] == icub.CLASSES["book"]]
    assert list(book["im_path"]) == [f"part1/book/book3/ROT2D/day2/left/{i:08d}.jpg" for i in (0, 10, 20, 30)]
    assert list(book["im_num"]) == [1, 2, 3, 4] and set(book["object"]) == {3} and set(book["session"]) == {1}
    spr = df[df["class"] == icub.CLASSES["sprayer"]]
    assert len(spr) == 1 and set(spr["object"]) == {10} and set(spr["session"]) == {0}
    assert icub.CLASSES["book"] == 2 and icub.CLASSES["bodylotion"] == 1


@pytest.mark.parametrize(
    "bad, msg",
    [
        ("part1/stapler/stapler1/MIX/day1/left/0.jpg", "unknown iCubWorld category"),
        ("part1/book/bookA/MIX/day1/left/0.jpg", "is not 'book<number>'"),
        ("part1/book/book1/SPIN/day1/left/0.jpg", "unknown session"),
        ("part1/book/book1/MIX/left/0.jpg", "not at <part>"),
    ],
)
def test_icub_bad_paths_are_reported(bad, msg):
    with pytest.raises(DatasetError) as e:
        icub.index_names(["part1/book/book1/MIX/day1/left/0.jpg", bad])
    assert bad in str(e.value) and msg in str(e.value)


def test_icub_first_day_without_left_camera_is_reported():
    names = ["part1/book/book1/MIX/day1/right/0.jpg", "part1/book/book1/MIX/day2/left/0.jpg"]
    with pytest.raises(DatasetError, match=r"part1/book/book1/MIX/day1: first day has no 'left'"):
        icub.index_names(names)


def test_bounce_helper():
    from streamcl.benchmarks.raw._indexing import bounce

    assert bounce(3, 8).tolist() == [0, 1, 2, 1, 0, 1, 2, 1]
    assert bounce(1, 3).tolist() == [0, 0, 0]
    assert bounce(20, 15).tolist() == list(range(15))
    assert np.array_equal(bounce(2, 4), [0, 1, 0, 1])
