"""The MAS experiment: AlexNet with frozen layers and one head per task, the paper's importance, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils.data_attribute import DataAttribute, TaskLabels
from avalanche.models.utils import avalanche_forward
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin, MASPlugin
from torch import nn

from streamcl.benchmarks.scenarios import StreamDataset
from streamcl.config import load_experiment
from streamcl.errors import StreamclError
from streamcl.models.classifiers import MultiHeadNet, alexnet
from streamcl.plugins.mas_paper import MASPaperPlugin
from streamcl.runner import read_metrics, run_experiment

REPO = Path(__file__).resolve().parents[1]


def task_stream(n_tasks: int = 2, per_task: int = 2, n: int = 10, seed: int = 0):
    """Task-incremental tensor stream: task t has labels 0..per_task-1 and task label t."""
    g = torch.Generator().manual_seed(seed)
    xs, ys, ts = [], [], []
    for t in range(n_tasks):
        means = 2 * torch.randn(per_task, 6, generator=g)
        y = torch.arange(per_task).repeat_interleave(n)
        xs.append(means[y] + 0.3 * torch.randn(len(y), 6, generator=g))
        ys.append(y)
        ts.append(torch.full((len(y),), t))
    x, y, t = torch.cat(xs), torch.cat(ys), torch.cat(ts)
    base = StreamDataset([torch.utils.data.TensorDataset(x, y)],
                         data_attributes=[DataAttribute(y.tolist(), "targets"), TaskLabels(t.tolist())])
    train = [base.subset(torch.nonzero(t == k).flatten().tolist()).train() for k in range(n_tasks)]
    return with_task_labels(with_classes_timeline(benchmark_from_datasets(train=train, test=train)))


def mh_net() -> MultiHeadNet:
    backbone = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5))
    return MultiHeadNet(backbone, 8)


def expected_importance(model, dataset, batch_size: int):
    """The paper's Omega computed directly: eval mode, |d sum_batch ||F(x)||^2 / d theta| summed, / N."""
    model.eval()
    out = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    loader = torch.utils.data.DataLoader(dataset.eval(), batch_size=batch_size, shuffle=False)
    n = 0
    for x, _, t in loader:
        model.zero_grad()
        (avalanche_forward(model, x, t) ** 2).sum().backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                out[name] += p.grad.abs()
        n += len(x)
    model.zero_grad()
    return {k: v / n for k, v in out.items()}


def _strategy(model, plugin):
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=6,
                 eval_mb_size=32, train_epochs=2, plugins=[plugin], evaluator=EvaluationPlugin(loggers=[]))


@pytest.mark.parametrize("accumulate", ["sum", "average"])
def test_paper_importance_is_eval_mode_and_summed_over_tasks(accumulate):
    bm = task_stream()
    torch.manual_seed(0)
    model = mh_net()
    plugin = MASPaperPlugin(lambda_reg=0.01, accumulate=accumulate, alpha=0.3)
    strategy = _strategy(model, plugin)
    strategy.train(bm.train_stream[0])
    first = expected_importance(model, bm.train_stream[0].dataset, 6)
    for name, imp in plugin.importance.items():
        assert torch.allclose(imp.data, first[name], atol=1e-6), name
    strategy.train(bm.train_stream[1])
    second = expected_importance(model, bm.train_stream[1].dataset, 6)
    for name, imp in plugin.importance.items():
        if name not in first or first[name].shape != second[name].shape:  # a head created by this task
            want = second[name]
        else:
            a = first[name]
            want = a + second[name] if accumulate == "sum" else 0.3 * a + 0.7 * second[name]
        assert torch.allclose(imp.data, want, atol=1e-6), name
    head0 = "classifier.classifiers.0.classifier.weight"
    assert plugin.importance[head0].data.abs().sum() > 0  # task 0's head keeps its importance
    if accumulate == "sum":
        assert torch.allclose(plugin.importance[head0].data, first[head0], atol=1e-6)


def test_paper_importance_leaves_batchnorm_statistics_alone_unlike_avalanches():
    bm = task_stream(n_tasks=1)
    for plugin, changes in ((MASPaperPlugin(0.01), False), (MASPlugin(0.01), True)):
        torch.manual_seed(0)
        model = mh_net()
        strategy = _strategy(model, plugin)
        bn = model.backbone[1]
        seen = {}
        orig = plugin._get_importance

        def spy(s, _orig=orig, _seen=seen, _bn=bn):
            _seen["before"] = _bn.running_mean.clone()
            out = _orig(s)
            _seen["after"] = _bn.running_mean.clone()
            return out

        plugin._get_importance = spy
        strategy.train(bm.train_stream[0])
        assert (not torch.equal(seen["before"], seen["after"])) is changes, type(plugin).__name__


def test_alexnet_layout_freezing_and_torchvision_weights(tmp_path):
    net = alexnet(50, head="multi", num_freeze_layers=2)
    assert isinstance(net, MultiHeadNet) and net.backbone.num_features == 4096
    tv = torchvision.models.alexnet(weights=None)
    ours = set(net.backbone.state_dict())
    assert ours == set(tv.state_dict()) - {"classifier.6.weight", "classifier.6.bias"}
    frozen = {n for n, p in net.backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias"}
    torch.save(tv.state_dict(), tmp_path / "alexnet.pth")
    loaded = alexnet(50, weights=str(tmp_path / "alexnet.pth"))
    assert torch.equal(loaded.backbone.classifier[4].weight, tv.classifier[4].weight)
    assert loaded.meta["pretrained"] is True
    with pytest.raises(StreamclError, match="num_freeze_layers"):
        alexnet(10, num_freeze_layers=8)


def test_frozen_layers_do_not_change_while_training():
    torch.manual_seed(0)
    net = alexnet(4, head="multi", width=0.125, num_freeze_layers=3, dropout=0.0)
    x = torch.randn(12, 3, 64, 64)
    y = torch.arange(2).repeat(6)
    base = StreamDataset([torch.utils.data.TensorDataset(x, y)],
                         data_attributes=[DataAttribute(y.tolist(), "targets"), TaskLabels([0] * 12)])
    bm = with_task_labels(with_classes_timeline(benchmark_from_datasets(train=[base.train()], test=[base.eval()])))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    strategy = Naive(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-3),
                     train_mb_size=4, train_epochs=1, evaluator=EvaluationPlugin(loggers=[]))
    strategy.train(bm.train_stream[0])
    for n, p in net.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed is not n.startswith(("backbone.features.0.", "backbone.features.3.",
                                            "backbone.features.6.")), n


def _tiny_mas_doc(tmp_path, methods):
    """experiments/synthetic/mas_tiny_imagenet.yaml at test size (1 epoch, 4 + 2 images per class)."""
    doc = yaml.safe_load((REPO / "experiments" / "synthetic" / "mas_tiny_imagenet.yaml").read_text())
    doc["output_dir"] = str(tmp_path / "runs")
    doc["threads"] = 1
    doc["benchmark"].update(root=str(tmp_path / "data"), train_per_class=4, test_per_class=2)
    doc["model"]["width"] = 0.125
    doc["strategy"].update(first_experience_epochs=1, train_epochs=1)
    doc["methods"] = {k: doc["methods"][k] for k in methods}
    return doc


def _run(tmp_path, doc, name, stop_after=None):
    path = tmp_path / f"{name}.yaml"
    doc = dict(doc, output_dir=str(tmp_path / name))
    path.write_text(yaml.safe_dump(doc))
    exp = load_experiment(path)
    while True:
        try:
            return run_experiment(exp, progress=False, stop_after=stop_after)
        except KeyboardInterrupt:  # stop_after: "killed" after an experience; run again to resume
            continue


def last_first(rows):
    """Accuracy on task 0 after task 0 (only one head then: nothing to confuse it with)."""
    return next(r["value"] for r in rows if r["experience"] == 0
                and r["metric"] == "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000")


def test_mas_multi_head_experiment_runs_end_to_end(tmp_path):
    root = _run(tmp_path, _tiny_mas_doc(tmp_path, ("mas", "mas_paper")), "straight")
    for cell in ("mas", "mas_paper"):
        rows = read_metrics(root / cell / "run0" / "metrics.csv")
        last = {r["metric"]: r["value"] for r in rows if r["experience"] == 3}
        for t in range(4):
            assert f"Top1_Acc_Exp/eval_phase/test_stream/Task00{t}/Exp00{t}" in last
        for t in range(3):
            assert f"ExperienceForgetting/eval_phase/test_stream/Task00{t}/Exp00{t}" in last
        # task_agnostic: once per evaluation, a fraction (the model is not told the task)
        agnostic = [r for r in rows if r["metric"] == "TaskAgnostic_Acc_Stream/eval_phase/test_stream"]
        assert [r["experience"] for r in agnostic] == [0, 1, 2, 3]
        assert all(0.0 <= r["value"] <= 1.0 for r in agnostic)
        assert agnostic[0]["value"] == pytest.approx(last_first(rows)), "one task: task-agnostic = task-aware"
        summary = json.loads((root / cell / "run0" / "summary.json").read_text())
        assert summary["n_experiences"] == 4
        assert np.isfinite([r["value"] for r in rows]).all()


def test_mas_multi_head_experiment_resumes_exactly(tmp_path):
    """Killed after every task and resumed: heads, summed importances and anchors come back, same numbers."""
    doc = _tiny_mas_doc(tmp_path, ("mas_paper",))

    def det(root):
        rows = read_metrics(root / "mas_paper" / "run0" / "metrics.csv")
        return [(r["experience"], r["metric"], round(r["value"], 6)) for r in rows if "Time" not in r["metric"]]

    assert det(_run(tmp_path, doc, "resumed", stop_after=1)) == det(_run(tmp_path, doc, "straight"))
