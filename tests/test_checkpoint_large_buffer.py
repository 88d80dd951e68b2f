"""Checkpoints of large replay buffers (issue 29, item 3): no second copy in memory, atomic and durable on disk.

* a buffer round-trips exactly through the runner's path (``capture_strategy`` -> ``files.save``
  -> ``files.load`` -> ``restore_strategy``), and a full buffer adopts the loaded tensors (no copy);
* what is captured references the live buffer only inside ``capture_strategy`` (whose result the
  runner writes at once: capture and save run one after the other in the main thread); a
  ``state_dict()`` taken on its own is a snapshot, and two buffers never share memory;
* a SIGKILL in the middle of a 200 MB checkpoint write leaves the previous checkpoint loadable and
  identical;
* the step's own peak RSS (a child process, Linux) stays near one buffer when loading, and near
  nothing extra when saving.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from streamcl import checkpoint
from streamcl.checkpoint import files
from streamcl.checkpoint.encode import live_tensors
from streamcl.plugins.latent_replay import CodeBuffer, IdentityCodec, LatentReplayPlugin

ROOT = Path(__file__).resolve().parents[1]


def filled_buffer(capacity: int, n: int, code_shape=(6, 6, 4), seed: int = 0) -> CodeBuffer:
    buf = CodeBuffer(capacity, code_shape, "largest_class", seed=seed)
    g = torch.Generator().manual_seed(seed)
    buf.add(torch.randint(0, 256, (n, *code_shape), dtype=torch.uint8, generator=g), torch.arange(n) % 7)
    return buf


def make_strategy(buf=None):
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    model = nn.Linear(4, 3)
    plugin = LatentReplayPlugin(IdentityCodec(), memory=max(1, buf.capacity if buf is not None else 1),
                                policy="largest_class", fit_codec="never")
    if buf is not None:
        plugin.buffer = buf
        plugin.seen_classes = sorted(buf.items_per_class())
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=4,
                 eval_mb_size=4, device="cpu", plugins=[plugin], evaluator=EvaluationPlugin(loggers=[]))


def runner_save(strategy, path: Path, **extra) -> None:
    """What the runner does at the end of an experience: capture, then save at once."""
    state = checkpoint.capture_strategy(strategy)
    files.save(path, {"strategy": state, "rng": checkpoint.rng_state(), **extra})


def runner_restore(path: Path):
    payload = files.load(path)
    fresh = make_strategy()
    checkpoint.restore_strategy(fresh, payload["strategy"], checkpoint.RestoreContext(), path)
    return fresh.plugins[0].buffer, payload


def same_buffer(a: CodeBuffer, b: CodeBuffer) -> bool:
    n = len(a)
    return (len(b) == n and a.capacity == b.capacity and a.code_shape == b.code_shape
            and torch.equal(a.codes[:n], b.codes[:n]) and torch.equal(a.labels, b.labels)
            and a.items_per_class() == b.items_per_class()
            and torch.equal(a.generator.get_state(), b.generator.get_state()))


def buffer_entry(path: Path):
    return torch.load(path, weights_only=True)["strategy"]["plugins"][0]["state"]["state"]["buffer"]


@pytest.mark.parametrize("held", ["full", "partial"])
def test_buffer_round_trips_exactly_through_the_runner_path(tmp_path, held):
    cap = 3000
    buf = filled_buffer(cap, cap if held == "full" else 1234)
    before = buf.codes.clone(), buf.labels.clone()
    path = tmp_path / "checkpoint.pt"
    runner_save(make_strategy(buf), path)
    # capturing and saving changed nothing, and wrote the held items only (the format is unchanged)
    assert torch.equal(buf.codes, before[0]) and torch.equal(buf.labels, before[1])
    entry = buffer_entry(path)
    assert entry["size"] == len(buf) and len(entry["codes"]) == len(buf) and len(entry["labels"]) == len(buf)
    if held == "partial":
        assert os.path.getsize(path) < buf.nbytes()  # not the whole preallocated storage behind a view
    restored, payload = runner_restore(path)
    assert same_buffer(restored, buf)
    loaded = payload["strategy"]["plugins"][0]["state"]["state"]["buffer"]["codes"]
    # a full buffer takes the loaded tensor over as its storage; a partial one is padded into its capacity
    assert (restored.codes.data_ptr() == loaded.data_ptr()) == (held == "full")
    # the restored buffer keeps working, its index included
    restored.add(torch.zeros(5, 6, 6, 4, dtype=torch.uint8), torch.tensor([1, 2, 3, 4, 9]))
    assert sum(restored.items_per_class().values()) == len(restored) <= cap
    assert restored.count_of(9) == 1


def test_two_buffers_never_share_memory(tmp_path):
    """Adoption happens once per loaded tensor, and never for a state that came from a live buffer."""
    buf = filled_buffer(500, 500)
    path = tmp_path / "checkpoint.pt"
    runner_save(make_strategy(buf), path)
    payload = files.load(path)
    state = payload["strategy"]["plugins"][0]["state"]["state"]["buffer"]
    first, second = CodeBuffer.from_state_dict(state), CodeBuffer.from_state_dict(state)
    assert first.codes.data_ptr() == state["codes"].data_ptr() != second.codes.data_ptr()
    assert same_buffer(first, second)
    with live_tensors():  # a live state (as capture_strategy takes it) is copied on load
        live = buf.state_dict()
    assert live["codes"].data_ptr() == buf.codes.data_ptr()
    other = CodeBuffer.from_state_dict(live)
    assert other.codes.data_ptr() != buf.codes.data_ptr() and same_buffer(other, buf)


def test_a_state_taken_on_its_own_is_a_snapshot():
    """Outside capture_strategy, ``state_dict()`` and ``encode`` copy: later training cannot change them."""
    buf = filled_buffer(200, 150)
    state, enc = buf.state_dict(), checkpoint.encode(torch.ones(3))
    codes, labels = state["codes"].clone(), state["labels"].clone()
    buf.add(torch.full((60, 6, 6, 4), 255, dtype=torch.uint8), torch.full((60,), 3))  # fills, then evicts
    buf.replace(0, torch.zeros(1, 6, 6, 4, dtype=torch.uint8), torch.tensor([5]))
    assert torch.equal(state["codes"], codes) and torch.equal(state["labels"], labels)
    assert enc.data_ptr() != torch.ones(3).data_ptr() and state["codes"].data_ptr() != buf.codes.data_ptr()


def test_training_after_a_save_does_not_touch_the_checkpoint(tmp_path):
    """The runner captures and saves in one go; what training does next is not in the file, and the
    buffer restored from it (which owns the loaded memory) changes nothing the file holds."""
    buf = filled_buffer(400, 400)
    expected = CodeBuffer.from_state_dict(buf.state_dict())  # a snapshot, for comparison
    strategy = make_strategy(buf)
    path = tmp_path / "checkpoint.pt"
    runner_save(strategy, path)
    for i in range(50):  # later "training": evictions and admissions in the live buffer
        buf.add(torch.full((3, 6, 6, 4), i, dtype=torch.uint8), torch.tensor([i % 7, 8, 9]))
    restored, _ = runner_restore(path)
    assert same_buffer(restored, expected)
    restored.add(torch.full((40, 6, 6, 4), 7, dtype=torch.uint8), torch.full((40,), 11))
    again, _ = runner_restore(path)
    assert same_buffer(again, expected)


# ----------------------------------------------------------------------------- kill -9 during the write
CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from streamcl import checkpoint
    from streamcl.checkpoint import files
    from streamcl.checkpoint.encode import live_tensors
    from streamcl.plugins.latent_replay import CodeBuffer

    path, cap, versions = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    buf = CodeBuffer(cap, (32, 32), "largest_class")
    buf.add(torch.zeros(cap, 32, 32, dtype=torch.uint8), torch.arange(cap) % 100)
    for v in range(1, versions + 1):
        buf.codes.copy_(pattern(cap, v))  # stand-in for training between two checkpoints
        with live_tensors():
            state = {"cls": "t", "model": {}, "optimizer": {}, "clock": {}, "metrics": [],
                     "plugins": [{"cls": "t:buffer", "state": checkpoint.encode(buf)}],
                     "metric_results": checkpoint.encode({}), "last_metric_results": checkpoint.encode({})}
        files.save(path, {"strategy": state, "rng": checkpoint.rng_state(), "version": v})
        print("saved", v, flush=True)
""")

def pattern(cap, v):
    """Version ``v`` of the codes (the same function runs in the child)."""
    import torch

    row = ((torch.arange(32 * 32, dtype=torch.int32) * (2 * v + 1) + v) % 251).to(torch.uint8)
    return row.view(1, 32, 32) + (torch.arange(cap) % 5).to(torch.uint8).view(-1, 1, 1)


PATTERN = inspect.getsource(pattern)


def spawn(path: Path, cap: int, versions: int, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PATTERN + CHILD, str(path), str(cap), str(versions)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def check_checkpoint(path: Path, cap: int, versions) -> int:
    payload = files.load(path)  # loadable and well formed
    v = payload["version"]
    assert v in versions
    buf = CodeBuffer.from_state_dict(payload["strategy"]["plugins"][0]["state"]["state"])
    assert len(buf) == cap and torch.equal(buf.codes, pattern(cap, v))
    assert torch.equal(buf.labels.long(), torch.arange(cap) % 100)
    return v


CAP_200MB = 200_000  # 200,000 items of 1 KiB codes: a 205 MB checkpoint


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_during_a_large_write_leaves_the_previous_checkpoint(tmp_path):
    """Killed at a random moment while the temp file of the next checkpoint grows (seeded, so reproducible)."""
    import random

    path = tmp_path / "checkpoint.pt"
    child = spawn(path, CAP_200MB, versions=50)
    try:
        assert child.stdout.readline().split() == ["saved", "1"], child.stderr.read()
        threshold = random.Random(29).uniform(0.05, 0.9) * CAP_200MB * 1024
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            tmps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
            if tmps and any(p.exists() and p.stat().st_size >= threshold for p in tmps if p.exists()):
                break
            time.sleep(0.002)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    done = [int(line.split()[1]) for line in child.stdout.read().split("\n") if line.startswith("saved")]
    last = max([1, *done])
    # the checkpoint is the last completed one (or, if the kill came between os.replace and the print, the next)
    check_checkpoint(path, CAP_200MB, {last, last + 1})
    assert files.remove_stale_temp(path)  # the killed write left its temp file, which a resume removes
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_failpoint_kill_after_the_temp_file_is_written(tmp_path):
    """``STREAMCL_FAILPOINT=checkpoint_write:2``: the second save dies with its temp file complete, not renamed."""
    path = tmp_path / "checkpoint.pt"
    cap = CAP_200MB // 4
    child = spawn(path, cap, versions=3, env={"STREAMCL_FAILPOINT": "checkpoint_write:2"})
    out, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err
    assert out.split() == ["saved", "1"]
    assert check_checkpoint(path, cap, {1}) == 1
    assert len(files.remove_stale_temp(path)) == 1


# ----------------------------------------------------------------------------- peak memory, without a clock
MEMORY_CHILD = textwrap.dedent("""
    import gc, os, sys
    from pathlib import Path
    import torch
    from streamcl import checkpoint
    from streamcl.checkpoint import files
    from streamcl.plugins.latent_replay import CodeBuffer

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def peak():
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    path, cap = Path(sys.argv[1]), int(sys.argv[2])
    from streamcl.checkpoint.encode import live_tensors
    buf = CodeBuffer(cap, (32, 32), "largest_class")
    for s in range(0, cap, 20_000):
        k = min(20_000, cap - s)
        buf.add(torch.full((k, 32, 32), s % 251, dtype=torch.uint8), torch.arange(s, s + k) % 100)
    nbytes = buf.nbytes()
    reset_peak(); before = rss()
    with live_tensors():
        state = {"cls": "t", "model": {}, "optimizer": {}, "clock": {}, "metrics": [],
                 "plugins": [{"cls": "t:buffer", "state": checkpoint.encode(buf)}],
                 "metric_results": checkpoint.encode({}), "last_metric_results": checkpoint.encode({})}
    files.save(path, {"strategy": state, "rng": checkpoint.rng_state()})
    save_extra = peak() - before
    del buf, state
    gc.collect()
    reset_peak(); before = rss()
    payload = files.load(path)
    buf = CodeBuffer.from_state_dict(payload["strategy"]["plugins"][0]["state"]["state"])
    load_extra = peak() - before
    assert len(buf) == cap
    print(nbytes, save_extra, load_extra)
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's resettable peak RSS")
def test_peak_memory_of_save_and_load_stays_near_one_buffer(tmp_path):
    """300 MB buffer, in a child process: saving needs < 0.25 buffer more, loading < 1.25 buffers (ideal: 0 / 1)."""
    res = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(tmp_path / "c.pt"), "300000"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if res.returncode != 0 and "clear_refs" in res.stderr:
        pytest.skip("peak RSS cannot be reset here")
    assert res.returncode == 0, res.stderr
    nbytes, save_extra, load_extra = (int(x) for x in res.stdout.split()[-3:])
    assert save_extra < 0.25 * nbytes, (save_extra, nbytes)  # was 1.0 (a copy of the codes)
    assert load_extra < 1.25 * nbytes, (load_extra, nbytes)  # was 2.0 (file's tensors + preallocated buffer)
