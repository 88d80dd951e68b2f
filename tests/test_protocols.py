"""Stream protocols and dirmap loading (pure pandas: no images, no Avalanche)."""

import random

import numpy as np
import pandas as pd
import pytest

from streamcl.benchmarks.dirmap import load_dirmap
from streamcl.benchmarks.protocols import PROTOCOLS, make_stream, subsample_test
from streamcl.errors import DatasetError

CLIP = ["class", "object", "session"]


def make_dirmap(n_classes=5, n_objects=3, n_sessions=4, n_frames=4, first_class=1):
    """Rows in (class, object, session, frame) order, like an indexer writes them."""
    rows = [
        {"class": c, "object": o, "session": s, "im_num": f, "im_path": f"c{c}/o{o}/s{s}/{f}.png"}
        for c in range(first_class, first_class + n_classes)
        for o in range(1, n_objects + 1)
        for s in range(1, n_sessions + 1)
        for f in range(1, n_frames + 1)
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def dirmap():
    return make_dirmap()


def clips_contiguous_in_frame_order(df: pd.DataFrame) -> bool:
    """Each (class, object, session) clip is one block whose frames increase."""
    keys = list(zip(*(df[c] for c in CLIP)))
    blocks = [k for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
    if len(blocks) != len(set(blocks)):
        return False
    return all((g["im_num"].diff().dropna() > 0).all() for _, g in df.groupby(CLIP, sort=False))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_test_sessions_held_out_and_everything_used(dirmap, protocol):
    split = make_stream(dirmap, test_sessions=[2, 4], protocol=protocol, run=3)
    train = pd.concat(split.train)
    test = pd.concat(split.test)
    assert set(train["session"]) == {1, 3}
    assert set(test["session"]) == {2, 4}
    assert sorted(train.index.tolist() + test.index.tolist()) == list(range(len(dirmap)))
    assert set(train["label"]) == set(range(5)) == set(test["label"])
    assert split.n_classes == 5
    for df in split.train + split.test:
        assert (df["label"] == df["class"].map(split.label_map)).all()
        assert [split.class_order[i] for i in df["label"]] == df["class"].tolist()


def test_class_instance_clips_contiguous_in_frame_order(dirmap):
    split = make_stream(dirmap, test_sessions=[4], protocol="class_instance", run=0)
    for df in split.train:
        assert clips_contiguous_in_frame_order(df)
    # the clip order itself is shuffled (not the indexer's sorted order)
    first = split.train[0]
    assert not first.sort_values(CLIP + ["im_num"]).index.equals(first.index)


def test_class_iid_shuffled_within_experiences(dirmap):
    split = make_stream(dirmap, test_sessions=[4], protocol="class_iid", run=0)
    for df in split.train:
        assert not clips_contiguous_in_frame_order(df)
    assert [df["label"].nunique() for df in split.train] == [2, 2, 1]


@pytest.mark.parametrize("protocol", ["class_instance", "class_iid"])
def test_class_labels_per_experience(dirmap, protocol):
    split = make_stream(dirmap, test_sessions=[4], protocol=protocol, run=1)
    assert split.n_experiences == 3  # 5 classes, 2 per experience: the last one keeps the odd class
    for t, (tr, te) in enumerate(zip(split.train, split.test)):
        expected = {2 * t, 2 * t + 1} & set(range(5))
        assert set(tr["label"]) == expected == set(te["label"])
    assert set(split.train[-1]["class"]) == {split.class_order[4]}


def test_uneven_classes_per_experience_keeps_all_classes(dirmap):
    split = make_stream(dirmap, test_sessions=[4], protocol="class_iid", classes_per_exp=3)
    assert [sorted(df["label"].unique()) for df in split.train] == [[0, 1, 2], [3, 4]]


def test_class_order_depends_on_run_only_and_leaves_global_rngs_alone(dirmap):
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    orders = {r: make_stream(dirmap, test_sessions=[4], run=r).class_order for r in range(6)}
    assert len({tuple(o) for o in orders.values()}) > 1
    again = make_stream(dirmap, test_sessions=[4], run=2)
    assert again.class_order == orders[2]
    assert [df.index.tolist() for df in again.train] == [
        df.index.tolist() for df in make_stream(dirmap, test_sessions=[4], run=2).train
    ]
    assert (np.random.get_state()[1] == np_state).all() and random.getstate() == py_state


def test_iid_and_instance_streams(dirmap):
    iid = make_stream(dirmap, test_sessions=[4], protocol="iid", n_experiences=4, run=0)
    assert iid.n_experiences == 4 and len(iid.test) == 1
    assert abs(len(iid.train[0]) - len(iid.train[-1])) <= 1
    assert iid.train[0]["label"].nunique() == 5  # sessions of every class mixed
    first_seen = pd.unique(pd.concat(iid.train)["label"]).tolist()
    assert first_seen == list(range(5))  # labels by order of first appearance

    inst = make_stream(dirmap, test_sessions=[4], protocol="instance", n_experiences=3, run=0)
    assert inst.n_experiences == 3
    whole = pd.concat(inst.train)
    assert clips_contiguous_in_frame_order(whole)  # clips never split across experiences either
    assert pd.unique(whole["label"]).tolist() == list(range(5))
    # default count: as many experiences as the class protocols
    assert make_stream(dirmap, test_sessions=[4], protocol="iid").n_experiences == 3


def test_offline_is_one_experience(dirmap):
    split = make_stream(dirmap, test_sessions=[4], protocol="offline")
    assert split.n_experiences == 1 and len(split.train[0]) == (dirmap["session"] != 4).sum()


def test_test_subsample_deterministic(dirmap):
    full = make_stream(dirmap, test_sessions=[3, 4], protocol="class_iid").test
    a = make_stream(dirmap, test_sessions=[3, 4], protocol="class_iid", test_subsample=5, run=0).test
    b = make_stream(dirmap, test_sessions=[3, 4], protocol="class_instance", test_subsample=5, run=4).test
    sub_a, sub_b = pd.concat(a), pd.concat(b)
    assert sorted(sub_a.index) == sorted(sub_b.index)  # same subset whatever the run/protocol
    assert (sub_a.groupby("class").size() == 5).all()
    assert sub_a.groupby("class")["object"].nunique().min() >= 2  # spread over the class's objects
    frac = pd.concat(make_stream(dirmap, test_sessions=[3, 4], test_subsample=0.5).test)
    assert (frac.groupby(CLIP).size() == 2).all() and len(frac) == len(pd.concat(full)) // 2
    assert len(subsample_test(pd.concat(full), 1000)) == len(pd.concat(full))
    for bad in (0, -1, 0.0, 1.5, True, "5"):
        with pytest.raises(ValueError):
            subsample_test(pd.concat(full), bad)


def test_string_class_names_and_bad_arguments(dirmap):
    named = dirmap.assign(**{"class": dirmap["class"].map(lambda c: f"cls{c}")})
    split = make_stream(named, test_sessions=[4], run=0)
    assert sorted(split.class_order) == [f"cls{c}" for c in range(1, 6)]
    with pytest.raises(ValueError, match="n_experiences"):
        make_stream(dirmap, test_sessions=[4], protocol="class_iid", n_experiences=3)
    with pytest.raises(ValueError, match="protocol"):
        make_stream(dirmap, test_sessions=[4], protocol="nope")
    with pytest.raises(DatasetError, match="test sessions"):
        make_stream(dirmap, test_sessions=[9])
    with pytest.raises(DatasetError, match="no training data"):
        make_stream(dirmap, test_sessions=[1, 2, 3, 4])


def test_load_original_crumb_csv(tmp_path, dirmap):
    csv = tmp_path / "toybox_dirmap.csv"
    dirmap.assign(supercategory="toys", transform="rx").to_csv(csv)  # writes the unnamed index column
    assert open(csv).readline().startswith(",class,object,session,im_num,im_path")
    df = load_dirmap(csv)
    assert list(df.columns[:5]) == ["class", "object", "session", "im_num", "im_path"]
    assert "supercategory" in df.columns and not any(c.startswith("Unnamed") for c in df.columns)
    assert df["class"].dtype == np.int64 and len(df) == len(dirmap)
    # the same table read back by pandas as a DataFrame with 'Unnamed: 0'
    assert load_dirmap(pd.read_csv(csv)).equals(df)
    # float columns holding integers (NaN-free pandas round trips) are accepted
    assert load_dirmap(dirmap.astype({"object": float}))["object"].dtype == np.int64


def test_malformed_dirmap_errors(tmp_path, dirmap):
    csv = tmp_path / "bad.csv"
    dirmap.drop(columns=["session", "im_num"]).to_csv(csv)
    with pytest.raises(DatasetError, match=r"bad\.csv.*session, im_num"):
        load_dirmap(csv)
    csv2 = tmp_path / "bad_dtype.csv"
    dirmap.assign(object="obj").to_csv(csv2, index=False)
    with pytest.raises(DatasetError, match=r"bad_dtype\.csv.*object must hold integers"):
        load_dirmap(csv2)
    with pytest.raises(DatasetError, match="im_num"):
        load_dirmap(dirmap.assign(im_num=1.5))
    with pytest.raises(DatasetError, match="not found"):
        load_dirmap(tmp_path / "missing.csv")
    with pytest.raises(DatasetError, match="empty"):
        load_dirmap(dirmap.assign(im_path=None))
