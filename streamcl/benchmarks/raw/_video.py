"""Frame extraction from videos with PyAV (bundled FFmpeg; no system ffmpeg), resumable per video.

Frames of one video are decoded into a hidden temporary folder next to their final
place, moved into place, and only then is a ``.<stem>.done`` marker written; a run
killed at any point leaves a video without marker, which the next run redoes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Tuple

MARKER_SUFFIX = ".done"
_TMP_PREFIX = ".partial_"

# The process id that last used PyAV (decoding or encoding: both convert frames with swscale). A process forked after decoding inherits FFmpeg's
# threads and locks in whatever state they were (PyAV 18.1.1: the child deadlocks on its first
# frame conversion), so such a child refuses to decode instead of hanging. streamcl's own pools
# never fork (streamcl.benchmarks.workers); this catches anyone else's.
_decoded_in_pid: Optional[int] = None


def check_not_forked_after_decoding() -> None:
    """Raise RuntimeError in a process forked after its parent used PyAV; else record this process as a user."""
    global _decoded_in_pid
    pid = os.getpid()
    if _decoded_in_pid is not None and _decoded_in_pid != pid:
        raise RuntimeError(
            f"this process was forked from process {_decoded_in_pid} after that one decoded video with PyAV, "
            "whose FFmpeg state does not survive a fork (it can deadlock); start worker processes with "
            "multiprocessing's 'forkserver' or 'spawn' method (see streamcl.benchmarks.workers)"
        )
    _decoded_in_pid = pid


def marker_path(out_dir: Path, stem: str) -> Path:
    """Per-video completion marker (hidden, so indexers skip it)."""
    return out_dir / f".{stem}{MARKER_SUFFIX}"


def frame_file(stem: str, k: int) -> str:
    """Name of extracted frame ``k`` (from 1)."""
    return f"{stem}_{k}.png"


def is_done(out_dir: Path, stem: str, size: int, existing: Optional[set] = None) -> bool:
    """True when the video's marker says it was extracted at ``size`` and all its frames are present."""
    try:
        info = json.loads(marker_path(out_dir, stem).read_text())
        n, s = int(info["n_frames"]), int(info["frame_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if s != size or n <= 0:
        return False
    if existing is None:
        return all((out_dir / frame_file(stem, k)).is_file() for k in range(1, n + 1))
    return all(frame_file(stem, k) in existing for k in range(1, n + 1))


def extract(
    video: Path, out_dir: Path, stem: str, *, size: int = 224, fps: float = 1.0, threads: int = 0
) -> int:
    """Extract ``fps`` frames per second of ``video``, resized to size x size, as ``<stem>_<k>.png``; returns the count.

    Output k (from 0) takes the decoded frame nearest to time k/fps and there are
    round(duration * fps) outputs, as with FFmpeg's ``fps`` filter. ``threads``: decoder
    threads (0: FFmpeg picks). Raises RuntimeError (with the decoder's message) on an
    unreadable video or one without frames.
    """
    import av  # PyAV ships its own FFmpeg libraries

    check_not_forked_after_decoding()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f"{_TMP_PREFIX}{stem}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        chosen: Dict[int, Tuple[float, object]] = {}  # second -> (time, frame) best candidate so far
        last_t, frame_dur = -1.0, 0.0
        try:
            with av.open(str(video)) as container:
                if not container.streams.video:
                    raise RuntimeError("no video stream")
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                stream.codec_context.thread_count = threads
                rate = stream.average_rate or stream.guessed_rate
                frame_dur = 1.0 / float(rate) if rate else 0.0
                t0 = None
                for i, frame in enumerate(container.decode(stream)):
                    t = float(frame.time) if frame.time is not None else i * frame_dur
                    t0 = t if t0 is None else t0
                    t -= t0  # clips whose timestamps start late still start at second 0
                    last_t = max(last_t, t)
                    k = int(math.floor(t * fps + 0.5))
                    best = chosen.get(k)
                    if best is None or abs(t - k / fps) < abs(best[0] - k / fps):
                        chosen[k] = (t, frame)
                    for done in [kk for kk in chosen if kk < k]:  # decoded in time order: final
                        _save(chosen.pop(done)[1], tmp / frame_file(stem, done + 1), size)
                for kk in sorted(chosen):
                    _save(chosen.pop(kk)[1], tmp / frame_file(stem, kk + 1), size)
        except av.FFmpegError as e:
            raise RuntimeError(f"unreadable video ({e})") from e
        if last_t < 0:
            raise RuntimeError("video has no decodable frames")
        n_out = max(1, int(math.floor((last_t + frame_dur) * fps + 0.5)))
        written = {int(n[len(stem) + 1 : -len(".png")]) for n in os.listdir(tmp)}
        for k in range(2, n_out + 1):  # a gap in the timestamps repeats the previous frame, as FFmpeg does
            if k not in written:
                shutil.copyfile(tmp / frame_file(stem, k - 1), tmp / frame_file(stem, k))
        keep = range(1, n_out + 1)
        for k in keep:
            os.replace(tmp / frame_file(stem, k), out_dir / frame_file(stem, k))
        k = len(keep) + 1  # frames of an earlier, longer extraction must not survive
        while (out_dir / frame_file(stem, k)).exists():
            (out_dir / frame_file(stem, k)).unlink()
            k += 1
        _atomic_write(marker_path(out_dir, stem), json.dumps({"n_frames": len(keep), "frame_size": size}))
        return len(keep)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save(frame, path: Path, size: int) -> None:
    # swscale resize straight to RGB, then a fast PNG (compression level 1: ~3x faster, ~20% larger)
    frame.to_image(width=size, height=size, interpolation="BICUBIC").save(path, compress_level=1)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def extract_job(job: Tuple[str, str, str, int, float, int]) -> Tuple[str, int, Optional[str]]:
    """Pool entry point: (video, out_dir, stem, size, fps, threads) -> (video, n_frames, error message or None)."""
    video, out_dir, stem, size, fps, threads = job
    try:
        return video, extract(Path(video), Path(out_dir), stem, size=size, fps=fps, threads=threads), None
    except Exception as e:  # noqa: BLE001 - any decoder failure is reported with the path, never dropped
        return video, 0, str(e) or type(e).__name__
