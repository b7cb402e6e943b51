"""Per-iteration cost of a TP × PP × DP plan: compute, communication, pipeline bubble, memory.

Sources of the formulas:
- training FLOPs per token = 6 × (matmul parameters) + 12 · n_layers · seq_len · d_model
  (attention scores and weighted sum, forward 4·L·d per token per layer, ×3 for training):
  Kaplan et al. 2020 "Scaling Laws for Neural Language Models" §2.1; Narayanan et al. 2021.
- tensor parallelism: 2 all-reduces of the [b, L, d] activations per layer forward and 2 in
  backward (the f/g operators of Shoeybi et al. 2019, "Megatron-LM", §3).
- pipeline parallelism: [b, L, d] activations sent forward and their gradients backward per
  micro-batch per stage boundary; bubble (p−1)/m for GPipe and 1F1B, (p−1)/(v·m) interleaved
  (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using
  Megatron-LM", §2.2).
- model-state memory with ZeRO stages: Rajbhandari et al. 2020, "ZeRO", §3 (mixed-precision
  Adam: 2 + 2 + 12 bytes per parameter); activation memory per layer: Korthikanti et al. 2022,
  "Reducing Activation Recomputation in Large Transformer Models", §4 (no recomputation, no
  sequence parallelism). Memory is a rough estimate: allocator overhead, workspace and
  fragmentation are not modelled.

Shared host (profiles with `shared_host`, i.e. the emulated cluster, whose nodes are network
namespaces of one machine): all W = world-size ranks share the host's C cores, so a rank
computes at the measured rate for max(1, C // W) threads times min(1, C / W) (time-sharing),
or, where the profile has a loaded-step line for W ranks and this model shape, at the rate of
the slowest of W concurrently running training steps at the rank's batch; its rank-local
compression work is stretched by max(1, W / C). Measured, not fitted: see
recpar.perfmodel.calibrate. Profiles without it (the A100 cluster) are priced as before.

Rank placement follows megatron-core's `order` (default "tp-cp-ep-dp-pp": tp fastest-varying);
"tp-pp-dp" keeps each model replica inside a node. Collectives use the slowest link a group
crosses; concurrent cross-node streams share the node's NICs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from typing import TYPE_CHECKING

from recpar.perfmodel import collectives as C
from recpar.perfmodel.hardware import HardwareProfile

if TYPE_CHECKING:  # the cost model itself needs neither torch nor the model package
    from recpar.model.config import ModelConfig
    from recpar.parallel.plan import ParallelPlan

MiB = 2**20
GiB = 2**30


class CostInputError(ValueError):
    """An input the cost model cannot price; the message names the key and the value."""


def _pick(m: Mapping[str, Any], names: tuple[str, ...], where: str, default: Any = ...) -> Any:
    for n in names:
        if n in m and m[n] is not None:
            return m[n]
    if default is ...:
        raise CostInputError(f"{where}: missing {names[0]!r} (also accepted: "
                             f"{', '.join(names[1:]) or 'none'})")
    return default


def _posint(v: Any, key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 1:
        raise CostInputError(f"{key} must be a positive integer, got {v!r}")
    return int(v)


# --- inputs ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    """Shape of the recommender: GPT-style decoder over item ids + full-softmax item head."""

    d_model: int
    """Hidden size h."""
    n_layers: int
    """Transformer blocks."""
    n_heads: int
    """Attention heads a."""
    d_ff: int
    """MLP inner size (4·h in the standard block)."""
    seq_len: int
    """Tokens (items) per training sequence L."""
    vocab_size: int
    """Rows of the item table V (items + padding id), also the softmax width."""
    text_dim: int = 0
    """Width of the frozen item-text table [V, text_dim] fused via Linear(text_dim, h); 0: none."""
    tied_output: bool = True
    """Output head reuses the item embedding (no extra V·h parameters)."""

    ALIASES = {
        "d_model": ("d_model", "hidden_size"),
        "n_layers": ("n_layers", "num_layers"),
        "n_heads": ("n_heads", "num_attention_heads"),
        "d_ff": ("d_ff", "ffn_hidden_size"),
        "seq_len": ("seq_len", "max_seq_len", "seq_length"),
        "vocab_size": ("vocab_size", "n_items_with_pad", "padded_vocab_size"),
        "text_dim": ("text_dim",),
        "tied_output": ("tied_output", "tie_output", "share_embeddings_and_output_weights"),
    }

    @classmethod
    def from_config(cls, cfg: "ModelConfig", n_items: int, tied_output: bool = True
                    ) -> "ModelShape":
        """The shape of `recpar.model.Recommender(cfg, n_items)`: the model's own config plus
        the two facts it takes from the data (vocabulary n_items + 1, text width)."""
        return cls.from_mapping({"d_model": cfg.d_model, "n_layers": cfg.n_layers,
                                 "n_heads": cfg.n_heads, "d_ff": cfg.d_ff,
                                 "seq_len": cfg.max_seq_len, "vocab_size": n_items + 1,
                                 "text_dim": cfg.text_dim, "tied_output": tied_output})

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any], where: str = "model") -> "ModelShape":
        """Build from a dict (recpar ModelConfig names or megatron-core names)."""
        if not isinstance(m, Mapping):
            raise CostInputError(f"{where}: expected a mapping, got {type(m).__name__}")
        if m.get("d_ff") is None and m.get("ffn_hidden_size") is None:
            h = _pick(m, cls.ALIASES["d_model"], where, None)
            if h is not None:
                m = {**m, "d_ff": 4 * h}  # the standard block's MLP width
        v: dict[str, Any] = {}
        for f in ("d_model", "n_layers", "n_heads", "d_ff", "seq_len", "vocab_size"):
            v[f] = _posint(_pick(m, cls.ALIASES[f], where), f"{where}.{f}")
        td = _pick(m, cls.ALIASES["text_dim"], where, 0) or 0
        if isinstance(td, bool) or not isinstance(td, int) or td < 0:
            raise CostInputError(f"{where}.text_dim must be an integer >= 0, got {td!r}")
        v["text_dim"] = td
        v["tied_output"] = bool(_pick(m, cls.ALIASES["tied_output"], where, True))
        shape = cls(**v)
        if shape.d_model % shape.n_heads:
            raise CostInputError(f"{where}: d_model {shape.d_model} is not divisible by "
                                 f"n_heads {shape.n_heads}")
        return shape

    # parameters ------------------------------------------------------------------------------
    @property
    def layer_params(self) -> int:
        """One block: QKV + out projection (4h² + 4h), MLP (2·h·d_ff + d_ff + h), 2 LayerNorms."""
        h, f = self.d_model, self.d_ff
        return 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h

    @property
    def input_params(self) -> int:
        """Item-id table V·h + positions L·h + text projection (text_dim·h + h)."""
        h = self.d_model
        text = self.text_dim * h + h if self.text_dim else 0
        return self.vocab_size * h + self.seq_len * h + text

    @property
    def head_params(self) -> int:
        """Final LayerNorm (2h) + an untied output matrix V·h."""
        return 2 * self.d_model + (0 if self.tied_output else self.vocab_size * self.d_model)

    @property
    def trainable_params(self) -> int:
        return self.input_params + self.n_layers * self.layer_params + self.head_params

    @property
    def frozen_params(self) -> int:
        """The frozen item-text table [V, text_dim]."""
        return self.vocab_size * self.text_dim

    # forward FLOPs per token (multiply-add = 2 FLOPs) -----------------------------------------
    @property
    def layer_fwd_flops_per_token(self) -> float:
        """2·(4h² + 2·h·d_ff) matmuls + 4·L·h attention (QKᵀ and A·V over the full L)."""
        h = self.d_model
        return 2 * (4 * h * h + 2 * h * self.d_ff) + 4 * self.seq_len * h

    @property
    def input_fwd_flops_per_token(self) -> float:
        """Text projection of each looked-up item: 2·text_dim·h."""
        return 2 * self.text_dim * self.d_model

    @property
    def head_fwd_flops_per_token(self) -> float:
        """Full-softmax logits over the item vocabulary: 2·V·h."""
        return 2 * self.vocab_size * self.d_model

    @property
    def train_flops_per_sequence(self) -> float:
        """Forward + backward (= 3 × forward) FLOPs for one sequence of seq_len tokens."""
        per_tok = (self.n_layers * self.layer_fwd_flops_per_token
                   + self.input_fwd_flops_per_token + self.head_fwd_flops_per_token)
        return 3.0 * per_tok * self.seq_len


@dataclass(frozen=True)
class PlanShape:
    """Parallel degrees; knob names follow megatron-core (short recpar aliases accepted)."""

    data_parallel_size: int = 1
    """DP degree."""
    tensor_model_parallel_size: int = 1
    """TP degree."""
    pipeline_model_parallel_size: int = 1
    """PP degree (stages)."""
    num_microbatches: int = 1
    """Micro-batches per step per replica (gradient accumulation when pp = 1)."""
    virtual_pipeline_model_parallel_size: int = 1
    """Model chunks per stage for the interleaved 1F1B schedule (1 = plain 1F1B/GPipe)."""
    pipeline_schedule: str = "1f1b"
    """1f1b | gpipe | interleaved-1f1b (activation memory differs; bubble formula above)."""
    partition_method: str = "uniform"
    """uniform: equal layer counts per stage; balanced: stages cut to equal FLOPs."""
    order: str = "tp-dp-pp"
    """Rank placement, fastest-varying first (megatron-core `order`, cp/ep omitted)."""

    ALIASES = {
        "data_parallel_size": ("data_parallel_size", "dp"),
        "tensor_model_parallel_size": ("tensor_model_parallel_size", "tp"),
        "pipeline_model_parallel_size": ("pipeline_model_parallel_size", "pp"),
        "num_microbatches": ("num_microbatches", "micro_batches", "m"),
        "virtual_pipeline_model_parallel_size": ("virtual_pipeline_model_parallel_size",
                                                 "virtual_pp"),
        "pipeline_schedule": ("pipeline_schedule",),
        "partition_method": ("partition_method",),
        "order": ("order",),
    }

    @classmethod
    def from_plan(cls, plan: "ParallelPlan") -> "PlanShape":
        """The cost model's view of a validated `recpar.parallel.plan.ParallelPlan` (degrees,
        micro-batches, schedule and partition carry over; the rank order is megatron-core's,
        as recpar.parallel.process_groups builds it)."""
        return cls(data_parallel_size=plan.dp, tensor_model_parallel_size=plan.tp,
                   pipeline_model_parallel_size=plan.pp, num_microbatches=plan.num_microbatches,
                   pipeline_schedule=plan.pipeline_schedule,
                   partition_method=plan.partition_method).validate("plan")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any], where: str = "plan") -> "PlanShape":
        if not isinstance(m, Mapping):
            raise CostInputError(f"{where}: expected a mapping, got {type(m).__name__}")
        v: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "ALIASES":
                continue
            val = _pick(m, cls.ALIASES[f.name], where, None)
            if val is not None:
                v[f.name] = val
        return cls(**v).validate(where)

    def validate(self, where: str = "plan") -> "PlanShape":
        for f in ("data_parallel_size", "tensor_model_parallel_size",
                  "pipeline_model_parallel_size", "num_microbatches",
                  "virtual_pipeline_model_parallel_size"):
            _posint(getattr(self, f), f"{where}.{f}")
        if self.pipeline_schedule not in ("1f1b", "gpipe", "interleaved-1f1b"):
            raise CostInputError(f"{where}.pipeline_schedule must be 1f1b, gpipe or "
                                 f"interleaved-1f1b, got {self.pipeline_schedule!r}")
        if self.partition_method not in ("uniform", "balanced"):
            raise CostInputError(f"{where}.partition_method must be uniform or balanced, "
                                 f"got {self.partition_method!r}")
        if self.order not in ("tp-dp-pp", "tp-pp-dp"):
            raise CostInputError(f"{where}.order must be tp-dp-pp or tp-pp-dp, got {self.order!r}")
        return self

    @property
    def world_size(self) -> int:
        return (self.data_parallel_size * self.tensor_model_parallel_size
                * self.pipeline_model_parallel_size)


@dataclass(frozen=True)
class Precision:
    """Bytes per element of each kind of tensor."""

    param_bytes: int = 4
    """Stored model weights (4: fp32 weights, as with torch autocast)."""
    grad_bytes: int = 4
    """Gradients all-reduced by DP (4: fp32 grads of fp32 weights)."""
    activation_bytes: int = 2
    """Activations exchanged by TP/PP and kept for backward (2: bf16 autocast; 4 on CPU)."""
    optimizer_bytes_per_param: int = 8
    """Optimizer state per parameter (Adam m and v in fp32 = 8)."""


@dataclass(frozen=True)
class GradSync:
    """How DP gradients are synchronised (mirrors recpar.comm's options)."""

    algorithm: str = "ring"
    """ring | hierarchical | tree | recursive_doubling | rabenseifner."""
    compression: str = "none"
    """none | sign (1-bit + L1 scale) | topk (k values + indices, error feedback)."""
    topk_ratio: float = 0.01
    """Fraction of elements top-k keeps per bucket."""
    index_bytes: int = 4
    """Bytes per top-k index on the wire: recpar's codec sends int32 indices
    (recpar.comm.codecs; torch.topk's int64 indices are narrowed before sending)."""
    bucket_size_mb: float = 25.0
    """DDP bucket size in MiB (torch DDP bucket_cap_mb default 25)."""
    overlap: bool = True
    """Overlap bucket all-reduces with backward (exposed = max(last bucket, comm − backward))."""
    zero_stage: int = 0
    """ZeRO stage 0-3 (memory; stage 3 also all-gathers parameters in forward and backward)."""

    ALGORITHMS = ("ring", "hierarchical", "tree", "recursive_doubling", "rabenseifner")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | None, where: str = "grad_sync") -> "GradSync":
        m = dict(m or {})
        aliases = {"algorithm": ("algorithm", "allreduce", "all_reduce"),
                   "compression": ("compression", "compressor"),
                   "topk_ratio": ("topk_ratio", "ratio", "density"),
                   "index_bytes": ("index_bytes",),
                   "bucket_size_mb": ("bucket_size_mb", "bucket_cap_mb"),
                   "overlap": ("overlap", "overlap_grad_reduce"),
                   "zero_stage": ("zero_stage",)}
        v = {k: _pick(m, names, where, None) for k, names in aliases.items()}
        v = {k: x for k, x in v.items() if x is not None}
        if v.get("compression") in (None, False, "", "null"):
            v.pop("compression", None)
        return cls(**v).validate(where)

    def validate(self, where: str = "grad_sync") -> "GradSync":
        if self.algorithm not in self.ALGORITHMS:
            raise CostInputError(f"{where}.algorithm must be one of {', '.join(self.ALGORITHMS)}"
                                 f", got {self.algorithm!r}")
        if self.compression not in ("none", "sign", "topk"):
            raise CostInputError(f"{where}.compression must be none, sign or topk, "
                                 f"got {self.compression!r}")
        if not (0 < self.topk_ratio <= 1):
            raise CostInputError(f"{where}.topk_ratio must be in (0, 1], got {self.topk_ratio!r}")
        if not self.bucket_size_mb > 0:
            raise CostInputError(f"{where}.bucket_size_mb must be > 0, got {self.bucket_size_mb!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise CostInputError(f"{where}.zero_stage must be 0-3, got {self.zero_stage!r}")
        return self


@dataclass(frozen=True)
class Topology:
    """Nodes and ranks per node the plan runs on."""

    nodes: int = 1
    """Number of nodes."""
    ranks_per_node: int = 1
    """Ranks (devices) used per node."""


# --- outputs ---------------------------------------------------------------------------------

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
    bubble_fraction: float
    """(p−1)/(v·m): bubble relative to the ideal pipeline time."""
    throughput_samples_per_s: float
    """Sequences per second, whole job."""
    dp_bytes_per_rank_per_iter: float
    """DP bytes each rank sends per step (payload, indices and scales)."""
    mem_per_rank_gib: float
    """Peak memory of the fullest rank (rough: see module docstring)."""
    mem_share: float
    """mem_per_rank_gib / device memory."""
    detail: dict = field(default_factory=dict)
    """Intermediate quantities (links used, stage FLOPs, buckets ...)."""

    def to_dict(self) -> dict:
        return asdict(self)


# --- placement -------------------------------------------------------------------------------

def _strides(plan: PlanShape) -> dict[str, int]:
    tp, dp = plan.tensor_model_parallel_size, plan.data_parallel_size
    pp = plan.pipeline_model_parallel_size
    if plan.order == "tp-dp-pp":
        return {"tp": 1, "dp": tp, "pp": tp * dp}
    return {"tp": 1, "pp": tp, "dp": tp * pp}


def group_span(size: int, stride: int, ranks_per_node: int) -> tuple[int, int]:
    """(nodes spanned, members per node) of a group of `size` ranks `stride` apart.

    Ranks fill nodes in order (rank // ranks_per_node is the node).
    """
    if size == 1:
        return 1, 1
    extent = size * stride
    if extent <= ranks_per_node:
        return 1, size
    if stride >= ranks_per_node:
        return size, 1
    nodes = math.ceil(extent / ranks_per_node)
    return nodes, max(1, size // nodes)


def _group_link(hw: HardwareProfile, size: int, stride: int, rpn: int,
                streams_per_node: int) -> tuple[C.LinkCost, bool]:
    """Slowest link one stream of the group sees, and whether it crosses nodes."""
    nodes, _ = group_span(size, stride, rpn)
    intra = hw.intra_link()
    if nodes == 1:
        return intra, False
    inter = hw.inter_link(streams_per_node)
    return C.LinkCost(max(intra.alpha_s, inter.alpha_s),
                      max(intra.beta_s_per_byte, inter.beta_s_per_byte),
                      intra.gamma_s_per_byte), True


# --- the model -------------------------------------------------------------------------------

def _stage_layers(n_layers: int, pp: int) -> list[int]:
    """Uniform partition: the first n_layers % pp stages get one extra layer."""
    return [n_layers // pp + (1 if s < n_layers % pp else 0) for s in range(pp)]


def stage_fwd_flops_per_token(shape: ModelShape, plan: PlanShape) -> list[float]:
    """Forward FLOPs per token of each pipeline stage (before the TP split)."""
    pp = plan.pipeline_model_parallel_size
    if pp > shape.n_layers:
        raise CostInputError(f"plan.pipeline_model_parallel_size {pp} exceeds "
                             f"model.n_layers {shape.n_layers}")
    layer = shape.layer_fwd_flops_per_token
    head, inp = shape.head_fwd_flops_per_token, shape.input_fwd_flops_per_token
    if plan.partition_method == "balanced" and pp > 1:
        # Layers are cut so stages carry equal FLOPs, except that the item head cannot be split
        # across stages: the last stage costs at least the head.
        total = shape.n_layers * layer + head + inp
        return [max(total / pp, head)] * pp
    out = [n * layer for n in _stage_layers(shape.n_layers, pp)]
    out[0] += inp
    out[-1] += head
    return out


def stage_params(shape: ModelShape, plan: PlanShape) -> list[int]:
    """Trainable parameters of each stage (before the TP split).

    With pp > 1 and a tied head the last stage keeps its own copy of the item table (as
    megatron-core does) and the two copies' gradients are all-reduced between the stages.
    """
    pp = plan.pipeline_model_parallel_size
    layers = _stage_layers(shape.n_layers, pp)
    out = [n * shape.layer_params for n in layers]
    out[0] += shape.input_params
    out[-1] += shape.head_params
    if pp > 1 and shape.tied_output:
        out[-1] += shape.vocab_size * shape.d_model
    return out


def _bucketed(total: float, bucket: float, cost) -> tuple[float, float, int]:
    """(sum of bucket costs, cost of the last bucket, bucket count) for `total` bytes."""
    if total <= 0:
        return 0.0, 0.0, 0
    full = int(total // bucket)
    rem = total - full * bucket
    s = full * cost(bucket) + (cost(rem) if rem > 0 else 0.0)
    last = cost(rem) if rem > 0 else cost(bucket)
    return s, last, full + (1 if rem > 0 else 0)


def dp_sync_cost(grad_bytes: float, dp: int, sync: GradSync, hw: HardwareProfile,
                 topo: Topology, stride: int, groups_per_node: int,
                 precision: Precision) -> dict[str, float]:
    """Time and bytes of one step's DP gradient synchronisation for one rank's gradients.

    `stride` is the rank distance between DP peers, `groups_per_node` how many DP groups have
    ranks on one node (their cross-node streams share the NICs).
    """
    if dp == 1 or grad_bytes <= 0:
        return {"total_s": 0.0, "last_bucket_s": 0.0, "buckets": 0, "bytes_sent": 0.0,
                "compress_s": 0.0, "crosses_nodes": False}
    rpn = topo.ranks_per_node
    nodes, local = group_span(dp, stride, rpn)
    bucket = sync.bucket_size_mb * MiB
    gamma = hw.gamma_s_per_byte
    if sync.compression != "none":
        link, crosses = _group_link(hw, dp, stride, rpn, groups_per_node)

        def payload(nbytes: float) -> float:
            elems = math.ceil(nbytes / precision.grad_bytes)
            if sync.compression == "sign":
                return C.sign_payload_bytes(elems)
            k = math.ceil(sync.topk_ratio * elems)
            return C.topk_payload_bytes(k, precision.grad_bytes, sync.index_bytes)

        total, last, nb = _bucketed(grad_bytes, bucket, lambda n: C.compressed_all_gather(
            payload(n), dp, link, decoded_bytes=n))
        full = int(grad_bytes // bucket)
        rem = grad_bytes - full * bucket
        sent = (dp - 1) * (full * payload(bucket) + (payload(rem) if rem > 0 else 0))
        rate = (hw.topk_compress_elements_per_s if sync.compression == "topk"
                else hw.sign_compress_elements_per_s if sync.compression == "sign" else None)
        if rate is not None:
            # measured rate of recpar's own encode + error feedback + decode (calibrate)
            compress_s = grad_bytes / precision.grad_bytes / rate.value
        else:
            # one memory pass to encode (sign) / two for top-k (selection + residual r += g − ĝ)
            passes = 1 if sync.compression == "sign" else 2
            compress_s = passes * grad_bytes * gamma
        return {"total_s": total, "last_bucket_s": last, "buckets": nb, "bytes_sent": sent,
                "compress_s": compress_s, "crosses_nodes": crosses}
    if sync.algorithm == "hierarchical" and nodes > 1:
        intra = hw.intra_link()
        # every DP rank of a node runs its own inter-node ring at once
        inter = hw.inter_link(groups_per_node * local)

        def cost(n: float) -> float:
            return C.hierarchical_all_reduce(n, nodes, local, intra, inter)

        sent = 2 * (local - 1) / local * grad_bytes + 2 * (nodes - 1) / nodes * grad_bytes / local
        crosses = True
    else:
        algo = "ring" if sync.algorithm == "hierarchical" else sync.algorithm
        link, crosses = _group_link(hw, dp, stride, rpn, groups_per_node)
        fn = C.ALL_REDUCE_ALGORITHMS[algo]

        def cost(n: float) -> float:
            return fn(n, dp, link)

        k = math.ceil(math.log2(dp))
        sent = (k * grad_bytes if algo == "recursive_doubling"
                else 2 * (dp - 1) / dp * grad_bytes)
    total, last, nb = _bucketed(grad_bytes, bucket, cost)
    if sync.zero_stage == 3:
        # parameters are all-gathered once in forward and once in backward (ZeRO §5)
        link, _ = _group_link(hw, dp, stride, rpn, groups_per_node)
        extra = 2 * C.ring_all_gather(grad_bytes / precision.grad_bytes * precision.param_bytes,
                                      dp, link)
        total += extra
        sent += 2 * (dp - 1) / dp * grad_bytes / precision.grad_bytes * precision.param_bytes
    return {"total_s": total, "last_bucket_s": last, "buckets": nb, "bytes_sent": sent,
            "compress_s": 0.0, "crosses_nodes": crosses}


def activation_bytes_per_layer(shape: ModelShape, b: int, tp: int, act_bytes: int) -> float:
    """Korthikanti et al. 2022 eq. (2)/(3): s·b·h·(10 + 24/t + 5·a·s/(h·t)) at 2-byte
    activations (derived for d_ff = 4h), scaled by act_bytes / 2."""
    s, h, a = shape.seq_len, shape.d_model, shape.n_heads
    return s * b * h * (10 + 24 / tp + 5 * a * s / (h * tp)) * act_bytes / 2


def memory_per_rank_bytes(shape: ModelShape, plan: PlanShape, b: int, precision: Precision,
                          zero_stage: int) -> float:
    """Peak bytes of the fullest rank: model states (ZeRO-sharded) + activations in flight."""
    tp, pp = plan.tensor_model_parallel_size, plan.pipeline_model_parallel_size
    dp, m = plan.data_parallel_size, plan.num_microbatches
    master = 4 if precision.param_bytes < 4 else 0  # fp32 master copy of 16-bit weights
    opt = precision.optimizer_bytes_per_param + master
    p_b = precision.param_bytes / (dp if zero_stage >= 3 else 1)
    g_b = precision.grad_bytes / (dp if zero_stage >= 2 else 1)
    o_b = opt / (dp if zero_stage >= 1 else 1)
    layers = _stage_layers(shape.n_layers, pp)
    best = 0.0
    for s, params in enumerate(stage_params(shape, plan)):
        states = params / tp * (p_b + g_b + o_b)
        if s == 0:
            states += shape.frozen_params * precision.param_bytes
        if pp == 1:
            in_flight = 1
        elif plan.pipeline_schedule == "gpipe":
            in_flight = m
        else:
            in_flight = min(pp - s, m)
        act = in_flight * layers[s] * activation_bytes_per_layer(
            shape, b, tp, precision.activation_bytes)
        if s == pp - 1:
            # fp32 logits [b, L, V/tp] and their gradient for the micro-batch being finished
            act += 2 * 4 * b * shape.seq_len * shape.vocab_size / tp
        best = max(best, states + act)
    return best


def iteration_cost(shape: ModelShape, plan: PlanShape, global_batch_size: int,
                   hw: HardwareProfile, topo: Topology | None = None,
                   sync: GradSync | None = None,
                   precision: Precision | None = None) -> IterationCost:
    """Predict one optimiser step of `plan` on `hw` (see the module docstring)."""
    sync = sync or GradSync()
    precision = precision or Precision()
    dp, tp = plan.data_parallel_size, plan.tensor_model_parallel_size
    pp, m = plan.pipeline_model_parallel_size, plan.num_microbatches
    v = plan.virtual_pipeline_model_parallel_size if plan.pipeline_schedule == \
        "interleaved-1f1b" else 1
    world = plan.world_size
    if topo is None:
        rpn = min(world, hw.gpus_per_node)
        topo = Topology(nodes=math.ceil(world / rpn), ranks_per_node=rpn)
    if topo.nodes * topo.ranks_per_node != world:
        raise CostInputError(f"topology {topo.nodes} nodes × {topo.ranks_per_node} ranks "
                             f"= {topo.nodes * topo.ranks_per_node} does not equal "
                             f"dp×tp×pp = {world}")
    if topo.ranks_per_node > hw.gpus_per_node:
        raise CostInputError(f"topology ranks_per_node {topo.ranks_per_node} exceeds the "
                             f"profile's devices_per_node {hw.gpus_per_node} ({hw.name})")
    if global_batch_size % (dp * m):
        raise CostInputError(f"global_batch_size {global_batch_size} is not divisible by "
                             f"dp × num_microbatches = {dp} × {m}")
    if shape.n_heads % tp:
        raise CostInputError(f"model.n_heads {shape.n_heads} is not divisible by tp {tp}")
    b = global_batch_size // (dp * m)  # sequences per micro-batch per replica
    rpn = topo.ranks_per_node
    strides = _strides(plan)
    # A shared host (emulated cluster) runs all `world` ranks on its cores: each rank computes
    # at its measured loaded-step rate for b sequences (or, without one, the rate of its thread
    # count times its time share); otherwise at peak × efficiency. On the loaded-step line the
    # fixed part is charged per micro-batch, which overstates a pipeline's once-per-step
    # optimiser share.
    flops_rate = hw.rank_flops_per_s(world, b, shape.train_flops_per_sequence)
    act = precision.activation_bytes

    # compute and TP per micro-batch per stage
    tokens = b * shape.seq_len
    stage_fwd = stage_fwd_flops_per_token(shape, plan)
    tp_groups_per_node = max(1, rpn // min(tp, rpn))
    tp_link, tp_cross = _group_link(hw, tp, strides["tp"], rpn, tp_groups_per_node)
    ar_act = C.ring_all_reduce(tokens * shape.d_model * act, tp, tp_link)  # [b, L, h]
    ar_ce = C.ring_all_reduce(tokens * 4, tp, tp_link)  # [b, L] fp32 max / sum-exp / target
    layers = _stage_layers(shape.n_layers, pp) if plan.partition_method == "uniform" or pp == 1 \
        else [shape.n_layers / pp] * pp
    stage_compute, stage_tp = [], []
    for s in range(pp):
        stage_compute.append(3.0 * stage_fwd[s] * tokens / tp / flops_rate)
        t = 4 * layers[s] * ar_act  # Megatron: 2 all-reduces forward + 2 backward per layer
        if tp > 1:
            if s == 0:
                t += ar_act  # vocab-parallel embedding output, forward
            if s == pp - 1:
                t += ar_act + 3 * ar_ce  # head input grad (backward) + vocab-parallel CE
        stage_tp.append(t)
    crit = max(range(pp), key=lambda s: stage_compute[s] + stage_tp[s])

    # pipeline
    p2p_stride = strides["pp"]
    p2p_cross = pp > 1 and group_span(pp, p2p_stride, rpn)[0] > 1
    if pp > 1:
        streams = min(rpn, tp * dp) if p2p_cross else 1
        link = hw.inter_link(streams) if p2p_cross else hw.intra_link()
        p2p = C.point_to_point(tokens * shape.d_model * act, link)
    else:
        p2p = 0.0
    chunk_work = (stage_compute[crit] + stage_tp[crit]) / v
    steps = m * v + pp - 1
    p2p_ms = steps * 2 * p2p if pp > 1 else 0.0  # activations forward + gradients backward
    bubble = (pp - 1) * chunk_work
    compute = m * stage_compute[crit]
    tp_comm = m * stage_tp[crit]

    # DP gradient sync (stages run theirs concurrently; the slowest one counts)
    sp = stage_params(shape, plan)
    dp_stride = strides["dp"]
    _, dp_local = group_span(dp, dp_stride, rpn)
    dp_groups_per_node = max(1, rpn // dp_local)
    per_stage = [dp_sync_cost(p / tp * precision.grad_bytes, dp, sync, hw, topo, dp_stride,
                              dp_groups_per_node, precision) for p in sp]
    dps = max(range(pp), key=lambda s: per_stage[s]["total_s"])
    dpc = per_stage[dps]
    dp_total = dpc["total_s"]
    tied_ar = 0.0
    if pp > 1 and shape.tied_output:
        tie_link = hw.inter_link(min(rpn, tp * dp)) if p2p_cross else hw.intra_link()
        tied_ar = C.ring_all_reduce(shape.vocab_size * shape.d_model / tp
                                    * precision.grad_bytes, 2, tie_link)
    if sync.overlap and dpc["buckets"] > 0:
        # only the last micro-batch's backward on that stage can hide the buckets
        backward = stage_compute[dps] * 2.0 / 3.0
        exposed = max(dpc["last_bucket_s"], dp_total - backward)
    else:
        exposed = dp_total
    exposed += tied_ar
    compress = dpc["compress_s"] * hw.host_slowdown(world)  # rank-local CPU work time-shares

    iter_s = compute + tp_comm + p2p_ms + bubble + exposed + compress
    comm = tp_comm + p2p_ms + exposed
    mem = memory_per_rank_bytes(shape, plan, b, precision, sync.zero_stage)
    return IterationCost(
        iter_ms=1e3 * iter_s, compute_ms=1e3 * compute, tp_comm_ms=1e3 * tp_comm,
        pp_comm_ms=1e3 * p2p_ms, dp_comm_ms=1e3 * (dp_total + tied_ar),
        dp_comm_exposed_ms=1e3 * exposed, compress_ms=1e3 * compress, bubble_ms=1e3 * bubble,
        comm_ms_per_iter=1e3 * comm, comm_share=comm / iter_s if iter_s else 0.0,
        bubble_fraction=(pp - 1) / (m * v),
        throughput_samples_per_s=global_batch_size / iter_s if iter_s else float("inf"),
        dp_bytes_per_rank_per_iter=dpc["bytes_sent"],
        mem_per_rank_gib=mem / GiB, mem_share=mem / GiB / hw.memory_gib.value,
        detail={
            "micro_batch_size": b, "nodes": topo.nodes, "ranks_per_node": rpn,
            "sustained_flops_per_s": flops_rate,
            "shared_host_threads_per_rank": (hw.shared_host.threads_per_rank(world)
                                             if hw.shared_host else None),
            "shared_host_cpu_share": (hw.shared_host.cpu_share(world)
                                      if hw.shared_host else None),
            "compute_basis": hw.compute_basis(world, shape.train_flops_per_sequence),
            "train_flops_per_sequence": shape.train_flops_per_sequence,
            "trainable_params": shape.trainable_params,
            "stage_fwd_flops_per_token": stage_fwd, "stage_params": sp,
            "critical_stage": crit, "dp_stage": dps, "dp_buckets": dpc["buckets"],
            "tp_crosses_nodes": tp_cross, "pp_crosses_nodes": p2p_cross,
            "dp_crosses_nodes": dpc["crosses_nodes"], "tied_embedding_allreduce_ms": 1e3 * tied_ar,
        })


def bubble_fraction(pp: int, num_microbatches: int, virtual: int = 1) -> float:
    """(p−1)/(v·m): pipeline idle time relative to the ideal (Narayanan et al. 2021 §2.2)."""
    _posint(pp, "pp"), _posint(num_microbatches, "num_microbatches"), _posint(virtual, "virtual")
    return (pp - 1) / (virtual * num_microbatches)
