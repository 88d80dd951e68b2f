"""SplitNet and the cut backbones: shapes, frozen trunk, weight files (random init only, no network)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from streamcl.errors import CheckpointError, StreamclError
from streamcl.models import SplitNet, mobilenetv2_cut, resnet18_cut, small_cnn_cut, squeezenet_cut


def bn_splitnet(num_classes=3):
    trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
    return SplitNet(trunk, head)


def test_splitnet_forward_is_head_of_trunk():
    torch.manual_seed(0)
    net = bn_splitnet().eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(net(x), net.head(net.trunk(x)))
    assert torch.allclose(net.features(x), net.trunk(x))


def test_trunk_frozen_and_kept_in_eval_mode():
    net = bn_splitnet()
    assert all(not p.requires_grad for p in net.trunk.parameters())
    assert all(p.requires_grad for p in net.head.parameters())
    net.train()
    assert net.training and net.head.training and not net.trunk.training
    assert not any(m.training for m in net.trunk.modules())
    stats = net.trunk[1].running_mean.clone()
    net(torch.randn(4, 3, 8, 8) * 5 + 3)
    assert torch.equal(net.trunk[1].running_mean, stats)  # BN stats of the trunk do not drift
    assert not torch.equal(net.head[1].running_mean, torch.zeros(4))  # the head's do

    free = SplitNet(nn.Conv2d(3, 4, 1), nn.Flatten(), freeze_trunk=False).train()
    assert free.trunk.training and all(p.requires_grad for p in free.trunk.parameters())


def test_feature_hook_and_copy():
    import copy

    net = bn_splitnet().eval()
    x = torch.randn(2, 3, 8, 8)
    with net.hooked(lambda f: torch.zeros_like(f)):
        hooked = net(x)
        clone = copy.deepcopy(net)
        assert clone.feature_hook is None
    assert net.feature_hook is None
    assert torch.allclose(hooked, net.head(torch.zeros_like(net.trunk(x))))
    assert "feature_hook" not in "".join(net.state_dict())


@pytest.mark.parametrize(
    "factory,kwargs,size,feat",
    [
        (squeezenet_cut, {}, 224, (512, 13, 13)),
        (squeezenet_cut, {"cut_layer": 3}, 224, (96, 54, 54)),
        (resnet18_cut, {}, 224, (512, 7, 7)),
        (mobilenetv2_cut, {}, 224, (64, 14, 14)),
        (small_cnn_cut, {}, 64, (64, 16, 16)),
    ],
)
def test_cut_shapes(factory, kwargs, size, feat):
    torch.manual_seed(0)
    net = factory(5, **kwargs).eval()
    with torch.no_grad():
        x = torch.randn(1, 3, size, size)
        f = net.features(x)
        assert tuple(f.shape[1:]) == feat
        assert net(x).shape == (1, 5)
    assert all(not p.requires_grad for p in net.trunk.parameters())


def test_squeezenet_head_layout():
    net = squeezenet_cut(7)
    conv = net.head.classifier[1]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.padding == (1, 1)
    assert conv.out_channels == 7 and len(net.head.features) == 1  # Fire9
    assert net.meta["cut"] == "squeezenet_cut12"
    with pytest.raises(StreamclError):
        squeezenet_cut(3, cut_layer=0)


def test_registered_for_yaml():
    from streamcl.registry import MODELS

    for name in ("squeezenet_cut", "resnet18_cut", "mobilenetv2_cut", "small_cnn_cut"):
        entry = MODELS.get(name)
        assert "num_classes" not in entry.parameters()  # injected by the runner
        assert "weights" in entry.parameters()


def test_full_torchvision_state_dict_file(tmp_path):
    import torchvision.models as tvm

    torch.manual_seed(1)
    full = tvm.squeezenet1_0()
    path = tmp_path / "sq.pth"
    torch.save(full.state_dict(), path)
    net = squeezenet_cut(4, weights=str(path))
    assert torch.equal(net.trunk.features[0].weight, full.features[0].weight)
    assert torch.equal(net.head.features[0].expand3x3.weight, full.features[12].expand3x3.weight)
    assert net.head.classifier[1].out_channels == 4  # re-initialised for the benchmark's classes

    torch.manual_seed(2)
    r = tvm.resnet18(num_classes=4)
    torch.save({"state_dict": {"module." + k: v for k, v in r.state_dict().items()}}, tmp_path / "r.pth")
    net = resnet18_cut(4, weights=str(tmp_path / "r.pth"))
    assert torch.equal(net.head.fc.weight, r.fc.weight)  # same class count: the fc is kept
    assert torch.equal(net.trunk.layer4_0.conv1.weight, r.layer4[0].conv1.weight)


def test_splitnet_state_dict_file_roundtrip(tmp_path):
    torch.manual_seed(3)
    a = small_cnn_cut(3, width=4)
    torch.save(a.state_dict(), tmp_path / "a.pt")
    b = small_cnn_cut(3, width=4, weights=str(tmp_path / "a.pt"))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    c = small_cnn_cut(6, width=4, weights=str(tmp_path / "a.pt"))  # other class count: fc re-initialised
    assert c.head.fc.out_features == 6 and torch.equal(c.trunk.conv1.weight, a.trunk.conv1.weight)


def test_bad_weight_files_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="nope.pth"):
        small_cnn_cut(3, weights=str(missing))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="corrupt.pth"):
        squeezenet_cut(3, weights=str(corrupt))
    other = tmp_path / "other.pth"
    torch.save(small_cnn_cut(3, width=4).state_dict(), other)
    with pytest.raises(CheckpointError, match="other.pth"):
        small_cnn_cut(3, width=8, weights=str(other))  # shapes differ
    torch.save({"features.0.weight": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="do not match"):
        squeezenet_cut(3, weights=str(other))


def test_imagenet_weights_offline_message(monkeypatch):
    import torchvision.models as tvm

    real = tvm.squeezenet1_0

    def offline(*, weights=None, **kw):
        if weights is not None:
            raise OSError("[Errno -3] Temporary failure in name resolution")
        return real(weights=None, **kw)

    monkeypatch.setattr(tvm, "squeezenet1_0", offline)
    with pytest.raises(StreamclError, match="offline"):
        squeezenet_cut(3, weights="imagenet")
    with pytest.raises(StreamclError, match="no pretrained"):
        small_cnn_cut(3, weights="imagenet")
