"""CRUMB: the memory-block codec, the plugin on avalanche.training.Naive, ablations, pretraining, state."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from streamcl.errors import CheckpointError, ConfigError, StreamclError
from streamcl.models import MemoryBlockCodec, SplitNet, small_cnn_cut
from streamcl.plugins import CRUMBPlugin, LatentReplayPlugin, reconstructed_accuracy_metrics
from streamcl.plugins.crumb import load_crumb_pretrained, pretrain_crumb


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ----------------------------------------------------------------------------- codec
def test_encode_is_nearest_cosine_row_and_decode_gathers():
    codec = MemoryBlockCodec(32, 4, init="normal", seed=0)
    f = torch.randn(3, 8, 5, 6)
    codes = codec.encode(f)
    assert codes.dtype == torch.uint8 and codes.shape == (3, 5, 6, 2)
    # brute force: every channels-last chunk of length 4 vs every row, by cosine similarity
    mem = codec.memory.detach()
    for n in range(3):
        for i in range(5):
            for j in range(6):
                for k in range(2):
                    chunk = f[n, 4 * k : 4 * k + 4, i, j]
                    cos = F.cosine_similarity(chunk.unsqueeze(0), mem, dim=1)
                    assert int(codes[n, i, j, k]) == int(cos.argmax())
    rec = codec.decode(codes)
    assert rec.shape == f.shape
    assert torch.equal(rec[1, 4:8, 2, 3], mem[int(codes[1, 2, 3, 1])])  # un-normalised row


def test_bytes_per_item_paper_setting():
    codec = MemoryBlockCodec(256, 16)
    assert codec.code_shape((512, 13, 13)) == (13, 13, 32)
    assert codec.nbytes_per_item((512, 13, 13)) == 5408
    assert codec.state_nbytes() == 256 * 16 * 4 + 1  # float32 codebook + the 'fitted' flag
    assert MemoryBlockCodec(256, 8).nbytes_per_item((512, 13, 13)) == 13 * 13 * 64


def test_block_dim_must_divide_channels_and_large_codebooks_use_int16():
    with pytest.raises(StreamclError, match="divide"):
        MemoryBlockCodec(16, 12).code_shape((512, 13, 13))
    with pytest.warns(UserWarning, match="int16"):
        big = MemoryBlockCodec(300, 4, init="normal", seed=0)
    codes = big.encode(torch.randn(2, 8, 3, 3))
    assert codes.dtype == torch.int16 and int(codes.max()) < 300
    assert big.nbytes_per_item((8, 3, 3)) == 3 * 3 * 2 * 2
    with pytest.raises(StreamclError):
        MemoryBlockCodec(2**16, 4)


def test_inits():
    sparse = MemoryBlockCodec(256, 16, init="distmatch_sparse", seed=0).memory.detach()
    assert (sparse >= 0).all()
    assert abs(float((sparse == 0).float().mean()) - 0.64) < 0.03
    nz = sparse[sparse > 0]
    assert abs(float(nz.pow(2).mean().sqrt()) - 14 * 5 / 3) < 2.0  # |N(0, std^2)|: rms == std
    dense = MemoryBlockCodec(256, 16, init="distmatch_dense", init_std=0.73, seed=0).memory.detach()
    assert (dense > 0).float().mean() > 0.99
    assert MemoryBlockCodec(8, 4, init="uniform", seed=0).memory.min() >= 0
    fb = MemoryBlockCodec(8, 4, init="first_batch", seed=0)
    assert not fb.is_fitted
    f = torch.randn(2, 8, 3, 3)
    fb.fit(f)
    assert fb.is_fitted
    chunks = f.permute(0, 2, 3, 1).reshape(-1, 4)
    for row in fb.memory.detach():
        assert (chunks - row).abs().sum(1).min() < 1e-6  # every row is a chunk of the batch
    a = MemoryBlockCodec(8, 4, seed=5).memory
    b = MemoryBlockCodec(8, 4, seed=5).memory
    assert torch.equal(a, b)


def test_codebook_learns_only_through_the_gather():
    codec = MemoryBlockCodec(16, 4, init="normal", seed=0)
    f = torch.randn(2, 8, 2, 2)
    codes = codec.encode(f)
    codec.decode(codes).sum().backward()
    used = torch.zeros(16, dtype=torch.bool)
    used[codes.long().unique()] = True
    g = codec.memory.grad
    assert (g[used] != 0).all() and (g[~used] == 0).all()
    assert not f.requires_grad  # nothing flows back to the features (no straight-through)


# ----------------------------------------------------------------------------- tiny stream
def bn_model(num_classes=4):
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
    head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, num_classes))
    return SplitNet(trunk, head)


def tiny_stream(n_per_class=6, size=16, seed=0):
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.benchmarks.utils.classification_dataset import TaskAwareSupervisedClassificationDataset
    from avalanche.benchmarks.utils.data_attribute import DataAttribute, TaskLabels
    from avalanche.benchmarks.utils.flat_data import ConstantSequence
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(seed)

    def ds(classes, n):
        x = torch.cat([torch.randn(n, 3, size, size, generator=g) * 0.5 + c for c in classes])
        y = torch.tensor([c for c in classes for _ in range(n)])
        return TaskAwareSupervisedClassificationDataset(
            [TensorDataset(x, y)],
            data_attributes=[DataAttribute(y.tolist(), "targets"), TaskLabels(ConstantSequence(0, len(y)))],
        )

    bm = benchmark_from_datasets(train=[ds([0, 1], n_per_class), ds([2, 3], n_per_class)],
                                 test=[ds([0, 1], 2), ds([2, 3], 2)])
    return with_task_labels(with_classes_timeline(bm))


def naive(model, plugins, evaluator=None, mb=4, lr=0.05):
    from avalanche.training import Naive

    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
                 train_mb_size=mb, eval_mb_size=8, plugins=plugins, evaluator=evaluator)


def test_crumb_on_naive_with_other_plugins():
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin, EWCPlugin, LwFPlugin, MASPlugin

    model = bn_model()
    trunk_before = {k: v.clone() for k, v in model.trunk.state_dict().items()}  # weights AND BN stats
    head_before = model.head[-1].weight.detach().clone()
    plugin = CRUMBPlugin(recipe="paper", memory=8, n_blocks=16, block_dim=4, seed=0)
    ev = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), *reconstructed_accuracy_metrics(),
                          loggers=[])
    strat = naive(model, [plugin, EWCPlugin(ewc_lambda=1.0), MASPlugin(), LwFPlugin()], ev)
    bm = tiny_stream()

    strat.train(bm.train_stream[0])
    codebook_after_first = plugin.codec.memory.detach().clone()
    assert plugin.buffer.items_per_class() == {0: 4, 1: 4}  # quota floor(8 / 2)
    assert plugin.replay_steps == 0  # nothing stored before the first experience ends
    strat.train(bm.train_stream[1])
    res = strat.eval(bm.test_stream)

    assert plugin.buffer.items_per_class() == {0: 2, 1: 2, 2: 2, 3: 2}  # old classes shrunk
    assert plugin.replay_steps == math.ceil(12 / 4)  # one replay step after each new-data step
    assert plugin.last_replay_size == 2 * math.ceil(4 / 2)  # K=2 absent classes, ceil(B/K) rounds
    assert not torch.equal(plugin.codec.memory.detach(), codebook_after_first)  # codebook keeps learning
    assert not torch.equal(model.head[-1].weight, head_before)
    for k, v in model.trunk.state_dict().items():
        assert torch.equal(v, trunk_before[k]), f"trunk {k} changed"
    assert any(k.startswith("Top1_RecAcc_Stream") for k in res)
    assert any(k.startswith("Top1_Acc_Stream") for k in res)
    assert plugin.replay_nbytes() == plugin.buffer.nbytes() + plugin.codec.state_nbytes()
    assert plugin.buffer.codes.dtype == torch.uint8
    assert plugin.buffer.nbytes() == 8 * (8 * 8 * 2 + 2)


def test_replay_step_composition_and_weight(monkeypatch):
    model = bn_model()
    plugin = CRUMBPlugin(recipe="paper", memory=12, n_blocks=16, block_dim=4, seed=0, replay_weight=5.0)
    strat = naive(model, [plugin], mb=5)
    bm = tiny_stream()
    strat.train(bm.train_stream[0])
    seen = []
    real_loss = plugin.replay_loss

    def spy(strategy, logits, ya, yb, lam):
        seen.append((ya.tolist(), (logits > -1e30).sum(1).tolist()))
        return real_loss(strategy, logits, ya, yb, lam)

    monkeypatch.setattr(plugin, "replay_loss", spy)
    strat.train(bm.train_stream[1])
    # batches of 5, 5, 2 new items of classes {2, 3}: replay = classes {0, 1}, ceil(B/2) rounds
    assert [len(s[0]) for s in seen] == [2 * math.ceil(5 / 2), 2 * math.ceil(5 / 2), 2 * math.ceil(2 / 2)]
    for labels, unmasked in seen:
        assert labels[:2] == [0, 1] and set(labels) == {0, 1}
        assert set(unmasked) == {4}  # all four classes are seen during experience 2


def test_gradients_are_clamped():
    model = bn_model()
    plugin = CRUMBPlugin(recipe="paper", memory=4, n_blocks=16, block_dim=4, clamp=0.01)
    strat = naive(model, [plugin])
    strat.optimizer.zero_grad()
    for p in model.head.parameters():
        p.grad = torch.full_like(p, 3.0)
    plugin.clamp_gradients(strat)
    assert all(float(p.grad.abs().max()) <= 0.01 for p in model.head.parameters())


@pytest.mark.parametrize(
    "flags", [{"freeze_memory": True}, {"direct_loss_only": True}, {"plus_direct_loss": True}, {"no_replay": True},
              {"init": "first_batch", "augment": True}]
)
def test_ablation_switches(flags):
    model = bn_model()
    plugin = CRUMBPlugin(recipe="paper", memory=8, n_blocks=16, block_dim=4, seed=0, **flags)
    strat = naive(model, [plugin])
    bm = tiny_stream()
    strat.train(bm.train_stream[0])
    before = plugin.codec.memory.detach().clone()
    strat.train(bm.train_stream[1])
    strat.eval(bm.test_stream)
    if flags.get("freeze_memory"):
        assert torch.equal(plugin.codec.memory.detach(), before)
    if flags.get("no_replay"):
        assert plugin.replay_steps == 0 and (plugin.buffer is None or len(plugin.buffer) == 0)
    else:
        assert plugin.replay_steps > 0
    if flags.get("direct_loss_only"):
        assert plugin.train_path == "direct"


def test_flags_validation():
    with pytest.raises(ConfigError):
        CRUMBPlugin(recipe="paper", direct_loss_only=True, plus_direct_loss=True)
    with pytest.raises(ConfigError):
        CRUMBPlugin(recipe="paper", init="zeros")
    plugin = CRUMBPlugin(recipe="paper", n_blocks=16, block_dim=3)
    strat = naive(bn_model(), [plugin])
    with pytest.raises(StreamclError, match="divide"):
        strat.train(tiny_stream().train_stream[0])


def test_memory_in_bytes_and_distmatch_preset_from_model():
    model = small_cnn_cut(4, width=8, seed=0)
    codebook_nbytes = 16 * 4 * 4  # the byte budget pays for the float32 codebook first
    plugin = CRUMBPlugin(recipe="paper", memory={"bytes": codebook_nbytes + 10 * (8 * 8 * 4 + 2) + 5}, n_blocks=16, block_dim=4)
    strat = naive(model, [plugin], mb=6)
    bm = tiny_stream(size=32)
    strat.train(bm.train_stream[0])
    assert plugin.buffer.capacity == 10 and len(plugin.buffer) == 10
    assert plugin.codec.state_nbytes() - codebook_nbytes < 5  # plus the fitted flag
    assert plugin.replay_nbytes() == plugin.codec.state_nbytes() + 10 * (8 * 8 * 4 + 2) <= plugin.budget.bytes
    from streamcl.models import squeezenet_cut

    sq = squeezenet_cut(3, cut_layer=3)
    codec = CRUMBPlugin(recipe="paper").make_codec((96, 54, 54), sq)
    assert not codec.is_fitted  # random trunk: distmatch statistics measured on the first batch
    f = torch.relu(torch.randn(2, 96, 4, 4)) * 3.0
    codec.fit(f)
    assert abs(codec.init_sparsity - float((f == 0).float().mean())) < 1e-6
    assert abs(codec.init_std - float(f[f > 0].pow(2).mean().sqrt())) < 1e-4
    sq.meta["pretrained"] = True  # what squeezenet_cut(weights=...) records
    codec = CRUMBPlugin(recipe="paper").make_codec((96, 54, 54), sq)
    assert codec.is_fitted and (codec.init_std, codec.init_sparsity) == (0.73, 0.25)  # the paper's cut-3 preset
    assert abs(float((codec.memory == 0).float().mean()) - 0.25) < 0.05


def test_state_dict_roundtrip_and_resume():
    bm = tiny_stream()
    model = bn_model()
    plugin = CRUMBPlugin(recipe="paper", memory=8, n_blocks=16, block_dim=4, seed=0)
    strat = naive(model, [plugin])
    strat.train(bm.train_stream[0])
    state = roundtrip(plugin.state_dict())

    fresh = CRUMBPlugin(recipe="paper", memory=8, n_blocks=16, block_dim=4, seed=0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.codec.memory, plugin.codec.memory)
    assert torch.equal(fresh.buffer.codes, plugin.buffer.codes)
    assert fresh.buffer.items_per_class() == plugin.buffer.items_per_class()
    assert fresh.seen_classes == plugin.seen_classes
    assert fresh.replay_nbytes() == plugin.replay_nbytes()
    # training continues from the restored state
    model2 = bn_model()
    model2.load_state_dict(model.state_dict())
    strat2 = naive(model2, [fresh])
    strat2.train(bm.train_stream[1])
    assert fresh.replay_steps > 0 and len(fresh.buffer.items_per_class()) == 4
    with pytest.raises(CheckpointError):
        CRUMBPlugin(recipe="paper", n_blocks=32, block_dim=4).load_state_dict(state)


def test_pretrain_save_load(tmp_path):
    from torch.utils.data import TensorDataset

    model = bn_model()
    plugin = CRUMBPlugin(recipe="paper", n_blocks=16, block_dim=4, seed=0)
    data = TensorDataset(torch.randn(12, 3, 16, 16), torch.randint(0, 4, (12,)))
    losses = plugin.pretrain(model, data, epochs=2, mb_size=4)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    path = plugin.save_pretrained(tmp_path / "crumb_pre.pt", model)

    other = CRUMBPlugin(recipe="paper", pretrained=str(path))  # shape unset: the file's
    assert (other.n_blocks, other.block_dim) == (16, 4)
    assert torch.equal(other.codec.memory, plugin.codec.memory)
    for key, value in (("n_blocks", 64), ("block_dim", 8)):  # a set shape that disagrees: an error naming both
        with pytest.raises(ConfigError, match=rf"{key}: {value} disagrees with the pretrained file .*16 x 4"):
            CRUMBPlugin(pretrained=str(path), **{key: value})
    assert CRUMBPlugin(n_blocks=16, block_dim=4, pretrained=str(path)).block_dim == 4
    model2 = bn_model(num_classes=7)  # another class count: final layer skipped
    codec, state = load_crumb_pretrained(path, model2)
    assert torch.equal(model2.head[0].weight, model.head[0].weight)
    # the model part also loads as `weights:` of a cut factory
    small = small_cnn_cut(3, width=4)
    plugin.save_pretrained(tmp_path / "small.pt", small)
    again = small_cnn_cut(3, width=4, weights=str(tmp_path / "small.pt"))
    assert torch.equal(again.trunk.conv1.weight, small.trunk.conv1.weight)

    bad = tmp_path / "bad.pt"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="bad.pt"):
        CRUMBPlugin(recipe="paper", pretrained=str(bad))
    with pytest.raises(CheckpointError, match="missing.pt"):
        CRUMBPlugin(recipe="paper").load_pretrained(tmp_path / "missing.pt")
    # the pretraining loss has both terms by default
    h = pretrain_crumb(bn_model(), MemoryBlockCodec(16, 4, seed=0), data, epochs=1, mb_size=12, direct_loss=False)
    assert len(h) == 1


def test_pretrain_with_train_trunk_trains_then_refreezes_the_trunk():
    from torch.utils.data import TensorDataset

    data = TensorDataset(torch.randn(12, 3, 16, 16), torch.randint(0, 4, (12,)))
    model = bn_model()
    before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    pretrain_crumb(model, MemoryBlockCodec(16, 4, seed=0), data, epochs=1, mb_size=4)
    assert all(torch.equal(v, model.trunk.state_dict()[k]) for k, v in before.items())  # default: trunk untouched
    pretrain_crumb(model, MemoryBlockCodec(16, 4, seed=0), data, epochs=1, mb_size=4, lr=0.1, train_trunk=True)
    after = model.trunk.state_dict()
    assert not torch.equal(before["0.weight"], after["0.weight"])  # conv weights learned
    assert not torch.equal(before["1.running_mean"], after["1.running_mean"])  # BN statistics too
    # frozen again for streaming: no gradients, BatchNorm in eval mode even under .train()
    assert model.freeze_trunk and not any(p.requires_grad for p in model.trunk.parameters())
    assert not model.train().trunk.training
    with pytest.raises(StreamclError, match="train_trunk needs direct_loss"):
        pretrain_crumb(model, MemoryBlockCodec(16, 4), data, epochs=1, direct_loss=False, train_trunk=True)


def test_pretrain_on_cached_features_equals_pretrain_on_images():
    """cache_features runs the frozen trunk once; the epochs then see the same batches, so nothing changes."""
    from torch.utils.data import TensorDataset

    class CountingTrunkData(TensorDataset):
        reads = 0

        def __getitem__(self, i):
            CountingTrunkData.reads += 1
            return super().__getitem__(i)

    data = CountingTrunkData(torch.randn(12, 3, 16, 16), torch.randint(0, 4, (12,)))
    runs = {}
    for cached in (False, True):
        torch.manual_seed(0)
        model, codec = bn_model(), MemoryBlockCodec(16, 4, seed=0)
        CountingTrunkData.reads = 0
        losses = pretrain_crumb(model, codec, data, epochs=3, mb_size=4, seed=1, cache_features=cached)
        runs[cached] = (losses, CountingTrunkData.reads, model.state_dict(), codec.memory.detach().clone())
    (l0, reads0, m0, c0), (l1, reads1, m1, c1) = runs[False], runs[True]
    # images decoded once instead of once per epoch (+ once after the epochs, for the base set's
    # reconstruction error: what the streaming diagnostics compare with; cached: from the features)
    assert reads0 == 3 * 12 + 12 and reads1 == 12
    assert codec.reference_error is not None and 0 <= codec.reference_error
    assert l1 == pytest.approx(l0, rel=1e-5, abs=1e-6)
    assert torch.allclose(c0, c1, atol=1e-5) and all(torch.allclose(m0[k].float(), m1[k].float(), atol=1e-5)
                                                     for k in m0)
    with pytest.raises(StreamclError, match="cache_features"):
        pretrain_crumb(bn_model(), MemoryBlockCodec(16, 4), data, epochs=1, cache_features=True, train_trunk=True)


def test_crumb_strategy_and_registry():
    from avalanche.training import Naive

    from streamcl.registry import PLUGINS, STRATEGIES
    from streamcl.strategies import CRUMB

    assert PLUGINS.get("crumb").factory is CRUMBPlugin
    entry = STRATEGIES.get("crumb")
    params = entry.parameters()
    assert "memory" in params and "n_blocks" in params and "model" not in params
    model = bn_model()
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin

    strat = CRUMB(recipe="paper", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=4,
                  eval_mb_size=8, evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
                  memory=8, n_blocks=16, block_dim=4)
    assert isinstance(strat, Naive) and isinstance(strat.plugins[0], CRUMBPlugin)
    assert strat.latent_plugin is strat.plugins[0]
    bm = tiny_stream()
    for exp in bm.train_stream:
        strat.train(exp)
    res = strat.eval(bm.test_stream)
    assert any(k.startswith("Top1_Acc_Stream") for k in res)
    with pytest.raises(TypeError):
        CRUMB(model=model, optimizer=strat.optimizer, not_a_key=1)


def test_eval_mask_and_direct_path():
    model = bn_model()
    plugin = CRUMBPlugin(recipe="paper", memory=8, n_blocks=16, block_dim=4)
    strat = naive(model, [plugin])
    bm = tiny_stream()
    strat.train(bm.train_stream[0])
    # evaluation runs on the direct path, masked to seen classes {0, 1}
    model.eval()
    x = bm.test_stream[0].dataset[0][0].unsqueeze(0)
    with torch.no_grad():
        direct = model(x)
    out = plugin.mask(direct)
    assert out.argmax(1).item() in (0, 1)
    assert isinstance(plugin, LatentReplayPlugin) and plugin.eval_path == "direct"


def test_online_stream_mini_experiences():
    """split_online_stream fires before/after_training_exp per mini-experience: storage and stride still work."""
    from avalanche.benchmarks.scenarios.online import split_online_stream

    bm = tiny_stream(n_per_class=6)
    online = list(split_online_stream(bm.train_stream, experience_size=4, shuffle=False, access_task_boundaries=True))
    model = bn_model()
    plugin = CRUMBPlugin(recipe="paper", memory=6, n_blocks=16, block_dim=4, seed=0)
    strat = naive(model, [plugin])
    for sub in online:
        strat.train(sub)
        assert len(plugin.buffer) <= 6
    assert plugin.policy.stride == max(1, 12 // 6)  # from the origin experience's length, not the mini one
    assert set(plugin.buffer.items_per_class()) == {0, 1, 2, 3}
    assert max(plugin.buffer.items_per_class().values()) <= 6 // 4
    assert plugin.replay_steps > 0


def test_last_pass_store_selects_like_a_second_walk_without_rerunning_the_trunk():
    trunk_images, buffers = {}, {}
    for store in ("last_pass", "experience"):
        model = bn_model()
        calls = []
        model.trunk.register_forward_hook(lambda mod, inp, out, calls=calls: calls.append(len(inp[0])))
        plugin = CRUMBPlugin(recipe="paper", memory=8, n_blocks=16, block_dim=4, seed=0, store=store)
        strat = naive(model, [plugin])
        strat.train_epochs = 2  # codes are taken from the last of the two epochs
        for exp in tiny_stream().train_stream:
            strat.train(exp, shuffle=False)
        trunk_images[store], buffers[store] = sum(calls), plugin.buffer
    assert buffers["last_pass"].items_per_class() == buffers["experience"].items_per_class() == {0: 2, 1: 2, 2: 2, 3: 2}
    assert buffers["last_pass"].codes.dtype == torch.uint8
    # 2 experiences x 12 images x 2 epochs of training; "experience" re-encodes only the items it
    # stores with the final codebook: 4 per class after the first experience (quota 8 / 2 classes),
    # 2 per new class after the second.
    assert trunk_images["last_pass"] == 2 * 12 * 2
    assert trunk_images["experience"] == 2 * 12 * 2 + 2 * 4 + 2 * 2


def test_experience_store_keeps_codes_of_the_final_codebook():
    # store="experience" re-encodes the kept items after the experience: every stored code row
    # is the final codebook's code of one of that class's training images (last_pass codes are
    # the ones computed while the codebook was still moving).
    model = bn_model()
    plugin = CRUMBPlugin(recipe="paper", memory=6, n_blocks=16, block_dim=4, seed=0, store="experience")
    strat = naive(model, [plugin])
    exp = tiny_stream().train_stream[0]
    strat.train(exp, shuffle=False)
    x = torch.stack([exp.dataset[i][0] for i in range(len(exp.dataset))])
    y = torch.tensor([int(exp.dataset[i][1]) for i in range(len(exp.dataset))])
    model.eval()
    with torch.no_grad():
        fresh = plugin.codec.encode(model.trunk(x))
    assert len(plugin.buffer) == 6
    for code, label in zip(plugin.buffer.codes[: len(plugin.buffer)], plugin.buffer.valid_labels()):
        same_class = fresh[y == int(label)]
        assert any(torch.equal(code, c) for c in same_class)


def test_raw_features_storage_ablation_keeps_float16_maps_under_the_same_rules():
    from streamcl.models import IdentityCodec

    model = bn_model()
    plugin = CRUMBPlugin(recipe="paper", memory=8, storage="raw_features", seed=0)
    strat = naive(model, [plugin])
    stream = tiny_stream()
    for exp in stream.train_stream:
        strat.train(exp, shuffle=False)
    assert isinstance(plugin.codec, IdentityCodec) and plugin.train_path == "direct"
    assert plugin.buffer.items_per_class() == {0: 2, 1: 2, 2: 2, 3: 2}  # CRUMB's class-balanced rule
    assert plugin.replay_steps > 0
    # stored items are the trunk's maps as float16: decoding gives back those values exactly
    x = stream.train_stream[1].dataset[0][0][None]
    with torch.no_grad():
        f = model.trunk(x)
    assert torch.equal(plugin.codec.decode(plugin.codec.encode(f)), f.half().float())
    assert plugin.replay_nbytes() == 8 * (8 * 8 * 8 * 2 + 2)  # C*H*W float16 + int16 label, no codec state
    fresh = CRUMBPlugin(recipe="paper", memory=8, storage="raw_features")
    fresh.load_state_dict(roundtrip(plugin.state_dict()))
    assert torch.equal(fresh.buffer.codes, plugin.buffer.codes)
    with pytest.raises(ConfigError, match="raw_features"):
        CRUMBPlugin(recipe="paper", storage="raw_features", freeze_memory=True)


def test_stream_store_protects_a_class_while_the_next_one_trains():
    # store="stream": codes are admitted as the first epoch goes, so the first class of an
    # experience is in the buffer (and replayed) while the experience's second class trains.
    model = bn_model()
    plugin = CRUMBPlugin(recipe="paper", memory=8, n_blocks=16, block_dim=4, seed=0, store="stream")
    strat = naive(model, [plugin])
    seen_in_buffer = []
    plugin_after = plugin.after_training_iteration

    def spy(strategy, *a, **k):
        plugin_after(strategy, *a, **k)
        seen_in_buffer.append(set(plugin.buffer.items_per_class()))

    plugin.after_training_iteration = spy
    strat.train(tiny_stream().train_stream[0], shuffle=False)  # class 0 then class 1, 6 images each
    assert seen_in_buffer[0] == {0} and seen_in_buffer[-1] == {0, 1}
    assert plugin.replay_steps > 0  # class 0 was replayed during class 1's batches


def test_crumb_strategy_signature_mirrors_the_plugin():
    import inspect

    from streamcl.strategies import CRUMB

    params = inspect.signature(CRUMB).parameters
    for name, p in inspect.signature(CRUMBPlugin).parameters.items():
        assert name in params and params[name].default == p.default, name
        assert f":param {name}:" in CRUMB.__doc__, name
    model = bn_model()
    strat = CRUMB(recipe="paper", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=4,
                  eval_mb_size=8, evaluator=None, memory=8, n_blocks=16, block_dim=4, first_experience_epochs=2)
    epochs = []
    for exp in tiny_stream().train_stream:
        strat.train(exp)
        epochs.append(strat.clock.train_exp_epochs)
    assert epochs == [2, 1] and strat.latent_plugin.replay_steps > 0


# ---------------------------------------------------------------------------------------------------------------
# issue #26: the recipes, the k-means codebook, diagnostics, and no key silently overridden
# ---------------------------------------------------------------------------------------------------------------
def test_recipes_fill_only_the_keys_left_unset():
    paper, balanced = CRUMBPlugin(recipe="paper"), CRUMBPlugin()
    assert (paper.init, paper.replay, paper.replay_weight) == ("distmatch_sparse", "separate", 5.0)
    assert (balanced.init, balanced.replay, balanced.replay_weight) == ("kmeans", "joint", 1.0)
    mixed = CRUMBPlugin(recipe="paper", init="kmeans", replay_weight=2.0)
    assert (mixed.init, mixed.replay, mixed.replay_weight) == ("kmeans", "separate", 2.0)
    with pytest.raises(ConfigError, match="recipe"):
        CRUMBPlugin(recipe="fast")


def test_kmeans_codebook_reconstructs_far_better_than_the_paper_init():
    from streamcl.models.codebook import relative_error

    g = torch.Generator().manual_seed(0)
    feats = F.relu(torch.randn(64, 16, 4, 4, generator=g) + 0.3)
    km = MemoryBlockCodec(32, 4, init="kmeans", seed=0)
    assert not km.is_fitted
    km.fit(feats)
    assert km.is_fitted and relative_error(km, feats) < 0.5 * relative_error(MemoryBlockCodec(32, 4, seed=0), feats)


def test_diagnostics_reach_the_evaluator_and_one_warning_when_the_stream_fits_worse():
    from avalanche.training.plugins import EvaluationPlugin

    from streamcl.plugins.latent_replay.diagnostics import CodecDiagnostics

    plugin = CRUMBPlugin(memory=8, n_blocks=16, block_dim=4, seed=0)
    strat = naive(bn_model(), [plugin], EvaluationPlugin(loggers=[]))
    bm = tiny_stream()
    for exp in bm.train_stream:
        strat.train(exp)
        strat.eval(bm.test_stream)
    metrics = strat.evaluator.get_all_metrics()
    for name in ("CodecError_New", "CodecError_Base"):
        assert len(metrics[f"{name}/train_phase/train_stream"][1]) == 2, name
    assert len(metrics["CodecError_Stored/train_phase/train_stream"][1]) == 1  # stored classes after experience 1
    acc = metrics["Top1_Acc_JustTrained/eval_phase/test_stream"][1]
    assert len(acc) == 2 and all(0.0 <= a <= 1.0 for a in acc)
    d = CodecDiagnostics()
    d.reference = 0.05
    with pytest.warns(UserWarning, match="much worse|relative error against"):
        assert d.check({"new": 0.4}, "CRUMB") is not None
    assert d.check({"new": 0.9}, "CRUMB") is None  # once


def _demo_with(overrides):
    from pathlib import Path

    from streamcl.config import load_experiment

    repo = Path(__file__).resolve().parents[1]
    return load_experiment(repo / "experiments" / "demo.yaml", ["runs=[0]", *overrides])


@pytest.mark.parametrize("cell, pre, key", [
    ("{name: crumb, memory: 40, block_dim: 8}", "{name: crumb, n_blocks: 256, block_dim: 16}", "block_dim"),
    ("{name: crumb, memory: 40, n_blocks: 32}", "{name: crumb}", "n_blocks"),
])
def test_a_cell_whose_codebook_disagrees_with_the_pretrained_file_is_a_config_error(cell, pre, key):
    with pytest.raises(ConfigError) as e:
        _demo_with([f"methods={{crumb: {{plugins: [{cell}]}}}}", f"pretrain.plugin={pre}"])
    msg = str(e.value)
    assert e.value.key == f"plugins[0].{key}" and "\n" not in msg and "pretrain.plugin" in msg
    assert ("8" in msg and "16" in msg) if key == "block_dim" else ("32" in msg and "256" in msg)
    _demo_with([f"methods={{crumb: {{plugins: [{cell}]}}}}",  # the same shape on both sides is fine
                f"pretrain.plugin={cell.replace('memory: 40, ', '')}"])


def test_a_cell_whose_model_disagrees_with_the_pretraining_model_is_a_config_error():
    with pytest.raises(ConfigError, match=r"width: 16") as e:
        _demo_with(["methods={naive: {model: {name: small_cnn_cut, width: 8}}}",
                    "pretrain.model={name: small_cnn_cut, width: 16}"])
    assert e.value.key == "model.width" and "8" in str(e.value)


def test_cli_exits_2_with_one_line_on_a_codebook_mismatch(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "streamcl", "run", str(repo / "experiments" / "demo.yaml"), "--dry-run",
         "-o", "methods={crumb: {plugins: [{name: crumb, memory: 40, block_dim: 8}]}}",
         "-o", f"output_dir={tmp_path / 'runs'}"],
        capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr and lines[-1].startswith("streamcl: error:")
    assert "block_dim" in lines[-1] and "8" in lines[-1] and "16" in lines[-1]
    assert not (tmp_path / "runs").exists()
