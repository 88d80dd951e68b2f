"""Worker processes for data preparation: never forked after decoding, never waited on when stuck."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from streamcl.benchmarks import synthetic
from streamcl.benchmarks.raw import _video
from streamcl.benchmarks.workers import START_METHOD, process_pool


def _sleep_forever(_: int) -> None:
    time.sleep(10_000)


def _pid(_: int) -> int:
    return os.getpid()


def test_pool_never_forks_this_process():
    assert START_METHOD in ("forkserver", "spawn")
    with process_pool(2, preload=[__name__]) as pool:
        pids = set(pool.map(_pid, range(4)))
    assert os.getpid() not in pids


def test_stuck_worker_is_terminated_when_the_caller_fails():
    """An error while a worker is stuck in its job ends the worker instead of waiting on it forever."""
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with process_pool(1, preload=[__name__]) as pool:
            pool.submit(_sleep_forever, 0)
            procs = list(pool._processes.values())
            while not procs:  # the executor starts its worker on the first submit
                time.sleep(0.01)
                procs = list(pool._processes.values())
            raise KeyboardInterrupt
    assert time.monotonic() - t0 < 60
    assert all(not p.is_alive() for p in procs)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_forked_after_decoding_refuses_instead_of_hanging(tmp_path):
    """PyAV's FFmpeg state does not survive a fork: such a child raises a message naming the fix."""
    rng = np.random.default_rng(0)
    video = tmp_path / "clip.mp4"
    synthetic.write_video(video, [rng.integers(0, 255, (32, 32, 3), dtype="uint8") for _ in range(8)], fps=4)
    assert _video.extract(video, tmp_path / "parent", "clip", size=16, fps=1.0) >= 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must refuse at once, before touching the decoder
        os.close(r)
        try:
            _video.extract(video, tmp_path / "child", "clip", size=16, fps=1.0)
            msg = b"decoded"
        except RuntimeError as e:
            msg = str(e).encode()
        os.write(w, msg)
        os._exit(0)
    os.close(w)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    msg = os.read(r, 4096).decode()
    os.close(r)
    assert "forked" in msg and "forkserver" in msg, msg
