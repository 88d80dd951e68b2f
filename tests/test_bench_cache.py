"""perf/bench_cache.py and perf/bench_cache_formats.py run in tiny configurations (the README quotes their figures)."""

from __future__ import annotations

import importlib
from pathlib import Path

PERF = Path(__file__).resolve().parents[1] / "perf"


def test_bench_cache_formats_reads_the_memmap_every_way(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(PERF))  # importable by name: litdata's spawned writers unpickle from it
    bench = importlib.import_module("bench_cache_formats")
    res = bench.main(["--images", "40", "--size", "16", "--batch", "8", "--ids", "16", "--passes", "1",
                      "--tmp", str(tmp_path)])
    mm = res["memmap"]
    assert mm["bytes"] >= 40 * 3 * 16 * 16 and all(mm[k] > 0 for k in ("stream", "shuffled", "by_id"))
    for fmt in ("webdataset", "litdata"):  # not dependencies: measured when installed, else said so
        assert "skipped" in res[fmt] and "pip install" in res[fmt]["skipped"] or res[fmt]["stream"] > 0
    out = capsys.readouterr().out
    assert "| memmap |" in out and list(tmp_path.iterdir()) == []  # the copies are removed


def test_bench_cache_speed_and_rss_modes_run(tmp_path, capsys, monkeypatch):
    """perf/bench_cache.py in a tiny configuration: every row, equal inputs, and the RSS mode's table."""
    import sys

    monkeypatch.syspath_prepend(str(PERF))
    bench = importlib.import_module("bench_cache")
    common = ["--threads", "1", "--passes", "1", "--tmp", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["bench_cache.py", "--format", "png128", "--images", "24", "--size", "32",
                                      "--batch", "8"] + common)
    bench.main()
    out = capsys.readouterr().out
    for row in ("decode path", "stream order", "shuffled", "fresh batch", "cache read only"):
        assert row in out, row
    assert "bit-identical" in out  # the cache path's normalised inputs equal the decode path's
    monkeypatch.setattr(sys, "argv", ["bench_cache.py", "--rss", "200", "--rss-size", "16", "--batch", "16"] + common)
    bench.main()
    out = capsys.readouterr().out
    assert "| 100 % | 200 |" in out and "anonymous RSS growth" in out
    assert list(tmp_path.iterdir()) == []
