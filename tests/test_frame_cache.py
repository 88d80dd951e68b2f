"""Decoded-frame cache and device-side normalisation: equality with the decode path, resume, refusals, CLI, runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _raw_fixtures import prepare, synthetic

from streamcl.benchmarks import frame_cache as fc
from streamcl.benchmarks.device_transforms import DeviceNormalize, DeviceTransformPlugin, maybe_normalize
from streamcl.benchmarks.dirmap import load_dirmap
from streamcl.benchmarks.scenarios import DirmapImageDataset, ilab2mlight, subset_by_sample_id
from streamcl.benchmarks.transforms import IMAGENET_MEAN, IMAGENET_STD, default_eval_transform, transform_list
from streamcl.cli import main
from streamcl.errors import ConfigError, DatasetError

# iLab frames are JPEGs: written at 40 px and cached at 16 px, PIL's draft (DCT scaling) is exercised too.
RAW = dict(n_classes=4, n_objects=2, image_size=40)
S = 16
ROOT_REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared synthetic iLab tree: (raw root, index root)."""
    base = tmp_path_factory.mktemp("fc")
    raw = synthetic.generate("ilab2mlight", base / "raw", **RAW)
    out = prepare.prepare("ilab2mlight", raw, base / "prepared", progress=False, verbose=False)
    return raw, out


@pytest.fixture(scope="module")
def index(prepared):
    """(dirmap, image root, index root) of the prepared tree."""
    table, img_root, _ = prepare.load_index(prepared[1])
    return load_dirmap(table), img_root, prepared[1]


@pytest.fixture(scope="module")
def cached(index):
    """The index root with its 16 px cache written (sequentially)."""
    res = fc.write_frame_cache(index[2], S, progress=False)
    assert res.resumed_from == 0 and res.decoded == res.n == len(index[0])
    return index[2]


def _decode_path_rows(dirmap, img_root, size, ids):
    """What the decode path feeds its ToTensor: PIL open + draft + RGB + Resize, as uint8 CHW arrays."""
    ds = DirmapImageDataset(img_root, dirmap["im_path"].tolist(), [0] * len(dirmap), draft_size=size)
    resize = transform_list(size)[0]
    return np.stack([np.asarray(resize(ds[i][0])) for i in ids]).transpose(0, 3, 1, 2)


def _copy_index(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in (prepare.DIRMAP_FILE, prepare.INDEX_FILE):
        (dst / name).write_bytes((src / name).read_bytes())
    meta = json.loads((dst / prepare.INDEX_FILE).read_text())
    img = Path(meta["image_root"])
    if not img.is_absolute():  # keep pointing at the original images
        meta["image_root"] = str((src / img).resolve())
        (dst / prepare.INDEX_FILE).write_text(json.dumps(meta))
    return dst


# --------------------------------------------------------------------------- contents


def test_cache_rows_equal_decode_path(cached, index):
    dirmap, img_root, _ = index
    cache = fc.open_frame_cache(cached, S, dirmap)
    assert cache.frames.shape == (len(dirmap), 3, S, S) and cache.frames.dtype == np.uint8
    assert cache.source_hw == (20, 20)  # 40 px JPEGs drafted (DCT scale 1/2) for 16 px
    ids = list(range(len(dirmap)))
    np.testing.assert_array_equal(np.asarray(cache.frames), _decode_path_rows(dirmap, img_root, S, ids))
    man = json.loads(fc.manifest_path(fc.frame_cache_path(cached, S)).read_text())
    assert man["n"] == len(dirmap) and man["size"] == S and man["format"] == fc.FORMAT
    assert man["dirmap_sha256"] == fc.dirmap_digest(dirmap)
    assert not list(Path(cached).glob("*.partial")) and not list(Path(cached).glob("*.tmp"))
    assert fc.frame_cache_path(cached, S).stat().st_size == cache.frames.offset + fc.cache_nbytes(len(dirmap), S)


def test_parallel_write_is_identical(cached, index, tmp_path):
    dirmap, img_root, root = index
    other = _copy_index(root, tmp_path / "copy")
    res = fc.write_frame_cache(other, S, workers=2, chunk_rows=7, flush_rows=50, progress=False)
    assert res.decoded == len(dirmap)
    assert fc.frame_cache_path(other, S).read_bytes() == fc.frame_cache_path(cached, S).read_bytes()
    again = fc.write_frame_cache(other, S, progress=False)  # complete and valid: kept
    assert again.decoded == 0


def test_device_normalize_equals_cpu_decode_path(cached, index):
    """Scenario inputs from the cache, normalised by DeviceNormalize, equal the decode path's tensors."""
    _, _, root = index
    dec = ilab2mlight(root, image_size=S, protocol="class_iid", run=0)
    cac = ilab2mlight(root, image_size=S, protocol="class_iid", run=0, cache=True)
    assert dec.streamcl_info.device_normalize is None and dec.streamcl_info.input_dtype == torch.float32
    assert cac.streamcl_info.device_normalize == (IMAGENET_MEAN, IMAGENET_STD)
    assert cac.streamcl_info.input_dtype == torch.uint8 and cac.streamcl_info.input_shape == (3, S, S)
    norm = DeviceNormalize(*cac.streamcl_info.device_normalize)
    for stream in ("train_stream", "test_stream"):
        for e_dec, e_cac in zip(getattr(dec, stream), getattr(cac, stream)):
            assert list(e_dec.dataset.sample_id) == list(e_cac.dataset.sample_id)
            load = lambda ds: next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))  # noqa: E731
            xd, yd, _ = load(e_dec.dataset)
            xc, yc, _ = load(e_cac.dataset)
            assert xc.dtype == torch.uint8 and xd.dtype == torch.float32 and torch.equal(yd, yc)
            out = norm(xc)
            assert out.dtype == torch.float32 and out.shape == xd.shape
            torch.testing.assert_close(out, xd, atol=1e-6, rtol=0)
            assert torch.equal(out, xd)  # the same float32 ops in the same order: bit-identical on CPU
    # replay buffers rebuild their items by sample id: uint8 rows of the cache
    ids = [int(i) for i in cac.train_stream[1].dataset.sample_id][::-3]
    sub = subset_by_sample_id(cac, ids)
    frames = fc.open_frame_cache(root, S).frames
    x = torch.stack([sub[i][0] for i in range(len(sub))])
    assert torch.equal(x, torch.from_numpy(np.asarray(frames[ids])))


def test_device_normalize_options():
    x = torch.randint(0, 256, (6, 3, 5, 7), dtype=torch.uint8)
    ref = torch.stack([default_eval_transform(5).transforms[-1](i.float() / 255) for i in x])
    plain = DeviceNormalize(IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(plain(x), ref) and torch.equal(plain(x[0]), ref[0])
    cl = DeviceNormalize(IMAGENET_MEAN, IMAGENET_STD, channels_last=True)(x)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, ref)
    flip = DeviceNormalize(IMAGENET_MEAN, IMAGENET_STD, hflip=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(flip(x), ref)  # eval: never flips
    out = flip(x, train=True)
    flipped = [bool(torch.equal(o, r.flip(-1))) for o, r in zip(out, ref)]
    kept = [bool(torch.equal(o, r)) for o, r in zip(out, ref)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    with pytest.raises(TypeError, match="uint8"):
        plain(ref)


def test_cpu_output_buffer_reused_only_when_unreferenced():
    """The CPU normaliser writes into the previous batch's storage only once nothing holds that batch."""
    norm = DeviceNormalize(IMAGENET_MEAN, IMAGENET_STD)
    a, b = (torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(s))
            for s in (0, 1))
    ref_a, ref_b = (DeviceNormalize(IMAGENET_MEAN, IMAGENET_STD)(t).clone() for t in (a, b))
    out = norm(a)
    ptr = out.data_ptr()
    for holder in (lambda t: t, lambda t: t[1:], lambda t: t.numpy(), lambda t: t.detach(),
                   lambda t: (t * torch.ones(1, requires_grad=True)).sum()):  # last: an autograd graph saved it
        kept = holder(out)
        del out
        out = norm(b)  # the held batch must not be overwritten
        assert out.data_ptr() != ptr and torch.equal(out, ref_b)
        third = norm(a)  # while two batches are alive: a third buffer
        assert len({third.data_ptr(), out.data_ptr(), ptr}) == 3 and torch.equal(third, ref_a)
        assert torch.equal(out, ref_b)
        del kept, third
        out = norm(a)
        ptr = out.data_ptr()
        assert torch.equal(out, ref_a)
    held = out
    del out
    assert norm(b).data_ptr() != held.data_ptr() and torch.equal(held, ref_a)
    del held
    first = norm(a).data_ptr()
    assert norm(b).data_ptr() == first  # released at once: the same storage again, no fresh pages
    assert torch.equal(norm(b), ref_b)


def test_plugin_and_out_of_loop_passes(cached, index):
    """The plugin normalises mbatch in place and hooks the model; latent-replay passes normalise too."""
    from types import SimpleNamespace

    from streamcl.plugins.latent_replay.passes import iterate_batches

    _, _, root = index
    cac = ilab2mlight(root, image_size=S, protocol="class_iid", run=0, cache=True)
    norm = DeviceNormalize(IMAGENET_MEAN, IMAGENET_STD)
    plugin = DeviceTransformPlugin(IMAGENET_MEAN, IMAGENET_STD)
    seen = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * S * S, 2))
    model.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    ds = cac.train_stream[0].dataset
    x, y, t = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    strat = SimpleNamespace(model=model, mbatch=[x, y, t], plugins=[plugin], device=torch.device("cpu"),
                            eval_mb_size=4, adapted_dataset=ds)
    plugin.before_training_iteration(strat)
    assert strat.mbatch[0].dtype == torch.float32 and torch.equal(strat.mbatch[0], norm(x))
    plugin.before_training_iteration(strat)  # a second call leaves float inputs alone
    assert torch.equal(strat.mbatch[0], norm(x))
    with torch.no_grad():
        assert torch.equal(model(x), model(norm(x)))  # the hook: uint8 straight into the model
    assert seen == [torch.float32, torch.float32]  # our hook runs before later hooks: they see float
    xs = torch.cat([b[0] for b in iterate_batches(strat)])
    assert xs.dtype == torch.float32 and torch.equal(xs, norm(torch.stack([ds[i][0] for i in range(len(ds))])))
    assert torch.equal(maybe_normalize(x, SimpleNamespace(plugins=[])), x)  # no plugin: untouched


# --------------------------------------------------------------------------- interrupted writes


def test_killed_write_resumes_without_redoing_rows(cached, index, tmp_path, monkeypatch):
    dirmap, _, root = index
    other = _copy_index(root, tmp_path / "copy")
    script = textwrap.dedent(f"""
        from streamcl.benchmarks.frame_cache import write_frame_cache
        write_frame_cache({str(other)!r}, {S}, chunk_rows=4, flush_rows=8, progress=False)
    """)
    env = dict(os.environ, STREAMCL_FAILPOINT=f"{fc.FAILPOINT}:2", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT_REPO, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]  # SIGKILLed at the second flush (16 rows)
    final = fc.frame_cache_path(other, S)
    assert not final.exists() and not fc.manifest_path(final).exists()
    assert json.loads(Path(str(fc.manifest_path(final)) + ".partial").read_text())["rows_done"] == 16
    with pytest.raises(DatasetError, match="interrupted") as e:
        fc.open_frame_cache(other, S, dirmap)
    assert f"streamcl prepare ilab2mlight RAW --out {other} --cache {S}" in str(e.value)

    calls = []
    real = fc.decode_frame
    monkeypatch.setattr(fc, "decode_frame", lambda p, s: calls.append(p) or real(p, s))
    res = fc.write_frame_cache(other, S, chunk_rows=5, progress=False)
    assert res.resumed_from == 16 and res.decoded == len(dirmap) - 16 == len(calls)
    assert Path(calls[0]).name == Path(dirmap["im_path"].iloc[16]).name
    assert final.read_bytes() == fc.frame_cache_path(cached, S).read_bytes()
    assert not list(other.glob("*.partial"))
    fc.open_frame_cache(other, S, dirmap)


def test_partial_of_another_dirmap_starts_over(index, tmp_path):
    dirmap, img_root, _ = index
    out = tmp_path / "c"
    part = dirmap.iloc[:10].reset_index(drop=True)
    with pytest.raises(KeyboardInterrupt):  # interrupted after its first flush
        def boom(*a):
            raise KeyboardInterrupt
        orig = fc.failpoint
        fc.failpoint = boom
        try:
            fc.write_frame_cache(out, S, dirmap=part, image_root=img_root, name="ilab2mlight", flush_rows=4,
                                 chunk_rows=4, progress=False)
        finally:
            fc.failpoint = orig
    res = fc.write_frame_cache(out, S, dirmap=dirmap.iloc[:12].reset_index(drop=True), image_root=img_root,
                               progress=False)
    assert res.resumed_from == 0 and res.decoded == 12


# --------------------------------------------------------------------------- refusals


def _refused(root, size, dirmap, what):
    with pytest.raises(DatasetError) as e:
        fc.open_frame_cache(root, size, dirmap)
    msg = str(e.value)
    assert "\n" not in msg and what in msg, msg
    assert f"`streamcl prepare ilab2mlight RAW --out {root} --cache {size}`" in msg, msg
    return msg


def test_damaged_and_mismatched_caches_refused(cached, index, tmp_path):
    dirmap, _, root = index
    other = _copy_index(root, tmp_path / "copy")
    final, man = fc.frame_cache_path(other, S), fc.manifest_path(fc.frame_cache_path(other, S))
    _refused(other, S, dirmap, f"{final}: no frame cache at {S} px")
    final.write_bytes(fc.frame_cache_path(cached, S).read_bytes())
    man.write_bytes(fc.manifest_path(fc.frame_cache_path(cached, S)).read_bytes())
    fc.open_frame_cache(other, S, dirmap)  # a good copy opens
    _refused(other, 24, dirmap, f"no frame cache at 24 px (found: {man.name})")  # cache 16, asked for 24
    changed = dirmap.copy()
    changed.loc[3, "im_path"] = changed.loc[4, "im_path"]
    _refused(other, S, changed, f"{man}: cache was written for another dirmap")
    _refused(other, S, dirmap.iloc[:-1], "dirmap has")
    data = final.read_bytes()
    final.write_bytes(data[:-100])  # truncated
    _refused(other, S, dirmap, f"{final}: damaged frame cache")
    final.write_bytes(data + b"x")  # too long
    _refused(other, S, dirmap, f"{final}: damaged frame cache")
    final.write_bytes(b"garbage" * 10)  # not a .npy
    _refused(other, S, dirmap, f"{final}: damaged frame cache")
    final.write_bytes(data)
    good = man.read_text()
    man.write_text("{not json")
    _refused(other, S, dirmap, f"{man}: damaged frame-cache manifest")
    man.write_text(good.replace(f'"size": {S}', '"size": 24'))
    _refused(other, S, dirmap, f"{man}: holds")
    man.write_text(good)
    fc.open_frame_cache(other, S, dirmap)
    # prepare --cache rebuilds a damaged cache
    final.write_bytes(data[:-100])
    assert fc.write_frame_cache(other, S, progress=False).decoded == len(dirmap)
    assert final.read_bytes() == data


def test_cache_key_values(cached, index):
    _, _, root = index
    with pytest.raises(ConfigError, match="cache: must be null, true or the image size 16"):
        ilab2mlight(root, image_size=S, cache=32)
    with pytest.raises(DatasetError, match="--cache 24`"):
        ilab2mlight(root, image_size=24, cache=True)  # no 24 px cache
    sc = ilab2mlight(root, image_size=S, cache=S)
    assert sc.streamcl_info.frame_cache == fc.frame_cache_path(root, S)
    assert ilab2mlight(root, image_size=S, cache=False).streamcl_info.device_normalize is None
    with pytest.raises(ConfigError, match="cache"):
        ilab2mlight(root, image_size=S, cache=True, eval_transform=default_eval_transform(S))


# --------------------------------------------------------------------------- CLI


def test_cli_prepare_cache_end_to_end(prepared, tmp_path, capsys):
    raw, _ = prepared
    out = tmp_path / "out"
    assert main(["prepare", "ilab2mlight", str(raw), "--out", str(out), "--cache", str(S), "-q",
                 "--workers", "1"]) == 0
    assert "frame cache" in capsys.readouterr().out
    table, _, _ = prepare.load_index(out)
    cache = fc.open_frame_cache(out, S, load_dirmap(table))
    assert len(cache) == len(table)
    assert main(["prepare", "ilab2mlight", str(raw), "--out", str(out), "--cache", str(S), "-q"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert main(["prepare", "ilab2mlight", str(raw), "--out", str(out), "--cache", "0", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--cache 0" in err


def _experiment(tmp_path: Path, synthetic_root: Path, cache, methods=None) -> Path:
    doc = {
        "name": "tiny",
        "runs": [0],
        "threads": 1,
        "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "ilab2mlight",
                      "n_classes": 4, "n_objects": 2, "image_size": 24, "cache": cache},
        "model": {"name": "small_cnn_cut", "width": 8},
        "strategy": {"name": "naive", "train_mb_size": 16, "train_epochs": 1,
                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "methods": methods or {"naive": {}},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_cli_run_refuses_damaged_cache(tmp_path, capsys):
    root = tmp_path / "syn"
    path = _experiment(tmp_path / "a", root, True)
    assert main(["run", str(path), "--dry-run"]) == 0
    capsys.readouterr()
    bad = _experiment(tmp_path / "b", root, 32)
    assert main(["run", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "benchmark.cache" in err and "image size 24" in err
    # build the synthetic tree and its cache, then damage the cache
    from streamcl.benchmarks.scenarios import synthetic as synthetic_bm

    sc = synthetic_bm(root, layout="ilab2mlight", n_classes=4, n_objects=2, image_size=24, cache=True)
    cache_file = sc.streamcl_info.frame_cache
    cache_file.write_bytes(cache_file.read_bytes()[:-10])
    assert main(["run", str(path), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(cache_file) in err and "--cache 24`" in err, err


def test_run_with_cache_matches_decode_path(tmp_path, capsys):
    """The same tiny experiment (naive, and replay + EWC) with cache: true and cache: null: identical accuracies."""
    from streamcl.runner import read_metrics

    root = tmp_path / "syn"
    methods = {"naive": {}, "replay_ewc": {"plugins": [{"name": "replay", "mem_size": 20},
                                                        {"name": "ewc", "ewc_lambda": 5.0}]}}
    results = {}
    for cache in (None, True):
        path = _experiment(tmp_path / f"c{cache}", root, cache, methods)
        assert main(["run", str(path), "-q"]) == 0
        capsys.readouterr()
        assert len(list(root.glob("*/prepared/frames_24.npy"))) == (1 if cache else 0)  # written by the cache run
        out = tmp_path / f"c{cache}" / "runs" / "tiny"
        results[cache] = {
            cell: [(r["experience"], r["metric"], r["value"]) for r in read_metrics(out / cell / "run0" / "metrics.csv")
                   if r["metric"].startswith(("Top1_Acc", "Loss"))]
            for cell in methods
        }
        assert all(results[cache].values())
    assert results[None] == results[True]
