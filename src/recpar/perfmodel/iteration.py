"""Per-iteration cost of a TP × PP × DP plan: compute, communication, pipeline bubble, memory.

One optimiser step is priced on its critical path, in named steps:
1. compute of each pipeline stage per micro-batch: 3 × forward FLOPs / the rank's rate;
2. TP all-reduces of each stage per micro-batch: 2 all-reduces of the [b, L, d] activations
   per layer forward and 2 in backward (the f/g operators of Shoeybi et al. 2019,
   "Megatron-LM", §3), plus the vocab-parallel embedding and cross-entropy;
3. PP send/recv: [b, L, d] activations sent forward and their gradients backward per
   micro-batch per stage boundary;
4. the pipeline bubble: p − 1 chunk times of the critical stage, a bubble ratio of (p−1)/m for
   GPipe and 1F1B, (p−1)/(v·m) interleaved (Narayanan et al. 2021, "Efficient Large-Scale
   Language Model Training on GPU Clusters Using Megatron-LM", §2.2;
   recpar.parallel.pipeline_theory.bubble_ratio_theory);
5. DP gradient sync of the slowest stage (recpar.perfmodel.dp_sync), less what backward hides,
   plus the all-reduce of a tied item table between the first and the last stage;
6. rank-local compression work.
Stage partition: recpar.perfmodel.stages; placement and links: recpar.perfmodel.placement;
memory: recpar.perfmodel.memory.

Shared host (profiles with `shared_host`, i.e. the emulated cluster, whose nodes are network
namespaces of one machine): all W = world-size ranks share the host's C cores, so a rank
computes at the measured rate for max(1, C // W) threads times min(1, C / W) (time-sharing),
or, where the profile has a loaded-step line for W ranks and this model shape, at the rate of
the slowest of W concurrently running training steps at the rank's batch; its rank-local
compression work is stretched by max(1, W / C). Measured, not fitted: see
recpar.perfmodel.calibrate. Profiles without it (the A100 cluster) are priced as before.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from recpar.parallel.pipeline_theory import bubble_ratio_theory
from recpar.perfmodel import collectives as C
from recpar.perfmodel.dp_sync import dp_sync_cost
from recpar.perfmodel.hardware import HardwareProfile
from recpar.perfmodel.memory import memory_per_rank_bytes
from recpar.perfmodel.placement import group_link, group_span, rank_strides
from recpar.perfmodel.shapes import (CostInputError, GradSync, ModelShape, PlanShape, Precision,
                                     Topology)
from recpar.perfmodel.stages import stage_fwd_flops_per_token, stage_layer_counts, stage_params

GiB = 2**30


@dataclass
class IterationCost:
    """Predicted time composition of one optimiser step (all *_ms are per iteration)."""

    iter_ms: float
    """Wall time of one step."""
    compute_ms: float
    """FLOP time on the critical path (bottleneck stage, all micro-batches)."""
    tp_comm_ms: float
    """TP all-reduces on the critical path (not overlapped)."""
    pp_comm_ms: float
    """PP send/recv on the critical path."""
    dp_comm_ms: float
    """DP gradient synchronisation, whole (before overlap)."""
    dp_comm_exposed_ms: float
    """DP synchronisation not hidden behind backward."""
    compress_ms: float
    """Compression / error-feedback passes (memory-bound lower bound)."""
    bubble_ms: float
    """Pipeline fill/drain idle time."""
    comm_ms_per_iter: float
    """Exposed communication: tp + pp + exposed dp."""
    comm_share: float
    """comm_ms_per_iter / iter_ms."""
    bubble_ratio: float
    """(p−1)/(v·m): bubble time relative to the ideal compute time
    (recpar.parallel.pipeline_theory.bubble_ratio_theory; not the bubble's share of the step)."""
    throughput_samples_per_s: float
    """Sequences per second, whole job."""
    dp_bytes_per_rank_per_iter: float
    """DP bytes each rank sends per step (payload, indices and scales)."""
    mem_per_rank_gib: float
    """Peak memory of the fullest rank (rough: see recpar.perfmodel.memory)."""
    mem_share: float
    """mem_per_rank_gib / device memory."""
    detail: dict = field(default_factory=dict)
    """Intermediate quantities (links used, stage FLOPs, buckets ...)."""

    def to_dict(self) -> dict:
        return asdict(self)


def iteration_cost(shape: ModelShape, plan: PlanShape, global_batch_size: int,
                   hw: HardwareProfile, topo: Topology | None = None,
                   sync: GradSync | None = None,
                   precision: Precision | None = None) -> IterationCost:
    """Predict one optimiser step of `plan` on `hw` (see the module docstring)."""
    sync = sync or GradSync()
    precision = precision or Precision()
    topo = _checked_topology(plan, hw, topo)
    micro_batch = _micro_batch_size(shape, plan, global_batch_size)
    world, ranks_per_node = plan.world_size, topo.ranks_per_node
    strides = rank_strides(plan)
    # A shared host (emulated cluster) runs all `world` ranks on its cores: each rank computes
    # at its measured loaded-step rate for b sequences (or, without one, the rate of its thread
    # count times its time share); otherwise at peak × efficiency. On the loaded-step line the
    # fixed part is charged per micro-batch, which overstates a pipeline's once-per-step
    # optimiser share.
    flops_rate = hw.rank_flops_per_s(world, micro_batch, shape.train_flops_per_sequence)
    tokens = micro_batch * shape.seq_len
    act_bytes = precision.activation_bytes

    # steps 1-4: the critical pipeline stage
    stage_fwd = stage_fwd_flops_per_token(shape, plan)
    stage_compute = _stage_compute_s(stage_fwd, tokens, plan.tensor_model_parallel_size,
                                     flops_rate)
    stage_tp, tp_crosses_nodes = _stage_tp_comm_s(shape, plan, hw, tokens, act_bytes,
                                                  ranks_per_node, strides["tp"])
    p2p, pp_crosses_nodes = _p2p_send_s(shape, plan, hw, tokens, act_bytes, ranks_per_node,
                                        strides["pp"])
    path = _critical_path(plan, stage_compute, stage_tp, p2p)

    # steps 5-6: DP gradient sync and compression
    params = stage_params(shape, plan)
    dp_stage, dp_sync = _slowest_dp_sync(params, plan, sync, hw, topo, strides["dp"], precision,
                                         shape)
    tied_embedding = _tied_embedding_all_reduce_s(shape, plan, hw, ranks_per_node,
                                                  pp_crosses_nodes, precision)
    dp_exposed = _exposed_dp_sync_s(dp_sync, sync, stage_compute[dp_stage]) + tied_embedding
    compress = dp_sync["compress_s"] * hw.host_slowdown(world)  # rank-local CPU work time-shares

    iter_s = (path.compute_s + path.tp_comm_s + path.pp_comm_s + path.bubble_s + dp_exposed
              + compress)
    comm = path.tp_comm_s + path.pp_comm_s + dp_exposed
    mem = memory_per_rank_bytes(shape, plan, micro_batch, precision, sync.zero_stage)
    return IterationCost(
        iter_ms=1e3 * iter_s, compute_ms=1e3 * path.compute_s, tp_comm_ms=1e3 * path.tp_comm_s,
        pp_comm_ms=1e3 * path.pp_comm_s, dp_comm_ms=1e3 * (dp_sync["total_s"] + tied_embedding),
        dp_comm_exposed_ms=1e3 * dp_exposed, compress_ms=1e3 * compress,
        bubble_ms=1e3 * path.bubble_s, comm_ms_per_iter=1e3 * comm,
        comm_share=comm / iter_s if iter_s else 0.0,
        bubble_ratio=bubble_ratio_theory(plan.pipeline_model_parallel_size,
                                         plan.num_microbatches, _model_chunks_per_stage(plan)),
        throughput_samples_per_s=global_batch_size / iter_s if iter_s else float("inf"),
        dp_bytes_per_rank_per_iter=dp_sync["bytes_sent"],
        mem_per_rank_gib=mem / GiB, mem_share=mem / GiB / hw.memory_gib.value,
        detail={
            "micro_batch_size": micro_batch, "nodes": topo.nodes, "ranks_per_node": ranks_per_node,
            **_compute_detail(shape, hw, world, flops_rate),
            "train_flops_per_sequence": shape.train_flops_per_sequence,
            "trainable_params": shape.trainable_params,
            "stage_fwd_flops_per_token": stage_fwd, "stage_params": params,
            "critical_stage": path.stage, "dp_stage": dp_stage, "dp_buckets": dp_sync["buckets"],
            "tp_crosses_nodes": tp_crosses_nodes, "pp_crosses_nodes": pp_crosses_nodes,
            "dp_crosses_nodes": dp_sync["crosses_nodes"],
            "tied_embedding_allreduce_ms": 1e3 * tied_embedding,
        })


# --- inputs ----------------------------------------------------------------------------------

def _checked_topology(plan: PlanShape, hw: HardwareProfile, topo: Topology | None) -> Topology:
    """`topo`, or the fewest full nodes of the profile, checked against the plan's world size
    and the profile's devices per node."""
    world = plan.world_size
    if topo is None:
        ranks_per_node = min(world, hw.gpus_per_node)
        topo = Topology(nodes=math.ceil(world / ranks_per_node), ranks_per_node=ranks_per_node)
    if topo.nodes * topo.ranks_per_node != world:
        raise CostInputError(f"topology {topo.nodes} nodes × {topo.ranks_per_node} ranks "
                             f"= {topo.nodes * topo.ranks_per_node} does not equal "
                             f"dp×tp×pp = {world}")
    if topo.ranks_per_node > hw.gpus_per_node:
        raise CostInputError(f"topology ranks_per_node {topo.ranks_per_node} exceeds the "
                             f"profile's devices_per_node {hw.gpus_per_node} ({hw.name})")
    return topo


def _micro_batch_size(shape: ModelShape, plan: PlanShape, global_batch_size: int) -> int:
    """Sequences per micro-batch per replica; the batch must split evenly and the heads over TP."""
    dp, tp, m = (plan.data_parallel_size, plan.tensor_model_parallel_size,
                 plan.num_microbatches)
    if global_batch_size % (dp * m):
        raise CostInputError(f"global_batch_size {global_batch_size} is not divisible by "
                             f"dp × num_microbatches = {dp} × {m}")
    if shape.n_heads % tp:
        raise CostInputError(f"model.n_heads {shape.n_heads} is not divisible by tp {tp}")
    return global_batch_size // (dp * m)


def _model_chunks_per_stage(plan: PlanShape) -> int:
    """v: model chunks per stage (interleaved 1F1B), 1 for every other schedule."""
    if plan.pipeline_schedule == "interleaved-1f1b":
        return plan.virtual_pipeline_model_parallel_size
    return 1


# --- steps 1-4: one micro-batch per stage, and the critical path -----------------------------

def _stage_compute_s(stage_fwd_flops: list[float], tokens: int, tp: int,
                     flops_rate: float) -> list[float]:
    """Forward + backward (3 × forward) seconds of one micro-batch on each stage's TP shard."""
    return [3.0 * fwd * tokens / tp / flops_rate for fwd in stage_fwd_flops]


def _stage_tp_comm_s(shape: ModelShape, plan: PlanShape, hw: HardwareProfile, tokens: int,
                     act_bytes: int, ranks_per_node: int, tp_stride: int
                     ) -> tuple[list[float], bool]:
    """TP all-reduce seconds of one micro-batch on each stage, and whether TP crosses nodes."""
    tp, pp = plan.tensor_model_parallel_size, plan.pipeline_model_parallel_size
    tp_groups_per_node = max(1, ranks_per_node // min(tp, ranks_per_node))
    link, crosses_nodes = group_link(hw, tp, tp_stride, ranks_per_node, tp_groups_per_node)
    all_reduce = hw.collectives.all_reduce
    activations = all_reduce(tokens * shape.d_model * act_bytes, tp, link)  # [b, L, h]
    cross_entropy = all_reduce(tokens * 4, tp, link)  # [b, L] fp32 max/sum-exp/target
    per_stage = []
    for stage, layers in enumerate(stage_layer_counts(shape, plan)):
        t = 4 * layers * activations  # Megatron: 2 all-reduces forward + 2 backward per layer
        if tp > 1:
            if stage == 0:
                t += activations  # vocab-parallel embedding output, forward
            if stage == pp - 1:
                t += activations + 3 * cross_entropy  # head input grad (backward) + vocab CE
        per_stage.append(t)
    return per_stage, crosses_nodes


def _p2p_send_s(shape: ModelShape, plan: PlanShape, hw: HardwareProfile, tokens: int,
                act_bytes: int, ranks_per_node: int, pp_stride: int) -> tuple[float, bool]:
    """Seconds of one [b, L, h] send between neighbouring stages, and whether the pipeline
    crosses nodes (then all of a node's TP × DP ranks send at once through its NICs)."""
    pp = plan.pipeline_model_parallel_size
    if pp == 1:
        return 0.0, False
    crosses_nodes = group_span(pp, pp_stride, ranks_per_node)[0] > 1
    if crosses_nodes:
        streams = min(ranks_per_node, plan.tensor_model_parallel_size * plan.data_parallel_size)
        link = hw.inter_link(streams)
    else:
        link = hw.intra_link()
    return C.point_to_point(tokens * shape.d_model * act_bytes, link), crosses_nodes


@dataclass(frozen=True)
class _CriticalPath:
    """Seconds of one step on the slowest pipeline stage, before DP synchronisation."""

    stage: int
    """The critical stage: the largest compute + TP time per micro-batch."""
    compute_s: float
    """Its compute, all micro-batches."""
    tp_comm_s: float
    """Its TP all-reduces, all micro-batches."""
    pp_comm_s: float
    """Send/recv at every step of the schedule."""
    bubble_s: float
    """Pipeline fill and drain."""


def _critical_path(plan: PlanShape, stage_compute: list[float], stage_tp: list[float],
                   p2p_s: float) -> _CriticalPath:
    pp, m = plan.pipeline_model_parallel_size, plan.num_microbatches
    chunks = _model_chunks_per_stage(plan)
    critical_stage = max(range(pp), key=lambda s: stage_compute[s] + stage_tp[s])
    chunk_s = (stage_compute[critical_stage] + stage_tp[critical_stage]) / chunks
    schedule_steps = m * chunks + pp - 1
    return _CriticalPath(
        stage=critical_stage,
        compute_s=m * stage_compute[critical_stage],
        tp_comm_s=m * stage_tp[critical_stage],
        # activations forward + gradients backward at every step of the schedule
        pp_comm_s=schedule_steps * 2 * p2p_s if pp > 1 else 0.0,
        # p − 1 chunk times idle: bubble_ratio_theory × the ideal compute time
        bubble_s=(pp - 1) * chunk_s)


# --- steps 5-6: DP gradient synchronisation ---------------------------------------------------

def _slowest_dp_sync(params: list[int], plan: PlanShape, sync: GradSync, hw: HardwareProfile,
                     topo: Topology, dp_stride: int, precision: Precision, shape: ModelShape
                     ) -> tuple[int, dict[str, Any]]:
    """DP sync of each stage's gradients (the stages run theirs concurrently): the slowest
    stage and its cost (recpar.perfmodel.dp_sync.dp_sync_cost)."""
    dp, tp = plan.data_parallel_size, plan.tensor_model_parallel_size
    _, dp_ranks_per_node = group_span(dp, dp_stride, topo.ranks_per_node)
    dp_groups_per_node = max(1, topo.ranks_per_node // dp_ranks_per_node)
    shapes = None
    if sync.compression == "powersgd" and dp > 1:
        if tp > 1 or plan.pipeline_model_parallel_size > 1:
            raise CostInputError("the PowerSGD cost is modelled for data parallelism alone "
                                 f"(tp = pp = 1), got tp={tp} "
                                 f"pp={plan.pipeline_model_parallel_size}")
        shapes = shape.param_shapes()
    per_stage = [dp_sync_cost(p / tp * precision.grad_bytes, dp, sync, hw, topo, dp_stride,
                              dp_groups_per_node, precision, shapes) for p in params]
    dp_stage = max(range(plan.pipeline_model_parallel_size),
                   key=lambda s: per_stage[s]["total_s"])
    return dp_stage, per_stage[dp_stage]


def _tied_embedding_all_reduce_s(shape: ModelShape, plan: PlanShape, hw: HardwareProfile,
                                 ranks_per_node: int, pp_crosses_nodes: bool,
                                 precision: Precision) -> float:
    """With pp > 1 and a tied head the first and last stage each hold the item table: the two
    copies' gradients are all-reduced between them every step."""
    tp, dp = plan.tensor_model_parallel_size, plan.data_parallel_size
    if plan.pipeline_model_parallel_size == 1 or not shape.tied_output:
        return 0.0
    link = (hw.inter_link(min(ranks_per_node, tp * dp), loaded=True) if pp_crosses_nodes
            else hw.intra_link(loaded=True))
    return hw.collectives.all_reduce(shape.vocab_size * shape.d_model / tp
                                     * precision.grad_bytes, 2, link)


def _exposed_dp_sync_s(dp_sync: dict[str, Any], sync: GradSync,
                       dp_stage_compute_s: float) -> float:
    """The part of the DP sync that backward does not hide when buckets overlap with it."""
    if sync.overlap and dp_sync["buckets"] > 0:
        # only the last micro-batch's backward on that stage can hide the buckets
        backward = dp_stage_compute_s * 2.0 / 3.0
        return max(dp_sync["last_bucket_s"], dp_sync["total_s"] - backward)
    return dp_sync["total_s"]


def _compute_detail(shape: ModelShape, hw: HardwareProfile, world: int,
                    flops_rate: float) -> dict[str, Any]:
    """The rate a rank computes at, and where it comes from (shared host or device)."""
    return {
        "sustained_flops_per_s": flops_rate,
        "shared_host_threads_per_rank": (hw.shared_host.threads_per_rank(world)
                                         if hw.shared_host else None),
        "shared_host_cpu_share": hw.shared_host.cpu_share(world) if hw.shared_host else None,
        "compute_basis": hw.compute_basis(world, shape.train_flops_per_sequence),
    }
