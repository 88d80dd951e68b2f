"""Failpoints: kill the process at a named place, so tests can check what a crash leaves behind.

``STREAMCL_FAILPOINT=checkpoint_write:2`` makes the second pass through
``failpoint("checkpoint_write")`` send SIGKILL to the process itself, as the OOM
killer or a preempted cluster job would. Unset (always, outside tests), a
failpoint costs one dictionary lookup. The fault-injection tests in
``tests/fault/`` use it to kill runs during pretraining, inside an experience and
in the middle of a checkpoint write, then check that resuming gives the numbers
of an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "STREAMCL_FAILPOINT"
_hits: Counter = Counter()


def failpoint(name: str) -> None:
    """SIGKILL this process on the N-th call for ``name`` when ``$STREAMCL_FAILPOINT`` is ``name:N``."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _hits[name] += 1
    if _hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
