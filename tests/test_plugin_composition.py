"""CRUMB and REMIND next to Avalanche's regularisers (EWC, MAS, LwF): every penalty reaches every step.

REMIND's per-sample steps are whole Avalanche steps (all callbacks), so EWC / MAS / LwF add
their terms to each of them; CRUMB's separate replay step adds the terms of the parameter
penalties (EWC, MAS) and leaves out LwF, whose distillation reads images that replayed items
do not have. In either plugin order the weights end the same, and differ from the method alone.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml
from torch import nn

from streamcl.errors import StreamclError
from streamcl.models import SplitNet
from streamcl.plugins import CRUMBPlugin

warnings.filterwarnings("ignore", message="PQCodec: training")


def model():
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(4))
    head = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 4))
    return SplitNet(trunk, head)


def stream():
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.benchmarks.utils.classification_dataset import TaskAwareSupervisedClassificationDataset
    from avalanche.benchmarks.utils.data_attribute import DataAttribute, TaskLabels
    from avalanche.benchmarks.utils.flat_data import ConstantSequence
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)

    def ds(classes, n):
        x = torch.cat([torch.randn(n, 3, 16, 16, generator=g) * 0.5 + c for c in classes])
        y = torch.tensor([c for c in classes for _ in range(n)])
        return TaskAwareSupervisedClassificationDataset(
            [TensorDataset(x, y)],
            data_attributes=[DataAttribute(y.tolist(), "targets"), TaskLabels(ConstantSequence(0, len(y)))],
        )

    bm = benchmark_from_datasets(train=[ds([0, 1], 8), ds([2, 3], 8)], test=[ds([0, 1], 2), ds([2, 3], 2)])
    return with_task_labels(with_classes_timeline(bm))


def remind_plugin():
    pytest.importorskip("faiss")
    from streamcl.plugins import REMINDPlugin

    return REMINDPlugin(memory=24, num_codebooks=4, nbits=4, n_replay=4, lr_schedule="constant", pq_niter=5,
                        base_epochs=2, seed=0)


def crumb_plugin(recipe="paper"):
    """CRUMB with the paper's separate replay step by default (what most tests here are about)."""
    return CRUMBPlugin(memory=8, n_blocks=16, block_dim=4, seed=0, recipe=recipe)


def other(name):
    from avalanche.training.plugins import EWCPlugin, LwFPlugin, MASPlugin

    return {"ewc": lambda: EWCPlugin(ewc_lambda=1e4), "mas": lambda: MASPlugin(lambda_reg=1e3),
            "lwf": lambda: LwFPlugin(alpha=10.0, temperature=2.0)}[name]()


def counting(plugin):
    """Wrap ``plugin.before_backward`` to record the mini-batch size it was called with."""
    calls = []
    real = plugin.before_backward

    def spy(strategy, **kwargs):
        calls.append(len(strategy.mb_output))
        return real(strategy, **kwargs)

    plugin.before_backward = spy
    return calls


def train(plugins, strategy_cls=None, **kw):
    from avalanche.training import Naive

    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    if strategy_cls is None:
        s = Naive(model=net, optimizer=opt, train_mb_size=4, eval_mb_size=8, plugins=plugins, evaluator=None)
    else:
        s = strategy_cls(model=net, optimizer=opt, train_mb_size=4, eval_mb_size=8, plugins=plugins,
                         evaluator=None, **kw)
    bm = stream()
    for exp in bm.train_stream:
        s.train(exp)
    return {k: v.detach().clone() for k, v in net.head.state_dict().items()}, s


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def distance(a, b):
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("reg", ["ewc", "lwf"])
def test_remind_per_sample_steps_carry_other_plugins_terms(reg):
    alone, _ = train([remind_plugin()])
    r = other(reg)
    calls = counting(r)
    plugin = remind_plugin()
    after, _ = train([plugin, r])
    before, _ = train([other(reg), remind_plugin()])
    assert same(after, before)  # the plugin order does not matter
    assert distance(after, alone) > 1e-4  # and the regulariser changed the weights
    # one call per per-sample step while streaming (batch of 1: the new example's logits),
    # one per mini-batch during the base initialisation (16 images, batches of 4, 2 epochs)
    assert calls.count(1) == plugin.steps == 16
    assert calls.count(4) == 2 * 4


def test_remind_strategy_takes_the_other_plugins():
    from streamcl.strategies import REMIND

    args = dict(memory=24, num_codebooks=4, nbits=4, n_replay=4, lr_schedule="constant", pq_niter=5,
                base_epochs=2, seed=0)
    pytest.importorskip("faiss")
    alone, s = train([], REMIND, **args)
    with_ewc, s2 = train([other("ewc")], REMIND, **args)
    plain, _ = train([remind_plugin()])
    plain_ewc, _ = train([remind_plugin(), other("ewc")])
    assert same(alone, plain) and same(with_ewc, plain_ewc)  # Naive + plugin trains exactly as REMIND
    assert distance(with_ewc, alone) > 1e-4
    assert s.latent_plugin is s.plugins[0] and "training_epoch" not in vars(s2)


@pytest.mark.parametrize("reg", ["ewc", "mas"])
def test_crumb_replay_step_carries_parameter_penalties(reg):
    alone, _ = train([crumb_plugin()])
    r = other(reg)
    calls = counting(r)
    plugin = crumb_plugin()
    after, _ = train([plugin, r])
    before, _ = train([other(reg), crumb_plugin()])
    assert same(after, before)
    assert distance(after, alone) > 1e-4
    # every new-data step (4 per experience) and every replay step adds the penalty
    assert plugin.replay_steps > 0 and len(calls) == 2 * 4 + plugin.replay_steps


@pytest.mark.parametrize("reg", ["ewc", "lwf"])
def test_crumb_joint_replay_takes_each_penalty_once_per_step(reg):
    """The default recipe replays inside the new-data step: a penalty (or LwF's distillation,
    which sees only the new batch's rows of mb_output) is added once per step, in both orders."""
    alone, _ = train([crumb_plugin("balanced")])
    r = other(reg)
    calls = counting(r)
    plugin = crumb_plugin("balanced")
    after, _ = train([plugin, r])
    before, _ = train([other(reg), crumb_plugin("balanced")])
    assert plugin.replay_mode == "joint" and plugin.replay_steps > 0
    assert same(after, before) and distance(after, alone) > 1e-4
    assert calls == [4] * (2 * 4)  # new-data steps only, each with the new batch's 4 rows


def test_crumb_replay_step_leaves_out_image_distillation():
    """LwF distils on mb_x, the images of the new batch: replayed latent items have none, so
    LwF acts on the new-data steps only (its term in a replay step would pair the new batch's
    images with the replayed items' logits)."""
    lwf = other("lwf")
    calls = counting(lwf)
    plugin = crumb_plugin()
    with_lwf, _ = train([plugin, lwf])
    alone, _ = train([crumb_plugin()])
    assert plugin.replay_steps > 0 and len(calls) == 2 * 4  # new-data steps only
    assert distance(with_lwf, alone) > 1e-4
    from streamcl.plugins.latent_replay import is_parameter_penalty

    assert not is_parameter_penalty(lwf) and is_parameter_penalty(other("ewc"))

    class MyPenalty:
        parameter_penalty = True

    assert is_parameter_penalty(MyPenalty())


def test_remind_per_sample_needs_the_standard_loop():
    from avalanche.training import Naive

    pytest.importorskip("faiss")

    class OwnLoop(Naive):
        def training_epoch(self, **kwargs):
            super().training_epoch(**kwargs)

    net = model()
    s = OwnLoop(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.05), train_mb_size=4,
                eval_mb_size=8, plugins=[remind_plugin()], evaluator=None)
    bm = stream()
    s.train(bm.train_stream[0])  # the base initialisation is ordinary training
    with pytest.raises(StreamclError, match="OwnLoop has a training loop of its own.*streamcl.strategies.REMIND"
                                            ".*mode='batched'"):
        s.train(bm.train_stream[1])
    from streamcl.plugins import REMINDPlugin

    batched = REMINDPlugin(memory=24, num_codebooks=4, nbits=4, mode="batched", n_replay=4, pq_niter=5, seed=0)
    net = model()
    s = OwnLoop(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.05), train_mb_size=4,
                eval_mb_size=8, plugins=[batched], evaluator=None)
    for exp in bm.train_stream:
        s.train(exp)
    assert batched.steps > 0


@pytest.mark.slow
def test_through_the_runner(tmp_path, synthetic_root):
    """From YAML: REMIND + EWC / LwF and CRUMB + EWC / MAS in both orders run, and change the results."""
    from streamcl.config import load_experiment
    from streamcl.results import read_metrics
    from streamcl.runner import run_experiment

    pytest.importorskip("faiss")
    remind = {"name": "remind", "memory": 40, "num_codebooks": 8, "pq_train_vectors": 512, "n_replay": 4,
              "lr_schedule": "constant"}
    crumb = {"name": "crumb", "memory": 40, "n_blocks": 32, "block_dim": 8}
    ewc, lwf, mas = {"name": "ewc", "ewc_lambda": 1e4}, {"name": "lwf", "alpha": 10.0}, {"name": "mas", "lambda_reg": 1e3}
    methods = {
        "remind": {"plugins": [remind]},
        "remind_ewc": {"plugins": [remind, ewc]},
        "ewc_remind": {"plugins": [ewc, remind]},
        "lwf_remind": {"plugins": [lwf, remind]},
        "remind_strategy_ewc": {"strategy": {**remind}, "plugins": [ewc]},
        "crumb": {"plugins": [crumb]},
        "crumb_mas": {"plugins": [crumb, mas]},
        "ewc_crumb": {"plugins": [ewc, crumb]},
    }
    doc = {
        "name": "compose", "runs": [0], "threads": 1, "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "toybox", "n_classes": 4,
                      "n_objects": 2, "image_size": 32},
        "model": {"name": "small_cnn_cut", "width": 8},
        "strategy": {"name": "naive", "train_mb_size": 16, "train_epochs": 1, "first_experience_epochs": 2,
                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "evaluation": {"metrics": ["accuracy", "loss"], "loggers": ["csv"]},
        "methods": methods,
    }
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(doc))
    root = run_experiment(load_experiment(path), progress=False)

    def losses(cell):
        return [(r["experience"], r["metric"], r["value"]) for r in read_metrics(root / cell / "run0" / "metrics.csv")
                if r["metric"].startswith("Loss_Stream")]

    assert losses("remind_ewc") == losses("ewc_remind") == losses("remind_strategy_ewc")
    for cell in ("remind_ewc", "lwf_remind"):
        assert losses(cell) != losses("remind"), cell
    for cell in ("crumb_mas", "ewc_crumb"):
        assert losses(cell) != losses("crumb"), cell
