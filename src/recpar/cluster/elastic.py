"""torchrun's elastic restarts as recpar uses them: the restart budget, and the agent environment
without which a restart cannot work.

`--max-restarts N`: when a worker fails (a rank killed, or a survivor's fail-fast exit after a
collective error), its torchrun agent stops the rest of its workers and starts them all again, up
to N times; with c10d rendezvous the agents of the other nodes see the failed agent waiting for
the next round and restart their workers too (a membership change, not counted against their own
budget). Each agent counts its own restarts. The new ranks resume from the last complete
checkpoint (`recpar.train.loop`); `recpar.train.restarts` records what the restart cost.

Why every agent gets TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (the cause of the first attempt's
failure: the restarted rank 1 died in gloo's `connectFullMesh` with "connection refused"):
since torch 2.5 the c10d rendezvous handler shares the agent's own TCPStore with the workers
(TORCHELASTIC_USE_AGENT_STORE=True, MASTER_ADDR/MASTER_PORT point at it). In torch 2.13 that
store is created once per agent and kept for every later round (`DynamicRendezvousHandler.
next_rendezvous` caches its bootstrap store info), and the workers' `env://` store takes no
per-attempt prefix (`torch.distributed.rendezvous._create_c10d_store`: "a new TCPStore for every
retry", which the cache defeats). So the keys of the dead attempt stay: gloo's full-mesh connect
of the restarted rank 1 reads the old rank 0's address under the same key before the new rank 0
has written its own, and connects to a process that no longer exists. A prefix from
TORCHELASTIC_RESTART_COUNT would not help: that count is per agent and differs between nodes
(pytorch/pytorch#108158, #135712). With sharing off, rank 0 of every attempt hosts a fresh store
on a port its agent picks for that round, so no attempt can read another's keys (reproduced and
checked on torch 2.13 with a two-rank `--standalone` job whose rank 1 is SIGKILLed).
"""

from __future__ import annotations

DEFAULT_MAX_RESTARTS = 2
"""`recpar train --max-restarts`: restarts of the job's ranks before a failure ends the run."""

AGENT_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
"""Environment of every torchrun agent recpar starts (see the module docstring)."""


def restart_args(max_restarts: int) -> list[str]:
    """torchrun's `--max-restarts N`; a negative or non-integer N is a ValueError."""
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ValueError(f"--max-restarts: must be an integer >= 0, got {max_restarts!r}")
    return ["--max-restarts", str(max_restarts)]
