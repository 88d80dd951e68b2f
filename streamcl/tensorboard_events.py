"""Keep a run's TensorBoard events in step with its checkpoint.

A run killed after its last checkpoint has already logged events for the
experience it never finished; the resumed run logs them again. TensorBoard's
``purge_step`` only hides them from readers that honour it, so instead the
event files are rewritten on resume to hold exactly the events up to the
checkpoint's step (and deleted on a fresh start). Reading and writing use
TensorBoard's own record reader and writer; only the kill-safe file dance is ours:

1. the kept events go to ``tb/resume.partial``, which is renamed ``tb/resume.ready``
   once complete (atomic);
2. every ``*tfevents*`` file is deleted;
3. ``resume.ready`` is renamed to a TensorBoard event file.

A kill between any two steps is repaired by the next resume, which redoes the
remaining ones (a ``resume.ready`` left behind already holds the kept events).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from typing import List

_PARTIAL = "resume.partial"
_READY = "resume.ready"


def _event_files(tb_dir: Path) -> List[Path]:
    return sorted(p for p in tb_dir.glob("*tfevents*") if p.is_file())


def reset(tb_dir: Path) -> None:
    """Delete a run's TensorBoard folder (a run starting from scratch)."""
    shutil.rmtree(tb_dir, ignore_errors=True)


def truncate(tb_dir: Path, max_step: int) -> int:
    """Rewrite ``tb_dir``'s event files to hold only events with ``step <= max_step``; returns events kept."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    tb_dir = Path(tb_dir)
    if not tb_dir.is_dir():
        return 0
    (tb_dir / _PARTIAL).unlink(missing_ok=True)
    ready = tb_dir / _READY
    if not ready.exists():
        kept = 0
        with open(tb_dir / _PARTIAL, "wb") as f:
            writer = RecordWriter(f)
            for path in _event_files(tb_dir):
                # A record cut by a kill ends the file: the loader stops there without error.
                for raw in RawEventFileLoader(str(path)).Load():
                    event = event_pb2.Event.FromString(raw)
                    if event.step <= max_step:
                        writer.write(raw)
                        kept += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tb_dir / _PARTIAL, ready)
    else:
        kept = -1  # counted when written by the interrupted resume
    for path in _event_files(tb_dir):
        path.unlink()
    name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.resumed"
    os.replace(ready, tb_dir / name)
    return kept


def scalars(tb_dir: Path) -> List[tuple]:
    """``(tag, step, value)`` of every scalar in ``tb_dir``'s event files, in file order (tests, reports)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    out = []
    for path in _event_files(Path(tb_dir)):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out.append((v.tag, event.step, float(v.simple_value)))
                elif v.HasField("tensor") and v.metadata.plugin_data.plugin_name == "scalars":
                    out.append((v.tag, event.step, float(tensor_util.make_ndarray(v.tensor).item())))
    return out
