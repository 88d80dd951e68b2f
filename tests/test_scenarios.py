"""Avalanche scenarios from dirmaps: datasets, attributes, sample ids, online streams, errors, training."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from streamcl.benchmarks.scenarios import from_dirmap, subset_by_sample_id
from streamcl.errors import DatasetError

SIZE = 16


def make_tree(root, n_classes=5, n_objects=2, n_sessions=3, n_frames=3):
    """Tiny PNG tree + dirmap (class-coloured 8x8 images)."""
    rows = []
    for c in range(1, n_classes + 1):
        for o in range(1, n_objects + 1):
            for s in range(1, n_sessions + 1):
                for f in range(1, n_frames + 1):
                    p = f"c{c}/o{o}/s{s}_{f}.png"
                    (root / p).parent.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (8, 8), (40 * c, 60 * o, 20 * f)).save(root / p)
                    rows.append({"class": c, "object": o, "session": s, "im_num": f, "im_path": p})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    return make_tree(root), root


@pytest.fixture(scope="module")
def scenario(tree):
    dirmap, root = tree
    return from_dirmap(dirmap, root, test_sessions=[3], protocol="class_instance", run=0, image_size=SIZE)


def test_experiences_and_datasets(scenario, tree):
    dirmap, _ = tree
    info = scenario.streamcl_info
    assert scenario.n_classes == info.n_classes == 5 and info.input_shape == (3, SIZE, SIZE)
    assert len(scenario.train_stream) == len(scenario.test_stream) == 3
    assert not info.train_shuffle
    seen = set()
    for t, (tr, te) in enumerate(zip(scenario.train_stream, scenario.test_stream)):
        labels = {2 * t, 2 * t + 1} & set(range(5))
        seen |= labels
        assert tr.classes_in_this_experience == labels == te.classes_in_this_experience
        assert tr.classes_seen_so_far == seen
        assert tr.task_label == 0 and te.task_label == 0
        assert set(tr.dataset.targets) == labels and set(tr.dataset.targets_task_labels) == {0}
        ids = np.asarray(list(tr.dataset.sample_id))
        assert ids.dtype.kind == "i"
        rows = dirmap.iloc[ids]
        assert (rows["session"] != 3).all() and (
            dirmap.iloc[list(te.dataset.sample_id)]["session"] == 3
        ).all()
        assert [info.label_map[c] for c in rows["class"]] == list(tr.dataset.targets)
    x, y, t = scenario.train_stream[1].dataset[0]
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32 and y in (2, 3) and t == 0
    xb, yb, tb = next(iter(torch.utils.data.DataLoader(scenario.test_stream[0].dataset, batch_size=4)))
    assert xb.shape == (4, 3, SIZE, SIZE) and yb.shape == tb.shape == (4,)


def test_clip_order_preserved_in_dataset(scenario, tree):
    dirmap, _ = tree
    ids = list(scenario.train_stream[0].dataset.sample_id)
    assert ids == scenario.streamcl_info.split.train[0].index.tolist()
    rows = dirmap.iloc[ids]
    starts = rows["im_num"].to_numpy() == 1
    assert starts[::3].all() and not starts[1::3].any()  # 3-frame clips, frames in order


def test_subset_by_sample_id_round_trip(scenario):
    exp_ds = scenario.train_stream[1].dataset
    ids = [int(i) for i in exp_ds.sample_id][::-2]
    sub = subset_by_sample_id(scenario, ids)
    assert list(sub.sample_id) == ids
    pos = {int(s): i for i, s in enumerate(exp_ds.sample_id)}
    assert list(sub.targets) == [exp_ds.targets[pos[i]] for i in ids]
    assert set(sub.targets_task_labels) == {0}
    for k in (0, len(ids) - 1):
        xs, ys, ts = sub[k]
        xe, ye, te = exp_ds[pos[ids[k]]]
        assert torch.equal(xs, xe) and ys == ye and ts == te
    test_id = int(scenario.test_stream[0].dataset.sample_id[0])
    with pytest.raises(ValueError, match="not training samples"):
        subset_by_sample_id(scenario, [ids[0], test_id])


def test_online_stream_keeps_order(tree):
    dirmap, root = tree
    sc = from_dirmap(dirmap, root, test_sessions=[3], image_size=SIZE, online_mb_size=4)
    full = sc.streamcl_info.split.train_ids()
    subs = list(sc.train_stream)
    assert all(len(e.dataset) <= 4 for e in subs) and len(subs) == sum(-(-len(ids) // 4) for ids in full)
    assert [int(i) for e in subs for i in e.dataset.sample_id] == np.concatenate(full).tolist()
    train_view = subs[0].train()
    assert train_view.task_label == 0 and train_view.is_first_subexp and not train_view.is_last_subexp
    # one last mini-experience per experience (avalanche 0.6 misses it when sizes divide evenly)
    assert [i for i, e in enumerate(subs) if e.is_last_subexp] == list(
        np.cumsum([-(-len(i) // 4) for i in full]) - 1
    )
    assert len(sc.test_stream) == 3


def test_custom_transforms_and_offline(tree):
    dirmap, root = tree
    t = lambda img: torch.zeros(1, 5, 7)  # noqa: E731
    sc = from_dirmap(dirmap, root, test_sessions=[3], protocol="offline", train_transform=t, eval_transform=t)
    assert sc.streamcl_info.input_shape == (1, 5, 7) and sc.streamcl_info.train_shuffle
    assert len(sc.train_stream) == len(sc.test_stream) == 1
    assert sc.train_stream[0].dataset[0][0].shape == (1, 5, 7)


def test_dirmap_csv_relative_to_root(tree):
    dirmap, root = tree
    dirmap.assign(extra=1).to_csv(root / "my_dirmap.csv")
    sc = from_dirmap("my_dirmap.csv", root, test_sessions=[3], protocol="class_iid", image_size=SIZE)
    assert sc.streamcl_info.name == "my_dirmap" and sc.n_classes == 5


def test_missing_root_and_images(tmp_path, tree):
    dirmap, root = tree
    with pytest.raises(DatasetError, match="streamcl prepare"):
        from_dirmap(dirmap, tmp_path / "nowhere", test_sessions=[3])
    with pytest.raises(DatasetError, match="not found under"):
        from_dirmap(dirmap, tmp_path, test_sessions=[3])
    bad_root = tmp_path / "bad"
    small = make_tree(bad_root, n_classes=2, n_objects=1, n_sessions=2, n_frames=3)
    sc = from_dirmap(small, bad_root, test_sessions=[2], protocol="class_iid", image_size=SIZE)
    ds = sc.train_stream[0].dataset
    rows = small.iloc[list(ds.sample_id)]
    (bad_root / rows["im_path"].iloc[1]).unlink()
    (bad_root / rows["im_path"].iloc[2]).write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=rf"{rows['im_path'].iloc[1]}.*missing"):
        ds[1]
    with pytest.raises(DatasetError, match=rf"{rows['im_path'].iloc[2]}.*cannot read"):
        ds[2]


def test_naive_and_ewc_train_one_epoch(scenario):
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin, EWCPlugin

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, scenario.n_classes))
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        train_mb_size=4,
        eval_mb_size=16,
        train_epochs=1,
        plugins=[EWCPlugin(ewc_lambda=1.0)],
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loss_metrics(epoch=True), loggers=[]),
        device="cpu",
    )
    for t, exp in enumerate(scenario.train_stream[:2]):
        strategy.train(exp, shuffle=scenario.streamcl_info.train_shuffle)
        results = strategy.eval(scenario.test_stream[: t + 1])
    assert 0.0 <= results["Top1_Acc_Stream/eval_phase/test_stream/Task000"] <= 1.0


def test_registered_in_runner_registry():
    from streamcl.registry import BENCHMARKS

    for name in ("toybox", "ilab2mlight", "core50", "icubworld", "from_dirmap", "synthetic"):
        assert name in BENCHMARKS
        assert BENCHMARKS.get(name).wants("run")


def test_synthetic_and_prepared_factories(tmp_path):
    from streamcl.benchmarks.scenarios import core50, synthetic

    kw = dict(layout="core50", n_classes=3, n_objects=1, image_size=SIZE)
    sc = synthetic(tmp_path, run=1, **kw)
    assert sc.n_classes == 3 and len(sc.train_stream) == 2 and sc.streamcl_info.name == "core50"
    assert set(sc.streamcl_info.dirmap.iloc[list(sc.test_stream[0].dataset.sample_id)]["session"]) == {
        3,
        7,
        10,
    }
    assert sc.train_stream[0].dataset[0][0].shape == (3, SIZE, SIZE)
    prepared = [p for p in tmp_path.iterdir() if p.is_dir()]
    again = synthetic(tmp_path, run=1, **kw)  # reuses the generated tree
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == prepared
    assert again.streamcl_info.split.train_ids()[0].tolist() == sc.streamcl_info.split.train_ids()[0].tolist()
    # the public factory over the prepared folder builds the same stream
    direct = core50(prepared[0] / "prepared", run=1, image_size=SIZE, protocol="class_instance")
    assert [list(e.dataset.sample_id) for e in direct.train_stream] == [
        list(e.dataset.sample_id) for e in sc.train_stream
    ]
    with pytest.raises(DatasetError, match="streamcl prepare core50"):
        core50(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="streamcl prepare"):
        core50(tmp_path)  # a folder without an index
