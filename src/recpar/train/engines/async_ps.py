"""Engine `async`: asynchronous data parallelism with a parameter server (paper III.B, Formula 12).

What `dp` means here: `--dp N` starts N ranks = 1 parameter server (rank 0) + N − 1 workers
(`ParallelPlan.batch_shards`). The server holds the authoritative weights and the AdamW
optimiser (`recpar.comm.async_ps.ParameterServer`) and computes nothing; worker w (1..N−1)
feeds the rows idx[w−1::N−1] of every global batch (the same share a sync-DP rank gets with
N − 1 ranks), computes the mean loss over its rows' valid positions, pushes the gradient and
pulls fresh weights, with no barrier. Each push is one server update, damped by 1/(1 + τ)
unless `async_ps.staleness_damping` is off. So an epoch makes (N − 1) × batches updates on
1/(N − 1)-size batches, where sync DP makes one update per global batch.

With `async_ps.work_assignment: dynamic` the shares are not fixed: the epoch's pieces (piece
(k, j) = rows idx[j::N−1] of global batch k, the same sizes as the static shares) go to whichever
worker asks next (`recpar.comm.async_ps`), so a straggling worker computes fewer of them and the
round does not wait for its share.

One epoch is one server round (`run_epoch` hook of the loop): rank 0 evaluates and
checkpoints its own weights between rounds (`full_state_dict` on rank 0: no collective),
the workers wait in the loop's end-of-epoch collectives meanwhile, so early stopping and the
`stop` broadcast work as for every scheme. `close()` ends the protocol on every rank.

Timing window (the loop's `StepWindow`, one per rank): a window "step" is one global batch's
worth of work, i.e. N − 1 applied updates. The server's window (what the record keeps) opens
when the round starting the first timed group begins and closes after the update completing the
last timed group lands; samples counted = the rows of the global batches whose updates those
were (each group of N − 1 updates in arrival order is credited with one global batch's rows: a
worker's share sizes differ by at most one row, so the count is exact over a round and off by at
most N − 2 rows at a window edge); tokens = the valid positions the workers reported with each
update (exact). Evaluation between rounds is paused, as for every scheme. Workers drive their
own windows per global batch they process (their samples = their rows).
"""

from __future__ import annotations

import dataclasses
import time

import torch
import torch.distributed as dist

from recpar.comm.async_ps import AsyncWorker, ParameterServer, UpdateRecord
from recpar.train.engines.base import Engine, EngineContext, StepResult
from recpar.train.optim import build_adamw


def _share(idx: torch.Tensor, worker: int, workers: int) -> torch.Tensor:
    """Worker `worker`'s (1-based) rows of a global batch: idx[worker − 1::workers]."""
    return idx[worker - 1::workers]


def pieces(batches: list[torch.Tensor], workers: int) -> list[tuple[int, int]]:
    """Dynamic work assignment: the round's pieces, (global batch k, part j) with part j = rows
    idx[j::workers], the non-empty ones in order; every rank derives the same list."""
    return [(k, j) for k, b in enumerate(batches) for j in range(min(workers, int(b.numel())))]


class _ServerWindow:
    """Feeds the server's `StepWindow` from the update stream (one step = N − 1 updates)."""

    def __init__(self, window, batches: list[torch.Tensor], workers: int):
        self.window = window
        # Updates each global batch yields: one per worker with a non-empty share.
        self.expected = [min(workers, int(b.numel())) for b in batches]
        self.samples = [int(b.numel()) for b in batches]
        self.group, self.in_group, self.tokens = 0, 0, 0
        if self.expected:
            window.before_step()  # the round's first group starts with the round

    def on_update(self, update: UpdateRecord, token_count: int) -> None:
        """Count one applied update; every N − 1 updates one window step ends."""
        self.in_group += 1
        self.tokens += token_count
        if self.in_group < self.expected[self.group]:
            return
        self.window.after_step(samples=self.samples[self.group], tokens=self.tokens)
        self.group, self.in_group, self.tokens = self.group + 1, 0, 0
        if self.group < len(self.expected):
            self.window.before_step()


class AsyncEngine(Engine):
    """Rank 0 serves (ParameterServer), ranks 1..dp−1 compute (AsyncWorker)."""

    def __init__(self, ctx: EngineContext):
        super().__init__(ctx)
        spec = ctx.spec
        self.cfg = spec.train
        self.workers = spec.plan.dp - 1
        # One clipping setting for every scheme: the server clips each pushed gradient.
        self.ps_cfg = dataclasses.replace(spec.async_ps, clip_grad=self.cfg.clip_grad)
        self.is_server = ctx.rank == 0
        self.server: ParameterServer | None = None
        self.worker: AsyncWorker | None = None
        if self.is_server:
            self.opt = build_adamw(ctx.model, self.cfg)
            self.server = ParameterServer(ctx.model, self.opt, self.ps_cfg)
        else:
            self.worker = AsyncWorker(ctx.model, self.ps_cfg)
        # Worker counters over its timing window (reset when the window opens).
        self._comm_s = 0.0  # worker: seconds blocked in push() (send grad + receive weights)
        self._pushes_in_window = 0
        self._fb_s = 0.0  # worker: forward + backward seconds in the window
        self._worker_window: dict = {}  # server: what the workers measured (gathered)

    # --- the loop's hooks ---------------------------------------------------------------------

    def step(self, inputs, targets, idx) -> StepResult:
        raise NotImplementedError("scheme async trains whole epochs (run_epoch), not steps")

    def run_epoch(self, inputs, targets, batches, window) -> list[float]:
        losses = (self._serve_round(batches, window) if self.is_server
                  else self._work_round(inputs, targets, batches, window))
        # Every rank, every epoch: the workers' window counters travel to the server.
        mine = {"comm_s": self._comm_s, "pushes": self._pushes_in_window, "fb_s": self._fb_s}
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        self._worker_window = {r: g for r, g in enumerate(gathered) if r != 0}
        return losses

    def _serve_round(self, batches, window) -> list[float]:
        sw = _ServerWindow(window, batches, self.workers)
        rs = self.server.run_round(on_update=sw.on_update,
                                   pieces=len(pieces(batches, self.workers)))
        # Token-weighted mean of the losses the workers computed (each on the weights it read).
        return [rs.train_loss] if rs.train_token_count else []

    def _work_round(self, inputs, targets, batches, window) -> list[float]:
        w = self.worker
        if not w.begin_round():
            raise RuntimeError("async: the server stopped while the loop still trains")
        if self.ps_cfg.work_assignment == "dynamic":
            return self._work_pieces(inputs, targets, batches, window)
        losses = []
        # Last batch this worker has rows in: its push ends the round (no reply to wait for).
        mine = [_share(idx, self.ctx.rank, self.workers) for idx in batches]
        last = max((k for k, rows in enumerate(mine) if rows.numel()), default=-1)
        for k, rows in enumerate(mine):
            was_open = window.open
            window.before_step()
            in_window = window.open
            if in_window and not was_open:
                self._comm_s, self._pushes_in_window, self._fb_s = 0.0, 0, 0.0
            tokens = 0
            if rows.numel():
                tokens = self._compute_and_push(inputs, targets, rows, in_window, losses,
                                                last=(k == last))
            window.after_step(samples=int(rows.numel()), tokens=tokens)
        w.end_round()  # no-op after the last push
        return losses

    def _work_pieces(self, inputs, targets, batches, window) -> list[float]:
        """Dynamic work assignment: compute the piece the server names until it says the round
        is over; one window step per piece."""
        w, losses = self.worker, []
        todo = pieces(batches, self.workers)
        while w.piece >= 0:
            k, j = todo[w.piece]
            rows = batches[k][j::self.workers]
            was_open = window.open
            window.before_step()
            if window.open and not was_open:
                self._comm_s, self._pushes_in_window, self._fb_s = 0.0, 0, 0.0
            tokens = self._compute_and_push(inputs, targets, rows, window.open, losses)
            window.after_step(samples=int(rows.numel()), tokens=tokens)
        return losses

    def _compute_and_push(self, inputs, targets, rows, in_window: bool, losses: list[float],
                          last: bool = False) -> int:
        """Forward + backward on `rows`, push the gradient (and pull the reply); the tokens."""
        model, dev = self.ctx.model, self.ctx.device
        x, y = inputs[rows].to(dev), targets[rows].to(dev)  # [b, L] each
        t0 = time.perf_counter()
        with self.autocast():
            loss_sum, count = model.loss_sum(x, y)
        (loss_sum / count.clamp(min=1)).backward()
        t1 = time.perf_counter()
        tokens = int(count)
        self.worker.push(float(loss_sum.detach()), tokens, last=last)
        if in_window:
            self._fb_s += t1 - t0
            self._comm_s += time.perf_counter() - t1
            self._pushes_in_window += 1
        losses.append(float(loss_sum.detach()) / max(tokens, 1))
        return tokens

    def full_state_dict(self):
        if not self.is_server:
            return None
        return {k: v.detach().to("cpu", copy=True) for k, v in self.ctx.model.state_dict().items()}

    def window_closed(self, steps: int) -> dict:
        """Per-iteration (= per global batch) numbers over the window. A worker: its own
        blocked push+pull ms per push (so the record's max over ranks is the slowest worker's);
        the server: bytes per update and the workers' mean."""
        if not steps:
            return {}
        if not self.is_server:
            if not self._pushes_in_window:
                return {}
            return {"comm_ms_per_iter": 1e3 * self._comm_s / self._pushes_in_window}
        ps = self.server.stats
        workers = [g for g in self._worker_window.values() if g["pushes"]]
        out = {
            "push_bytes_per_update": float(ps.push_bytes_per_update),
            "pull_bytes_per_update": float(ps.pull_bytes_per_update),
            # What one worker sends per iteration (one push), as sync DP's payload per rank.
            "payload_bytes_per_rank_per_iter": float(ps.push_bytes_per_update),
        }
        if workers:
            # A worker's blocked time per push: send gradient, wait while the server applies
            # this and any queued updates, receive the weights. Mean over workers.
            out["comm_ms_per_iter"] = 1e3 * sum(g["comm_s"] / g["pushes"] for g in workers) \
                / len(workers)
            out["worker_fwd_bwd_ms_per_update"] = 1e3 * sum(
                g["fb_s"] / g["pushes"] for g in workers) / len(workers)
        return out

    def finish(self, inputs, targets, batches, timing) -> dict:
        """Server: the whole run's parameter-server counts (staleness histogram flattened into
        `staleness_<tau>_updates_count`, per-worker `updates_rank<r>_count` and
        `mean_staleness_rank<r>`: a straggling worker's gradients are the stale ones)."""
        if not self.is_server:
            return {}
        s = self.server.stats
        out = {
            "async_updates_count": s.updates,
            "async_rounds_count": s.rounds,
            "mean_staleness": s.mean_staleness,
            "max_staleness": max(s.staleness_histogram, default=0),
            "push_bytes_per_update": float(s.push_bytes_per_update),
            "pull_bytes_per_update": float(s.pull_bytes_per_update),
            "bytes_pushed_total": float(s.bytes_pushed),
            "bytes_pulled_total": float(s.bytes_pulled),
            "server_wait_s": s.wait_s,
            "server_apply_s": s.apply_s,
            "server_apply_ms_per_update": 1e3 * s.apply_s / max(s.updates, 1),
            "server_wait_ms_per_update": 1e3 * s.wait_s / max(s.updates, 1),
        }
        for tau, n in sorted(s.staleness_histogram.items()):
            out[f"staleness_{tau}_updates_count"] = n
        for r, n in sorted(s.updates_per_worker.items()):
            out[f"updates_rank{r}_count"] = n
            out[f"mean_staleness_rank{r}"] = s.staleness_sum_per_worker.get(r, 0) / max(n, 1)
        return out

    # --- training state -----------------------------------------------------------------------

    def trained_state(self):
        # the server: weights + AdamW state; a worker: weights and the gradients it pushes
        return list(self.ctx.model.parameters()), self.opt if self.is_server else None

    def state_dict(self) -> dict:
        if not self.is_server:
            return {}  # workers pull everything they need at each round start
        s = self.server.stats
        return {"model": self.ctx.model.state_dict(), "optimizer": self.opt.state_dict(),
                "version": self.server.version,
                "stats": {k: getattr(s, k) for k in (
                    "updates", "rounds", "staleness_histogram", "updates_per_worker",
                    "staleness_sum_per_worker", "bytes_pushed", "bytes_pulled", "train_loss_sum", "train_token_count",
                    "apply_s", "wait_s", "push_bytes_per_update", "pull_bytes_per_update")}}

    def load_state_dict(self, state: dict) -> None:
        if not self.is_server:
            return
        self.ctx.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.server.version = int(state["version"])
        for k, v in state["stats"].items():
            setattr(self.server.stats, k, v)

    def close(self) -> None:
        """End the protocol: the server sends STOP, each worker receives it."""
        if self.is_server:
            self.server.stop()
        elif self.worker.begin_round():
            raise RuntimeError("async: expected the server's STOP, got a new round")
