"""A replica's compute threads fit to the cores it was given (`cpu=` of the deployment).

torch (and numpy's BLAS) start one OpenMP thread per core of the host. A replica given
one core on a shared host then runs two or more threads that meet at a barrier after every
operator; when any of them waits for a core (another replica, the activator, the replica's
own event loop), the others spin and wait for it. On the 2-core bench host under load, a
MiniLM batch of 64 ran 2-4x slower per item with torch's default 2 threads than with 1,
and a single sentence 5-9x (notes/batchperf.md). So a replica caps OpenMP at its own
cores, `max(1, floor(cpu))`, unless the deployment chose: `OMP_NUM_THREADS` in its env, or
`torch.set_num_threads` in its constructor (which runs after this and wins).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import MutableMapping

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def threads_for(cpu: float) -> int:
    return max(1, math.floor(cpu + 1e-9))


def fit_threads(cpu: float | None, environ: MutableMapping[str, str] | None = None
                ) -> int | None:
    """Cap compute threads at the replica's cores before its code loads: the variables
    for libraries not imported yet, and torch's count when it is (a pool worker imports
    it ahead). The count set, or None when the replica's cores are unknown or the
    deployment set OMP_NUM_THREADS itself."""
    env = os.environ if environ is None else environ
    if cpu is None or env.get("OMP_NUM_THREADS"):
        return None
    n = threads_for(cpu)
    for name in THREAD_VARS:
        env.setdefault(name, str(n))
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() > n:
        torch.set_num_threads(n)
    return n
