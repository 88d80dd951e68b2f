"""CRUMB's offline pretraining runs as an Avalanche strategy and computes what a plain loop computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from streamcl.models import small_cnn_cut
from streamcl.models.codebook import MemoryBlockCodec
from streamcl.plugins.crumb import pretrain_crumb
from streamcl.plugins.latent_replay import resolve_cut


def _data(n: int = 48, classes: int = 3) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = torch.randn(n, 3, 16, 16, generator=g) + y.view(-1, 1, 1, 1).float()
    return TensorDataset(x, y)


def _setup():
    torch.manual_seed(1)
    model = small_cnn_cut(3, width=8, freeze_trunk=True)
    codec = MemoryBlockCodec(n_blocks=16, block_dim=8, init="first_batch", seed=0)
    return model, codec


def _plain_loop(model, codec, data, *, epochs, mb_size, lr, seed):
    """The textbook loop: CE(head(decode(encode(f)))) + CE(head(f)), SGD, shuffled batches from a seeded generator."""
    cut = resolve_cut(model, None, "test")
    params = [p for p in model.parameters() if p.requires_grad] + [p for p in codec.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    ce = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    model.train()
    history = []
    for _ in range(epochs):
        total, count = 0.0, 0
        for x, y in DataLoader(data, batch_size=mb_size, shuffle=True, generator=g):
            f = cut.trunk(x)
            if not codec.is_fitted:
                codec.fit(f)
            loss = ce(cut.head(codec.decode(codec.encode(f))), y) + ce(cut.head(f), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(y)
            count += len(y)
        history.append(total / count)
    return history


def test_strategy_equals_the_plain_loop():
    data = _data()
    m1, c1 = _setup()
    m2, c2 = _setup()  # built twice from the same seeds (a deep copy would not copy the codec's generator state)
    torch.manual_seed(3)  # a "first_batch" codebook draws its rows from torch's global generator
    ref = _plain_loop(m1, c1, data, epochs=3, mb_size=8, lr=0.05, seed=7)
    torch.manual_seed(3)
    got = pretrain_crumb(m2, c2, data, epochs=3, mb_size=8, lr=0.05, seed=7)
    assert got == pytest.approx(ref, rel=0, abs=0)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k  # weights and BatchNorm running statistics alike
    assert torch.equal(c1.memory, c2.memory)
    assert got[-1] < got[0]


def test_metrics_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, codec = _setup()
    pretrain_crumb(model, codec, _data(), epochs=2, mb_size=16, lr=0.05, log_dir=tmp_path / "tb")
    events = list((tmp_path / "tb").glob("events.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    loss = [t for t in tags if t.startswith("Loss_Epoch")]
    top1 = [t for t in tags if t.startswith("Top1_Acc_Epoch")]
    assert loss and top1, tags
    assert len(acc.Scalars(loss[0])) == 2  # one point per epoch


def test_max_steps_and_uint8_inputs():
    from streamcl.benchmarks.device_transforms import DeviceNormalize

    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.arange(32) % 3
    norm = DeviceNormalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    m1, c1 = _setup()
    m2, c2 = _setup()
    torch.manual_seed(3)
    a = pretrain_crumb(m1, c1, TensorDataset(x8, y), epochs=5, mb_size=8, max_steps=3, seed=1, input_transform=norm)
    torch.manual_seed(3)
    b = pretrain_crumb(m2, c2, TensorDataset(norm(x8), y), epochs=5, mb_size=8, max_steps=3, seed=1)
    assert len(a) == 1  # three steps: stopped inside the first epoch
    assert a == b
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
