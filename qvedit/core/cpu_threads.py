"""CPU threads, chosen before torch is imported, so that a CPU run on a busy machine is never several times slower
than one thread.

torch's CPU kernels run on OpenMP (libgomp in the Linux wheels), whose threads spin between parallel regions
waiting for the next one. On cores that other processes use too, a spinning thread takes the time slice the working
thread needs: ``python -m qvedit experiment=demo`` took 233 s with torch's default threads at load 4.6 on 2 cores,
68 s with ``OMP_NUM_THREADS=1`` (docs/running.md, "Your own frames on the CPU"). With ``OMP_WAIT_POLICY=PASSIVE`` a
waiting thread sleeps instead: 65 s there, and no slower on an idle machine (27 s either way). The number of threads is
never chosen from the machine's load: CPU frames depend on it, and the same command must give the same frames on a
busy machine as on an idle one. It is torch's own default (the machine's cores), or the cores this process may run
on where fewer (``taskset``, a container's cpuset).

``OMP_WAIT_POLICY`` and ``OMP_NUM_THREADS`` set by the user (or by torchrun, which sets ``OMP_NUM_THREADS=1``) are
kept as given: they are the way to choose otherwise.
"""

from __future__ import annotations

import os
from typing import MutableMapping


def use_cpu_threads(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set OpenMP's wait policy (and, where this process may use fewer cores than the machine has, the thread count)
    in ``environ`` unless already set; returns what it set. Has an effect only before torch is imported."""
    chosen = {}
    if "OMP_WAIT_POLICY" not in environ:
        chosen["OMP_WAIT_POLICY"] = "PASSIVE"
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if "OMP_NUM_THREADS" not in environ and allowed and allowed < (os.cpu_count() or allowed):
        chosen["OMP_NUM_THREADS"] = str(allowed)
    environ.update(chosen)
    return chosen


def describe() -> str:
    """The CPU threads torch uses and why, for the run's log."""
    import torch

    policy = os.environ.get("OMP_WAIT_POLICY", "(OpenMP's default: threads spin)")
    given = os.environ.get("OMP_NUM_THREADS")
    threads = torch.get_num_threads()
    return (f"CPU: {threads} thread{'s' if threads > 1 else ''} "
            f"({f'OMP_NUM_THREADS={given}' if given else 'torch default'}), OMP_WAIT_POLICY={policy}")
