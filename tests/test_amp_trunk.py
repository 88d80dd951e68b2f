"""``amp`` and ``channels_last`` for the frozen trunk of CRUMB / REMIND (issue 11, item 3), on CPU.

(a) switched off, nothing changes: no hook is installed and the head sees the very tensor the
trunk returned; (b) bf16 autocast runs on CPU, only inside the trunk, and CRUMB's codes mostly
agree with float32's; (c) channels_last gives the float32 features within rounding; (d) bad
values are refused with a ConfigError naming the key, in Python and in YAML.
"""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from torch import nn

from streamcl import cli
from streamcl.errors import ConfigError
from streamcl.models import MemoryBlockCodec, squeezenet_cut
from streamcl.plugins import CRUMBPlugin, REMINDPlugin
from streamcl.plugins.latent_replay.cut import LayerCut


def frames(n: int = 32, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(4, 3, 8, 8, generator=g)
    x = nn.functional.interpolate(protos[torch.arange(n) % 4], size=(size, size), mode="bilinear")
    return x + 0.3 * torch.randn(x.shape, generator=g)


def tiny_stream(per_class: int = 16, size: int = 64):
    """Two experiences of two classes, ``per_class`` images each (3 x 3 feature maps: enough C-vectors for a PQ)."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.benchmarks.utils.classification_dataset import TaskAwareSupervisedClassificationDataset
    from avalanche.benchmarks.utils.data_attribute import DataAttribute, TaskLabels
    from avalanche.benchmarks.utils.flat_data import ConstantSequence
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)

    def ds(classes):
        x = torch.cat([torch.randn(per_class, 3, size, size, generator=g) * 0.5 + 0.5 * c for c in classes])
        y = torch.tensor([c for c in classes for _ in range(per_class)])
        return TaskAwareSupervisedClassificationDataset(
            [TensorDataset(x, y)],
            data_attributes=[DataAttribute(y.tolist(), "targets"), TaskLabels(ConstantSequence(0, len(y)))])

    return with_task_labels(with_classes_timeline(benchmark_from_datasets(train=[ds([0, 1]), ds([2, 3])],
                                                                          test=[ds([0, 1]), ds([2, 3])])))


def twin_models(n_classes: int = 6):
    """Two squeezenet_cut SplitNets with the same random weights (one per setting)."""
    torch.manual_seed(0)
    a = squeezenet_cut(n_classes, weights=None)
    b = copy.deepcopy(a)
    return a, b


# ----------------------------------------------------------------------------- (a) off = today
def test_switches_off_install_nothing_and_hand_the_trunk_output_through():
    model, _ = twin_models()
    cut = CRUMBPlugin().model_cut(model)
    x = frames(4)
    out_of_trunk, seen = [], []
    spy = model.trunk.register_forward_hook(lambda m, i, o: out_of_trunk.append(o))
    cut.set_hook(lambda f: seen.append(f) or f)
    assert len(model.trunk._forward_pre_hooks) == 0 and len(model._forward_pre_hooks) == 0
    model(x)
    cut.set_hook(None)
    spy.remove()
    assert seen[0] is out_of_trunk[0]  # no cast, no copy between the trunk and the codec
    assert torch.equal(cut.features(x), model.trunk(x))
    assert all(p.is_contiguous() for p in model.trunk.parameters())


def test_layer_cut_switches_off_register_only_the_feature_hook():
    import torchvision

    model = torchvision.models.squeezenet1_0(num_classes=5)
    cut = LayerCut(model, "features.11")
    cut.set_hook(lambda f: f)
    assert len(cut.module._forward_hooks) == 1 and len(model._forward_pre_hooks) == 0
    cut.set_hook(None)
    assert len(cut.module._forward_hooks) == 0


# ----------------------------------------------------------------------------- (b) bf16 on CPU
def test_bf16_autocasts_the_trunk_only_and_crumb_codes_mostly_agree():
    ref_model, amp_model = twin_models()
    ref = CRUMBPlugin().model_cut(ref_model)
    amp = CRUMBPlugin(amp="bf16").model_cut(amp_model)
    x = frames(32)
    f32, fbf = ref.features(x), amp.features(x)
    assert fbf.dtype == torch.float32 and fbf.is_contiguous()
    assert not torch.equal(f32, fbf)  # autocast really ran ...
    rel = float((fbf - f32).norm() / f32.norm())
    assert rel < 0.03  # ... at bf16's precision (8-bit mantissa: ~0.4 % per rounding; measured 0.6-0.9 %)

    # inside model(x): the trunk runs under autocast, the head (and the hook) do not
    dtypes = {}
    amp_model.trunk[0].register_forward_hook(lambda m, i, o: dtypes.__setitem__("trunk", o.dtype))
    amp_model.head.register_forward_hook(lambda m, i, o: dtypes.__setitem__("head", o.dtype))
    amp.set_hook(lambda f: (dtypes.__setitem__("hook", f.dtype), f)[1])
    logits = amp_model(x[:4])
    amp.set_hook(None)
    assert dtypes == {"trunk": torch.bfloat16, "hook": torch.float32, "head": torch.float32}
    assert logits.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")

    # CRUMB's codes: the same codebook, fitted on the float32 features as CRUMB's first batch does.
    codec = MemoryBlockCodec(256, 16, init="distmatch_sparse", match_features=True, seed=0)
    codec.fit(f32[:21])
    agree = float((codec.encode(f32) == codec.encode(fbf)).float().mean())
    # Measured 0.98 here (32 x 3 x 3 x 32 blocks, random trunk at 64 px; 0.981 in
    # perf/bench_gpu_stream.py --check-amp). A block flips only when its two best rows are within
    # bf16's rounding of each other; 0.9 leaves room for other CPUs' bf16 kernels (oneDNN with
    # or without native bf16) while still catching a broken cast (random codes agree ~1/256).
    assert agree >= 0.9, agree


def test_crumb_and_remind_train_with_bf16_on_cpu():
    """A whole (tiny) stream step: codes stored, the model's output float32, autocast left off."""
    from avalanche.training import Naive

    for make in (lambda: CRUMBPlugin(memory=8, amp="bf16", channels_last=True),
                 lambda: REMINDPlugin(memory=8, amp="bf16", mode="batched", n_replay=4, pq_train_vectors=256,
                                      pq_niter=2)):
        torch.manual_seed(0)
        model = squeezenet_cut(4, weights=None)
        plugin = make()
        stream = tiny_stream()
        strategy = Naive(model=model, optimizer=torch.optim.SGD(model.head.parameters(), lr=0.01), train_mb_size=8,
                         eval_mb_size=8, train_epochs=1, plugins=[plugin], evaluator=None)
        for exp in stream.train_stream:
            strategy.train(exp, num_workers=0)
        assert plugin.buffer is not None and len(plugin.buffer) > 0
        assert not torch.is_autocast_enabled("cpu")
        conv = next(p for p in strategy.model.trunk.parameters() if p.dim() == 4)
        assert conv.is_contiguous(memory_format=torch.channels_last) == isinstance(plugin, CRUMBPlugin)


# ----------------------------------------------------------------------------- (c) channels_last
@pytest.mark.parametrize("layer_cut", [False, True], ids=["splitnet", "layer_cut"])
def test_channels_last_features_equal_contiguous_ones_within_fp32_rounding(layer_cut):
    if layer_cut:
        import torchvision

        torch.manual_seed(0)
        a = torchvision.models.squeezenet1_0(num_classes=5)
        b = copy.deepcopy(a)
        ref, cl = CRUMBPlugin(latent_layer="features.11"), CRUMBPlugin(latent_layer="features.11", channels_last=True)
    else:
        a, b = twin_models()
        ref, cl = CRUMBPlugin(), CRUMBPlugin(channels_last=True)
    ref_cut, cl_cut = ref.model_cut(a), cl.model_cut(b)
    x = frames(8)
    f, g = ref_cut.features(x), cl_cut.features(x)
    assert g.is_contiguous() and g.dtype == torch.float32
    assert torch.allclose(f, g, rtol=1e-4, atol=1e-5), float((f - g).abs().max())
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in cl_cut.trunk_parameters())
    # and through the model's own forward (the hooks of set_hook)
    seen = []
    a.eval(), b.eval()  # (the head's dropout)
    cl_cut.set_hook(lambda t: seen.append(t) or t)
    out = b(x)
    cl_cut.set_hook(None)
    assert seen[0].is_contiguous() and torch.allclose(seen[0], f, rtol=1e-4, atol=1e-5)
    assert torch.allclose(out, a(x), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- (d) bad values
@pytest.mark.parametrize("value", ["fp8", "float16", "BF16", 16, True])
def test_bad_amp_values_are_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match="amp") as e:
        CRUMBPlugin(amp=value)
    assert e.value.key == "amp" and "bf16, fp16" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="amp"):
        REMINDPlugin(amp=value)


def test_bad_channels_last_is_refused():
    with pytest.raises(ConfigError, match="channels_last"):
        CRUMBPlugin(channels_last="yes")


def test_yaml_amp_key_is_checked_at_load_time(tmp_path, capsys):
    exp = {
        "name": "t",
        "benchmark": {"name": "synthetic", "root": str(tmp_path / "data"), "layout": "toybox", "n_classes": 4,
                      "n_objects": 2},
        "model": {"name": "small_cnn_cut"},
        "strategy": {"name": "crumb", "train_mb_size": 8, "amp": "fp8",
                     "optimizer": {"name": "sgd", "lr": 0.01}},
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    capsys.readouterr()
    assert cli.main(["run", str(path), "--dry-run"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("streamcl: error")]
    assert len(err) == 1 and "strategy.amp" in err[0] and "fp8" in err[0]
    exp["strategy"]["amp"] = "bf16"
    exp["strategy"]["channels_last"] = True
    path.write_text(yaml.safe_dump(exp))
    assert cli.main(["run", str(path), "--dry-run"]) == 0
