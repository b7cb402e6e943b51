"""DDP communication hooks for gradient synchronisation, with byte and time accounting.

Every hook is a function (state: GradSyncState, bucket: GradBucket) -> Future[Tensor] for
`DistributedDataParallel.register_comm_hook(state, hook)`; the future's value is the bucket's
gradient averaged over the data-parallel group (Formula 8).

- ring_hook: torch's allreduce_hook (the backend's all-reduce, then / world size): the reference.
- hierarchical_hook: reduce-scatter inside each node -> all-reduce across nodes among ranks with
  the same local rank -> all-gather inside each node (the bucket is zero-padded to a multiple
  of the node size). Written here because torch/gloo/NCCL expose no two-level all-reduce.
- sign_hook, topk_hook: paper Formulas 10-11 with error feedback; compressed payloads are
  aggregated by all-gather and every rank decodes and averages (all-reduce cannot sum packed
  bits or differently-indexed sparse vectors). Written here because torch ships neither.
- powersgd_hook, fp16_hook, bf16_hook: torch's own hooks, called unchanged; recpar only adds
  the same accounting around them.

Use `make_grad_sync_hook(config)` to build the state and pick the hook. The state creates its
own process groups ONCE, collectively: construct it on every rank of the job at the same point.
A dedicated copy of the data-parallel group keeps hook collectives apart from any collective
DDP or the training loop issues on the model's group (recpar's asynchronous hooks issue theirs
from a worker thread, and two threads sharing one group could order collectives differently
on different ranks).

overlap_grad_reduce=True: torch's ring/fp16/bf16 hooks return their asynchronous futures;
recpar's hooks and torch's PowerSGD (whose chained all-reduces can deadlock gloo with several
buckets in flight, see _wrap_torch_hook) run on one worker thread per state, in bucket order
(identical on all ranks), and return a future completed by it. False: every hook blocks until
its bucket is reduced, so communication does not overlap backward.

On CUDA (untested here: developed on a CPU-only machine) recpar's hooks synchronise the device
after each collective so that their times are real; the worker thread uses the default stream.
"""

# No `from __future__ import annotations` here: DDP inspects the hooks' annotations at
# register_comm_hook and accepts only the real dist.GradBucket / Future[Tensor] objects.

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as torch_powersgd

from recpar.comm import byte_formulas as bf
from recpar.comm.codecs import sign_decode_mean, sign_encode, topk_decode_mean, topk_encode
from recpar.comm.config import GradSyncConfig
from recpar.comm.residuals import BucketLayout, ResidualStore, bucket_layout
from recpar.comm.stats import CommStats
from recpar.device import device_sync

Hook = Callable[["GradSyncState", Any], torch.futures.Future]


# --------------------------------------------------------------------------- buckets

@dataclass
class BucketView:
    """What a hook needs from a DDP GradBucket, captured on the thread that called the hook."""

    index: int
    """DDP bucket index (bucket 0 is reduced last)."""
    buffer: torch.Tensor
    """(n,) flat gradient buffer; the hook writes the averaged gradient into it."""
    grads: list[torch.Tensor]
    """Per-parameter gradient views into `buffer`, in bucket order."""
    params: list[torch.Tensor]
    """The parameters, same order as `grads` (empty for synthetic buckets)."""


class SyntheticBucket:
    """Duck-typed stand-in for torch.distributed.GradBucket (benchmarks and tests).

    `grad_shapes` splits the flat buffer into per-parameter views (torch's PowerSGD compresses
    each 2-D view; a single 1-D view would never be compressed).
    """

    def __init__(self, buffer: torch.Tensor, index: int = 0,
                 grad_shapes: Sequence[Sequence[int]] | None = None,
                 params: Sequence[torch.Tensor] | None = None) -> None:
        self._buffer = buffer
        self._index = index
        self._shapes = [tuple(s) for s in grad_shapes] if grad_shapes else [(buffer.numel(),)]
        total = sum(int(torch.Size(s).numel()) for s in self._shapes)
        if total != buffer.numel():
            raise ValueError(f"grad_shapes {self._shapes} hold {total} elements, buffer has {buffer.numel()}")
        self._params = list(params) if params is not None else []

    def buffer(self) -> torch.Tensor:
        return self._buffer

    def set_buffer(self, tensor: torch.Tensor) -> None:
        self._buffer = tensor

    def index(self) -> int:
        return self._index

    def is_last(self) -> bool:
        return True

    def gradients(self) -> list[torch.Tensor]:
        out, offset = [], 0
        for shape in self._shapes:
            n = int(torch.Size(shape).numel())
            out.append(self._buffer[offset:offset + n].view(shape))
            offset += n
        return out

    def parameters(self) -> list[torch.Tensor]:
        return self._params


def _bucket_view(bucket: Any) -> BucketView:
    return BucketView(int(bucket.index()), bucket.buffer(), list(bucket.gradients()),
                      list(bucket.parameters()))


# --------------------------------------------------------------------------- state

class GradSyncState:
    """Hook state: config, process groups, error-feedback residuals, accounting.

    process_group: the data-parallel group (None: the one in all_group_ranks that holds this
    rank, else the whole job). If it is a sub-group, pass all_group_ranks = the rank lists of EVERY data-parallel group (identical on all ranks, as
    megatron-core's parallel_state builds them), so that each rank can take part in creating
    every group; torch requires all ranks to enter each new_group call.
    named_parameters: the model's named parameters; makes residual checkpoints independent of
    DDP's bucket layout (see recpar.comm.residuals).
    """

    def __init__(self, config: GradSyncConfig, process_group: dist.ProcessGroup | None = None, *,
                 all_group_ranks: Sequence[Sequence[int]] | None = None,
                 named_parameters: Iterable[tuple[str, torch.Tensor]] | None = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError("GradSyncState: torch.distributed is not initialised")
        world, me = dist.get_world_size(), dist.get_rank()
        if all_group_ranks is not None:
            all_group_ranks = [list(map(int, r)) for r in all_group_ranks]
        if process_group is not None:
            my_ranks = list(dist.get_process_group_ranks(process_group))
        elif all_group_ranks is not None:
            mine = [r for r in all_group_ranks if me in r]
            if len(mine) != 1:
                raise ValueError(f"GradSyncState: rank {me} is in {len(mine)} of all_group_ranks, expected 1")
            my_ranks = mine[0]
        else:
            my_ranks = list(range(world))
        if all_group_ranks is None:
            if len(my_ranks) != world:
                raise ValueError("GradSyncState: process_group is a sub-group; pass all_group_ranks "
                                 "(the ranks of every data-parallel group)")
            all_group_ranks = [my_ranks]
        if my_ranks not in all_group_ranks:
            raise ValueError(f"GradSyncState: this rank's group {my_ranks} is not in all_group_ranks")
        self.config = config.validate(len(my_ranks))
        self.stats = CommStats()
        self.residuals = ResidualStore()
        self.world_size = len(my_ranks)
        self.group_ranks = my_ranks
        # Dedicated copies of the data-parallel groups; every rank creates every group, in order.
        self.process_group: dist.ProcessGroup | None = None
        for ranks in all_group_ranks:
            group = dist.new_group(ranks)
            if ranks == my_ranks:
                self.process_group = group
        self.rank = dist.get_rank(self.process_group)
        self.intra_group: dist.ProcessGroup | None = None
        self.inter_group: dist.ProcessGroup | None = None
        if config.algorithm == "hierarchical":
            local = config.ranks_per_node
            intra_lists = [r[j:j + local] for r in all_group_ranks for j in range(0, len(r), local)]
            inter_lists = [r[i::local] for r in all_group_ranks for i in range(local)]
            self.intra_group, _ = dist.new_subgroups_by_enumeration(intra_lists)
            self.inter_group, _ = dist.new_subgroups_by_enumeration(inter_lists)
            self.local_size = local
            self.num_nodes = self.world_size // local
        self.torch_state: torch_powersgd.PowerSGDState | None = None
        if config.compressor == "powersgd":
            self.torch_state = torch_powersgd.PowerSGDState(
                process_group=self.process_group,
                matrix_approximation_rank=config.powersgd_rank,
                start_powerSGD_iter=config.powersgd_start_iter,
                use_error_feedback=config.error_feedback,
                warm_start=True)
        self._names = {id(p): n for n, p in named_parameters} if named_parameters is not None else None
        self._executor: ThreadPoolExecutor | None = None

    # ---- worker thread for recpar's own hooks with overlap_grad_reduce
    def _worker(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recpar-grad-sync")
        return self._executor

    def close(self) -> None:
        """Stop the worker thread (pending buckets finish first)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def layout(self, view: BucketView) -> BucketLayout:
        """Residual layout of a bucket (parameter names where known)."""
        return bucket_layout(view.params, view.grads, self._names)

    def reset_residuals(self) -> None:
        """Forget all error-feedback state (recpar's and torch PowerSGD's)."""
        self.residuals.clear()
        if self.torch_state is not None:
            self.torch_state.error_dict.clear()
            self.torch_state.p_memory_dict.clear()
            self.torch_state.q_memory_dict.clear()

    # ---- checkpointing: tensors, ints, floats, strings only (torch.load(weights_only=True) safe)
    def state_dict(self) -> dict[str, Any]:
        """Training state of the hook: error-feedback residuals (and PowerSGD's state)."""
        out: dict[str, Any] = {"compressor": self.config.compressor,
                               "residuals": self.residuals.state_dict()}
        ts = self.torch_state
        if ts is not None:
            kind, keys, pos, has_gauss, cached = ts.rng.get_state()
            out["powersgd"] = {
                "iter": int(ts.iter),
                "error_dict": {int(k): v.detach().cpu().clone() for k, v in ts.error_dict.items()},
                "p_memory_dict": {int(k): v.detach().cpu().clone() for k, v in ts.p_memory_dict.items()},
                "q_memory_dict": {int(k): v.detach().cpu().clone() for k, v in ts.q_memory_dict.items()},
                "rng_keys": torch.from_numpy(keys.astype("int64")),
                "rng_pos": int(pos), "rng_has_gauss": int(has_gauss), "rng_cached_gaussian": float(cached),
                "rng_kind": str(kind),
            }
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()` output (same compressor required)."""
        if state.get("compressor") != self.config.compressor:
            raise ValueError(f"grad-sync state: checkpoint compressor {state.get('compressor')!r} != "
                             f"configured {self.config.compressor!r}")
        self.residuals.load_state_dict(state["residuals"])
        if self.torch_state is not None:
            import numpy as np
            ps = state["powersgd"]
            ts = self.torch_state
            ts.iter = int(ps["iter"])
            ts.error_dict = {int(k): v.clone() for k, v in ps["error_dict"].items()}
            ts.p_memory_dict = {int(k): v.clone() for k, v in ps["p_memory_dict"].items()}
            ts.q_memory_dict = {int(k): v.clone() for k, v in ps["q_memory_dict"].items()}
            ts.rng.set_state((ps["rng_kind"], ps["rng_keys"].numpy().astype(np.uint32), ps["rng_pos"],
                              ps["rng_has_gauss"], ps["rng_cached_gaussian"]))


# --------------------------------------------------------------------------- helpers

def _completed(value: torch.Tensor) -> torch.futures.Future:
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(value)
    return fut


def _timed_collective(state: GradSyncState, launch: Callable[[], Any], out: torch.Tensor,
                      payload_bytes: int, wire_bytes: float, scope: str) -> None:
    t0 = time.perf_counter()
    work = launch()
    work.wait()
    device_sync(out.device)  # work.wait() only orders CUDA streams: wait for the transfer
    state.stats.add_comm_interval(t0, time.perf_counter())
    state.stats.add_collective(payload_bytes, wire_bytes, scope)


def _own_hook(state: GradSyncState, bucket: Any,
              reduce_fn: Callable[[GradSyncState, BucketView], torch.Tensor]) -> torch.futures.Future:
    """Run a synchronous reduce function now (no overlap) or on the state's worker thread."""
    view = _bucket_view(bucket)
    state.stats.add_bucket(view.buffer.numel() * view.buffer.element_size())
    if not state.config.overlap_grad_reduce:
        return _completed(reduce_fn(state, view))
    fut: torch.futures.Future = torch.futures.Future()
    device = view.buffer.device

    def run() -> None:
        try:
            if device.type == "cuda":
                with torch.cuda.device(device):
                    fut.set_result(reduce_fn(state, view))
            else:
                fut.set_result(reduce_fn(state, view))
        except BaseException as e:  # surfaced to DDP through the future
            fut.set_exception(e)

    state._worker().submit(run)
    return fut


def _wrap_torch_hook(state: GradSyncState, bucket: Any, call: Callable[[], torch.futures.Future],
                     account: Callable[[], None], comm_from_call_start: bool,
                     serialize: bool = False) -> torch.futures.Future:
    """Call one of torch's hooks, time it, and account its collectives via `account()`.

    serialize=True (PowerSGD): with overlap, run the hook on the state's worker thread and wait
    for it there, one bucket at a time. torch's PowerSGD waits on its second and third
    all-reduce inside future callbacks; on gloo those callbacks run on the process group's own
    worker threads, and with several buckets in flight every such thread can end up waiting
    for work queued behind it (observed: DDP with 5 buckets hangs in
    unpack_uncompressed_tensors_and_allreduce_ps). One bucket at a time cannot deadlock.
    """
    buf = bucket.buffer()
    state.stats.add_bucket(buf.numel() * buf.element_size())

    def launch() -> torch.futures.Future:
        t0 = time.perf_counter()
        fut = call()
        t1 = time.perf_counter()
        account()
        if not comm_from_call_start:
            state.stats.add_compress_time(t1 - t0)
        start = t0 if comm_from_call_start else t1

        def done(f: torch.futures.Future) -> torch.Tensor:
            value = f.value()
            state.stats.add_comm_interval(start, time.perf_counter())
            return value

        return fut.then(done)

    if serialize and state.config.overlap_grad_reduce:
        result: torch.futures.Future = torch.futures.Future()

        def job() -> None:
            try:
                result.set_result(launch().wait())
            except BaseException as e:  # surfaced to DDP through the future
                result.set_exception(e)

        state._worker().submit(job)
        return result
    out = launch()
    if not state.config.overlap_grad_reduce:
        out.wait()
    return out


# --------------------------------------------------------------------------- dense

def ring_hook(state: GradSyncState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Backend all-reduce of the dense bucket, averaged (torch's allreduce_hook)."""
    buf = bucket.buffer()
    nbytes = buf.numel() * buf.element_size()

    def account() -> None:
        state.stats.add_collective(nbytes, bf.ring_all_reduce_wire_bytes(nbytes, state.world_size))

    # comm interval starts at the call: the only local work is the division by world size.
    return _wrap_torch_hook(state, bucket, lambda: default_hooks.allreduce_hook(state.process_group, bucket),
                            account, comm_from_call_start=True)


def _hierarchical_reduce(state: GradSyncState, view: BucketView) -> torch.Tensor:
    local, nodes, world = state.local_size, state.num_nodes, state.world_size
    buf = view.buffer
    n, esize = buf.numel(), buf.element_size()
    padded_n = bf.hierarchical_padded_numel(n, local)
    t0 = time.perf_counter()
    if padded_n != n:  # pad so reduce-scatter gives every local rank an equal piece
        x = torch.zeros(padded_n, dtype=buf.dtype, device=buf.device)
        x[:n] = buf
    else:
        x = buf
    piece = torch.empty(padded_n // local, dtype=buf.dtype, device=buf.device)  # (padded_n / L,)
    gathered = torch.empty(padded_n, dtype=buf.dtype, device=buf.device)
    state.stats.add_compress_time(time.perf_counter() - t0)
    full_bytes, piece_bytes = padded_n * esize, piece.numel() * esize
    # 1. intra-node reduce-scatter: local rank i ends with the node's sum of chunk i
    _timed_collective(state, lambda: dist.reduce_scatter_single(piece, x, group=state.intra_group, async_op=True),
                      piece, full_bytes, bf.reduce_scatter_wire_bytes(full_bytes, local), "intra_node")
    # 2. inter-node all-reduce among ranks holding the same chunk
    _timed_collective(state, lambda: dist.all_reduce(piece, group=state.inter_group, async_op=True),
                      piece, piece_bytes, bf.ring_all_reduce_wire_bytes(piece_bytes, nodes), "inter_node")
    t1 = time.perf_counter()
    piece.div_(world)
    state.stats.add_compress_time(time.perf_counter() - t1)
    # 3. intra-node all-gather of the averaged chunks
    _timed_collective(state, lambda: dist.all_gather_single(gathered, piece, group=state.intra_group, async_op=True),
                      gathered, piece_bytes, bf.all_gather_wire_bytes(piece_bytes, local), "intra_node")
    t2 = time.perf_counter()
    buf.copy_(gathered[:n])
    state.stats.add_compress_time(time.perf_counter() - t2)
    return buf


def hierarchical_hook(state: GradSyncState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Two-level all-reduce: intra-node reduce-scatter, inter-node all-reduce, intra-node all-gather."""
    return _own_hook(state, bucket, _hierarchical_reduce)


# --------------------------------------------------------------------------- sign / top-k

def _compressed_reduce(state: GradSyncState, view: BucketView,
                       encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                       decode: Callable[[torch.Tensor, int, torch.dtype], torch.Tensor]) -> torch.Tensor:
    """Error feedback (Formula 11) around encode -> all-gather -> decode-and-average."""
    buf = view.buffer
    n = buf.numel()
    t0 = time.perf_counter()
    p = buf.detach().to(torch.float32)  # a copy only when the bucket is not fp32
    if state.config.error_feedback:
        layout = state.layout(view)
        residual = state.residuals.get(view.index, layout, p)
        p = p + residual  # p = g + r
    payload, g_hat = encode(p)
    if state.config.error_feedback:
        state.residuals.put(view.index, layout, p - g_hat)  # r <- p - C(p) = r + g - g_hat
    gathered = torch.empty(state.world_size * payload.numel(), dtype=payload.dtype, device=payload.device)
    state.stats.add_compress_time(time.perf_counter() - t0)
    nbytes = payload.numel() * payload.element_size()
    _timed_collective(state, lambda: dist.all_gather_single(gathered, payload, group=state.process_group,
                                                            async_op=True),
                      gathered, nbytes, bf.all_gather_wire_bytes(nbytes, state.world_size), "world")
    t1 = time.perf_counter()
    buf.copy_(decode(gathered.view(state.world_size, -1), n, buf.dtype))
    device_sync(buf.device)
    state.stats.add_compress_time(time.perf_counter() - t1)
    return buf


def sign_hook(state: GradSyncState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """1-bit sign with L1 scale (Formula 10), error feedback, all-gather of packed bits."""
    return _own_hook(state, bucket, lambda s, v: _compressed_reduce(s, v, sign_encode, sign_decode_mean))


def topk_hook(state: GradSyncState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Top-k by |p| (k = ceil(topk_ratio n)), error feedback, all-gather of values + int32 indices."""
    ratio = state.config.topk_ratio
    return _own_hook(state, bucket,
                     lambda s, v: _compressed_reduce(s, v, lambda p: topk_encode(p, ratio), topk_decode_mean))


# --------------------------------------------------------------------------- torch's compressors

def _cast_hook(state: GradSyncState, bucket: Any, torch_hook: Callable, wire_element_size: int) -> torch.futures.Future:
    buf = bucket.buffer()
    nbytes = buf.numel() * wire_element_size

    def account() -> None:
        state.stats.add_collective(nbytes, bf.ring_all_reduce_wire_bytes(nbytes, state.world_size))

    return _wrap_torch_hook(state, bucket, lambda: torch_hook(state.process_group, bucket), account,
                            comm_from_call_start=False)


def fp16_hook(state: GradSyncState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """torch's fp16_compress_hook (cast to fp16, all-reduce, cast back)."""
    return _cast_hook(state, bucket, default_hooks.fp16_compress_hook, bf.FP16_BYTES)


def bf16_hook(state: GradSyncState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """torch's bf16_compress_hook (cast to bf16, all-reduce, cast back)."""
    return _cast_hook(state, bucket, default_hooks.bf16_compress_hook, bf.FP16_BYTES)


def powersgd_hook(state: GradSyncState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """torch's powerSGD_hook; payload read from torch's own counters and P/Q buffers."""
    ts = state.torch_state
    if ts is None:
        raise ValueError("powersgd_hook needs a GradSyncState built with compressor='powersgd'")
    buf = bucket.buffer()
    esize, world, index = buf.element_size(), state.world_size, bucket.index()
    before: dict[str, Any] = {}

    def call() -> torch.futures.Future:
        # Snapshot torch's state right before its hook runs (on the thread that runs it).
        before["dense"] = ts.iter < ts.start_powerSGD_iter
        before["numel_after"] = ts.total_numel_after_compression
        return torch_powersgd.powerSGD_hook(ts, bucket)

    def account() -> None:
        if before["dense"]:  # torch runs a plain all-reduce before start_powerSGD_iter
            nbytes = buf.numel() * esize
            state.stats.add_collective(nbytes, bf.ring_all_reduce_wire_bytes(nbytes, world))
            return
        total = ts.total_numel_after_compression - before["numel_after"]  # P + Q + uncompressed
        p_n = ts.p_memory_dict[index].numel()
        q_n = ts.q_memory_dict[index].numel()
        for elems in (total - p_n - q_n, p_n, q_n):  # torch's three all-reduces, in order
            state.stats.add_collective(elems * esize, bf.ring_all_reduce_wire_bytes(elems * esize, world))

    return _wrap_torch_hook(state, bucket, call, account, comm_from_call_start=False, serialize=True)


# --------------------------------------------------------------------------- selection

HOOKS: dict[str, Hook] = {
    "ring": ring_hook,
    "hierarchical": hierarchical_hook,
    "sign": sign_hook,
    "topk": topk_hook,
    "powersgd": powersgd_hook,
    "fp16": fp16_hook,
    "bf16": bf16_hook,
}
"""Hook by name: compressors by compressor name, dense algorithms by algorithm name."""


def hook_name(config: GradSyncConfig) -> str:
    """Which hook a config selects: the compressor, or the dense algorithm when it is 'none'."""
    return config.algorithm if config.compressor == "none" else config.compressor


def make_grad_sync_hook(config: GradSyncConfig, process_group: dist.ProcessGroup | None = None, *,
                        all_group_ranks: Sequence[Sequence[int]] | None = None,
                        named_parameters: Iterable[tuple[str, torch.Tensor]] | None = None,
                        ) -> tuple[GradSyncState, Hook]:
    """(state, hook) for `ddp.register_comm_hook(state, hook)`. Collective: call on all ranks."""
    state = GradSyncState(config, process_group, all_group_ranks=all_group_ranks,
                          named_parameters=named_parameters)
    return state, HOOKS[hook_name(config)]
