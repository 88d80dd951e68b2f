"""What a replay method is charged: held vs reserved bytes, raw images at their source size, empty budgets."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms as T
import yaml
from PIL import Image

from streamcl.cli import main
from streamcl.errors import ConfigError
from streamcl.metrics import raw_item_nbytes
from streamcl.plugins.latent_replay import CodeBuffer, parse_memory


class _GreyImages(torch.utils.data.Dataset):
    def __init__(self, n: int = 4, size: int = 8):
        self.targets = [i % 2 for i in range(n)]
        self.size = size

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return Image.new("L", (self.size, self.size), color=i), self.targets[i]


def _dataset(size: int, transform):
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_classification_dataset

    return _make_taskaware_classification_dataset(_GreyImages(size=size), transform=transform)


def test_raw_image_charged_at_the_smaller_of_source_and_input():
    up = _dataset(8, T.Compose([T.Resize(16), T.Grayscale(3), T.ToTensor()]))
    assert tuple(up[0][0].shape) == (3, 16, 16)
    assert raw_item_nbytes(up) == 8 * 8  # an 8x8 grey source, not the 3x16x16 network input (768 B)
    down = _dataset(64, T.Compose([T.Resize(16), T.ToTensor()]))
    assert raw_item_nbytes(down) == 16 * 16  # a 64x64 source fed at 16x16: the input's size
    rgb224 = torch.utils.data.TensorDataset(torch.zeros(2, 3, 224, 224), torch.zeros(2, dtype=torch.long))
    assert raw_item_nbytes(rgb224) == 150_528  # the CRUMB paper's 224x224x3


def test_held_and_reserved_bytes():
    buf = CodeBuffer(10, (4,), "class_balanced", seed=0)
    per_item = 4 + 2  # uint8 codes + int16 label
    assert buf.nbytes() == 10 * per_item and buf.held_nbytes() == 0
    buf.begin_experience(n_items=3, classes=[0])
    buf.add(torch.zeros(3, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    assert buf.held_nbytes() == len(buf) * per_item < buf.nbytes()


def test_budget_that_holds_no_item_is_an_error():
    with pytest.raises(ConfigError, match="holds no item"):
        parse_memory({"bytes": 7}).capacity(item_nbytes=64)
    with pytest.raises(ConfigError, match="holds no item"):
        parse_memory({"bytes": 100}).capacity(item_nbytes=64, reserved_nbytes=50)
    assert parse_memory({"bytes": 128}).capacity(item_nbytes=64) == 2


def test_raw_replay_budget_below_one_image_exits_2(tmp_path, synthetic_root, capsys):
    doc = {
        "name": "tiny", "runs": [0], "threads": 1, "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "toybox", "n_classes": 4,
                      "n_objects": 2, "image_size": 32},
        "model": {"name": "small_cnn_cut", "width": 8},
        "strategy": {"name": "naive", "train_mb_size": 16, "optimizer": {"name": "sgd", "lr": 0.05}},
        "plugins": [{"name": "replay", "memory": {"bytes": 7}}],
        "evaluation": {"loggers": ["csv"]},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["run", str(path), "-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "holds no item" in err[0] and "memory" in err[0]
    assert not (tmp_path / "runs" / "tiny" / "naive+replay").exists()


def test_replay_counters_reach_metrics_and_tensorboard(tmp_path, synthetic_root):
    from streamcl.config import load_experiment
    from streamcl.results import read_metrics
    from streamcl.runner import run_experiment
    from streamcl.tensorboard_events import scalars

    doc = {
        "name": "tiny", "runs": [0], "threads": 1, "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "toybox", "n_classes": 4,
                      "n_objects": 2, "image_size": 32},
        "model": {"name": "small_cnn_cut", "width": 8},
        "strategy": {"name": "naive", "train_mb_size": 16, "optimizer": {"name": "sgd", "lr": 0.05}},
        "plugins": [{"name": "crumb", "memory": 20, "n_blocks": 16, "block_dim": 8}],
        "evaluation": {"metrics": ["accuracy", "replay_bytes"], "loggers": ["tensorboard", "csv"]},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    root = run_experiment(load_experiment(path), progress=False)
    run_dir = root / "naive+crumb" / "run0"
    last = {r["metric"]: r["value"] for r in read_metrics(run_dir / "metrics.csv")}
    per_class = {k: v for k, v in last.items() if k.startswith("BufferItems/")}
    assert len(per_class) == 4 and sum(per_class.values()) <= 20  # 4 classes seen, 20-item budget
    assert last["ReplaySteps/train_phase/train_stream"] > 0
    assert last["ReplayBytesReserved/train_phase/train_stream"] >= last["ReplayBytes/train_phase/train_stream"] > 0
    tags = {tag for tag, _, _ in scalars(run_dir / "tb")}
    assert "ReplaySteps/train_phase/train_stream" in tags and any(t.startswith("BufferItems/") for t in tags)
    assert any(t.startswith("config") for t in _text_tags(run_dir / "tb"))


def _text_tags(tb_dir):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = set()
    for path in sorted(tb_dir.glob("*tfevents*")):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "text":
                    out.add(v.tag)
    return out
