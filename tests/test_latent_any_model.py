"""Latent replay on models that are not SplitNets: torchvision and timm ResNet-18 cut at ``layer4.0``.

A plain ``avalanche.training.Naive`` trains two experiences of tiny random 32x32 images with
``CRUMBPlugin(latent_layer="layer4.0")`` or ``REMINDPlugin(latent_layer="layer4.0")``; replayed
items must go through the layers after the cut only (counted with forward hooks) and nothing
before the cut may change (weights and BatchNorm statistics).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from streamcl.errors import ConfigError, StreamclError
from streamcl.plugins import CRUMBPlugin, LayerCut, REMINDPlugin

warnings.filterwarnings("ignore", message="PQCodec: training")

N_CLASSES = 4
PER_CLASS = 12  # 24 images per experience: 3 mini-batches of 8 (no batch of 1 for BatchNorm)


def tiny_stream(seed=0):
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.benchmarks.utils.classification_dataset import TaskAwareSupervisedClassificationDataset
    from avalanche.benchmarks.utils.data_attribute import DataAttribute, TaskLabels
    from avalanche.benchmarks.utils.flat_data import ConstantSequence
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(seed)

    def ds(classes, n):
        x = torch.cat([torch.randn(n, 3, 32, 32, generator=g) * 0.5 + 0.5 * c for c in classes])
        y = torch.tensor([c for c in classes for _ in range(n)])
        return TaskAwareSupervisedClassificationDataset(
            [TensorDataset(x, y)],
            data_attributes=[DataAttribute(y.tolist(), "targets"), TaskLabels(ConstantSequence(0, len(y)))],
        )

    bm = benchmark_from_datasets(train=[ds([0, 1], PER_CLASS), ds([2, 3], PER_CLASS)],
                                 test=[ds([0, 1], 2), ds([2, 3], 2)])
    return with_task_labels(with_classes_timeline(bm))


def torchvision_resnet18():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=N_CLASSES)


def timm_resnet18():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=N_CLASSES)


def crumb():
    return CRUMBPlugin(latent_layer="layer4.0", memory=8, n_blocks=32, block_dim=16, seed=0)


def remind():
    pytest.importorskip("faiss")
    return REMINDPlugin(latent_layer="layer4.0", memory=16, num_codebooks=8, nbits=4, n_replay=3,
                        lr_schedule="constant", pq_niter=5, seed=0)


AFTER_CUT = ("layer4.1.", "fc.", "global_pool.", "avgpool.")


class Counter:
    """Items (first dimension of the input) that went through a module while ``on``."""

    def __init__(self, module: nn.Module):
        self.items = 0
        self.on = False
        module.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        if self.on:
            self.items += len(inputs[0])


@pytest.mark.parametrize("build", [torchvision_resnet18, timm_resnet18], ids=["torchvision", "timm"])
@pytest.mark.parametrize("make_plugin", [crumb, remind], ids=["crumb", "remind"])
def test_plain_naive_on_an_unwrapped_resnet(build, make_plugin):
    from avalanche.training import Naive

    model = build()
    plugin = make_plugin()
    before = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(AFTER_CUT)}
    head_before = model.fc.weight.detach().clone()
    first, after = Counter(model.conv1), Counter(model.fc)  # the first and the last layer
    replayed = []
    real = plugin.replay_features

    def counting(codes, labels, device):
        out = real(codes, labels, device)
        replayed.append(len(out[0]))
        return out

    plugin.replay_features = counting
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                     train_mb_size=8, eval_mb_size=16, plugins=[plugin], evaluator=None)
    stream = tiny_stream()
    strategy.train(stream.train_stream[0])
    n_new = len(stream.train_stream[1].dataset)
    first.on = after.on = True
    strategy.train(stream.train_stream[1])
    first.on = after.on = False
    strategy.eval(stream.test_stream)

    # The frozen part saw every new image exactly once (no second pass for storing) and no replayed item.
    assert first.items == n_new
    assert sum(replayed) > 0
    if isinstance(plugin, REMINDPlugin):
        # one encoding forward of each mini-batch, then per example: 1 new + the replayed items
        assert plugin.steps == n_new
        assert after.items == n_new + n_new + sum(replayed)
    else:
        assert plugin.replay_steps > 0
        assert after.items == n_new + sum(replayed)
    for k, v in model.state_dict().items():
        if k in before:
            assert torch.equal(v, before[k]), f"{k} (before the cut) changed"
    assert not torch.equal(model.fc.weight, head_before)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in before)
    assert len(plugin.buffer) > 0 and set(plugin.buffer.items_per_class()) <= {0, 1, 2, 3}


@pytest.mark.parametrize("build", [torchvision_resnet18, timm_resnet18], ids=["torchvision", "timm"])
def test_layer_cut_splits_the_forward_exactly(build):
    model = build().eval()
    cut = LayerCut(model, "layer4.0")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        f = cut.features(x)
        assert f.shape == (3, 512, 1, 1)
        assert torch.allclose(cut.head(f), model(x), atol=1e-6)
    # the hook replaces the cut layer's output inside the model's own forward
    cut.set_hook(lambda f: torch.zeros_like(f))
    with torch.no_grad():
        hooked = model(x)
    cut.set_hook(None)
    with torch.no_grad():
        assert torch.allclose(hooked, cut.head(torch.zeros(3, 512, 1, 1)), atol=1e-6)
    # frozen: no gradients before the cut, and eval mode there even after model.train()
    assert not model.conv1.weight.requires_grad and model.layer4[1].conv1.weight.requires_grad
    model.train()
    stats = model.bn1.running_mean.clone()
    model(x)
    assert torch.equal(model.bn1.running_mean, stats) and not model.bn1.training
    assert model.layer4[1].bn1.training


def test_bad_latent_layers_say_what_to_do():
    model = torchvision_resnet18()
    with pytest.raises(ConfigError, match="no layer 'layer4.9'.*did you mean") as err:
        CRUMBPlugin(latent_layer="layer4.9").model_cut(model)
    assert "latent_layer" in str(err.value) and "\n" not in str(err.value)
    # inside a residual block: the skip connection reads the block's input, computed before the cut
    with pytest.raises(StreamclError, match="does not cut ResNet in two.*layer4.0"):
        LayerCut(model, "layer4.1.conv1")

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

        def forward(self, x):
            x = self.a(x)
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return self.b(x).flatten(1)

    with pytest.raises(StreamclError, match="cannot trace Branchy with torch.fx.*'a'.*SplitNet"):
        LayerCut(Branchy(), "a")
    # neither a SplitNet nor a latent_layer
    with pytest.raises(StreamclError, match="SplitNet.*latent_layer"):
        CRUMBPlugin().model_cut(model)


def test_crumb_pretraining_on_an_unwrapped_resnet():
    from torch.utils.data import TensorDataset

    model = torchvision_resnet18()
    plugin = CRUMBPlugin(latent_layer="layer4.0", n_blocks=32, block_dim=16, seed=0)
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, N_CLASSES, (16,)))
    conv1, fc = model.conv1.weight.detach().clone(), model.fc.weight.detach().clone()
    losses = plugin.pretrain(model, data, epochs=1, mb_size=8)
    assert len(losses) == 1 and torch.equal(model.conv1.weight, conv1) and not torch.equal(model.fc.weight, fc)
    plugin.pretrain(model, data, epochs=1, mb_size=8, lr=0.1, train_trunk=True)
    assert not torch.equal(model.conv1.weight, conv1)  # the whole network trained ...
    assert not model.conv1.weight.requires_grad  # ... and what lies before the cut is frozen again
