"""REMIND: the faiss PQ codec and the REMINDPlugin on tiny tensor streams (CPU, < 1 min)."""

from __future__ import annotations

import io
import sys
import warnings

import pytest
import torch
from torch import nn

faiss = pytest.importorskip("faiss")

from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets  # noqa: E402
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline  # noqa: E402
from avalanche.benchmarks.scenarios.task_aware import with_task_labels  # noqa: E402
from avalanche.benchmarks.utils.classification_dataset import (  # noqa: E402
    ClassificationDataset,
    TaskAwareSupervisedClassificationDataset,
)
from avalanche.benchmarks.utils.data_attribute import DataAttribute, TaskLabels  # noqa: E402
from avalanche.benchmarks.utils.flat_data import ConstantSequence  # noqa: E402
from avalanche.training import Naive  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from streamcl.errors import ConfigError, StreamclError  # noqa: E402
from streamcl.models import small_cnn_cut  # noqa: E402
from streamcl.models.pq import PQCodec, PQConfigError  # noqa: E402
from streamcl.plugins.remind import PerClassStepLR, REMINDPlugin  # noqa: E402

warnings.filterwarnings("ignore", message="PQCodec: training")


# ----------------------------------------------------------------------------- helpers
class _DS(TaskAwareSupervisedClassificationDataset, ClassificationDataset):
    pass


def _dataset(x, y):
    y = [int(v) for v in y]
    return _DS(
        [TensorDataset(x, torch.tensor(y))],
        data_attributes=[DataAttribute(y, "targets"), TaskLabels(ConstantSequence(0, len(y)))],
    )


def _images(counts, g, size=16):
    """Learnable tiny images: class c lights a band of rows in one colour channel."""
    xs, ys = [], []
    for c, n in counts.items():
        proto = torch.zeros(3, size, size)
        proto[c % 3, (c * 4) % size : (c * 4) % size + 4, :] = 3.0
        xs.append(proto + 0.5 * torch.randn(n, 3, size, size, generator=g))
        ys += [c] * n
    return torch.cat(xs), ys


def _stream(train_counts, test_counts, seed=0):
    g = torch.Generator().manual_seed(seed)
    tr = [_dataset(*_images(c, g)) for c in train_counts]
    te = [_dataset(*_images(c, g)) for c in test_counts]
    return with_task_labels(with_classes_timeline(benchmark_from_datasets(train=tr, test=te)))


@pytest.fixture(scope="module")
def stream():
    # base experience: classes 0, 1 (unbalanced); streaming experience: classes 2, 3
    return _stream([{0: 40, 1: 20}, {2: 24, 3: 24}], [{0: 20, 1: 20}, {2: 20, 3: 20}])


class RecordingSGD(torch.optim.SGD):
    """SGD that records (lr, had_gradients) at every step."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.log = []

    def step(self, closure=None):
        has_grad = any(p.grad is not None for g in self.param_groups for p in g["params"])
        self.log.append((self.param_groups[0]["lr"], has_grad))
        return super().step(closure)


def _strategy(plugin, *, lr=0.01, seed=0, mb=8, optimizer_cls=RecordingSGD):
    torch.manual_seed(seed)
    model = small_cnn_cut(4, width=8, seed=seed)  # 16 x 4 x 4 features at 16 x 16
    opt = optimizer_cls(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-5)
    plugins = [plugin] if plugin is not None else []
    return Naive(
        model=model,
        optimizer=opt,
        train_mb_size=mb,
        eval_mb_size=64,
        train_epochs=1,
        plugins=plugins,
        evaluator=None,
    )


def _plugin(**kw):
    args = dict(memory=30, num_codebooks=4, n_replay=6, base_epochs=2, crop_scale=(0.5, 1.0), pq_niter=10)
    args.update(kw)
    return REMINDPlugin(**args)


def _accuracy(strategy, stream, plugin=None):
    model = strategy.model
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for exp in stream:
            ds = exp.dataset.eval()
            x = torch.stack([ds[i][0] for i in range(len(ds))])
            y = torch.tensor([int(ds[i][1]) for i in range(len(ds))])
            f = model.features(x)
            if plugin is not None:
                f = plugin.codec.reconstruct(f)
            correct += int((model.head(f).argmax(1) == y).sum())
            total += len(y)
    return correct / total


# ----------------------------------------------------------------------------- PQ codec
def _faiss_reference(codec, x):
    n, c, h, w = x.shape
    v = x.permute(0, 2, 3, 1).reshape(-1, c).contiguous().numpy()
    pq = codec._faiss_pq()
    codes = pq.compute_codes(v)
    rec = pq.decode(codes).reshape(n, h, w, c)
    return torch.from_numpy(codes).reshape(n, h, w, -1), torch.from_numpy(rec).permute(0, 3, 1, 2)


def test_pq_round_trip_matches_faiss():
    torch.manual_seed(0)
    x = torch.randn(12, 32, 5, 5)
    codec = PQCodec(8, niter=10)
    assert not codec.is_fitted
    codec.fit(x)
    codes = codec.encode(x)
    assert codes.dtype == torch.uint8 and codes.shape == (12, 5, 5, 8)  # (N, H, W, M): channels-last
    ref_codes, ref_rec = _faiss_reference(codec, x)
    assert torch.equal(codes, ref_codes)
    rec = codec.decode(codes)
    assert rec.dtype == torch.float32 and rec.shape == x.shape
    assert torch.equal(rec, ref_rec)
    # reconstruction is a quantisation: closer than the data's own spread
    assert ((rec - x) ** 2).mean() < (x**2).mean()
    # torch nearest-centroid path (used for CUDA tensors without faiss-gpu) agrees with faiss
    alt = codec._encode_cuda(x.permute(0, 2, 3, 1).reshape(-1, 32).contiguous()).reshape(codes.shape)
    assert (alt == codes).float().mean() > 0.99
    assert codec.state_nbytes() == 8 * 256 * 4 * 4  # float32 centroids: M x 256 x C/M
    assert PQCodec(num_codebooks=8).state_nbytes_for((32, 4, 4)) == codec.state_nbytes()  # known before fitting


def test_pq_bytes_per_item_and_code_shape():
    codec = PQCodec(32)
    assert codec.code_shape((512, 13, 13)) == (13, 13, 32)
    assert codec.nbytes_per_item((512, 13, 13)) == 5408
    assert codec.nbytes_per_item((512, 7, 7)) == 1568
    torch.manual_seed(0)
    codec = PQCodec(32, niter=2)
    codec.fit(torch.randn(2, 512, 13, 13))
    codes = codec.encode(torch.randn(3, 512, 13, 13))
    assert codes[0].numel() * codes.element_size() == 5408


def test_pq_m_must_divide_c():
    codec = PQCodec(5)
    with pytest.raises(PQConfigError, match="must divide the channel count C=32"):
        codec.fit(torch.randn(4, 32, 8, 8))
    with pytest.raises(StreamclError, match="M=5"):
        codec.code_shape((32, 8, 8))


def test_pq_state_round_trip_weights_only():
    torch.manual_seed(1)
    x = torch.randn(20, 16, 4, 4)
    codec = PQCodec(4, niter=5)
    codec.fit(x)
    buf = io.BytesIO()
    torch.save(codec.state_dict(), buf)
    buf.seek(0)
    fresh = PQCodec(4)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.is_fitted and fresh.dim == 16
    assert torch.equal(fresh.encode(x), codec.encode(x))
    assert torch.equal(fresh.decode(codec.encode(x)), codec.decode(codec.encode(x)))
    # the faiss quantiser is rebuilt from the centroid table
    assert torch.equal(_faiss_reference(fresh, x)[0], codec.encode(x))
    with pytest.raises(RuntimeError, match="M=8"):
        PQCodec(8).load_state_dict(codec.state_dict())
    # deep copies / pickles (Avalanche checkpoints, LwF-style model copies) rebuild the faiss object
    import copy
    import pickle

    for clone in (copy.deepcopy(codec), pickle.loads(pickle.dumps(codec))):
        assert torch.equal(clone.encode(x), codec.encode(x))


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    with pytest.raises(StreamclError) as err:
        REMINDPlugin()
    msg = str(err.value)
    assert "faiss" in msg and "streamcl[cpu]" in msg and "streamcl[gpu]" in msg


def test_streamcl_imports_without_faiss():
    import subprocess

    code = (
        "import sys; sys.modules['faiss'] = None\n"
        "import streamcl.models, streamcl.plugins\n"
        "from streamcl.plugins import REMINDPlugin\n"
        "from streamcl.errors import StreamclError\n"
        "try:\n    REMINDPlugin()\nexcept StreamclError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ERR" in out.stdout and "pip install 'streamcl[cpu]'" in out.stdout


# ----------------------------------------------------------------------------- schedule
def test_per_class_lr_restart_unit():
    s = PerClassStepLR(0.1, 0.001, 0.7017, 100)
    assert s.lr(0) == 0.1
    s.step(0, 100)
    assert s.lr(0) == pytest.approx(0.07017)
    assert s.lr(1) == 0.1  # a new class restarts at the max lr
    s.step(0, 10_000)
    assert s.lr(0) == 0.001  # floored at min_lr


def test_per_class_lr_in_stream():
    stream = _stream([{0: 16, 1: 16}, {2: 25, 3: 25}], [{0: 4}])
    plugin = _plugin(lr_step=10, max_lr=0.1, min_lr=0.001, lr_gamma=0.5, base_epochs=1)
    s = _strategy(plugin)
    s.train(stream.train_stream[0])
    s.optimizer.log.clear()
    s.train(stream.train_stream[1], shuffle=False)  # stream order: 25 x class 2, then 25 x class 3
    steps = [lr for lr, has_grad in s.optimizer.log if has_grad]
    assert len(steps) == 50  # one step per new example; the template's own steps carry no gradient
    expected = [0.1 * 0.5 ** (k // 10) for k in range(25)] * 2  # class 2, then class 3 restarts at 0.1
    assert steps == pytest.approx(expected)
    assert plugin.lr_scheduler.counts == {2: 25, 3: 25}


# ----------------------------------------------------------------------------- plugin
def test_base_init_caps_buffer_and_evicts_largest_class(stream):
    plugin = _plugin(memory=30)
    s = _strategy(plugin)
    s.train(stream.train_stream[0])
    assert plugin.base_done and plugin.codec.is_fitted
    assert s.train_epochs == 1  # base_epochs was restored
    # 40 + 20 base examples offered to 30 slots: the largest class lost items until both were equal
    assert len(plugin.buffer) == 30 and plugin.buffer.items_per_class() == {0: 15, 1: 15}
    assert plugin.buffer.codes.dtype == torch.uint8 and plugin.buffer.code_shape == (4, 4, 4)
    # streaming: each new example evicts a random item of the (then) largest class
    s.train(stream.train_stream[1])
    counts = plugin.buffer.items_per_class()
    assert len(plugin.buffer) == 30 and set(counts) == {0, 1, 2, 3}
    assert max(counts.values()) - min(counts.values()) <= 1
    # replay bytes: codes + int16 labels + float32 PQ centroids
    assert plugin.replay_nbytes() == 30 * 4 * 4 * 4 + 30 * 2 + 4 * 256 * 4 * 4

    # a byte budget is the whole memory: the centroids are paid first, then 66 B per item
    centroids = 4 * 256 * 4 * 4
    plugin = _plugin(memory={"bytes": centroids + 30 * 66 + 65})
    _strategy(plugin).train(stream.train_stream[0])
    assert plugin.buffer.capacity == 30 and plugin.replay_nbytes() <= plugin.budget.bytes
    plugin = _plugin(memory={"bytes": centroids - 1})
    with pytest.raises(ConfigError, match="smaller than the codec's own state"):
        _strategy(plugin).train(stream.train_stream[0])


def test_per_sample_mode_one_new_plus_n_replay_per_step(stream):
    plugin = _plugin(n_replay=6, mode="per_sample")
    s = _strategy(plugin)
    s.train(stream.train_stream[0])
    sizes = []
    handle = s.model.head.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    s.optimizer.log.clear()
    s.train(stream.train_stream[1])
    handle.remove()
    n_new = len(stream.train_stream[1].dataset)
    # per mini-batch: the template's forward on the B new items, then B steps of 1 new + 6 replays
    steps = [n for n in sizes if n == 7]
    assert len(steps) == n_new == plugin.steps
    assert sum(sizes) == n_new + 7 * n_new
    assert sum(1 for _, g in s.optimizer.log if g) == n_new  # the template's own step is a no-op


def test_batched_mode_runs_one_step_per_minibatch(stream):
    plugin = _plugin(mode="batched", batched_replay=10)
    s = _strategy(plugin, mb=8)
    s.train(stream.train_stream[0])
    sizes = []
    handle = s.model.head.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    s.optimizer.log.clear()
    s.train(stream.train_stream[1])
    handle.remove()
    assert sizes == [8 + 10] * 6  # 48 new examples, batch 8: B new + 10 mixed replays per step
    assert [g for _, g in s.optimizer.log] == [True] * 6
    assert len(plugin.buffer) == 30 and 2 in plugin.buffer.items_per_class()
    assert plugin.lr_scheduler.counts == {2: 24, 3: 24}


def test_eval_goes_through_encode_decode(stream):
    plugin = _plugin()
    s = _strategy(plugin)
    s.train(stream.train_stream[0])
    seen = []
    handle = s.model.head.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    s.eval(stream.test_stream[0])
    handle.remove()
    ds = stream.test_stream[0].dataset.eval()
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        f = s.model.features(x)
    assert torch.equal(torch.cat(seen), plugin.codec.decode(plugin.codec.encode(f)))
    assert not torch.equal(torch.cat(seen), f)


def test_plugin_state_round_trip(stream):
    plugin = _plugin()
    s = _strategy(plugin)
    for exp in stream.train_stream:
        s.train(exp)
    buf = io.BytesIO()
    torch.save(plugin.state_dict(), buf)
    buf.seek(0)
    fresh = _plugin()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.base_done and fresh.codec.is_fitted
    assert torch.equal(fresh.buffer.codes[: len(fresh.buffer)], plugin.buffer.codes[: len(plugin.buffer)])
    assert fresh.buffer.items_per_class() == plugin.buffer.items_per_class()
    assert fresh.lr_scheduler.counts == plugin.lr_scheduler.counts
    assert fresh.replay_nbytes() == plugin.replay_nbytes()
    f = torch.randn(5, 16, 4, 4).abs()
    assert torch.equal(fresh.codec.reconstruct(f), plugin.codec.reconstruct(f))
    with pytest.raises(StreamclError, match="M=8"):
        _plugin(num_codebooks=8).load_state_dict(plugin.state_dict())


def test_remind_beats_naive_fine_tuning(stream):
    old, new = stream.test_stream[:1], stream.test_stream[1:]
    naive = _strategy(None, lr=0.05)
    naive.train_epochs = 2
    naive.train(stream.train_stream[0])
    naive.train_epochs = 4  # fine-tune until the new classes are learnt
    naive.train(stream.train_stream[1])
    naive_all, naive_old = _accuracy(naive, stream.test_stream), _accuracy(naive, old)

    plugin = _plugin(lr_schedule="constant", memory=40, n_replay=10)  # 2 base epochs, then 1 pass
    remind = _strategy(plugin, lr=0.05)
    for exp in stream.train_stream:
        remind.train(exp)
    remind_all, remind_old = _accuracy(remind, stream.test_stream, plugin), _accuracy(remind, old, plugin)
    assert (
        naive_old <= 0.25 and _accuracy(naive, new) >= 0.8
    )  # fine-tuning learnt the new classes, forgot the old
    assert _accuracy(remind, new, plugin) >= 0.8
    assert remind_old >= 0.8
    assert remind_all >= naive_all + 0.3, (remind_all, naive_all)


def test_registered_and_needs_splitnet(stream):
    from streamcl.registry import PLUGINS

    assert PLUGINS.get("remind").factory is REMINDPlugin
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    s = Naive(
        model=plain,
        optimizer=torch.optim.SGD(plain.parameters(), lr=0.1),
        train_mb_size=8,
        eval_mb_size=8,
        plugins=[_plugin()],
        evaluator=None,
    )
    with pytest.raises(StreamclError, match="SplitNet"):
        s.train(stream.train_stream[0])


def test_base_train_trunk_then_frozen(stream):
    plugin = _plugin(base_train_trunk=True, base_epochs=1)
    s = _strategy(plugin)
    w0 = s.model.trunk.conv1.weight.detach().clone()
    s.train(stream.train_stream[0])
    w1 = s.model.trunk.conv1.weight.detach().clone()
    assert not torch.equal(w0, w1)  # the trunk trained during base initialisation
    assert not any(p.requires_grad for p in s.model.trunk.parameters()) and s.model.freeze_trunk
    s.train(stream.train_stream[1])
    assert torch.equal(s.model.trunk.conv1.weight, w1)  # and stayed frozen while streaming


def test_online_stream_initialises_after_the_whole_base_experience(stream):
    from avalanche.benchmarks.scenarios.online import split_online_stream

    online = list(split_online_stream(stream.train_stream, experience_size=16, shuffle=False,
                                      access_task_boundaries=True))  # fmt: skip
    plugin = _plugin(memory=60, base_epochs=1)
    s = _strategy(plugin)
    base = [e for e in online if e.origin_experience is stream.train_stream[0]]
    for e in base[:-1]:
        s.train(e)
        assert not plugin.base_done and len(plugin.buffer or []) == 0
    s.train(base[-1])
    assert plugin.base_done and plugin.buffer.items_per_class() == {0: 40, 1: 20}


# ----------------------------------------------------------------------------- the strategy class
def test_remind_strategy_signature_and_explicit_epochs(stream):
    import inspect

    from streamcl.strategies import REMIND

    plugin_params = inspect.signature(REMINDPlugin).parameters
    params = inspect.signature(REMIND).parameters
    for name, p in plugin_params.items():  # every plugin argument, with the same default
        assert name in params and params[name].default == p.default, name
    for name in ("model", "optimizer", "train_mb_size", "first_experience_epochs", "plugins", "evaluator"):
        assert name in params and f":param {name}:" in REMIND.__doc__, name
    assert REMIND.training_epoch is not Naive.training_epoch

    def epochs_run(**kw):
        model = small_cnn_cut(4, width=8, seed=0)
        s = REMIND(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=8,
                   eval_mb_size=64, evaluator=None, memory=30, num_codebooks=4, n_replay=2, pq_niter=5, **kw)
        out = []
        for exp in stream.train_stream:
            s.train(exp)
            out.append(s.clock.train_exp_epochs)
        return out

    assert epochs_run() == [1, 1]
    # the base initialisation (first experience) takes first_experience_epochs; base_epochs wins over it
    assert epochs_run(first_experience_epochs=3) == [3, 1]
    assert epochs_run(first_experience_epochs=3, base_epochs=2) == [2, 1]
    assert epochs_run(train_epochs=2, base_epochs=1) == [1, 2]
    with pytest.raises(ConfigError, match="first_experience_epochs"):
        epochs_run(first_experience_epochs=0)
