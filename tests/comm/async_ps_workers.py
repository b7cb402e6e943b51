"""Rank bodies for tests/comm/test_async_ps.py (spawned, gloo on CPU).

Rank 0 is the parameter server, ranks 1..n-1 the workers. Each entry point runs every phase
of one test module once and writes what its rank observed to `<out_dir>/rank<k>.pt`.
Kept out of the test module so that spawned children do not import pytest or the tests.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from recpar.comm.async_ps import AsyncPSConfig, AsyncPSError, AsyncWorker, ParameterServer

WORLD_SIZE = 3  # server + 2 workers
IN_DIM, OUT_DIM, BATCH = 5, 3, 16
LR = 0.05

# Deterministic schedule: messages the server takes, in order. Worker 1 pushes twice (the
# second with last=True), worker 2 pushes three times then sends DONE (end_round): worker 1
# is "slow", its second gradient was computed on version 1 and lands after three others.
SCHEDULE = (1, 2, 2, 2, 2, 1)
PUSHES = {1: 2, 2: 3}
EXPECTED_STALENESS = [(1, 0), (2, 1), (2, 0), (2, 0), (1, 3)]
"""(worker, tau) per update for SCHEDULE: w1 reads v0 -> tau 0; w2 read v0, server at 1 -> 1;
w2 reads v2, v3 -> 0, 0; w1 read v1, server at 4 -> 3."""

# Dynamic work assignment, deterministic: 5 pieces; at the round's start worker 1 holds piece 0,
# worker 2 piece 1; the server takes worker 2's pushes four times (pieces 1-4, each reply the
# next piece, the last END), then worker 1's piece 0 (reply END, staleness 4).
DYN_PIECES = 5
DYN_SCHEDULE = (2, 2, 2, 2, 1)
DYN_EXPECTED = {1: [0], 2: [1, 2, 3, 4]}
DYN_SLOW_PIECES = 8  # real asynchrony: worker 1 sleeps SLOW_SLEEP_S before each of its pieces

SLOW_PUSHES = 4
SLOW_SLEEP_S = 1.0  # worker 1 sleeps this long before its first push in the timing phase
TRAIN_ROUNDS, TRAIN_PUSHES = 4, 8


def make_model() -> torch.nn.Linear:
    """Toy linear model y = x W^T + b in float64 (so the replay comparison is at 1e-12)."""
    torch.manual_seed(0)
    return torch.nn.Linear(IN_DIM, OUT_DIM).double()


def teacher() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    return (torch.randn(OUT_DIM, IN_DIM, generator=g, dtype=torch.float64),
            torch.randn(OUT_DIM, generator=g, dtype=torch.float64))


def batch(rank: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Worker `rank`'s k-th batch (its own data shard): x [BATCH, IN_DIM], y [BATCH, OUT_DIM]."""
    w, b = teacher()
    g = torch.Generator().manual_seed(1000 * rank + k)
    x = torch.randn(BATCH, IN_DIM, generator=g, dtype=torch.float64)
    return x, x @ w.t() + b


def eval_loss(model: torch.nn.Module) -> float:
    w, b = teacher()
    x = torch.randn(256, IN_DIM, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(x), x @ w.t() + b))


def _init(rank: int, world: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rdzv", rank=rank, world_size=world)


def _params(model) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()


def _grad_step(model, rank: int, k: int) -> tuple[float, int]:
    x, y = batch(rank, k)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    return float(loss.detach()) * BATCH, BATCH


def _scheduled_phase(rank: int, damping: bool) -> dict:
    cfg = AsyncPSConfig(staleness_damping=damping, push_order=SCHEDULE, timeout_s=60)
    model = make_model()
    if rank == 0:
        ps = ParameterServer(model, torch.optim.SGD(model.parameters(), lr=LR), cfg)
        init = _params(model)
        rs = ps.run_round()
        ps.stop()
        return {"init": init, "final": _params(model), "round": rs, "stats": ps.stats,
                "version": ps.version}
    w = AsyncWorker(model, cfg)
    seen = []  # (version_read, params read) at each push
    rounds = 0
    while w.begin_round():
        rounds += 1
        for k in range(PUSHES[rank]):
            seen.append((w.version_read, _params(model)))
            _grad_step(model, rank, k)
            w.push(last=(rank == 1 and k == PUSHES[rank] - 1))
        w.end_round()
    return {"seen": seen, "rounds": rounds, "pushes": w.pushes}


def _slow_worker_phase(rank: int) -> dict:
    """Real asynchrony (any-source receive): worker 1 is slow, worker 2 is not."""
    cfg = AsyncPSConfig(staleness_damping=True, timeout_s=60)
    model = make_model()
    if rank == 0:
        ps = ParameterServer(model, torch.optim.SGD(model.parameters(), lr=LR), cfg)
        ps.run_round()
        ps.stop()
        return {"stats": ps.stats}
    w = AsyncWorker(model, cfg)
    while w.begin_round():
        for k in range(SLOW_PUSHES):
            if rank == 1 and k == 0:
                time.sleep(SLOW_SLEEP_S)
            _grad_step(model, rank, k)
            w.push()
        w.end_round()
    return {}


def _dynamic_phase(rank: int, schedule, n_pieces: int, slow: bool) -> dict:
    """Dynamic work assignment: each worker computes the pieces the server hands it (data by
    piece, whoever computes it) until the server ends the round; worker 1 sleeps before each
    piece when `slow`."""
    cfg = AsyncPSConfig(staleness_damping=True, push_order=schedule, timeout_s=60,
                        work_assignment="dynamic")
    model = make_model()
    if rank == 0:
        ps = ParameterServer(model, torch.optim.SGD(model.parameters(), lr=LR), cfg)
        t0 = time.perf_counter()
        ps.run_round(pieces=n_pieces)
        round_s = time.perf_counter() - t0
        ps.stop()
        return {"stats": ps.stats, "round_s": round_s}
    w = AsyncWorker(model, cfg)
    done = []
    while w.begin_round():
        while w.piece >= 0:
            if slow and rank == 1:
                time.sleep(SLOW_SLEEP_S)
            done.append(w.piece)
            _grad_step(model, 1, w.piece)
            w.push()
        w.end_round()  # a no-op: the server ended the round
    return {"pieces": done}


def _training_phase(rank: int) -> dict:
    """Several rounds, AdamW on the server, evaluation on the server's parameters."""
    cfg = AsyncPSConfig(staleness_damping=True, clip_grad=10.0, timeout_s=60)
    model = make_model()
    if rank == 0:
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.0)
        ps = ParameterServer(model, opt, cfg)
        evals = [eval_loss(model)]
        round_losses = []
        for _ in range(TRAIN_ROUNDS):
            rs = ps.run_round()
            round_losses.append(rs.train_loss)
            evals.append(eval_loss(model))
        ps.stop()
        return {"evals": evals, "round_train_losses": round_losses, "stats": ps.stats}
    w = AsyncWorker(model, cfg)
    rounds = 0
    while w.begin_round():
        for k in range(TRAIN_PUSHES):
            loss_sum, n = _grad_step(model, rank, rounds * TRAIN_PUSHES + k)
            w.push(loss_sum, n, last=(k == TRAIN_PUSHES - 1))
        w.end_round()  # no-op after last=True
        rounds += 1
    return {"rounds": rounds}


def async_ps_worker(rank: int, world: int, out_dir: str) -> None:
    _init(rank, world, out_dir)
    t0 = time.perf_counter()
    result = {"damped": _scheduled_phase(rank, damping=True),
              "undamped": _scheduled_phase(rank, damping=False),
              "slow": _slow_worker_phase(rank),
              "train": _training_phase(rank),
              "dynamic": _dynamic_phase(rank, DYN_SCHEDULE, DYN_PIECES, slow=False),
              "dynamic_slow": _dynamic_phase(rank, None, DYN_SLOW_PIECES, slow=True),
              "timeout": _timeout_phase(rank)}  # last: it leaves the protocol broken
    result["elapsed_s"] = time.perf_counter() - t0  # all phases
    torch.save(result, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


TIMEOUT_S = 1.0


def _timeout_phase(rank: int) -> dict:
    """Last phase: the workers start a round and go silent; the server must give up after
    TIMEOUT_S (AsyncPSError), not hang. The timeout is per rank: the workers wait longer."""
    model = make_model()
    if rank == 0:
        ps = ParameterServer(model, torch.optim.SGD(model.parameters(), lr=LR),
                             AsyncPSConfig(timeout_s=TIMEOUT_S))
        t0 = time.perf_counter()
        try:
            ps.run_round()
        except AsyncPSError as err:
            return {"error": str(err), "waited_s": time.perf_counter() - t0}
        return {"error": None, "waited_s": time.perf_counter() - t0}
    w = AsyncWorker(model, AsyncPSConfig(timeout_s=60))
    began = w.begin_round()
    time.sleep(3 * TIMEOUT_S)  # silent: no push, no end_round
    return {"began": began}
