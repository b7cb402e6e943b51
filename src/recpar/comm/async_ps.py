"""Asynchronous data parallelism: a parameter server on rank 0, workers on ranks 1..n-1.

Paper III.B, Formula 12: workers push gradients and pull parameters with no global barrier; a
gradient computed on parameters `tau` server updates old is applied damped,

    theta <- theta - eta * g / (1 + tau)          (staleness_damping on)
    theta <- theta - eta * g                      (off: plain asynchronous SGD)

with tau = server_version_now - version_read, counted per update.

Transport: point-to-point isend/irecv on the already initialised torch.distributed group
(gloo on CPU), not torch.distributed.rpc. Reasons: (1) it reuses the job's one rendezvous and
the links recpar's cluster layer shapes and measures, while RPC's TensorPipe agent needs its
own rendezvous and picks its own transports (shared memory between local ranks), which would
bypass the emulated inter-node links; (2) the bytes on the wire are exactly the tensors we
send, so the accounting below is exact; (3) gloo's any-source receive gives the server
"whichever worker comes first" without a thread per worker. The message protocol (a few
fixed-size headers) is hand-written because no maintained library offers a parameter server
over torch.distributed.

Protocol, per round (an epoch, or any stretch between evaluations on the server):

    server -> each worker   CONTROL [ROUND, version, piece] + PARAMS (flat)
    worker -> server        HEADER [PUSH | PUSH_LAST | DONE, version_read, loss_sum, tokens]
                            + GRAD (flat; not for DONE)
    server -> that worker   CONTROL [PARAMS, version, piece] + PARAMS     (only after PUSH)
                            or CONTROL [END, version, -1]        (dynamic: no piece is left)
    ... until every worker has sent PUSH_LAST or DONE (static), or every piece has been applied
    (dynamic); then the server evaluates, and either starts the next round or sends
    CONTROL [STOP, version, -1] to every worker (clean shutdown).

Work assignment (`AsyncPSConfig.work_assignment`). static: each worker knows its own share of
the round's data and ends with PUSH_LAST (or DONE if it has nothing), so a round lasts as long as
its slowest worker. dynamic: the round's data is cut into `pieces` that the server hands out one
at a time (`piece` in each CONTROL; -1 = none), so a fast worker takes more pieces and a slow one
fewer: a straggler delays the round by at most the piece it holds. This is how parameter servers
avoid the synchronisation stall a straggler causes (Dean et al., "Large Scale Distributed Deep
Networks", NIPS 2012: Downpour SGD's workers each take the next mini-batch when ready).

The server applies each gradient as it arrives (single-threaded: arrivals are serialised);
every wait has a timeout (`AsyncPSConfig.timeout_s`), so a lost peer is an error, not a hang.

With AdamW (or any optimizer) instead of SGD the damping scales the (clipped) gradient by
1/(1 + tau) before `optimizer.step()`. AdamW normalises by sqrt(v), so a constant scale would
cancel; varying per-update scales still down-weight stale gradients relative to fresh ones in
both moment estimates, but the step is not eta * g / (1 + tau). Decoupled weight decay is not
damped. Only with SGD is the update exactly Formula 12.

Usage (every rank; rank 0 serves, evaluates on its own parameters):

    if rank == 0:
        ps = ParameterServer(model, torch.optim.AdamW(...), AsyncPSConfig())
        for epoch in range(E):
            ps.run_round(); evaluate(ps.model)
        ps.stop()
    else:
        w = AsyncWorker(model, AsyncPSConfig())
        while w.begin_round():
            for x, y in my_shard_batches():
                loss_sum, count = model.loss_sum(x, y)
                (loss_sum / count.clamp(min=1)).backward()
                w.push(float(loss_sum), int(count))
            w.end_round()
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

# the settings live in a torch-free module (the launcher validates them without importing
# torch); re-exported here, where the protocol that uses them is
from recpar.comm.async_config import WORK_ASSIGNMENTS, AsyncPSConfig, AsyncPSError  # noqa: F401

SERVER_RANK = 0

# Message tags (gloo matches a receive by source and tag).
TAG_CONTROL = 11  # server -> worker: int64 [command, version]
TAG_PARAMS = 12  # server -> worker: flat parameters
TAG_HEADER = 13  # worker -> server: float64 [kind, version_read, loss_sum, token_count]
TAG_GRAD = 14  # worker -> server: flat gradient

CMD_ROUND, CMD_PARAMS, CMD_STOP, CMD_END = 0, 1, 2, 3
"""Control commands: a round starts (params follow), a push's reply (params follow), stop,
no piece is left this round (dynamic work assignment; nothing follows)."""
KIND_PUSH, KIND_PUSH_LAST, KIND_DONE = 0, 1, 2
"""Worker header kinds: push and pull back, last push of the round (no reply), nothing more."""

HEADER_LEN = 4  # float64: integers below 2**53 (versions, token counts) are exact
CONTROL_LEN = 3  # int64: [command, version, piece (-1: none)]
NO_PIECE = -1


@dataclass
class UpdateRecord:
    """One applied update, in server order."""

    version: int
    """Server version the update produced (1 for the first update ever)."""
    worker: int
    """Rank that pushed the gradient."""
    version_read: int
    """Server version of the parameters the gradient was computed on."""
    staleness: int
    """tau = (version - 1) - version_read: updates applied in between."""


@dataclass
class AsyncPSStats:
    """Server-side counts, cumulative over rounds (or for one round: `run_round`'s return)."""

    updates: int = 0
    """Gradients applied."""
    rounds: int = 0
    """Rounds served."""
    staleness_histogram: dict[int, int] = field(default_factory=dict)
    """tau -> number of updates with that staleness; sums to `updates`."""
    updates_per_worker: dict[int, int] = field(default_factory=dict)
    """Worker rank -> gradients applied from it."""
    staleness_sum_per_worker: dict[int, int] = field(default_factory=dict)
    """Worker rank -> sum of the staleness of its applied gradients (a straggler's gradients
    are staler: the other workers' updates land while it computes)."""
    push_bytes_per_update: int = 0
    """Bytes one push carries worker -> server (header + flat gradient payload)."""
    pull_bytes_per_update: int = 0
    """Bytes one pull carries server -> worker (control + flat parameter payload)."""
    bytes_pushed: int = 0
    """All push bytes received by the server."""
    bytes_pulled: int = 0
    """All parameter bytes sent by the server (round starts and replies)."""
    train_loss_sum: float = 0.0
    """Sum of the workers' reported loss sums (cross-entropy summed over valid positions)."""
    train_token_count: int = 0
    """Sum of the workers' reported valid-position counts."""
    apply_s: float = 0.0
    """Server seconds spent applying updates (unflatten, clip, damp, optimizer step)."""
    wait_s: float = 0.0
    """Server seconds spent waiting for worker messages."""
    log: list[UpdateRecord] = field(default_factory=list)
    """Every update in server order."""

    @property
    def mean_staleness(self) -> float:
        return sum(t * n for t, n in self.staleness_histogram.items()) / max(self.updates, 1)

    @property
    def train_loss(self) -> float:
        """Token-weighted mean training loss over the updates counted here."""
        return self.train_loss_sum / max(self.train_token_count, 1)

    def to_record(self) -> dict:
        """JSON-ready summary (string keys, no per-update log)."""
        d = asdict(self)
        d.pop("log")
        d["staleness_histogram"] = {str(k): v for k, v in sorted(self.staleness_histogram.items())}
        d["updates_per_worker"] = {str(k): v for k, v in sorted(self.updates_per_worker.items())}
        d["staleness_sum_per_worker"] = {str(k): v for k, v in
                                         sorted(self.staleness_sum_per_worker.items())}
        d["mean_staleness"] = self.mean_staleness
        d["train_loss"] = self.train_loss
        return d


def _params(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1:
        raise AsyncPSError(f"async_ps: parameters must share one dtype, got {sorted(map(str, dtypes))}")
    return params


def _flat_grads(params: list[nn.Parameter]) -> torch.Tensor:
    # A parameter without a gradient (unused in this batch) contributes zeros.
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params])


class _Peer:
    """isend/irecv with a timeout on every wait (gloo honours Work.wait(timeout))."""

    def __init__(self, timeout_s: float):
        self.timeout = timedelta(seconds=timeout_s)
        self.rank = dist.get_rank()

    def _wait(self, work, what: str):
        try:
            ok = work.wait(timeout=self.timeout)
        except RuntimeError as err:
            raise AsyncPSError(f"async_ps: rank {self.rank}: {what} failed or exceeded "
                               f"timeout_s={self.timeout.total_seconds():g}: {err}") from err
        if ok is False:
            raise AsyncPSError(f"async_ps: rank {self.rank}: {what} did not complete within "
                               f"timeout_s={self.timeout.total_seconds():g}")
        return work

    def send(self, tensor: torch.Tensor, dst: int, tag: int) -> None:
        self._wait(dist.isend(tensor, dst=dst, tag=tag), f"send (tag {tag}) to rank {dst}")

    def recv(self, tensor: torch.Tensor, src: int | None, tag: int) -> int:
        """Receive into `tensor` from `src` (None: any source); return the sender's rank."""
        work = dist.irecv(tensor, src=src, tag=tag)
        self._wait(work, f"receive (tag {tag}) from {'any rank' if src is None else f'rank {src}'}")
        # Work._source_rank() is how torch.distributed.recv itself reports an any-source
        # sender (distributed_c10d.recv); recv has no per-call timeout, hence irecv + wait.
        return src if src is not None else int(work._source_rank())


class ParameterServer:
    """Rank 0: holds the authoritative parameters and the optimizer; applies pushes as they come."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 cfg: AsyncPSConfig | None = None):
        if not dist.is_initialized():
            raise AsyncPSError("async_ps: torch.distributed is not initialised")
        if dist.get_rank() != SERVER_RANK:
            raise AsyncPSError(f"async_ps: the server runs on rank {SERVER_RANK}, not {dist.get_rank()}")
        self.cfg = (cfg or AsyncPSConfig()).validate(dist.get_world_size())
        self.model = model
        """The server's model: its parameters are the ones to evaluate and checkpoint."""
        self.optimizer = optimizer
        self.params = _params(model)
        self.numel = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.workers = list(range(1, dist.get_world_size()))
        self.version = 0
        """Updates applied so far."""
        self.stats = AsyncPSStats()
        """Cumulative over all rounds."""
        self._peer = _Peer(self.cfg.timeout_s)
        self._elem = self.params[0].element_size()
        self._stopped = False

    # --- messages -------------------------------------------------------------------------

    def _control(self, command: int, piece: int = NO_PIECE) -> torch.Tensor:
        return torch.tensor([command, self.version, piece], dtype=torch.int64)  # [CONTROL_LEN]

    def _send_params(self, dst: int, command: int, stats: AsyncPSStats,
                     piece: int = NO_PIECE) -> None:
        control = self._control(command, piece)
        flat = torch.nn.utils.parameters_to_vector(self.params).detach()  # [numel], a copy
        self._peer.send(control, dst, TAG_CONTROL)
        self._peer.send(flat, dst, TAG_PARAMS)
        stats.bytes_pulled += control.nbytes + flat.nbytes

    def _apply(self, flat_grad: torch.Tensor, tau: int) -> None:
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat_grad[offset:offset + n].view_as(p).clone()
            offset += n
        if self.cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad)
        if self.cfg.staleness_damping and tau > 0:
            for p in self.params:
                p.grad.div_(1 + tau)  # Formula 12: g / (1 + tau)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    # --- public -----------------------------------------------------------------------------

    def run_round(self, on_update: Callable[[UpdateRecord, int], None] | None = None,
                  pieces: int | None = None) -> AsyncPSStats:
        """Send the current parameters to every worker, then apply pushes in arrival order
        until every worker has finished its round (static) or all `pieces` pieces of work have
        been applied (dynamic: required there, ignored by static). Returns this round's counts
        (also added to `self.stats`). `on_update(update, token_count)`, if given, is called
        after each applied update (before its reply is sent), e.g. to drive a timing window."""
        if self._stopped:
            raise AsyncPSError("async_ps: run_round after stop()")
        dynamic = self.cfg.work_assignment == "dynamic"
        if dynamic and (pieces is None or pieces < 0):
            raise AsyncPSError(f"async_ps: dynamic work assignment needs the round's number of "
                               f"pieces (>= 0), got {pieces!r}")
        rs = AsyncPSStats(rounds=1)
        rs.push_bytes_per_update = HEADER_LEN * 8 + self.numel * self._elem
        rs.pull_bytes_per_update = CONTROL_LEN * 8 + self.numel * self._elem
        handed = 0  # dynamic: pieces handed out so far (piece ids 0..pieces-1, in order)

        def next_piece() -> int:
            nonlocal handed
            if not dynamic or handed >= pieces:
                return NO_PIECE
            handed += 1
            return handed - 1

        done: set[int] = set()  # workers with nothing more to send this round
        for w in self.workers:
            piece = next_piece()
            self._send_params(w, CMD_ROUND, rs, piece)
            if dynamic and piece == NO_PIECE:
                done.add(w)
        header = torch.zeros(HEADER_LEN, dtype=torch.float64)  # [kind, version_read, loss, tokens]
        grad = torch.empty(self.numel, dtype=self.dtype)  # [numel]
        order = list(self.cfg.push_order or ())
        while len(done) < len(self.workers):
            src = order.pop(0) if order else None
            t0 = time.perf_counter()
            src = self._peer.recv(header, src, TAG_HEADER)
            rs.wait_s += time.perf_counter() - t0
            kind, version_read = int(header[0]), int(header[1])
            allowed = (KIND_PUSH,) if dynamic else (KIND_PUSH, KIND_PUSH_LAST, KIND_DONE)
            if src in done or kind not in allowed:
                raise AsyncPSError(f"async_ps: unexpected message kind {kind} from rank {src} "
                                   f"(finished this round: {src in done}; work assignment "
                                   f"{self.cfg.work_assignment})")
            if kind == KIND_DONE:
                done.add(src)
                continue
            if not 0 <= version_read <= self.version:
                raise AsyncPSError(f"async_ps: rank {src} read version {version_read}, "
                                   f"server is at {self.version}")
            t0 = time.perf_counter()
            self._peer.recv(grad, src, TAG_GRAD)
            rs.wait_s += time.perf_counter() - t0
            rs.bytes_pushed += header.nbytes + grad.nbytes
            tau = self.version - version_read
            t0 = time.perf_counter()
            self._apply(grad, tau)
            rs.apply_s += time.perf_counter() - t0
            self.version += 1
            rs.updates += 1
            rs.staleness_histogram[tau] = rs.staleness_histogram.get(tau, 0) + 1
            rs.updates_per_worker[src] = rs.updates_per_worker.get(src, 0) + 1
            rs.staleness_sum_per_worker[src] = rs.staleness_sum_per_worker.get(src, 0) + tau
            rs.train_loss_sum += float(header[2])
            rs.train_token_count += int(header[3])
            rs.log.append(UpdateRecord(self.version, src, version_read, tau))
            if on_update is not None:
                on_update(rs.log[-1], int(header[3]))
            if dynamic:
                piece = next_piece()
                if piece == NO_PIECE:  # the round is over for this worker: no weights needed
                    control = self._control(CMD_END)
                    self._peer.send(control, src, TAG_CONTROL)
                    rs.bytes_pulled += control.nbytes
                    done.add(src)
                else:
                    self._send_params(src, CMD_PARAMS, rs, piece)
            elif kind == KIND_PUSH:
                self._send_params(src, CMD_PARAMS, rs)
            else:
                done.add(src)
        self._accumulate(rs)
        return rs

    def _accumulate(self, rs: AsyncPSStats) -> None:
        s = self.stats
        s.push_bytes_per_update, s.pull_bytes_per_update = rs.push_bytes_per_update, rs.pull_bytes_per_update
        for name in ("updates", "rounds", "bytes_pushed", "bytes_pulled", "train_loss_sum",
                     "train_token_count", "apply_s", "wait_s"):
            setattr(s, name, getattr(s, name) + getattr(rs, name))
        s.staleness_histogram = dict(Counter(s.staleness_histogram) + Counter(rs.staleness_histogram))
        s.updates_per_worker = dict(Counter(s.updates_per_worker) + Counter(rs.updates_per_worker))
        s.staleness_sum_per_worker = dict(Counter(s.staleness_sum_per_worker)
                                          + Counter(rs.staleness_sum_per_worker))
        s.log.extend(rs.log)

    def stop(self) -> None:
        """Tell every worker to stop (their `begin_round` returns False). Idempotent."""
        if self._stopped:
            return
        control = self._control(CMD_STOP)
        for w in self.workers:
            self._peer.send(control, w, TAG_CONTROL)
        self._stopped = True


class AsyncWorker:
    """Ranks 1..n-1: compute gradients on their own shard, push them, pull fresh parameters."""

    def __init__(self, model: nn.Module, cfg: AsyncPSConfig | None = None):
        if not dist.is_initialized():
            raise AsyncPSError("async_ps: torch.distributed is not initialised")
        if dist.get_rank() == SERVER_RANK:
            raise AsyncPSError(f"async_ps: rank {SERVER_RANK} is the server, not a worker")
        self.cfg = (cfg or AsyncPSConfig()).validate(dist.get_world_size())
        self.model = model
        self.params = _params(model)
        self.numel = sum(p.numel() for p in self.params)
        self.version_read = -1
        """Server version of the parameters currently loaded (-1 before the first round)."""
        self.pushes = 0
        """Gradients pushed so far (all rounds)."""
        self.piece = NO_PIECE
        """Dynamic work assignment: the piece of the round to compute next (NO_PIECE: none
        left, the round is over for this worker)."""
        self._peer = _Peer(self.cfg.timeout_s)
        self._control = torch.zeros(CONTROL_LEN, dtype=torch.int64)
        self._flat = torch.empty(self.numel, dtype=self.params[0].dtype)
        self._in_round = False

    def _pull(self, expect: tuple[int, ...]) -> int:
        self._peer.recv(self._control, SERVER_RANK, TAG_CONTROL)
        command, version = int(self._control[0]), int(self._control[1])
        if command not in expect:
            raise AsyncPSError(f"async_ps: rank {dist.get_rank()} expected command {expect}, got {command}")
        self.piece = int(self._control[2])
        if command not in (CMD_STOP, CMD_END):
            self._peer.recv(self._flat, SERVER_RANK, TAG_PARAMS)
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(self._flat, self.params)
            self.version_read = version
        return command

    def begin_round(self) -> bool:
        """Wait for the server: True = a round starts (parameters loaded), False = stop."""
        if self._in_round:
            raise AsyncPSError("async_ps: begin_round inside a round (call end_round first)")
        if self._pull((CMD_ROUND, CMD_STOP)) == CMD_STOP:
            return False
        # dynamic: a worker handed no piece has nothing to do (or send) this round
        self._in_round = self.cfg.work_assignment == "static" or self.piece != NO_PIECE
        return True

    def _send_header(self, kind: int, loss_sum: float, token_count: int) -> None:
        header = torch.tensor([kind, self.version_read, loss_sum, token_count], dtype=torch.float64)
        self._peer.send(header, SERVER_RANK, TAG_HEADER)

    def push(self, loss_sum: float = 0.0, token_count: int = 0, last: bool = False) -> None:
        """Push the model's current .grad (computed on version `version_read`); zero the grads.
        Unless `last`, pull the server's parameters after the update (blocking). `loss_sum` and
        `token_count` of the batch travel in the header, for the server's train-loss log.
        Dynamic work assignment: `last` is not used; the reply says which piece comes next
        (`self.piece`), or that the round is over (`self.piece` == NO_PIECE)."""
        if not self._in_round:
            raise AsyncPSError("async_ps: push outside a round (call begin_round first)")
        dynamic = self.cfg.work_assignment == "dynamic"
        if dynamic and last:
            raise AsyncPSError("async_ps: push(last=True) with dynamic work assignment (the "
                               "server says when the round is over)")
        grad = _flat_grads(self.params)
        self._send_header(KIND_PUSH_LAST if last else KIND_PUSH, loss_sum, token_count)
        self._peer.send(grad, SERVER_RANK, TAG_GRAD)
        self.pushes += 1
        for p in self.params:
            p.grad = None
        if last:
            self._in_round = False
        elif self._pull((CMD_PARAMS, CMD_END) if dynamic else (CMD_PARAMS,)) == CMD_END:
            self._in_round = False

    def end_round(self) -> None:
        """This worker has nothing more to push this round (no-op after push(last=True), and
        under dynamic work assignment, where the server ends the round)."""
        if self._in_round and self.cfg.work_assignment == "dynamic":
            raise AsyncPSError(f"async_ps: end_round with piece {self.piece} still to compute "
                               f"(dynamic work assignment)")
        if self._in_round:
            self._send_header(KIND_DONE, 0.0, 0)
            self._in_round = False
