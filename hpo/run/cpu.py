"""A worker's share of the machine's cores, set before torch starts.

Left alone, every worker's torch takes every core for its intra-op threads (and OpenMP and MKL
as many again), so N workers on one machine oversubscribe the cores N times over and spin-wait:
on 2 cores with a second training process beside it, one epoch took about 6x longer with the
default threads than with one thread each. So ``hpo launch`` / ``hpo refit`` give each worker
``cores // workers`` threads, in its environment (``OMP_NUM_THREADS`` and friends, read when
torch starts) and as ``HPO_CPUS``, which the worker applies with ``torch.set_num_threads``
before its first trial; ``hpo worker --cpus N`` takes N when started by hand beside others.
The trial records the threads it ran with (user attribute ``cpu_threads``).

``HPO_CPU_SHARE=off`` leaves the threads as torch sets them (for measuring the difference).
"""
from __future__ import annotations

import os

from hpo.errors import HpoError

__all__ = ["CPUS_ENV", "apply_share", "cpu_share", "usable_cores", "worker_env"]

CPUS_ENV = "HPO_CPUS"  # a worker's share, set by the launcher (or --cpus)
SHARE_ENV = "HPO_CPU_SHARE"  # "off": leave torch's own thread count (benchmarks)
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def sharing() -> bool:
    return os.environ.get(SHARE_ENV, "").lower() not in ("off", "0", "no", "false")


def cpu_share(workers: int, *, cpus: int | None = None, cores: int | None = None) -> int:
    """Threads for each of ``workers`` workers on this machine.

    Args:
        workers: worker processes started on this machine.
        cpus: the cores they may use together (``--cpus``; default: every usable core).
        cores: the machine's usable cores (default :func:`usable_cores`).

    Raises:
        HpoError: ``cpus`` < 1 or above the cores there are, or a share under one thread.
    """
    cores = usable_cores() if cores is None else cores
    if cpus is not None and not 1 <= cpus <= cores:
        raise HpoError(f"--cpus {cpus}: a worker needs at least 1 of this machine's {cores} "
                       f"usable core(s); give --cpus 1 to {cores}")
    total = cores if cpus is None else cpus
    if workers > total:
        raise HpoError(f"{workers} workers on {total} core(s) would leave a worker without a "
                       f"thread of its own (they would slow each other down); start at most "
                       f"{total} worker(s) (--workers {total}), or run more on another machine")
    return total // workers


def worker_env(share: int) -> dict[str, str]:
    """The environment that gives a worker process ``share`` threads from its start."""
    if not sharing():
        return {}
    return {CPUS_ENV: str(share), **dict.fromkeys(_THREAD_ENV, str(share))}


def apply_share(cpus: int | None = None) -> int | None:
    """Set this process's torch threads to ``cpus``, else ``$HPO_CPUS``; returns the count.

    Called by a worker before its first trial. None (nothing set): torch keeps its own count.

    Raises:
        HpoError: ``$HPO_CPUS`` is not a whole number >= 1.
    """
    if not sharing():
        return None
    if cpus is None:
        raw = os.environ.get(CPUS_ENV)
        if not raw:
            return None
        if not raw.isdigit() or int(raw) < 1:
            raise HpoError(f"{CPUS_ENV} is {raw!r}, but must be a whole number >= 1 (the "
                           "worker's threads); unset it or fix it")
        cpus = int(raw)
    import torch  # the worker imports it for training anyway; the CLI's reads never do

    torch.set_num_threads(cpus)
    for name in _THREAD_ENV:  # loader and decoder processes started later inherit it
        os.environ[name] = str(cpus)
    return cpus
