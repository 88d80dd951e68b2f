"""perf/bench_gpu_stream.py runs end to end in a tiny CPU configuration and reports every figure (issue 11, item 4)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

PERF = Path(__file__).resolve().parents[1] / "perf"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu_stream", PERF / "bench_gpu_stream.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


TINY = ["--device", "cpu", "--threads", "1", "--image-size", "64", "--batches", "8,16", "--loader-batch", "16",
        "--trunk-seconds", "0.05", "--loader-images", "48", "--decode-passes", "1", "--cache-passes", "1",
        "--workers", "0", "--e2e-base-images", "32", "--e2e-images", "32", "--remind-images", "16",
        "--pq-train-vectors", "256", "--pq-niter", "2", "--skip-iters", "1", "--n-replay", "4"]


@pytest.mark.slow  # ~30 s on one core: six strategy runs
def test_main_reports_every_figure_in_the_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bench = load_bench()
    out = bench.main(TINY + ["--json", str(tmp_path / "r.json")])
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["device"] == out["device"] and saved["device_type"] == "cpu" and saved["threads"] == 1

    # trunk-only img/s: every precision (fp16 is CUDA-only by default) x layout x batch
    assert set(saved["trunk"]) == {"fp32", "fp32+cl", "bf16", "bf16+cl"}
    assert all(finite(v) for per in saved["trunk"].values() for v in per.values())
    assert all(set(per) == {"8", "16"} for per in saved["trunk"].values())

    loader = saved["loader"]
    for key in ("decode_images_per_s", "cache_images_per_s", "cache_over_decode", "cache_over_fastest_trunk"):
        assert finite(loader[key]), key
    assert loader["decode_frames"] == loader["cache_frames"] > 0

    e2e = saved["e2e"]["fp32"]
    assert set(e2e) == {"crumb", "remind_per_sample", "remind_batched"}
    for method, per_batch in e2e.items():
        assert set(per_batch) == {"8", "16"}, method
        for b, r in per_batch.items():
            assert finite(r["images_per_s"]) and finite(r["ratio_to_trunk"]), (method, b)
            assert r["ratio_to_trunk"] == pytest.approx(r["images_per_s"] / saved["trunk"]["fp32"][b])
            assert r["images"] == (32 if method == "crumb" else 16)
            assert r["buffer_items"] > 0

    names = set(saved["checks"])
    assert any(n.startswith("CRUMB end-to-end / trunk, batch 16") for n in names)
    assert any(n.startswith("loader (cache) / fastest trunk") for n in names)
    assert all(c["verdict"] in ("PASS", "FAIL") for c in saved["checks"].values())


def test_main_fast_subset_gives_the_ratios(tmp_path, monkeypatch):
    """One batch size, CRUMB only: the figures the targets are judged on, in a few seconds."""
    monkeypatch.chdir(tmp_path)
    argv = [a for a in TINY]
    argv[argv.index("--batches") + 1] = "16"
    out = load_bench().main(argv + ["--methods", "crumb", "--amps", "fp32,bf16", "--e2e-precisions", "bf16+cl"])
    assert set(out["trunk"]) == {"fp32", "fp32+cl", "bf16", "bf16+cl"}
    r = out["e2e"]["bf16+cl"]["crumb"]["16"]
    assert finite(r["images_per_s"]) and r["ratio_to_trunk"] == pytest.approx(
        r["images_per_s"] / out["trunk"]["bf16+cl"]["16"])
    assert finite(out["loader"]["cache_images_per_s"]) and finite(out["loader"]["decode_images_per_s"])
    assert json.loads((tmp_path / "bench_gpu_stream.json").read_text())["checks"] == out["checks"]
    assert {c["verdict"] for c in out["checks"].values()} <= {"PASS", "FAIL"} and len(out["checks"]) == 2


def test_bad_precision_spec_is_refused():
    bench = load_bench()
    assert bench.parse_precision("bf16+cl") == ("bf16", True)
    with pytest.raises(SystemExit, match="bad precision"):
        bench.parse_precision("fp8")


def test_check_amp_reports_agreement_and_flags_chance_accuracy(tmp_path, capsys):
    """--check-amp: code agreement per precision, and an at-chance accuracy (random trunk) is said, not compared."""
    import torch
    import torchvision

    weights = tmp_path / "squeezenet.pt"  # a state_dict file, as --weights takes one (random here: no network)
    torch.save(torchvision.models.squeezenet1_0(weights=None).state_dict(), weights)
    res = load_bench().main(["--device", "cpu", "--threads", "1", "--check-amp", "--image-size", "64",
                             "--check-images", "60", "--check-epochs", "1", "--amps", "fp32,bf16",
                             "--pq-niter", "2", "--weights", str(weights), "--json", str(tmp_path / "amp.json")])
    out = res["amp_check"]
    r = out["bf16"]
    assert 0 < r["crumb_code_agreement"] <= 1 and 0 < r["remind_code_agreement"] <= 1
    assert r["feature_relative_error"] > 0  # bf16 did change the features
    assert out["checks"]["CRUMB codes identical (bf16)"]["verdict"] in ("PASS", "FAIL")
    assert out["accuracy_informative"] == {"crumb": False, "remind": False}
    assert "compare nothing" in capsys.readouterr().out
    saved = json.loads((tmp_path / "amp.json").read_text())["amp_check"]
    assert saved["accuracy_informative"] == out["accuracy_informative"]
