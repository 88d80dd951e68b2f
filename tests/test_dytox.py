"""DyTox: network growth and parameter counts, the TAB, the strategy's phases, losses, memory, lr rule, runner."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from timm.layers import Attention

from streamcl.errors import ConfigError
from streamcl.models.dytox import DyToxNet, TaskAttention, dytox, parameter_count
from streamcl.strategies.dytox import (
    DyTox,
    divergence_targets,
    find_normalization,
    kd_lambda,
    optimizer_recipe,
    scaled_lr,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(embed_dim=16, depth=2, num_heads=2, patch_size=8, drop_path_rate=0.0)


def tiny_model(num_classes: int = 6, **kw) -> DyToxNet:
    return dytox(num_classes, **{**TINY, **kw})


class _Exp:
    """The one attribute DyToxNet.adaptation reads from an experience."""

    def __init__(self, classes):
        self.classes_in_this_experience = classes


# --------------------------------------------------------------------------- network


def test_task_attention_equals_one_timm_attention_pass_per_token():
    torch.manual_seed(0)
    ta = TaskAttention(24, num_heads=4, qkv_bias=True).eval()
    ref = Attention(24, num_heads=4, qkv_bias=True).eval()
    ref.load_state_dict(ta.state_dict())
    tokens, patches = torch.randn(3, 5, 24), torch.randn(3, 7, 24)
    out = ta(tokens, patches)
    for i in range(5):  # the paper's TAB: token i attends to [token i, patches], separately for each task
        expected = ref(torch.cat([tokens[:, i : i + 1], patches], dim=1))[:, 0]
        torch.testing.assert_close(out[:, i], expected, rtol=1e-5, atol=1e-5)


def test_each_task_adds_one_token_one_head_and_resizes_the_divergence_head():
    torch.manual_seed(0)
    m = tiny_model(10)
    d = m.embed_dim
    head_params = lambda n: 2 * d + d * n + n  # noqa: E731  LayerNorm + Linear
    assert (len(m.task_tokens), m.n_tasks, m.head_div) == (1, 0, None)
    base = parameter_count(m)

    m.add_task([3, 1])
    assert (len(m.task_tokens), m.n_tasks, m.head_div) == (1, 1, None)  # the first task uses the initial token
    assert parameter_count(m) == base + head_params(2)

    before = parameter_count(m)
    last = m.task_tokens[-1].detach().clone()
    m.add_task([0, 2, 9])
    assert len(m.task_tokens) == 2 and m.classes_per_task == [2, 3] and m.head_div.n_classes == 3 + 1
    torch.testing.assert_close(m.task_tokens[-1].detach(), last)  # copied from the last token
    assert m.task_tokens[-1] is not m.task_tokens[-2]
    assert parameter_count(m) == before + d + head_params(3) + head_params(4)

    before_div = m.head_div.n_classes
    m.add_task([5])
    assert len(m.task_tokens) == 3 and m.head_div.n_classes == 2 and before_div == 4
    assert parameter_count(m, divergence_head=False) == base + 2 * d + head_params(2) + head_params(3) + head_params(1)

    x = torch.randn(4, 3, 32, 32)
    m.eval()
    out = m.forward_all(x)
    assert out.logits.shape == (4, 6) and out.div_logits.shape == (4, 2) and out.tokens.shape == (4, 3, d)
    label_space = m(x)
    assert label_space.shape == (4, 10)
    order = [3, 1, 0, 2, 9, 5]
    torch.testing.assert_close(label_space[:, order], out.logits)  # column c holds class c
    unseen = [4, 6, 7, 8]
    assert bool((label_space[:, unseen] < out.logits.min()).all())
    assert m.columns_of(torch.tensor([9, 3, 5])).tolist() == [4, 0, 5]
    with pytest.raises(ValueError, match="belong to no task"):
        m.columns_of(torch.tensor([7]))
    with pytest.raises(ValueError, match="already known"):
        m.add_task([2, 8])


def test_trunc_normal_token_init_redraws_the_copied_token():
    torch.manual_seed(0)
    m = tiny_model(4, new_token_init="trunc_normal")
    m.add_task([0, 1])
    m.add_task([2, 3])
    assert not torch.equal(m.task_tokens[0], m.task_tokens[1])


def test_avalanche_adaptation_expands_in_training_mode_only():
    m = tiny_model(6)
    m.train()
    m.adaptation(_Exp({1, 0}))
    m.adaptation(_Exp({0, 1}))  # nothing new
    assert m.classes_per_task == [2]
    m.eval()
    m.adaptation(_Exp({2, 3}))  # evaluation never grows the model
    assert m.classes_per_task == [2]
    m.train()
    m.adaptation(_Exp({1, 2, 3}))
    assert m.classes_per_task == [2, 2] and m.known_classes == [0, 1, 2, 3]


# Paper: 10.73 M / 10.74 M / 10.77 M parameters at 10 / 20 / 50 CIFAR-100 steps (two decimals, truncated).
@pytest.mark.parametrize("steps,target", [(10, 10.73e6), (20, 10.74e6), (50, 10.77e6)])
def test_full_size_parameter_counts_on_meta_device(steps, target):
    with torch.device("meta"):
        m = dytox(100)  # the paper's CIFAR network: patch 4 on 32 px, dim 384, 12 heads, 5 SABs + 1 TAB
    inc = 100 // steps
    counts = []
    for t in range(steps):
        m.add_task(range(t * inc, (t + 1) * inc))
        counts.append(parameter_count(m, divergence_head=False))
    assert all(p.device.type == "meta" for p in m.parameters())  # nothing was allocated
    assert len(m.task_tokens) == steps and len(m.heads) == steps and m.head_div.n_classes == inc + 1
    inference, total = parameter_count(m, divergence_head=False), parameter_count(m)
    assert abs(inference - target) <= 0.02e6 and abs(total - target) <= 0.02e6, (inference, total)
    assert math.floor(inference / 1e4) / 100 == target / 1e6  # the paper truncates to two decimals
    # every task after the first adds exactly one token (384) and one head (LayerNorm + Linear)
    per_task = 384 + 2 * 384 + 384 * inc + inc
    assert all(b - a == per_task for a, b in zip(counts, counts[1:]))


def test_state_dict_rebuilds_tokens_and_heads_both_ways():
    torch.manual_seed(0)
    m = tiny_model(6)
    for classes in ([0, 1], [2, 3], [4, 5]):
        m.add_task(classes)
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    bigger = tiny_model(6)
    bigger.load_state_dict(m.state_dict())  # grows from 0 tasks
    smaller = copy.deepcopy(m)
    small_state = tiny_model(6)
    small_state.add_task([0, 1])
    smaller.load_state_dict(small_state.state_dict())  # shrinks from 3 tasks to 1
    assert bigger.classes_per_task == [2, 2, 2] and smaller.classes_per_task == [2]
    assert smaller.head_div is None and len(smaller.task_tokens) == 1
    torch.testing.assert_close(bigger.eval()(x), m(x))


def test_bad_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        dytox(10, embed_dim=30, num_heads=4)
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        dytox(10, img_size=30, patch_size=4)
    with pytest.raises(ConfigError, match="depth"):
        dytox(10, depth=1)


# --------------------------------------------------------------------------- rules


def test_lr_scaling_rule_kd_lambda_and_divergence_targets():
    assert scaled_lr(5e-4, 128, 2) == pytest.approx(2.5e-4)  # the paper's CIFAR runs: batch 128 on 2 GPUs
    assert scaled_lr(5e-4, 512) == pytest.approx(5e-4)
    assert scaled_lr(5e-5, 64, 1) == pytest.approx(6.25e-6)
    assert [kd_lambda(10 * t, 10 * (t + 1)) for t in range(3)] == [0.0, 0.5, pytest.approx(2 / 3)]
    # old classes -> 0, new class j -> 1 + j
    assert divergence_targets(torch.tensor([0, 3, 4, 1, 5]), n_old=3).tolist() == [0, 1, 2, 0, 3]
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.8, weight_decay=1e-4)
    assert optimizer_recipe(sgd) == {"opt": "momentum", "momentum": 0.8, "lr": 0.1, "weight_decay": 1e-4}
    with pytest.raises(ConfigError, match="timm"):
        optimizer_recipe(torch.optim.LBFGS([torch.nn.Parameter(torch.zeros(1))]))


def test_strategy_refuses_other_models_and_an_external_schedule():
    from avalanche.training.plugins import LRSchedulerPlugin

    lin = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-3)
    with pytest.raises(ConfigError, match="dytox"):
        DyTox(model=lin, optimizer=opt)
    m = tiny_model(4)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    sched = LRSchedulerPlugin(torch.optim.lr_scheduler.StepLR(opt, 1))
    with pytest.raises(ConfigError, match="scheduler"):
        DyTox(model=m, optimizer=opt, plugins=[sched])


# --------------------------------------------------------------------------- training


def synthetic_stream(root: Path, n_classes: int, per_class: int = 40):
    """The synthetic Toybox class-incremental stream (2 classes per experience), ``per_class`` training images each."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels

    from streamcl.benchmarks.scenarios import synthetic

    full = synthetic(root, layout="toybox", protocol="class_iid", n_classes=n_classes, n_objects=2, image_size=32)
    train = []
    for exp in full.train_stream:
        targets = list(exp.dataset.targets)
        keep = [i for c in sorted(set(targets)) for i in [j for j, y in enumerate(targets) if y == c][:per_class]]
        train.append(exp.dataset.subset(sorted(keep)))
    test = [exp.dataset for exp in full.test_stream]
    return with_task_labels(with_classes_timeline(benchmark_from_datasets(train=train, test=test)))


class Recorder(SupervisedPlugin):
    """Records what the tests check, at the points where it happens."""

    def __init__(self):
        super().__init__()
        self.kd = []  # (experience, phase, lambda) at every step
        self.lrs = []  # (experience, phase, lr) at every epoch start
        self.snapshots = {}  # (experience, moment) -> state dict copy
        self._last_phase = None

    def _snap(self, strategy, moment):
        key = (strategy.clock.train_exp_counter, moment)
        self.snapshots.setdefault(key, {k: v.detach().clone() for k, v in strategy.model.state_dict().items()})

    def before_training_epoch(self, strategy, **kwargs):
        exp = strategy.clock.train_exp_counter
        self.lrs.append((exp, strategy.phase, strategy.optimizer.param_groups[0]["lr"]))
        if strategy.phase != self._last_phase:
            self._snap(strategy, f"start_{strategy.phase}")
            self._last_phase = strategy.phase

    def before_backward(self, strategy, **kwargs):
        self.kd.append((strategy.clock.train_exp_counter, strategy.phase, strategy.loss_terms["kd_lambda"]))

    def after_training_exp(self, strategy, **kwargs):
        self._snap(strategy, "end")
        self._last_phase = None


def test_dytox_trains_through_avalanche_with_kd_finetuning_and_memory(synthetic_root):
    """Three 2-class experiences: growth, lambda schedule, frozen parts per phase, memory, warm-up + cosine lr."""
    torch.manual_seed(0)
    scenario = synthetic_stream(synthetic_root, 6)
    model = tiny_model(6)
    rec = Recorder()
    batch = 32
    strategy = DyTox(
        model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.02, weight_decay=1e-6),
        train_mb_size=batch, train_epochs=3, eval_mb_size=256, memory=30, warmup_epochs=1, warmup_lr=1e-4,
        min_lr=1e-5, finetune_epochs=2, finetune_lr=0.01, plugins=[rec],
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
    )
    assert strategy.plugins[0] is strategy.memory
    previous_ids = {}
    for t, experience in enumerate(scenario.train_stream):
        strategy.train(experience)
        assert model.classes_per_task == [2] * (t + 1) and len(model.task_tokens) == t + 1
        assert (model.head_div is None) == (t == 0) and (t == 0 or model.head_div.n_classes == 3)
        # memory: 30 items shared by the seen classes, herded per class, old classes keep their best ones
        ids = strategy.memory_sample_ids()
        assert sorted(ids) == list(range(2 * (t + 1))) and all(len(v) == 30 // (2 * (t + 1)) for v in ids.values())
        for c, prev in previous_ids.items():
            assert ids[c].tolist() == prev[: len(ids[c])].tolist()
        previous_ids = ids
        assert strategy.phase is None and strategy.old_model is None
        assert all(p.requires_grad for p in model.parameters())
    results = strategy.eval(scenario.test_stream)
    assert 0.0 <= results["Top1_Acc_Stream/eval_phase/test_stream/Task000"] <= 1.0

    # KD weight: n_old / n_all in the main phase, no distillation in finetuning.
    main = {t: {round(lam, 6) for e, ph, lam in rec.kd if e == t and ph == "main"} for t in range(3)}
    assert main == {0: {0.0}, 1: {0.5}, 2: {round(4 / 6, 6)}}
    assert {lam for e, ph, lam in rec.kd if ph == "finetune"} == {0.0}
    assert {e for e, ph, _ in rec.kd if ph == "finetune"} == {1, 2}  # no finetuning after the first task

    # lr: warm-up from warmup_lr, then cosine from the scaled lr; finetuning at its scaled constant lr.
    main_lrs = [lr for e, ph, lr in rec.lrs if e == 1 and ph == "main"]
    peak = scaled_lr(0.02, batch)
    assert main_lrs[0] == pytest.approx(1e-4) and main_lrs[1] == pytest.approx(peak)
    assert main_lrs[2] < main_lrs[1]
    assert [lr for e, ph, lr in rec.lrs if e == 1 and ph == "finetune"] == [pytest.approx(scaled_lr(0.01, batch))] * 2

    # Main phase of task 1: the old token and head stay, the encoder learns.
    start, ft, end = rec.snapshots[(1, "start_main")], rec.snapshots[(1, "start_finetune")], rec.snapshots[(1, "end")]
    for k in ("task_tokens.0", "heads.0.fc.weight", "heads.0.norm.weight"):
        assert torch.equal(start[k], ft[k]), k
    assert not torch.equal(start["sabs.0.attn.qkv.weight"], ft["sabs.0.attn.qkv.weight"])
    # Finetuning: encoder (patch and position embeddings, SABs) unchanged; heads, tokens and TAB changed.
    encoder = [k for k in ft if k.startswith(("patch_embed.", "pos_embed", "sabs."))]
    assert encoder and all(torch.equal(ft[k], end[k]) for k in encoder)
    for k in ("heads.0.fc.weight", "heads.1.fc.weight", "task_tokens.0", "tabs.0.attn.qkv.weight"):
        assert not torch.equal(ft[k], end[k]), k
    assert torch.equal(ft["head_div.fc.weight"], end["head_div.fc.weight"])  # divergence loss: main phase only


def test_memory_in_bytes_and_no_finetuning(synthetic_root):
    torch.manual_seed(0)
    scenario = synthetic_stream(synthetic_root, 4)
    model = tiny_model(4)
    strategy = DyTox(
        model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.01), train_mb_size=64, train_epochs=1,
        eval_mb_size=256, memory={"bytes": "40KB"}, finetune=False, augment=None,
        evaluator=EvaluationPlugin(loggers=[]),
    )
    for experience in scenario.train_stream:
        strategy.train(experience)
    item = 3 * 32 * 32
    assert strategy.memory.capacity == 40_000 // item == 13
    assert len(strategy.memory) == 4 * (13 // 4) and strategy.memory.replay_nbytes() == len(strategy.memory) * item
    assert find_normalization(scenario.train_stream[0].dataset) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# --------------------------------------------------------------------------- runner and YAML


def _experiment(tmp_path: Path, synthetic_root: Path) -> Path:
    doc = {
        "name": "tiny_dytox",
        "runs": [0],
        "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "toybox", "protocol": "class_iid",
                      "n_classes": 4, "n_objects": 2, "image_size": 32},
        "model": {"name": "dytox", **TINY},
        "strategy": {"name": "dytox", "train_mb_size": 32, "train_epochs": 1, "first_experience_epochs": 2,
                     "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 1.0e-6},
                     "memory": 20, "warmup_epochs": 1, "finetune_epochs": 1, "finetune_lr": 0.005},
        "evaluation": {"metrics": ["accuracy", "replay_bytes"], "loggers": ["csv"]},
    }
    path = tmp_path / "tiny_dytox.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow
def test_runner_runs_dytox_and_resumes_identically(tmp_path, synthetic_root):
    from streamcl.config import load_experiment
    from streamcl.runner import run_experiment

    root = run_experiment(load_experiment(_experiment(tmp_path / "a", synthetic_root)), progress=False)
    a = json.loads((root / "dytox" / "run0" / "summary.json").read_text())
    assert a["n_experiences"] == 2 and a["stored_bytes"] == 20 * 3 * 32 * 32

    path_b = _experiment(tmp_path / "b", synthetic_root)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_experiment(path_b), progress=False, stop_after=1)
    root_b = run_experiment(load_experiment(path_b), progress=False)  # resumes: memory by sample id, model regrown
    b = json.loads((root_b / "dytox" / "run0" / "summary.json").read_text())
    assert a["accuracy_per_experience"] == b["accuracy_per_experience"] and a["stored_bytes"] == b["stored_bytes"]


DYTOX_FILES = sorted(str(p.relative_to(ROOT)) for p in [*(ROOT / "experiments" / "dytox").glob("*.yaml"),
                                                        *(ROOT / "experiments" / "synthetic").glob("dytox_*.yaml")])


def test_dytox_experiment_files_exist():
    assert {"experiments/dytox/cifar100_b0_10steps.yaml", "experiments/dytox/cifar100_b0_20steps.yaml",
            "experiments/dytox/cifar100_b0_50steps.yaml", "experiments/dytox/imagenet100_10steps.yaml",
            "experiments/synthetic/dytox_finetune.yaml"} <= set(DYTOX_FILES)


@pytest.mark.parametrize("path", DYTOX_FILES)
def test_dytox_experiment_files_validate(path):
    from streamcl.config import load_experiment

    exp = load_experiment(ROOT / path)
    for cell in exp.cells:
        assert cell.config["model"]["name"] == "dytox" and cell.config["strategy"]["name"] == "dytox"
