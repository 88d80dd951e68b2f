"""The process pool for preparing data (frame extraction, frame caching): never forked from this process.

Forking a process that has already used a native library's threads is unsafe: with PyAV 18.1.1, a
parent that decoded one frame and then forked gets children that deadlock on their first frame
conversion (swscale), and OpenMP runtimes have the same problem. Workers therefore come from a
*forkserver* (a fresh interpreter, started once, that forks the workers before anything is
decoded), or are spawned where the platform has no forkserver. The server preloads the worker's
module, so workers still start in milliseconds.

On an error or Ctrl-C the workers are terminated, not waited for: a worker stuck in native code
would otherwise hang the caller forever. Both callers write their output only after a worker
returns (or into temporary names), so nothing half-written survives a terminated worker.
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Iterator, Sequence

__all__ = ["START_METHOD", "process_pool"]

#: forkserver where the platform has it (Linux, macOS), else spawn (Windows): never fork.
START_METHOD = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


@contextmanager
def process_pool(workers: int, preload: Sequence[str] = ()) -> Iterator[ProcessPoolExecutor]:
    """A ``ProcessPoolExecutor`` of ``workers`` processes started with :data:`START_METHOD`.

    ``preload``: modules the forkserver imports once (the worker function's module), so each
    worker starts without importing them again. On normal exit the pool is shut down cleanly;
    on any exception (KeyboardInterrupt included) queued jobs are cancelled and running workers
    terminated before the exception propagates.
    """
    ctx = mp.get_context(START_METHOD)
    if START_METHOD == "forkserver" and preload:
        # Only takes effect when this process starts its forkserver (the first pool); later
        # pools reuse that server, whose workers import anything else they need on first use.
        ctx.set_forkserver_preload(list(preload))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        yield pool
    except BaseException:
        _terminate(pool)
        raise
    else:
        pool.shutdown(wait=True)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Cancel queued jobs and end running workers now (a stuck worker must not block the caller)."""
    if hasattr(pool, "terminate_workers"):  # Python >= 3.14
        pool.terminate_workers()
        return
    # Before 3.14 the executor has no public way to end its workers: end the processes in its
    # (private) process table, as 3.14's terminate_workers() does.
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)
