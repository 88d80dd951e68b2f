"""The ``wandb`` logger: Avalanche's WandBLogger by name, offline in tests, a clear error without the package.

What streamcl sends to W&B is checked with a fake ``wandb`` module that records every
call (the real package writes a binary run file that only W&B's service reads back);
one test runs the real package (an avalanche-lib dependency, so installed with it) in
offline mode to check that it accepts what we pass.
"""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path

import pytest
import yaml

from streamcl import cli
from streamcl.config import load_experiment
from streamcl.errors import ConfigError, StreamclError
from streamcl.metrics import build_loggers


class FakeRun:
    def __init__(self, calls):
        self.calls = calls

    def _label(self, **kwargs):
        pass

    def finish(self):
        self.calls.append(("finish",))


@pytest.fixture
def fake_wandb(monkeypatch):
    """A ``wandb`` module that records init/log/finish calls in ``.calls``."""
    mod = types.ModuleType("wandb")
    mod.__version__ = "0.0-fake"
    mod.calls = []
    mod.run = None

    def init(**kwargs):
        mod.calls.append(("init", kwargs))
        mod.run = FakeRun(mod.calls)
        return mod.run

    def log(values, step=None):
        mod.calls.append(("log", dict(values), step))

    def finish():
        mod.calls.append(("finish",))
        mod.run = None

    mod.init, mod.log, mod.finish = init, log, finish
    mod.Settings = lambda **kwargs: ("settings", kwargs)
    # As wandb 0.31: no wandb.viz, no wandb.util.generate_id (Avalanche 0.6's logger uses both).
    mod.util = types.SimpleNamespace()
    mod.plot = types.SimpleNamespace(CustomChart=type("CustomChart", (), {}))
    mod.Image = mod.Histogram = lambda *a, **k: None
    monkeypatch.setitem(sys.modules, "wandb", mod)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    return mod


def test_build_loggers_names_the_run_after_its_folder(tmp_path, fake_wandb, monkeypatch):
    run_dir = tmp_path / "runs" / "exp1" / "cellA" / "run3"
    run_dir.mkdir(parents=True)
    cfg = {"name": "exp1", "strategy": {"name": "naive"}}
    (logger,) = build_loggers(["wandb"], run_dir, config=cfg)
    (call,) = [c for c in fake_wandb.calls if c[0] == "init"]
    kw = call[1]
    assert kw["project"] == "exp1" and kw["name"] == "cellA/run3" and kw["group"] == "cellA"
    assert kw["dir"] == str(run_dir) and kw["config"] == cfg and kw["save_code"] is False
    assert kw["settings"] == ("settings", {"quiet": True})
    assert len(kw["id"]) == 8 and int(kw["id"], 16) >= 0  # a fresh W&B run id per attempt

    logger.log_single_metric("Top1_Acc_Stream/eval_phase/test_stream/Task000", 0.75, 12)
    assert ("log", {"Top1_Acc_Stream/eval_phase/test_stream/Task000": 0.75}, 12) in fake_wandb.calls
    logger.close()
    assert fake_wandb.calls[-1] == ("finish",) and fake_wandb.run is None
    logger.close()  # twice is harmless
    assert [c for c in fake_wandb.calls if c[0] == "finish"] == [("finish",)]

    monkeypatch.setenv("WANDB_PROJECT", "my-project")
    build_loggers(["tensorboard", "wandb"], run_dir)
    assert [c for c in fake_wandb.calls if c[0] == "init"][-1][1]["project"] == "my-project"


def test_a_run_logs_every_experience_to_wandb_and_finishes(tmp_path, synthetic_root, fake_wandb):
    from streamcl.runner import run_experiment

    doc = {
        "name": "wb",
        "runs": [0],
        "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "toybox", "n_classes": 4,
                      "n_objects": 2, "image_size": 32},
        "model": {"name": "small_cnn_cut", "width": 8},
        "strategy": {"name": "naive", "train_mb_size": 16, "optimizer": {"name": "sgd", "lr": 0.05}},
        "evaluation": {"metrics": ["accuracy"], "loggers": ["csv", "wandb"]},
    }
    path = tmp_path / "wb.yaml"
    path.write_text(yaml.safe_dump(doc))
    run_experiment(load_experiment(path), progress=False)

    inits = [c[1] for c in fake_wandb.calls if c[0] == "init"]
    assert [(i["project"], i["name"], i["group"]) for i in inits] == [("wb", "naive/run0", "naive")]
    # init, the run's logs, then finish (no W&B run left open for the next run to reuse).
    assert fake_wandb.calls[0][0] == "init" and fake_wandb.calls[-1] == ("finish",)
    stream_acc = [(c[2], v) for c in fake_wandb.calls if c[0] == "log" for k, v in c[1].items()
                  if k.startswith("Top1_Acc_Stream/eval_phase/test_stream")]
    assert len(stream_acc) == 2 and all(0.0 <= v <= 1.0 for _, v in stream_acc)  # one per experience
    assert stream_acc[0][0] < stream_acc[1][0]


WANDB_YAML = """
name: t
benchmark: {name: toybox, root: /data/toybox}
model: {name: small_cnn_cut}
strategy: {name: naive, train_mb_size: 8}
evaluation: {loggers: [csv, wandb]}
"""


def test_missing_wandb_is_a_config_error_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(WANDB_YAML))
    with pytest.raises(ConfigError) as ei:
        load_experiment(path)
    assert ei.value.key == "evaluation.loggers[1]" and "pip install 'streamcl[wandb]'" in str(ei.value)

    assert cli.main(["run", str(path), "--dry-run"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("streamcl: error:")]
    assert len(err) == 1 and "streamcl[wandb]" in err[0]

    with pytest.raises(StreamclError, match=r"pip install 'streamcl\[wandb\]'"):
        build_loggers(["wandb"], tmp_path)


def test_real_wandb_offline_writes_its_run_under_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "exp" / "cell" / "run0"
    run_dir.mkdir(parents=True)
    (logger,) = build_loggers(["wandb"], run_dir, config={"name": "exp", "lr": 0.1})
    try:
        assert logger.wandb.run is not None and logger.wandb.run.name == "cell/run0"
        assert logger.wandb.run.config["lr"] == 0.1
        logger.log_single_metric("Top1_Acc_Stream/eval_phase/test_stream/Task000", 0.5, 1)
    finally:
        logger.close()
    assert logger.wandb.run is None
    files = list(Path(run_dir, "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1 and files[0].stat().st_size > 0
