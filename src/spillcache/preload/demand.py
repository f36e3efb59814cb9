"""A thread's CPU demand: the seconds it ran on a CPU or waited on a run queue for one.

The tuner's first window reads it to tell loads that compute (under the GIL they keep at most one
CPU busy) from loads that wait for storage. On a machine whose CPUs other work shares, a thread
that computes waits for a CPU too: Linux counts that wait (``/proc/thread-self/schedstat``), so
the demand does not shrink with the machine's load. Elsewhere it is the thread's CPU time.
"""

from __future__ import annotations

import time

__all__ = ["thread_demand"]

_SCHEDSTAT = "/proc/thread-self/schedstat"


def _schedstat() -> float:
    # "<ns on a CPU> <ns waiting on a run queue> <timeslices>"
    with open(_SCHEDSTAT, "rb") as f:
        on_cpu, waiting, _ = f.read().split()
    return (int(on_cpu) + int(waiting)) * 1e-9


def _usable() -> bool:
    try:
        _schedstat()
    except (OSError, ValueError):
        return False
    return True


thread_demand = _schedstat if _usable() else time.thread_time
