"""WA: weight aligning, the KD weight schedule, clipping, herding memory, growing heads and checkpoint state."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils.data_attribute import DataAttribute, TaskLabels
from avalanche.benchmarks.utils.flat_data import ConstantSequence
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin
from continuum.rehearsal.herding import herd_closest_to_barycenter
from torch import nn

from streamcl.benchmarks.scenarios import StreamDataset, subset_by_sample_id
from streamcl.errors import CheckpointError, ConfigError
from streamcl.models.classifiers import (
    GrowingClassifier,
    IncrementalNet,
    MultiHeadNet,
    cifar_resnet,
    resnet18,
    resnet32,
)
from streamcl.strategies.wa import WA, align_weights, extract_features, kd_loss, kd_weight, weight_norm_ratio

# ------------------------------------------------------------------ a tiny class-incremental tensor stream


def tensor_stream(n_exp: int = 3, per_exp: int = 2, n_train: int = 12, n_test: int = 4, seed: int = 0):
    """Gaussian blobs of shape 3x4x4, classes ``per_exp`` per experience, with streamcl's ``sample_id``."""
    g = torch.Generator().manual_seed(seed)
    n_classes = n_exp * per_exp
    means = 2.0 * torch.randn(n_classes, 3, 4, 4, generator=g)
    ys = torch.cat([torch.arange(n_classes).repeat_interleave(n_train), torch.arange(n_classes).repeat_interleave(n_test)])
    xs = means[ys] + 0.5 * torch.randn(len(ys), 3, 4, 4, generator=g)
    n = len(ys)
    base = StreamDataset(
        [torch.utils.data.TensorDataset(xs, ys)],
        data_attributes=[DataAttribute(ys.tolist(), "targets"), TaskLabels(ConstantSequence(0, n)),
                         DataAttribute(list(range(n)), "sample_id")],
    )
    n_tr = n_classes * n_train
    is_train = np.arange(n) < n_tr
    train, test = [], []
    for t in range(n_exp):
        cls = np.isin(ys.numpy(), np.arange(t * per_exp, (t + 1) * per_exp))
        train.append(base.subset(np.flatnonzero(cls & is_train).tolist()).train())
        test.append(base.subset(np.flatnonzero(cls & ~is_train).tolist()).eval())
    bm = with_task_labels(with_classes_timeline(benchmark_from_datasets(train=train, test=test)))
    bm.streamcl_info = SimpleNamespace(dataset=base, train_sample_ids=np.arange(n_tr), n_classes=n_classes)
    return bm


def tiny_net(bias: bool = False) -> IncrementalNet:
    return IncrementalNet(nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU()), GrowingClassifier(16, bias=bias))


def make_wa(model, **kw) -> WA:
    kw.setdefault("memory", 6)
    return WA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
              train_mb_size=8, eval_mb_size=32, train_epochs=kw.pop("epochs", 2),
              evaluator=EvaluationPlugin(loggers=[]), **kw)


# ------------------------------------------------------------------ weight aligning


def test_align_weights_scales_only_the_new_rows_by_gamma():
    torch.manual_seed(0)
    w = torch.rand(7, 5)
    w[[3, 5]] *= 4.0  # new classes with larger rows
    before = w.clone()
    old, new = [0, 2], [3, 5]
    expected_gamma = (w[old].norm(dim=1).mean() / w[new].norm(dim=1).mean()).item()
    assert weight_norm_ratio(w, old, new) == pytest.approx(1 / expected_gamma, rel=1e-6)
    gamma = align_weights(w, old, new)
    assert gamma == pytest.approx(expected_gamma, rel=1e-6) and gamma < 1
    assert torch.allclose(w[new], before[new] * expected_gamma)
    untouched = [0, 1, 2, 4, 6]  # old rows and rows of classes in neither set
    assert torch.equal(w[untouched], before[untouched])
    assert weight_norm_ratio(w, old, new) == pytest.approx(1.0, abs=1e-6)


def test_kd_weight_schedule_and_t_squared_switch():
    assert [kd_weight(o, s) for o, s in [(0, 2), (2, 4), (4, 6), (10, 20), (90, 100)]] == [0.0, 0.5, 4 / 6, 0.5, 0.9]
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    p = F.softmax(teacher / 2, dim=1)
    manual = (p * (p.log() - F.log_softmax(student / 2, dim=1))).sum(1).mean()
    assert kd_loss(student, teacher, 2.0) == pytest.approx(manual.item(), rel=1e-5)
    assert kd_loss(student, teacher, 2.0, t_squared=True) == pytest.approx(4 * manual.item(), rel=1e-5)
    assert kd_loss(teacher, teacher, 2.0) == pytest.approx(0.0, abs=1e-6)


class _Probe(SupervisedPlugin):
    """Records l per experience and checks the loss WA builds against the formula on every batch."""

    def __init__(self, loss_scale: str = "ce"):
        super().__init__()
        self.lambdas, self.checked, self.loss_scale = [], 0, loss_scale

    def before_training_epoch(self, strategy, **kw):
        if not self.lambdas or self.lambdas[-1][0] != strategy.clock.train_exp_counter:
            self.lambdas.append((strategy.clock.train_exp_counter, strategy.kd_lambda))

    def before_backward(self, strategy, **kw):
        out, y = strategy.mb_output, strategy.mb_y
        ce = F.cross_entropy(out, y)
        if strategy.old_model is None:
            expected = ce
        else:
            old = strategy.old_classes
            with torch.no_grad():
                teacher = strategy.old_model(strategy.mb_x)[:, old]
            p = F.softmax(teacher / 2, dim=1)
            kd = (p * (p.log() - F.log_softmax(out[:, old] / 2, dim=1))).sum(1).mean()
            lam = len(old) / (len(old) + len(strategy.new_classes))
            expected = (1 - lam) * ce + lam * kd
            if self.loss_scale == "ce":  # the same divided by 1 - l: CE at full weight
                expected = ce + lam / (1 - lam) * kd
        assert strategy.loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
        self.checked += 1


@pytest.mark.parametrize("loss_scale", ["ce", "paper"])
def test_loss_uses_n_old_over_n_seen_per_experience(loss_scale):
    bm = tensor_stream(n_exp=3)
    torch.manual_seed(0)
    probe = _Probe(loss_scale)
    wa = make_wa(tiny_net(), plugins=[probe], **({} if loss_scale == "ce" else {"loss_scale": loss_scale}))
    for exp in bm.train_stream:
        wa.train(exp)
    assert probe.lambdas == [(0, 0.0), (1, 0.5), (2, pytest.approx(4 / 6))]
    assert probe.checked >= 3 * 2 * 2
    assert wa.seen_classes == list(range(6)) and wa.old_classes == [0, 1, 2, 3] and wa.new_classes == [4, 5]


@pytest.mark.parametrize("clip", [True, False])
def test_clipping_switch(clip):
    bm = tensor_stream(n_exp=2)
    torch.manual_seed(0)
    model = tiny_net()
    wa = make_wa(model, clip_weights=clip, epochs=1)
    wa.train(bm.train_stream[0])
    w = model.classifier.weight
    assert w.shape[0] == 2
    if clip:
        assert (w >= 0).all()
    else:
        assert (w < 0).any()  # random init has negative weights and nothing removes them


def test_strategy_aligns_after_each_later_experience_and_logs_the_ratio():
    bm = tensor_stream(n_exp=3)
    torch.manual_seed(0)
    model = tiny_net()
    wa = make_wa(model, epochs=2)
    wa.train(bm.train_stream[0])
    snap = model.classifier.weight.detach().clone()
    assert wa.last_gamma is None  # nothing to align after the first experience
    seen = {}

    class Spy(SupervisedPlugin):
        def before_training_exp(self, strategy, **kw):
            seen["w_before"] = None

        def after_training_epoch(self, strategy, **kw):
            seen["w_before"] = strategy.classifier.weight.detach().clone()

    wa.plugins.insert(0, Spy())
    wa.train(bm.train_stream[1])
    w = model.classifier.weight.detach()
    last_epoch = seen["w_before"]  # classifier after the last optimiser step, before aligning
    assert torch.equal(w[:2], last_epoch[:2])  # old rows untouched by the alignment
    assert torch.allclose(w[2:4], last_epoch[2:4] * wa.last_gamma)
    assert not torch.equal(w[:2], snap)  # (training did change the old rows)
    metrics = wa.evaluator.get_all_metrics()
    after = metrics["WA_NormRatio_AfterAlign/train_phase/train_stream"][1][-1]
    before = metrics["WA_NormRatio_BeforeAlign/train_phase/train_stream"][1][-1]
    assert after == pytest.approx(1.0, abs=1e-4)
    assert before == pytest.approx(1.0 / wa.last_gamma, rel=1e-4)


def test_no_align_keeps_the_ratio_and_eval_reports_new_class_share():
    bm = tensor_stream(n_exp=2)
    torch.manual_seed(0)
    wa = make_wa(tiny_net(), align=False)
    for exp in bm.train_stream:
        wa.train(exp)
    wa.eval(bm.test_stream)
    m = wa.evaluator.get_last_metrics()
    assert m["WA_NormRatio_AfterAlign/train_phase/train_stream"] == m["WA_NormRatio_BeforeAlign/train_phase/train_stream"]
    assert wa.last_gamma is None
    assert m["WA_NewClassTrueShare/eval_phase/test_stream"] == pytest.approx(0.5)
    assert 0.0 <= m["WA_NewClassPredShare/eval_phase/test_stream"] <= 1.0


# ------------------------------------------------------------------ herding memory


def test_memory_is_continuum_herding_on_the_models_features():
    bm = tensor_stream(n_exp=2, n_train=10)
    torch.manual_seed(0)
    model = tiny_net()
    wa = make_wa(model, memory=8)  # 4 per class after the first experience, 2 after the second
    first_ids: dict = {}
    for t, exp in enumerate(bm.train_stream):
        wa.train(exp)
        feats, labels = extract_features(model, exp.dataset, torch.device("cpu"), 7)
        ids = np.asarray(list(exp.dataset.sample_id))
        per_class = 8 // len(wa.seen_classes)
        picked, picked_y, _ = herd_closest_to_barycenter(ids, labels, np.zeros(len(ids)), feats, per_class)
        for c in wa.new_classes:
            assert list(wa.memory.per_class[c].sample_id) == picked[picked_y == c].tolist()
        if t == 1:  # old classes shrink to the first exemplars of their herding order
            assert [len(wa.memory.per_class[c]) for c in range(4)] == [2, 2, 2, 2]
            assert list(wa.memory.per_class[0].sample_id) == first_ids[0][:2]
        first_ids = {c: list(wa.memory.per_class[c].sample_id) for c in wa.memory.per_class}
    assert len(wa.memory) == 8 and wa.replay_nbytes() == 8 * 48


def test_memory_joins_the_training_data_and_a_byte_budget_counts_images():
    bm = tensor_stream(n_exp=2, n_train=10)
    torch.manual_seed(0)
    wa = make_wa(tiny_net(), memory={"bytes": 6 * 48 + 10})  # 6 items of 48 uint8 values fit
    wa.train(bm.train_stream[0])
    assert wa.memory.capacity() == 6 and len(wa.memory) == 6
    sizes = {}

    class Size(SupervisedPlugin):
        def before_training_epoch(self, strategy, **kw):
            sizes["n"] = len(strategy.adapted_dataset)

    wa.plugins.insert(0, Size())
    wa.train(bm.train_stream[1])
    assert sizes["n"] == 20 + 6
    assert wa.exemplar_sampling == "concat"  # the default: one loader over data + exemplars, as the paper
    with pytest.raises(ConfigError):
        make_wa(tiny_net(), memory={"bytes": "lots"})
    with pytest.raises(ConfigError, match="single-head"):
        make_wa(MultiHeadNet(nn.Sequential(nn.Flatten(), nn.Linear(48, 8)), 8))


def test_balanced_sampling_puts_a_memory_batch_beside_every_batch():
    """``exemplar_sampling: balanced``: Avalanche's ReplayDataLoader, ``train_mb_size`` new + ``mem_mb_size`` exemplars."""
    bm = tensor_stream(n_exp=2, n_train=12)
    torch.manual_seed(0)
    wa = make_wa(tiny_net(), memory=8, exemplar_sampling="balanced", mem_mb_size=4, epochs=1)
    wa.train(bm.train_stream[0])  # no exemplars yet: Avalanche's own loader
    batches, sizes = [], []

    class Batches(SupervisedPlugin):
        def before_training_epoch(self, strategy, **kw):
            sizes.append(len(strategy.adapted_dataset))

        def before_backward(self, strategy, **kw):
            batches.append(strategy.mb_y.tolist())

    wa.plugins.insert(0, Batches())
    wa.train(bm.train_stream[1])
    assert sizes == [24]  # the experience alone: exemplars come from their own loader
    assert len(batches) == 3  # one pass over the 24 new images in batches of 8
    for ys in batches:
        assert len(ys) == 8 + 4 and sum(y in (0, 1) for y in ys) == 4 and sum(y in (2, 3) for y in ys) == 8


# ------------------------------------------------------------------ checkpoint state


def test_state_dict_round_trip_and_missing_state_fails_loudly(tmp_path):
    bm = tensor_stream(n_exp=3)
    torch.manual_seed(0)
    model = tiny_net()
    wa = make_wa(model)
    for exp in bm.train_stream[:2]:
        wa.train(exp)
    state = wa.state_dict()
    assert state["memory_classes"] == [0, 1, 2, 3]
    path = tmp_path / "wa_state.pt"
    torch.save(state, path)
    state = torch.load(path, weights_only=True)  # tensors and plain values only
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.int64 for t in state["memory_ids"])

    fresh = tiny_net()
    fresh.load_state_dict(model.state_dict())  # grows its head from 2 to 4 rows
    assert fresh.classifier.weight.shape == (4, 16)
    wa2 = make_wa(fresh)
    wa2.clock.train_exp_counter = 2
    with pytest.raises(CheckpointError, match="without its state"):
        wa2.train(bm.train_stream[2])
    wa2 = make_wa(fresh)
    wa2.load_state_dict(state, dataset_from_ids=lambda ids: subset_by_sample_id(bm, ids.tolist()))
    assert {c: list(d.sample_id) for c, d in wa2.memory.per_class.items()} == \
        {c: list(d.sample_id) for c, d in wa.memory.per_class.items()}
    for (k, a), (_, b) in zip(wa.old_model.state_dict().items(), wa2.old_model.state_dict().items()):
        assert torch.equal(a, b), k
    assert not any(p.requires_grad for p in wa2.old_model.parameters())
    with pytest.raises(CheckpointError):
        make_wa(tiny_net()).load_state_dict(state)


# ------------------------------------------------------------------ models


def test_growing_classifier_grows_per_experience_masks_unseen_and_resizes_on_load():
    bm = tensor_stream(n_exp=3)
    head = GrowingClassifier(8, bias=False)
    assert head.classifier.bias is None
    head.train()
    head.adaptation(bm.train_stream[0])
    head.adaptation(bm.train_stream[1])
    assert head.weight.shape == (4, 8) and head.active_units.tolist() == [1, 1, 1, 1]
    head.eval()
    head.adaptation(bm.train_stream[2])  # eval-time growth: rows added but masked
    out = head(torch.randn(2, 8))
    assert out.shape == (2, 6) and (out[:, 4:] == -1000).all() and (out[:, :4] != -1000).all()
    small = GrowingClassifier(8, bias=False)
    small.load_state_dict(head.state_dict())
    assert torch.equal(small.weight, head.weight) and torch.equal(small.active_units, head.active_units)


def test_multi_head_net_reloads_every_head():
    net = MultiHeadNet(nn.Sequential(nn.Flatten(), nn.Linear(48, 8)), 8)
    exps = [SimpleNamespace(classes_in_this_experience={0, 1, 2}, task_labels=[t]) for t in range(3)]
    net.train()
    for e in exps:
        net.adaptation(e)
        net.classifier.adaptation(e)
    x, t = torch.randn(4, 3, 4, 4), torch.tensor([0, 1, 2, 2])
    fresh = MultiHeadNet(nn.Sequential(nn.Flatten(), nn.Linear(48, 8)), 8)
    fresh.load_state_dict(net.state_dict())
    net.eval(), fresh.eval()
    assert torch.equal(fresh(x, t), net(x, t)) and fresh(x, t).shape == (4, 3)


def test_backbones():
    net = resnet32(10)
    n_params = sum(p.numel() for p in net.backbone.parameters())
    assert 0.45e6 < n_params < 0.48e6  # ResNet-32 for CIFAR: ~0.46 M
    assert net.backbone.num_features == 64 and len(net.backbone.stage1) == 5
    assert net.features(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    small = cifar_resnet(10, depth=8)
    assert len(small.backbone.stage3) == 1
    r18 = resnet18(10, stem="cifar", head="fixed")
    assert r18(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert r18.backbone.conv1.stride == (1, 1) and isinstance(r18.backbone.maxpool, nn.Identity)
    assert resnet18(10).backbone.conv1.kernel_size == (7, 7)


# ------------------------------------------------------------------ resume through the runner


def test_wa_on_a_growing_head_resumes_exactly_through_the_runner(tmp_path):
    """Killed after every experience and resumed: same metrics as an uninterrupted run (old model, memory, head)."""
    import yaml

    from streamcl.config import load_experiment
    from streamcl.runner import read_metrics, run_experiment

    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    doc = yaml.safe_load((repo / "experiments" / "synthetic" / "wa_ablation.yaml").read_text())
    doc.update(runs=[0], threads=1, evaluation={"metrics": ["accuracy"], "loggers": ["csv"]})
    doc["benchmark"].update(root=str(tmp_path / "data"), n_classes=6, train_per_class=6, test_per_class=3)
    doc["strategy"].update(first_experience_epochs=1, train_epochs=1, memory=6)
    doc["methods"] = {"wa": {}}
    results = []
    for name, stop in (("straight", None), ("resumed", 1)):
        doc["output_dir"] = str(tmp_path / name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        exp = load_experiment(path)
        while True:
            try:
                root = run_experiment(exp, progress=False, stop_after=stop)
                break
            except KeyboardInterrupt:
                continue
        rows = read_metrics(root / "wa" / "run0" / "metrics.csv")
        results.append([(r["experience"], r["metric"], round(r["value"], 6)) for r in rows if "Time" not in r["metric"]])
    assert results[0] == results[1]
    assert any(m.startswith("WA_NormRatio_AfterAlign") for _, m, _ in results[0])


# ------------------------------------------------------------------ composition with Avalanche plugins

def _train_wa_with(plugins_factory) -> torch.Tensor:
    torch.manual_seed(0)
    bm = tensor_stream(n_exp=2)
    model = tiny_net()
    wa = make_wa(model, plugins=plugins_factory(), epochs=1)
    for exp in bm.train_stream:
        wa.train(exp, shuffle=False)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _plugin(name: str):
    from avalanche.training.plugins import EWCPlugin, LwFPlugin, ReplayPlugin

    return {"ewc": lambda: EWCPlugin(ewc_lambda=50.0), "lwf": lambda: LwFPlugin(alpha=5.0, temperature=2.0),
            "replay": lambda: ReplayPlugin(mem_size=8)}[name]()


@pytest.mark.parametrize("a, b", [("ewc", "lwf"), ("ewc", "replay"), ("lwf", "replay")])
def test_wa_composes_with_avalanche_plugins_in_both_orders(a, b):
    alone = _train_wa_with(lambda: [])
    ab = _train_wa_with(lambda: [_plugin(a), _plugin(b)])
    ba = _train_wa_with(lambda: [_plugin(b), _plugin(a)])
    assert not torch.allclose(alone, ab), f"{a} + {b} had no effect on WA"
    if "replay" in (a, b):
        # Avalanche's replay buffer samples from the global RNG after the other plugin's callbacks
        # (EWC's importance loader) have drawn from it, so the order changes which items it keeps:
        # the same training up to that sampling.
        assert torch.allclose(ab, ba, atol=2e-2)
    else:
        assert torch.allclose(ab, ba, atol=1e-6), f"WA + {a} + {b} depends on the plugin order"


# ------------------------------------------------------------------ the classifier's bias and gamma > 1 (issue #18)


class _LastEpochSpy(SupervisedPlugin):
    """Keeps the classifier as it is after the last optimiser step, right before WA aligns it."""

    def __init__(self, shrink_new: float = 1.0):
        super().__init__()
        self.shrink_new = shrink_new
        self.weight = self.bias = None

    def after_training_epoch(self, strategy, **kw):
        layer = strategy.classifier
        if self.shrink_new != 1.0 and strategy.old_classes:
            with torch.no_grad():  # make the new rows the smaller ones: gamma > 1
                layer.weight[strategy.new_classes] *= self.shrink_new
        self.weight = layer.weight.detach().clone()
        self.bias = None if layer.bias is None else layer.bias.detach().clone()


@pytest.mark.parametrize("mode", ["zero", "scale", "keep"])
def test_classifier_bias_modes(mode):
    bm = tensor_stream(n_exp=2)
    torch.manual_seed(0)
    model = tiny_net(bias=True)
    spy = _LastEpochSpy()
    wa = make_wa(model, classifier_bias=mode, max_gamma=None, plugins=[spy])
    for exp in bm.train_stream:
        wa.train(exp)
    layer = wa.classifier  # the nn.Linear inside the growing head
    gamma, b = wa.last_gamma, layer.bias.detach()
    assert gamma is not None
    assert torch.allclose(layer.weight[2:4], spy.weight[2:4] * gamma)
    if mode == "zero":  # a bias-free head throughout: zero before training and after every step
        assert torch.count_nonzero(spy.bias) == 0 and torch.count_nonzero(b) == 0
    elif mode == "scale":  # new logits scaled by gamma: their bias entries too, the old ones untouched
        assert torch.count_nonzero(spy.bias) > 0
        assert torch.allclose(b[2:4], spy.bias[2:4] * gamma) and torch.equal(b[:2], spy.bias[:2])
    else:
        assert torch.count_nonzero(spy.bias) > 0 and torch.equal(b, spy.bias)


def test_gamma_above_one_is_reported_once_and_skipped_by_default():
    bm = tensor_stream(n_exp=3)
    torch.manual_seed(0)
    wa = make_wa(tiny_net(), epochs=1, plugins=[_LastEpochSpy(shrink_new=0.05)])
    with pytest.warns(UserWarning, match="gamma = .* > 1") as caught:
        for exp in bm.train_stream:
            wa.train(exp)
    assert len([w for w in caught if "WA: gamma" in str(w.message)]) == 1  # once per run, not per experience
    assert wa.gamma_warned and wa.last_gamma is None  # max_gamma 1.0: not aligned
    m = wa.evaluator.get_all_metrics()
    assert m["WA_GammaAboveOne/train_phase/train_stream"][1][0] > 1.0
    ratio = m["WA_NormRatio_AfterAlign/train_phase/train_stream"][1]
    assert ratio == m["WA_NormRatio_BeforeAlign/train_phase/train_stream"][1]  # nothing was scaled
    assert "gamma_warned" in wa.state_dict() and wa.state_dict()["gamma_warned"] is True

    torch.manual_seed(0)  # max_gamma: null aligns whatever gamma is, as the reference code does
    wa = make_wa(tiny_net(), epochs=1, max_gamma=None, plugins=[_LastEpochSpy(shrink_new=0.05)])
    with pytest.warns(UserWarning, match="gamma"):
        for exp in bm.train_stream[:2]:
            wa.train(exp)
    assert wa.last_gamma is not None and wa.last_gamma > 1.0


@pytest.mark.parametrize("kw, key", [({"classifier_bias": "drop"}, "strategy.classifier_bias"),
                                     ({"max_gamma": 0.0}, "strategy.max_gamma"),
                                     ({"max_gamma": -1.0}, "strategy.max_gamma"),
                                     ({"exemplar_sampling": "mixed"}, "strategy.exemplar_sampling"),
                                     ({"loss_scale": "none"}, "strategy.loss_scale"),
                                     ({"mem_mb_size": 0}, "strategy.mem_mb_size")])
def test_bias_and_gamma_switches_reject_bad_values(kw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_wa(tiny_net(), **kw)
