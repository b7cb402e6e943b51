"""Inputs of the cost model: the model's shape, the parallel plan, precisions, gradient sync and
topology, each parsed from recpar's own dataclasses or a mapping (recpar or megatron-core key
names) and validated; what cannot be priced raises CostInputError naming the key and value.

Training FLOPs per token = 6 × (matmul parameters) + 12 · n_layers · seq_len · d_model
(attention scores and weighted sum, forward 4·L·d per token per layer, ×3 for training):
Kaplan et al. 2020 "Scaling Laws for Neural Language Models" §2.1; Narayanan et al. 2021.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # the cost model itself needs neither torch nor the model package
    from recpar.model.config import ModelConfig
    from recpar.parallel.plan import ParallelPlan


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

    def param_shapes(self) -> list[tuple[int, ...]]:
        """The trainable parameters' shapes, in recpar.model.Recommender's order (what torch's
        PowerSGD views as matrices: rows = shape[0]); they add up to `trainable_params`."""
        h, f, v = self.d_model, self.d_ff, self.vocab_size
        shapes: list[tuple[int, ...]] = [(v, h)]
        if self.text_dim:
            shapes += [(h, self.text_dim), (h,)]  # text projection, Linear(text_dim, h)
        shapes.append((self.seq_len, h))
        block = [(h,), (h,), (3 * h, h), (3 * h,), (h, h), (h,), (h,), (h,),  # ln_1, attention
                 (f, h), (f,), (h, f), (h,)]                                   # ln_2, MLP
        shapes += block * self.n_layers + [(h,), (h,)]                        # ln_f
        if not self.tied_output:
            shapes.append((v, h))
        return shapes

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
    """none | sign (1-bit + L1 scale) | topk (k values + indices, error feedback) | fp16 | bf16
    (cast to 16 bits for the all-reduce) | powersgd (rank-r factors P and Q all-reduced)."""
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
    powersgd_rank: int = 1
    """PowerSGD matrix_approximation_rank r (recpar.comm's powersgd_rank)."""

    ALGORITHMS = ("ring", "hierarchical", "tree", "recursive_doubling", "rabenseifner")
    COMPRESSIONS = ("none", "sign", "topk", "fp16", "bf16", "powersgd")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | None, where: str = "grad_sync") -> "GradSync":
        m = dict(m or {})
        aliases = {"algorithm": ("algorithm", "allreduce", "all_reduce"),
                   "compression": ("compression", "compressor"),
                   "topk_ratio": ("topk_ratio", "ratio", "density"),
                   "index_bytes": ("index_bytes",),
                   "bucket_size_mb": ("bucket_size_mb", "bucket_cap_mb"),
                   "overlap": ("overlap", "overlap_grad_reduce"),
                   "zero_stage": ("zero_stage",),
                   "powersgd_rank": ("powersgd_rank", "matrix_approximation_rank")}
        v = {k: _pick(m, names, where, None) for k, names in aliases.items()}
        v = {k: x for k, x in v.items() if x is not None}
        if v.get("compression") in (None, False, "", "null"):
            v.pop("compression", None)
        return cls(**v).validate(where)

    def validate(self, where: str = "grad_sync") -> "GradSync":
        if self.algorithm not in self.ALGORITHMS:
            raise CostInputError(f"{where}.algorithm must be one of {', '.join(self.ALGORITHMS)}"
                                 f", got {self.algorithm!r}")
        if self.compression not in self.COMPRESSIONS:
            raise CostInputError(f"{where}.compression must be one of "
                                 f"{', '.join(self.COMPRESSIONS)}, got {self.compression!r}")
        if isinstance(self.powersgd_rank, bool) or not isinstance(self.powersgd_rank, int) \
                or self.powersgd_rank < 1:
            raise CostInputError(f"{where}.powersgd_rank must be an integer >= 1, "
                                 f"got {self.powersgd_rank!r}")
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
