"""How many intra-op threads a rank gets when a run's ranks share one host's cores.

One rule, used where ranks are started (`recpar train` sets OMP_NUM_THREADS) and where their
speed is modelled or calibrated (recpar.perfmodel), so the two cannot drift apart.
"""

from __future__ import annotations

import os


def host_cores() -> int:
    """Logical CPUs of this host (os.cpu_count(), 1 if unknown)."""
    return os.cpu_count() or 1


def threads_per_rank(ranks_on_host: int, cores: int | None = None) -> int:
    """max(1, C // W): W ranks on C cores each get an equal whole share, at least one thread
    (more would oversubscribe the cores)."""
    if isinstance(ranks_on_host, bool) or not isinstance(ranks_on_host, int) \
            or ranks_on_host < 1:
        raise ValueError(f"ranks_on_host must be a positive integer, got {ranks_on_host!r}")
    return max(1, (host_cores() if cores is None else cores) // ranks_on_host)
