"""A pool of torch.distributed ranks that pytest-benchmark times one operation at a time.

pytest-benchmark times a function in the calling process. A multi-rank operation (one
training step of a parallel scheme, one collective) runs in several processes, and starting
them for every round would time process start-up, rendezvous and library imports instead of
the operation. So the pool starts the ranks once: processes forked from the preloaded
forkserver of `tests.comm.mp_launch` (no rank imports torch again), gloo over loopback,
rendezvous through the same environment variables torchrun sets (RANK, WORLD_SIZE,
MASTER_ADDR, ...: DeepSpeed and megatron-core read them). Each rank builds its workload once
from a factory, `"module:function"(**kwargs) -> callable`. Every `pool()` then makes every
rank run the callable once and returns when the slowest rank is done; the driver's wall time
is the operation's plus one pipe round trip (~0.1 ms, against >= 1 ms operations here).

Ranks end through `recpar.rank_exit.exit_rank` (no interpreter finalization while gloo's
threads live; see that module).
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import socket
import traceback
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

from tests.comm import mp_launch  # noqa: F401 - sets the forkserver's preload

READY_TIMEOUT_S = 300.0
"""Rendezvous + workload construction (DeepSpeed and megatron-core imports take ~10 s each on
2 busy cores)."""
CALL_TIMEOUT_S = 300.0
"""One operation; a rank that has not answered by then is reported, not waited for."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, factory: str, kwargs: dict, conn) -> None:
    from recpar.rank_exit import exit_rank

    code = 0
    try:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                          LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)  # one intra-op thread per rank: ranks <= cores here
        dist.init_process_group("gloo")
        module, name = factory.split(":")
        op: Callable[[], Any] = getattr(importlib.import_module(module), name)(**kwargs)
        conn.send(("ready", None))
        while conn.recv() != "stop":
            result = op()
            conn.send(("done", result if rank == 0 else None))
        conn.send(("stopped", None))
    except BaseException:  # noqa: BLE001 - reported to the driver, which raises it
        try:
            conn.send(("error", f"rank {rank}: {traceback.format_exc()}"))
        except (OSError, ValueError):
            pass
        code = 1
    exit_rank(code)


class RankPool:
    """`world` ranks running `factory(**kwargs)`'s callable on demand.

        with RankPool(2, "workloads:dp_step", {"compressor": "topk"}) as pool:
            benchmark.pedantic(pool, rounds=5, warmup_rounds=2)
    """

    def __init__(self, world: int, factory: str, kwargs: dict | None = None):
        self.world, self.factory, self.kwargs = world, factory, dict(kwargs or {})
        self._procs: list = []
        self._conns: list = []

    def __enter__(self) -> RankPool:
        ctx = mp.get_context("forkserver")
        port = _free_port()
        for rank in range(self.world):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_rank_main, daemon=True,
                            args=(rank, self.world, port, self.factory, self.kwargs, child))
            p.start()
            child.close()
            self._procs.append(p)
            self._conns.append(parent)
        try:
            self._collect("ready", READY_TIMEOUT_S)
        except BaseException:
            self._kill()
            raise
        return self

    @property
    def pids(self) -> list[int]:
        """The ranks' process ids, in rank order (e.g. to put each in its own CPU budget)."""
        return [p.pid for p in self._procs]

    def __call__(self) -> Any:
        """Run the operation once on every rank; rank 0's return value."""
        for c in self._conns:
            c.send("step")
        return self._collect("done", CALL_TIMEOUT_S)[0]

    def _collect(self, want: str, timeout_s: float) -> list:
        """Every rank's answer `want`, in rank order; the first error any rank sends is raised
        at once (its peers may be blocked in a collective with it)."""
        out: dict[int, Any] = {}
        pending = dict(enumerate(self._conns))
        while pending:
            ready = wait(list(pending.values()), timeout_s)
            if not ready:
                raise TimeoutError(f"ranks {sorted(pending)} of {self.factory} sent nothing "
                                   f"for {timeout_s:.0f} s (waiting for {want!r})")
            for rank in [r for r, c in pending.items() if c in ready]:
                try:
                    kind, value = pending.pop(rank).recv()
                except EOFError:
                    raise RuntimeError(f"rank {rank} of {self.factory} died (exit code "
                                       f"{self._procs[rank].exitcode})") from None
                if kind == "error":
                    raise RuntimeError(f"{self.factory}: {value}")
                if kind != want:
                    raise RuntimeError(f"rank {rank} of {self.factory} answered {kind!r}, "
                                       f"expected {want!r}")
                out[rank] = value
        return [out[r] for r in range(self.world)]

    def _kill(self) -> None:
        for p in self._procs:
            if p.is_alive():
                p.kill()
            p.join(10)

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                for c in self._conns:
                    c.send("stop")
                self._collect("stopped", CALL_TIMEOUT_S)
                for p in self._procs:
                    p.join(60)
                bad = [(r, p.exitcode) for r, p in enumerate(self._procs) if p.exitcode != 0]
                if bad:
                    raise RuntimeError(f"{self.factory}: ranks ended with exit codes {bad}")
        finally:
            self._kill()
