"""cifar100 / imagenet_subset / tiny_imagenet on tiny trees written in the real layouts; errors; new YAMLs."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from continuum.datasets import InMemoryDataset
from continuum.scenarios import ClassIncremental

from streamcl.benchmarks.classic import (
    CIFAR100_ORDERS,
    IMAGENET100_ORDERS,
    IMAGENET100_WNIDS,
    cifar100,
    imagenet_subset,
    synthetic_classic,
    tiny_imagenet,
)
from streamcl.benchmarks.classic_synthetic import write_cifar100, write_image_folder, write_tiny_imagenet
from streamcl.benchmarks.scenarios import subset_by_sample_id
from streamcl.cli import main
from streamcl.config import load_experiment
from streamcl.errors import ConfigError, DatasetError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return write_cifar100(tmp_path_factory.mktemp("cifar"), classes=range(100), train_per_class=2, test_per_class=1)


def _raw_cifar(root: Path, split: str):
    with open(root / "cifar-100-python" / split, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    return d["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(d["fine_labels"])


def _digest(img: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest()


def test_cifar100_reads_the_pickles_and_splits_like_continuum(cifar_root):
    bm = cifar100(cifar_root, increment=10, run=0)
    info = bm.streamcl_info
    assert len(bm.train_stream) == len(bm.test_stream) == 10 and info.n_classes == 100
    assert info.class_order == CIFAR100_ORDERS[0] and info.class_names[0] == "class_87"
    x, y = _raw_cifar(cifar_root, "train")
    ref = ClassIncremental(InMemoryDataset(x, y), increment=10, class_order=CIFAR100_ORDERS[0])
    for t, (exp, task) in enumerate(zip(bm.train_stream, ref)):
        assert sorted(exp.classes_in_this_experience) == list(range(10 * t, 10 * t + 10))
        ids = list(exp.dataset.sample_id)
        ours = sorted((int(lab), _digest(x[i])) for i, lab in zip(ids, exp.dataset.targets))
        theirs = sorted((int(lab), _digest(img)) for img, lab in zip(task._x, task._y))
        assert ours == theirs  # same images, same remapped labels as continuum's ClassIncremental
    img, label, task_label = bm.train_stream[3].dataset[0]
    assert tuple(img.shape) == (3, 32, 32) and task_label == 0
    assert label == bm.train_stream[3].dataset.targets[0] and 30 <= label < 40
    test_x, test_y = _raw_cifar(cifar_root, "test")
    first = bm.test_stream[0]
    assert sorted(test_y[i - len(y)] for i in first.dataset.sample_id) == sorted(CIFAR100_ORDERS[0][:10])
    assert len(info.raw) == len(y) + len(test_y) and info.train_sample_ids.tolist() == list(range(len(y)))


def test_cifar100_orders_per_run_b50_and_overrides(cifar_root):
    bm1 = cifar100(cifar_root, run=1, increment=10)
    _, y = _raw_cifar(cifar_root, "train")
    exp0 = bm1.train_stream[0]
    assert sorted(y[i] for i in exp0.dataset.sample_id) == sorted(CIFAR100_ORDERS[1][:10] * 2)
    seeded = cifar100(cifar_root, run=5, increment=50).streamcl_info.class_order
    assert seeded == cifar100(cifar_root, run=5, increment=50).streamcl_info.class_order
    assert seeded not in CIFAR100_ORDERS and sorted(seeded) == list(range(100))
    b50 = cifar100(cifar_root, increment=10, initial_increment=50)
    assert b50.streamcl_info.increments == [50, 10, 10, 10, 10, 10] and len(b50.train_stream) == 6
    assert len(b50.train_stream[0].classes_in_this_experience) == 50
    custom = list(range(100))[::-1]
    assert cifar100(cifar_root, increment=50, class_order=custom).streamcl_info.class_order == custom
    with pytest.raises(ConfigError, match="increment"):
        cifar100(cifar_root, increment=7)
    with pytest.raises(ConfigError, match="class_order"):
        cifar100(cifar_root, increment=50, class_order=list(range(99)))


def test_classic_scenarios_rebuild_buffers_by_sample_id(cifar_root):
    bm = cifar100(cifar_root, increment=50)
    exp = bm.train_stream[1]
    ids = list(exp.dataset.sample_id)[:5]
    ds = subset_by_sample_id(bm, ids)
    assert list(ds.sample_id) == ids and list(ds.targets) == list(exp.dataset.targets)[:5]
    with pytest.raises(ValueError):
        subset_by_sample_id(bm, [len(_raw_cifar(cifar_root, "train")[1])])  # a test image


def test_imagenet_subset_reads_an_image_folder_with_the_imagenet100_classes(tmp_path):
    extra = ["n09999991", "n09999992"]  # a full-ImageNet tree has other classes: ignored
    root = write_image_folder(tmp_path / "in", IMAGENET100_WNIDS + extra, train_per_class=1, val_per_class=1,
                              image_size=20)
    bm = imagenet_subset(root, increment=10, image_size=16)
    info = bm.streamcl_info
    assert len(bm.train_stream) == 10 and info.n_classes == 100
    assert info.class_order[:10] == [IMAGENET100_WNIDS[c] for c in IMAGENET100_ORDERS[0][:10]]
    for exp in (bm.train_stream[0], bm.test_stream[4]):
        for i, lab in zip(exp.dataset.sample_id, exp.dataset.targets):
            wnid = Path(info.raw.paths[i]).parts[1]
            assert info.class_order[lab] == wnid
    img, label, _ = bm.train_stream[2].dataset[0]
    assert tuple(img.shape) == (3, 16, 16) and 20 <= label < 30
    shutil.rmtree(root / "val" / IMAGENET100_WNIDS[7])
    with pytest.raises(DatasetError, match=IMAGENET100_WNIDS[7]):
        imagenet_subset(root)


def test_tiny_imagenet_task_incremental_and_class_incremental(tmp_path):
    root = write_tiny_imagenet(tmp_path / "tiny", n_classes=8, train_per_class=2, val_per_class=2)
    bm = tiny_imagenet(root, n_tasks=4)
    info = bm.streamcl_info
    assert info.task_incremental and info.increments == [2, 2, 2, 2]
    base = root / "tiny-imagenet-200"
    wnids = (base / "wnids.txt").read_text().split()
    assert info.class_order == wnids  # run 0 keeps wnids.txt's order
    ann = dict(line.split("\t")[:2] for line in (base / "val" / "val_annotations.txt").read_text().splitlines())
    for t, (tr, te) in enumerate(zip(bm.train_stream, bm.test_stream)):
        assert tr.task_labels == [t] == te.task_labels and sorted(tr.classes_in_this_experience) == [0, 1]
        for i, lab in zip(te.dataset.sample_id, te.dataset.targets):
            wnid = ann[Path(info.raw.paths[i]).name]
            assert wnids.index(wnid) == 2 * t + lab
        assert tr.dataset[0][2] == t
    flat = tiny_imagenet(root, n_tasks=2, task_incremental=False, run=3)
    assert [e.task_labels for e in flat.train_stream] == [[0], [0]]
    assert sorted(flat.train_stream[1].classes_in_this_experience) == [4, 5, 6, 7]
    assert flat.streamcl_info.class_order != wnids
    with pytest.raises(ConfigError, match="n_tasks"):
        tiny_imagenet(root, n_tasks=3)
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match="val_annotations.txt"):
        tiny_imagenet(root)


def _yaml(tmp_path: Path, benchmark: dict) -> Path:
    doc = {"name": "missing", "output_dir": str(tmp_path / "runs"), "benchmark": benchmark,
           "model": {"name": "cifar_resnet", "depth": 8}, "strategy": {"name": "naive"}}
    path = tmp_path / "missing.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("name,url", [
    ("cifar100", "cifar-100-python.tar.gz"),
    ("imagenet_subset", "image-net.org"),
    ("tiny_imagenet", "tiny-imagenet-200.zip"),
])
def test_missing_root_is_exit_2_with_one_line(tmp_path, capsys, name, url):
    root = tmp_path / "nowhere" / name
    rc = main(["run", str(_yaml(tmp_path, {"name": name, "root": str(root)})), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and str(root) in err and url in err
    assert not (tmp_path / "runs" / "missing").exists()  # nothing half-written


def test_malformed_cifar_files_are_dataset_errors_and_never_run_code(tmp_path, capsys):
    base = tmp_path / "c" / "cifar-100-python"
    base.mkdir(parents=True)
    (base / "train").write_bytes(b"not a pickle")
    (base / "test").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="not a CIFAR-100 python pickle"):
        cifar100(tmp_path / "c")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (base / "train").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(DatasetError, match="refusing"):
        cifar100(tmp_path / "c")
    assert not (tmp_path / "pwned").exists()
    rc = main(["run", str(_yaml(tmp_path, {"name": "cifar100", "root": str(tmp_path / "c")})), "-q"])
    assert rc == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_synthetic_classic_is_generated_once_and_learnable_sized(tmp_path):
    bm = synthetic_classic(tmp_path, n_classes=4, train_per_class=3, test_per_class=2, increment=2, run=1)
    assert [len(e.dataset) for e in bm.train_stream] == [6, 6]
    trees = list(tmp_path.glob("cifar100-*"))
    assert len(trees) == 1 and (trees[0] / "done.json").is_file()
    again = synthetic_classic(tmp_path, n_classes=4, train_per_class=3, test_per_class=2, increment=2, run=1)
    assert again.streamcl_info.class_order == bm.streamcl_info.class_order
    assert len(list(tmp_path.glob("cifar100-*"))) == 1


NEW_YAMLS = sorted(
    list((REPO / "experiments" / "wa").glob("*.yaml"))
    + list((REPO / "experiments" / "mas").glob("*.yaml"))
    + list((REPO / "experiments" / "synthetic").glob("wa_*.yaml"))
    + list((REPO / "experiments" / "synthetic").glob("mas_*.yaml"))
)


@pytest.mark.parametrize("path", NEW_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_new_experiment_yamls_validate(path, monkeypatch):
    for var in ("CIFAR100_ROOT", "IMAGENET_ROOT", "TINY_IMAGENET_ROOT", "ALEXNET_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)  # the roots have defaults: the files validate without them
    exp = load_experiment(path)
    assert exp.cells and exp.runs
    names = {c.config["strategy"]["name"] for c in exp.cells} | {
        p["name"] for c in exp.cells for p in c.config["plugins"]}
    assert names & {"wa", "mas", "mas_paper"}


def test_the_new_yamls_are_all_there():
    found = {f"{p.parent.name}/{p.name}" for p in NEW_YAMLS}
    assert {"wa/cifar100_b0_10steps.yaml", "wa/cifar100_b0_20steps.yaml", "wa/cifar100_b0_50steps.yaml",
            "wa/imagenet100_10steps.yaml", "mas/tiny_imagenet.yaml", "synthetic/wa_ablation.yaml",
            "synthetic/mas_tiny_imagenet.yaml"} <= found
