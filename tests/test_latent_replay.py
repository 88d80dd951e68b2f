"""The shared latent-replay pipeline: budgets, CodeBuffer + policies, sampling, augmentation, plugin wiring."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from streamcl.errors import ConfigError, StreamclError
from streamcl.models import SplitNet
from streamcl.plugins.latent_replay import (
    ClassBalancedPolicy,
    CodeBuffer,
    Codec,
    IdentityCodec,
    LargestClassEvictionPolicy,
    LatentReplayPlugin,
    MemoryBudget,
    augment_features,
    mixup_features,
    parse_memory,
    random_resized_crop_features,
    resize_crops,
    sample_crop_boxes,
)


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def tagged(positions, shape=(2,)):
    """Codes whose first entry encodes the stream position (to see which items were kept)."""
    pos = torch.as_tensor(positions, dtype=torch.uint8)
    return pos.view(-1, *([1] * len(shape))).expand(-1, *shape).contiguous()


# ----------------------------------------------------------------------------- budgets
def test_parse_memory_forms():
    assert parse_memory(417) == MemoryBudget(items=417)
    assert parse_memory({"items": 10}) == MemoryBudget(items=10)
    assert parse_memory({"bytes": "2.26MB"}) == MemoryBudget(bytes=2_260_000)
    assert parse_memory("64KiB") == MemoryBudget(bytes=65536)
    assert parse_memory(MemoryBudget(items=3)).items == 3
    for bad in ({"items": 1, "bytes": 2}, {"size": 3}, True, "lots", {"items": 1.5}):
        with pytest.raises(ConfigError):
            parse_memory(bad)


def test_bytes_budget_counts_codes_and_labels():
    # CRUMB: 5408 B of codes + 2 B label per item -> 417 items in 2.26 MB, as in the paper
    buf = CodeBuffer.from_budget({"bytes": "2.26MB"}, (13, 13, 32))
    assert buf.capacity == 417
    assert CodeBuffer.from_budget({"bytes": 5410 * 3 - 1}, (13, 13, 32)).capacity == 2
    assert buf.codes.dtype == torch.uint8 and buf.labels.dtype == torch.int16
    assert buf.nbytes() == buf.codes.nbytes + buf.labels.nbytes == 417 * 5410


def test_codebuffer_refuses_wide_codes():
    with pytest.raises(StreamclError):
        CodeBuffer(4, (3,), code_dtype=torch.int64)
    with pytest.raises(StreamclError):
        CodeBuffer(4, (3,), code_dtype=torch.float32)
    b = CodeBuffer(4, (3,), code_dtype=torch.int16)
    b.add(torch.full((2, 3), 300, dtype=torch.int16), torch.tensor([0, 1]))
    assert b.codes.dtype == torch.int16 and int(b.codes[0, 0]) == 300


# ----------------------------------------------------------------------------- policies
def test_class_balanced_stride_quota_and_shrink():
    buf = CodeBuffer(6, (2,), ClassBalancedPolicy(), seed=0)
    # experience 1: 2 classes x 12 items, k = floor(24 / 6) = 4
    labels = torch.tensor([0, 1] * 12)
    buf.begin_experience(n_items=24, classes=[0, 1])
    assert buf.policy.stride == 4
    buf.add(tagged(range(24)), labels)
    assert buf.items_per_class() == {0: 3, 1: 3}
    # every 4th example of each class: class 0 sits at positions 0,2,4..., its 0th,4th,8th are 0,8,16
    kept0 = sorted(int(c) for c in buf.codes[:len(buf)][buf.valid_labels() == 0][:, 0])
    assert kept0 == [0, 8, 16]
    # experience 2: a new class arrives -> quota floor(6/3) = 2, old classes shrink
    buf.begin_experience(n_items=6, classes=[2])
    assert buf.policy.stride == 1
    buf.add(tagged(range(100, 106)), torch.tensor([2] * 6))
    assert buf.items_per_class() == {0: 2, 1: 2, 2: 2}
    assert len(buf) <= buf.capacity


def test_class_balanced_random_truncation_is_seeded_and_uniformish():
    counts = torch.zeros(10)
    for seed in range(200):
        buf = CodeBuffer(2, (1,), "class_balanced", seed=seed)
        buf.begin_experience(n_items=2, classes=[0])  # stride 1
        buf.add(tagged(range(10), (1,)), torch.zeros(10, dtype=torch.long))
        assert buf.items_per_class() == {0: 2}
        for c in buf.codes[: len(buf), 0]:
            counts[int(c)] += 1
    assert counts.min() > 15  # every position can survive (uniform: 40 each)
    a = CodeBuffer(2, (1,), "class_balanced", seed=3)
    b = CodeBuffer(2, (1,), "class_balanced", seed=3)
    for buf in (a, b):
        buf.add(tagged(range(10), (1,)), torch.zeros(10, dtype=torch.long))
    assert torch.equal(a.codes, b.codes)


def test_class_balanced_over_several_batches_truncates_to_quota():
    buf = CodeBuffer(4, (1,), "class_balanced")
    buf.begin_experience(n_items=4, classes=[0, 1])
    for i in range(5):
        buf.add(tagged([2 * i, 2 * i + 1], (1,)), torch.tensor([0, 1]))
        assert len(buf) <= 4
    assert buf.items_per_class() == {0: 2, 1: 2}


def test_largest_class_eviction():
    buf = CodeBuffer(5, (1,), LargestClassEvictionPolicy(), seed=0)
    buf.add(tagged(range(5), (1,)), torch.tensor([0, 0, 0, 0, 0]))
    assert buf.is_full
    buf.add(tagged([5, 6], (1,)), torch.tensor([1, 1]))
    assert buf.items_per_class() == {0: 3, 1: 2}
    buf.add(tagged([7], (1,)), torch.tensor([2]))
    assert buf.items_per_class() == {0: 2, 1: 2, 2: 1}
    # the largest class (ties: smallest label) loses one item; the cap holds
    buf.add(tagged([8], (1,)), torch.tensor([2]))
    assert buf.items_per_class() == {0: 1, 1: 2, 2: 2}
    # bulk insert far beyond capacity (e.g. a base initialisation) is capped
    big = CodeBuffer(10, (1,), "largest_class", seed=1)
    big.add(tagged(range(50), (1,)), torch.arange(50) % 3)
    assert len(big) == 10 and max(big.items_per_class().values()) - min(big.items_per_class().values()) <= 1


def test_largest_class_may_evict_the_newcomer():
    evicted_new = 0
    for seed in range(60):
        buf = CodeBuffer(3, (1,), "largest_class", seed=seed)
        buf.add(tagged([0, 1, 2], (1,)), torch.tensor([0, 0, 0]))
        buf.add(tagged([9], (1,)), torch.tensor([0]))
        evicted_new += int(9 not in buf.codes[:, 0].tolist())
    assert 0 < evicted_new < 60  # 1 in 4 chances in the original rule


# ----------------------------------------------------------------------------- sampling
def test_sample_and_sample_per_class():
    buf = CodeBuffer(12, (1,), "largest_class")
    buf.add(tagged(range(12), (1,)), torch.tensor([0] * 6 + [1] * 4 + [2] * 2))
    g = torch.Generator().manual_seed(0)
    codes, labels = buf.sample(5, generator=g)
    assert codes.shape == (5, 1) and labels.dtype == torch.long
    assert len(set(codes[:, 0].tolist())) == 5  # without replacement
    codes, labels = buf.sample(4, classes=[2], generator=g)
    assert set(labels.tolist()) == {2}
    codes, labels = buf.sample_per_class([2, 0, 7], 3, generator=g)
    assert labels.tolist() == [2, 0] * 3  # round-major, classes without items skipped
    e_codes, e_labels = buf.sample(3, classes=[9])
    assert len(e_labels) == 0 and e_codes.shape == (0, 1)


def test_codebuffer_state_dict_roundtrip():
    buf = CodeBuffer(6, (2, 2), "class_balanced", seed=4)
    buf.begin_experience(n_items=12, classes=[0, 1])
    buf.add(torch.randint(0, 255, (12, 2, 2), dtype=torch.uint8), torch.tensor([0, 1] * 6))
    state = roundtrip(buf.state_dict())
    other = CodeBuffer.from_state_dict(state)
    assert len(other) == len(buf) and other.capacity == buf.capacity
    assert torch.equal(other.codes[: len(buf)], buf.codes[: len(buf)])
    assert other.items_per_class() == buf.items_per_class()
    assert other.policy.stride == buf.policy.stride and other.policy.seen == buf.policy.seen
    # same future randomness
    assert torch.equal(buf.sample(3)[0], other.sample(3)[0])


# ----------------------------------------------------------------------------- augmentation
def test_crop_identity_and_shapes():
    f = torch.randn(4, 8, 7, 7)
    same = random_resized_crop_features(f, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(same, f, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    out = random_resized_crop_features(f, scale=(2 / 7, 1.0), generator=g)
    assert out.shape == f.shape


def test_crop_matches_interpolate_of_integer_crop():
    f = torch.randn(16, 3, 7, 9)
    g = torch.Generator().manual_seed(5)
    x0, y0, cw, ch = sample_crop_boxes(16, 7, 9, scale=(0.1, 1.0), ratio=(0.5, 2.0), generator=g)
    out = resize_crops(f, x0, y0, cw, ch)
    for i in range(16):
        a, b, w, h = int(x0[i]), int(y0[i]), int(cw[i]), int(ch[i])
        assert 0 <= a and a + w <= 9 and 0 <= b and b + h <= 7
        ref = nn.functional.interpolate(f[i : i + 1, :, b : b + h, a : a + w], size=(7, 9), mode="bilinear",
                                        align_corners=False)
        assert torch.allclose(out[i : i + 1], ref, atol=1e-5), i


def test_mixup_halves_and_grad():
    f = torch.randn(6, 4, 3, 3, requires_grad=True)
    y = torch.arange(6)
    mixed, ya, yb, lam = mixup_features(f, y, alpha=0.1, mode="halves", generator=torch.Generator().manual_seed(1))
    assert mixed.shape == (3, 4, 3, 3) and ya.tolist() == [0, 1, 2] and yb.tolist() == [3, 4, 5]
    assert torch.allclose(mixed, lam * f[:3] + (1 - lam) * f[3:])
    out, ya, yb, lam = augment_features(f, y, mixup_alpha=0.1, generator=torch.Generator().manual_seed(2))
    out.sum().backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    same, ya, yb, lam = augment_features(f, y, crop=False, mixup_alpha=None)
    assert lam == 1.0 and torch.equal(ya, yb) and same is f


# ----------------------------------------------------------------------------- plugin wiring
def tiny_splitnet(num_classes=4):
    trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
    head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))
    return SplitNet(trunk, head)


def tiny_stream(n_per_class=6, size=16, n_exp=2, classes_per_exp=2, seed=0):
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

    groups = [list(range(e * classes_per_exp, (e + 1) * classes_per_exp)) for e in range(n_exp)]
    bm = benchmark_from_datasets(train=[ds(c, n_per_class) for c in groups], test=[ds(c, 2) for c in groups])
    return with_task_labels(with_classes_timeline(bm))


def test_plugin_requires_splitnet():
    from avalanche.training import Naive

    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    plugin = LatentReplayPlugin(IdentityCodec(), memory=4)
    strat = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=4,
                  eval_mb_size=4, plugins=[plugin], evaluator=None)
    with pytest.raises(StreamclError, match="SplitNet"):
        strat.train(tiny_stream().train_stream[0])


def test_joint_uniform_stream_mode_with_identity_codec():
    """REMIND-like configuration: joint replay, uniform draws, crops + mixup, per-batch storage."""
    from avalanche.training import Naive

    torch.manual_seed(0)
    model = tiny_splitnet()
    trunk_before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    plugin = LatentReplayPlugin(
        IdentityCodec(), memory=8, policy="largest_class", replay="joint", replay_sampling="uniform",
        replay_mb_size=3, replay_weight=None, augment=True, crop_scale=(4 / 8, 1.0), mixup_alpha=0.1,
        store="stream", eval_path="reconstructed", fit_codec="never",
    )
    strat = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=2,
                  eval_mb_size=8, plugins=[plugin], evaluator=None)
    bm = tiny_stream()
    for exp in bm.train_stream:
        strat.train(exp)
        strat.eval(bm.test_stream)
    assert len(plugin.buffer) == 8 and plugin.buffer.items_per_class() == {0: 2, 1: 2, 2: 2, 3: 2}
    assert plugin.last_replay_size == 3  # 6 drawn, mixed pairwise into 3
    assert plugin.replay_nbytes() == plugin.buffer.nbytes() + plugin.codec.state_nbytes()
    for k, v in model.trunk.state_dict().items():
        assert torch.equal(v, trunk_before[k]), k


def test_replay_classes_and_rounds_rule():
    plugin = LatentReplayPlugin(IdentityCodec(), memory=20)
    plugin.buffer = CodeBuffer(20, (1,), "largest_class")
    plugin.buffer.add(tagged(range(9), (1,)), torch.tensor([0, 0, 1, 1, 2, 2, 2, 5, 5]))
    plugin.seen_classes = [0, 1, 2, 3, 4]  # 3, 4 seen but nothing stored; 5 stored but "unseen"
    batch = torch.tensor([2, 4, 4, 4, 4])  # B = 5
    assert plugin.replay_classes(batch) == [0, 1]
    codes, labels = plugin.sample_replay(None, batch)
    assert labels.tolist() == [0, 1] * math.ceil(5 / 2)
    assert plugin.sample_replay(None, torch.tensor([0, 1])) is None or True  # class 2 remains
    codes, labels = plugin.sample_replay(None, torch.tensor([0, 1]))
    assert set(labels.tolist()) == {2} and len(labels) == 2


def test_mask_sets_unseen_logits_very_low():
    plugin = LatentReplayPlugin(IdentityCodec(), memory=2)
    plugin.seen_classes = [0, 2]
    out = plugin.mask(torch.zeros(2, 4))
    assert out[:, [0, 2]].eq(0).all() and (out[:, [1, 3]] <= -1e4).all() and torch.isfinite(out).all()
    assert torch.softmax(out, 1)[:, [1, 3]].sum() == 0


def test_plugin_state_dict_roundtrip_weights_only():
    from avalanche.training import Naive

    torch.manual_seed(0)
    model = tiny_splitnet()
    plugin = LatentReplayPlugin(IdentityCodec(), memory=6, replay="separate")
    strat = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=4,
                  eval_mb_size=8, plugins=[plugin], evaluator=None)
    bm = tiny_stream()
    strat.train(bm.train_stream[0])
    state = roundtrip(plugin.state_dict())
    fresh = LatentReplayPlugin(IdentityCodec(), memory=6, replay="separate")
    fresh.load_state_dict(state)
    assert fresh.seen_classes == plugin.seen_classes
    assert torch.equal(fresh.buffer.codes, plugin.buffer.codes)
    assert fresh.buffer.items_per_class() == plugin.buffer.items_per_class()
    assert fresh.replay_nbytes() == plugin.replay_nbytes()


def test_codec_default_accounting():
    class Tiny(Codec):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.zeros(16, 4))
            self.register_buffer("extra", torch.zeros(3, dtype=torch.float64))

        def code_shape(self, feature_shape):
            c, h, w = feature_shape
            return (h, w, c // 4)

    t = Tiny()
    assert t.state_nbytes() == 16 * 4 * 4 + 3 * 8
    assert t.nbytes_per_item((8, 5, 5)) == 5 * 5 * 2
    assert t.is_fitted and t.learnable


# ----------------------------------------------------------------------------- the package layout
def test_old_import_paths_and_exports_keep_working():
    import streamcl.benchmarks
    import streamcl.plugins.latent_replay as lr
    from streamcl.benchmarks import scenarios
    from streamcl.plugins import RawReplayPlugin
    from streamcl.plugins.raw_replay import RawReplayPlugin as Raw
    from streamcl.strategies import CRUMB, REMIND
    from streamcl.strategies.latent import CRUMB as OldCRUMB
    from streamcl.strategies.latent import REMIND as OldREMIND

    assert RawReplayPlugin is Raw
    assert streamcl.benchmarks.synthetic_scenario is scenarios.synthetic
    assert OldCRUMB is CRUMB and OldREMIND is REMIND
    # every name the single module exported is still importable from the package, from its concept's module
    for name, module in [("MemoryBudget", "budget"), ("parse_memory", "budget"), ("MemorySpec", "budget"),
                         ("ClassBalancedPolicy", "policies"), ("make_policy", "policies"),
                         ("CodeBuffer", "code_buffer"), ("augment_features", "feature_augment"),
                         ("mixup_loss", "feature_augment"), ("LatentReplayPlugin", "plugin"),
                         ("ReconstructedAccuracy", "metrics"), ("reconstructed_accuracy_metrics", "metrics"),
                         ("find_latent_replay_plugin", "metrics"), ("LayerCut", "cut")]:
        assert getattr(lr, name) is getattr(__import__(f"streamcl.plugins.latent_replay.{module}",
                                                       fromlist=[name]), name)
    assert {"Codec", "IdentityCodec", "LargestClassEvictionPolicy", "BufferPolicy", "random_resized_crop_features",
            "sample_crop_boxes", "resize_crops", "mixup_features"} <= set(lr.__all__)
