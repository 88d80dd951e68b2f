"""Issue 19 (config side): ``reference:`` (published numbers), ``evaluation.offline``, the top5 and
task_agnostic metrics."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from streamcl.config import Cell, load_experiment
from streamcl.config.compose import Origins
from streamcl.config.experiment import resolve_offline
from streamcl.config.schema import Checker
from streamcl.errors import ConfigError
from streamcl.utils import config_digest

REPO = Path(__file__).resolve().parents[1]

BASE = """
name: t
output_dir: {out}
benchmark: {{name: toybox, root: /data/toybox}}
model: {{name: squeezenet_cut}}
strategy:
  name: naive
  train_mb_size: 8
  train_epochs: 2
  optimizer: {{name: sgd, lr: 1e-3, momentum: 0.9}}
"""

REFERENCE = """
reference:
  source: "Someone et al., A Paper, 2020, Table 1"
  setting: {strategy.train_epochs: 2, model.name: squeezenet_cut, benchmark.name: toybox}
  values:
    - {metric: final_accuracy, value: 53.78, tolerance: 2.0}
    - {cell: naive, metric: average_incremental_accuracy, value: 69.46, tolerance: 1.5, source: "Table 2"}
"""


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    p = tmp_path / name
    base = BASE.format(out=tmp_path / "runs")
    if "benchmarks:" in text:  # a grid: its benchmarks replace the one benchmark
        base = "\n".join(line for line in base.splitlines() if not line.startswith("benchmark:")) + "\n"
    p.write_text(base + textwrap.dedent(text))
    return p


def error_of(path: Path, overrides=()) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load_experiment(path, overrides)
    return ei.value


# -- reference: ---------------------------------------------------------------------------------------


def test_valid_reference_loads_and_stays_out_of_the_cell_configs(tmp_path):
    exp = load_experiment(write(tmp_path, REFERENCE))
    ref = exp.reference
    assert ref["source"] == "Someone et al., A Paper, 2020, Table 1"
    assert ref["setting"] == {"strategy.train_epochs": 2, "model.name": "squeezenet_cut", "benchmark.name": "toybox"}
    assert ref["values"] == [
        {"cell": "naive", "metric": "final_accuracy", "value": 53.78, "tolerance": 2.0,
         "source": "Someone et al., A Paper, 2020, Table 1"},  # one cell: `cell` may be left out
        {"cell": "naive", "metric": "average_incremental_accuracy", "value": 69.46, "tolerance": 1.5,
         "source": "Table 2"},
    ]
    (cell,) = exp.cells
    assert "reference" not in cell.config
    # The section changes no cell digest (existing runs resume).
    plain = load_experiment(write(tmp_path, "", "plain.yaml"))
    assert config_digest(cell.config) == config_digest(plain.cells[0].config)
    assert plain.reference is None


@pytest.mark.parametrize("text, key, needle", [
    ("reference: {values: [{metric: final_acuracy, value: 50, tolerance: 1, source: s}]}",
     "reference.values[0].metric", "did you mean 'final_accuracy'"),
    ("reference: {values: [{metric: final_accuracy, value: 50, tolerance: 0, source: s}]}",
     "reference.values[0].tolerance", "must be > 0"),
    ("reference: {values: [{metric: final_accuracy, value: 50, tolerance: -1.5, source: s}]}",
     "reference.values[0].tolerance", "must be > 0"),
    ("reference: {values: [{metric: final_accuracy, value: 50, tolerance: wide, source: s}]}",
     "reference.values[0].tolerance", "must be a number"),
    ("reference: {values: [{metric: final_accuracy, value: '50 %', tolerance: 1, source: s}]}",
     "reference.values[0].value", "must be a number"),
    ("reference: {values: [{metric: final_accuracy, value: .nan, tolerance: 1, source: s}]}",
     "reference.values[0].value", "finite"),
    ("reference: {values: [{cell: naiv, metric: final_accuracy, value: 50, tolerance: 1, source: s}]}",
     "reference.values[0].cell", "unknown cell 'naiv' (did you mean 'naive'?)"),
    ("reference: {source: s, setting: {strategy.train_epoch: 2}, values: [{metric: final_accuracy, value: 50, "
     "tolerance: 1}]}", "reference.setting.strategy.train_epoch", "no key 'strategy.train_epoch'"),
    ("reference: {source: s, setting: {'strategy..x': 2}, values: [{metric: final_accuracy, value: 50, "
     "tolerance: 1}]}", "reference.setting.strategy..x", "must be a key path"),
    ("reference: {values: [{metric: final_accuracy, value: 50, tolerance: 1}]}",
     "reference.values[0]", "has no source"),
    ("reference: {source: s, values: [{metric: final_accuracy, value: 50}]}",
     "reference.values[0]", "missing required key 'tolerance'"),
    ("reference: {source: s, values: []}", "reference.values", "non-empty list"),
    ("reference: {source: s, valeus: []}", "reference.valeus", "did you mean 'values'"),
    ("reference: {source: s, values: [{metric: final_accuracy, value: 50, tolerance: 1}, "
     "{metric: final_accuracy, value: 51, tolerance: 1}]}", "reference.values[1]", "repeats cell 'naive'"),
])
def test_reference_errors_name_the_key(tmp_path, text, key, needle):
    path = write(tmp_path, text + "\n")
    e = error_of(path)
    assert e.key == key, str(e)
    assert needle in str(e), str(e)
    assert "exp.yaml" in str(e)


def test_reference_needs_the_cell_in_a_grid(tmp_path):
    grid = """
    methods:
      naive: {}
      ewc: {plugins: [{name: ewc, ewc_lambda: 1.0}]}
    reference: {source: s, values: [{metric: final_accuracy, value: 50, tolerance: 1}]}
    """
    e = error_of(write(tmp_path, grid))
    assert e.key == "reference.values[0]" and "missing key 'cell'" in str(e) and "naive, ewc" in str(e)
    ok = grid.replace("{metric:", "{cell: ewc, metric:").replace(
        "values:", "setting: {'plugins[0].ewc_lambda': 1.0}, values:")
    assert load_experiment(write(tmp_path, ok)).reference["values"][0]["cell"] == "ewc"
    # setting keys are looked up in the first named cell's config: `naive` has no plugin
    bad = ok.replace("cell: ewc", "cell: naive")
    e = error_of(write(tmp_path, bad))
    assert e.key == "reference.setting.plugins[0].ewc_lambda" and "cell 'naive'" in str(e)


def test_reference_error_on_the_command_line_exits_2_and_writes_nothing(tmp_path):
    path = write(tmp_path, REFERENCE.replace("tolerance: 1.5", "tolerance: 0"))
    for extra in (["--dry-run"], []):
        proc = subprocess.run([sys.executable, "-m", "streamcl", "run", str(path), *extra], capture_output=True,
                              text=True, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert "Traceback" not in proc.stderr
        assert lines[-1].startswith("streamcl: error:") and "reference.values[1].tolerance" in lines[-1]
        assert "exp.yaml" in lines[-1]
        assert not (tmp_path / "runs").exists()


def _tiny(tmp_path: Path, synthetic_root: Path, **extra) -> Path:
    doc = {
        "name": "tiny",
        "runs": [0],
        "threads": 1,
        "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "toybox", "n_classes": 4,
                      "n_objects": 2, "image_size": 32},
        "model": {"name": "small_cnn_cut", "width": 8},
        "strategy": {"name": "naive", "train_mb_size": 16, "optimizer": {"name": "sgd", "lr": 0.05}},
        "evaluation": {"loggers": ["csv"]},
        "reference": {"source": "a paper", "setting": {"strategy.train_epochs": 5},
                      "values": [{"metric": "final_accuracy", "value": 50.0, "tolerance": 1.0}]},
    }
    doc.update(extra)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_runner_writes_reference_yaml(tmp_path, synthetic_root):
    from streamcl.runner import run_experiment

    exp = load_experiment(_tiny(tmp_path, synthetic_root))
    root = run_experiment(exp, progress=False)
    written = yaml.safe_load((root / "reference.yaml").read_text())
    assert written == exp.reference
    assert written == {"source": "a paper", "setting": {"strategy.train_epochs": 5},
                       "values": [{"cell": "naive", "metric": "final_accuracy", "value": 50.0, "tolerance": 1.0,
                                   "source": "a paper"}]}
    # The section removed from the file: the stale reference goes too (the report must not compare with it).
    doc = yaml.safe_load((tmp_path / "tiny.yaml").read_text())
    del doc["reference"]
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(doc))
    run_experiment(load_experiment(tmp_path / "tiny.yaml"), progress=False)
    assert not (root / "reference.yaml").exists()


def test_build_error_leaves_no_reference_behind(tmp_path, synthetic_root, capsys):
    from streamcl.cli import main

    path = _tiny(tmp_path, synthetic_root, plugins=[{"name": "crumb", "memory": {"bytes": 7}, "n_blocks": 16,
                                                     "block_dim": 8}])
    assert main(["run", str(path), "-q"]) == 2
    assert "memory" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny").exists()


# -- the shipped files ---------------------------------------------------------------------------------

PAPER_FILES = sorted(p for d in ("wa", "dytox", "mas", "paper") for p in (REPO / "experiments" / d).glob("*.yaml")
                     if p.name not in ("base.yaml", "methods.yaml"))


@pytest.fixture()
def paper_env(monkeypatch):
    for var in ("SQUEEZENET_WEIGHTS", "TOYBOX_ROOT", "CORE50_ROOT", "ILAB_ROOT", "ICUB_ROOT"):
        monkeypatch.setenv(var, "/data/placeholder")


@pytest.mark.parametrize("path", PAPER_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_paper_yaml_has_a_reference_or_says_why_not(path, paper_env):
    exp = load_experiment(path)
    text = path.read_text()
    if exp.reference is None:
        assert "No `reference:` section" in text or "Hence no `reference:` section" in text, path
        return
    for v in exp.reference["values"]:
        assert v["source"] and v["tolerance"] > 0
        assert str(v["value"]) in text.replace("67.30", "67.3"), f"{path}: {v['value']} is not in the file's comments"
    # The shipped file runs the paper's protocol: its own cells agree with every setting key.
    from streamcl.config.reference import lookup, split_key_path

    cell = next(c for c in exp.cells if c.name == exp.reference["values"][0]["cell"])
    for key, want in exp.reference["setting"].items():
        assert lookup(cell.config, split_key_path(key)) == (True, want), (path, key)


def test_the_published_numbers():
    """The numbers the README and ALGORITHMS.md give, in the files they belong to."""
    want = {
        "wa/cifar100_b0_10steps.yaml": (69.46, 53.78), "wa/cifar100_b0_20steps.yaml": (67.33, 47.31),
        "wa/cifar100_b0_50steps.yaml": (64.32, 42.14), "dytox/cifar100_b0_10steps.yaml": (67.33, 51.68),
        "dytox/cifar100_b0_20steps.yaml": (67.30, 48.45), "dytox/cifar100_b0_50steps.yaml": (64.39, 43.47),
        "dytox/imagenet100_10steps.yaml": (71.85, 57.94),
    }
    for rel, (avg, last) in want.items():
        ref = load_experiment(REPO / "experiments" / rel).reference
        got = {v["metric"]: v["value"] for v in ref["values"]}
        assert (got["average_incremental_accuracy"], got["final_accuracy"]) == (avg, last), rel
    ref = load_experiment(REPO / "experiments" / "dytox" / "imagenet100_10steps.yaml").reference
    got = {v["metric"]: v["value"] for v in ref["values"]}
    assert (got["top5_average_incremental_accuracy"], got["top5_final_accuracy"]) == (90.72, 83.52)
    inc = load_experiment(REPO / "experiments" / "wa" / "cifar100_b0_50steps.yaml").reference["setting"]
    assert inc["benchmark.increment"] == 2 and inc["strategy.train_epochs"] == 170  # the include's setting, merged


# -- evaluation.offline -------------------------------------------------------------------------------

GRID = """
benchmarks:
  a: {name: toybox, root: /data/toybox, protocol: class_iid}
  b: {name: toybox, root: /data/toybox, protocol: class_instance}
methods:
  naive: {}
  joint: {strategy: {name: joint_training}}
evaluation: {offline: joint}
"""


def test_offline_resolves_per_cell_to_the_same_benchmark(tmp_path):
    exp = load_experiment(write(tmp_path, GRID))
    got = {c.name: c.config["evaluation"]["offline"] for c in exp.cells}
    assert got == {"a-naive": "a-joint", "b-naive": "b-joint", "a-joint": "a-joint", "b-joint": "b-joint"}
    # Each cell its own evaluation dict; the other keys are as before.
    assert len({id(c.config["evaluation"]) for c in exp.cells}) == 4
    assert all(c.config["evaluation"]["eval_on"] == "seen" for c in exp.cells)
    # Without the key, the cell configs have no `offline` (digests of existing runs unchanged).
    plain = load_experiment(write(tmp_path, GRID.replace("evaluation: {offline: joint}", ""), "plain.yaml"))
    assert all("offline" not in c.config["evaluation"] for c in plain.cells)


def test_offline_resolves_within_a_sweep(tmp_path):
    exp = load_experiment(write(tmp_path, GRID + "sweep: {strategy.optimizer.lr: [0.1, 0.01]}\n"))
    got = {c.name: c.config["evaluation"]["offline"] for c in exp.cells}
    assert got["a-naive-lr0.1"] == "a-joint-lr0.1" and got["b-naive-lr0.01"] == "b-joint-lr0.01"


def test_offline_unknown_label_lists_the_labels(tmp_path):
    e = error_of(write(tmp_path, GRID.replace("offline: joint", "offline: jiont")))
    assert e.key == "evaluation.offline"
    assert "unknown method 'jiont'" in str(e) and "did you mean 'joint'" in str(e) and "joint, naive" in str(e)
    e = error_of(write(tmp_path, "evaluation: {offline: joint}\n", "single.yaml"))
    assert e.key == "evaluation.offline" and "no 'methods:' section" in str(e)
    e = error_of(write(tmp_path, GRID.replace("offline: joint", "offline: [joint]")))
    assert e.key == "evaluation.offline"


def test_offline_with_a_different_benchmark_is_refused():
    """Methods cannot change the benchmark in a grid; the check guards the pairing itself."""
    def cell(name, protocol):
        return Cell(name, {"benchmark": {"name": "toybox", "root": "/d", "protocol": protocol},
                           "evaluation": {"metrics": ["accuracy"]}})

    grid = {("naive", None, ()): cell("naive", "class_iid"), ("joint", None, ()): cell("joint", "class_instance")}
    with pytest.raises(ConfigError) as ei:
        resolve_offline(Checker(Origins()), ("evaluation", "offline"), "joint", grid)
    assert ei.value.key == "evaluation.offline"
    assert "benchmark.protocol" in str(ei.value) and "'joint'" in str(ei.value) and "'naive'" in str(ei.value)
    grid[("joint", None, ())].config["benchmark"]["protocol"] = "class_iid"
    resolve_offline(Checker(Origins()), ("evaluation", "offline"), "joint", grid)
    assert grid[("naive", None, ())].config["evaluation"] == {"metrics": ["accuracy"], "offline": "joint"}


def test_offline_error_on_the_command_line_exits_2(tmp_path):
    path = write(tmp_path, GRID.replace("offline: joint", "offline: nope"))
    proc = subprocess.run([sys.executable, "-m", "streamcl", "run", str(path), "--dry-run"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "evaluation.offline" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


# -- top5 and task_agnostic ----------------------------------------------------------------------------


def test_new_metric_names_are_accepted(tmp_path):
    exp = load_experiment(write(tmp_path, "evaluation: {metrics: [accuracy, top5, task_agnostic]}\n"))
    assert exp.cells[0].config["evaluation"]["metrics"] == ["accuracy", "top5", "task_agnostic"]
    e = error_of(write(tmp_path, "evaluation: {metrics: [top_5]}\n"))
    assert e.key == "evaluation.metrics[0]" and "did you mean 'top5'" in str(e)
    from streamcl.metrics import build_evaluator

    names = {str(m) for m in build_evaluator(["top5", "task_agnostic"]).metrics}
    assert names == {"Topk_5_Acc_Exp", "Topk_5_Acc_Stream", "TaskAgnostic_Acc_Stream"}


def test_top5_counts_in_one_pass_and_small_heads():
    from streamcl.metrics import topk_accuracy_metrics, topk_hits

    out = torch.tensor([[0.0, 1, 2, 3, 4, 5, 6], [6.0, 5, 4, 3, 2, 1, 0]])
    assert topk_hits(out, torch.tensor([2, 2]), 5).tolist() == [True, True]
    assert topk_hits(out, torch.tensor([1, 6]), 5).tolist() == [False, False]
    assert topk_hits(out[:, :3], torch.tensor([0, 2]), 5).tolist() == [True, True]  # 3 classes <= k: all in
    metric = topk_accuracy_metrics(5)[1]._metric
    metric.update(out, torch.tensor([2, 6]), torch.tensor([0, 1]))  # a task label per sample
    metric.update(out, torch.tensor([2, 2]), 0)
    assert metric.result() == {0: pytest.approx(1.0), 1: pytest.approx(0.0)}


def test_task_agnostic_on_hand_made_logits():
    from streamcl.metrics import TaskAgnosticAccuracy, task_agnostic_hits

    heads = {  # task 0: 2 classes, task 1: 3 classes
        0: torch.tensor([[5.0, 1.0], [0.0, 1.0], [9.0, 0.0], [0.0, 0.0]]),
        1: torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 7.0]]),
    }
    # arg-max over [t0c0, t0c1, t1c0, t1c1, t1c2]: (0,0), (1,1), (0,0), (1,2)
    target = torch.tensor([0, 1, 1, 2])
    task = torch.tensor([0, 1, 0, 0])
    assert task_agnostic_hits(heads, target, task).tolist() == [True, True, False, False]
    m = TaskAgnosticAccuracy()
    m.update(heads, None, target, task)
    assert m.result() == pytest.approx(0.5)
    # A single-head model: plain accuracy of its output.
    m.reset()
    m.update(None, torch.tensor([[0.0, 1.0], [2.0, 1.0]]), torch.tensor([1, 1]), torch.tensor([0, 0]))
    assert m.result() == pytest.approx(0.5)


def test_task_agnostic_on_a_multi_head_net():
    """Every learned head of a MultiHeadNet, the backbone once: the same logits as each head's own forward."""
    from types import SimpleNamespace

    from streamcl.metrics import TaskAgnosticAccuracy, all_head_logits
    from streamcl.models.classifiers import MultiHeadNet

    torch.manual_seed(0)
    net = MultiHeadNet(torch.nn.Linear(6, 4), 4)
    net.train()
    for t in (0, 1):
        exp = SimpleNamespace(classes_in_this_experience=[0, 1, 2], task_labels=[t])
        net.classifier.adaptation(exp)
        net.known_train_tasks_labels.add(t)
    net.eval()
    x = torch.randn(5, 6)
    heads = all_head_logits(net, x)
    assert sorted(heads) == [0, 1]
    for t in (0, 1):
        assert torch.allclose(heads[t], net.forward_single_task(x, t))
    assert all_head_logits(torch.nn.Linear(6, 3), x) is None
    flat = torch.cat([heads[0], heads[1]], dim=1).argmax(1)
    task, target = (flat >= 3).long(), flat % 3  # what the arg-max says: every sample right
    m = TaskAgnosticAccuracy()
    m.before_eval(None)
    strategy = SimpleNamespace(model=net, mb_x=x, mb_y=target, mb_task_id=task, mb_output=None, is_eval=True,
                               experience=SimpleNamespace(origin_stream=SimpleNamespace(name="test"),
                                                          current_experience=1, task_labels=[1]),
                               clock=SimpleNamespace(train_iterations=7))
    m.after_eval_iteration(strategy)
    (value,) = m.after_eval(strategy)
    assert value.name == "TaskAgnostic_Acc_Stream/eval_phase/test_stream" and value.value == pytest.approx(1.0)
    assert value.x_plot == 7
