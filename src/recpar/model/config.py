"""Architecture of the recommender: one dataclass, named sizes, parameter and FLOP counts.

The field names are the short nanoGPT-style ones used throughout recpar; `as_megatron_kwargs`
maps them onto megatron-core's `TransformerConfig` names for the tensor-parallel code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

# Named sizes. Transformer (non-embedding) parameter counts in the comments are what
# `ParamCounts.blocks` gives for that size; the item table (n_items + 1) x d_model comes on top
# (63,002 x d_model for Amazon Electronics: 8.1 M at d=128, 129 M at d=2048).
NAMED_SIZES: dict[str, dict] = {
    # ~0.1 M transformer params (+ the item table: 0.2 M in all on movielens-100k, 4.2 M on
    # Amazon Electronics): CPU tests and the laptop pipeline, where every scheme of the grid
    # trains to convergence. With d=128 x 4 layers, scoring the 9.8 k movielens-100k
    # validation histories took 31 s and one step of 128 sequences 1-5 s on 2 shared cores
    # (measured during development): too slow for a grid of runs.
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, d_ff=256),
    # ~3.2 M: still CPU-trainable on the small datasets.
    "small": dict(d_model=256, n_layers=4, n_heads=4, d_ff=1024),
    # ~85 M: the GPT-2 small / BERT-base shape.
    "base": dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072),
    # ~302 M: the GPT-2 medium / GPT-3 "350M" shape.
    "350m": dict(d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
    # ~1.21 B: GPT-3 XL width and depth (d=2048, 24 layers) with 16 heads of 128.
    "1b": dict(d_model=2048, n_layers=24, n_heads=16, d_ff=8192),
}


MOE_FIELDS = ("num_moe_experts", "moe_router_topk", "moe_layer_freq", "moe_aux_loss_coeff",
              "moe_expert_capacity_factor")
"""ModelConfig's Mixture-of-Experts fields (recpar.model.moe)."""


@dataclass(frozen=True)
class ParamCounts:
    """Trainable parameters of a `Recommender`, by part (counts, not bytes)."""

    item_id_emb: int
    """ID embedding table, (n_items + 1) x d_model; also the tied output layer."""
    text_proj: int
    """Projection of the frozen text table into d_model (weight + bias); 0 without text."""
    pos_emb: int
    """Learned positions, max_seq_len x d_model."""
    blocks: int
    """All transformer blocks (attention, MLP, their LayerNorms): the 'non-embedding' count."""
    final_ln: int
    """Final LayerNorm (weight + bias)."""

    @property
    def total(self) -> int:
        return self.item_id_emb + self.text_proj + self.pos_emb + self.blocks + self.final_ln


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the GPT-style sequential recommender (`recpar.model.recommender`)."""

    d_model: int = 128
    """Hidden size (megatron-core: hidden_size)."""
    n_layers: int = 4
    """Number of transformer blocks (megatron-core: num_layers)."""
    n_heads: int = 4
    """Attention heads per block (megatron-core: num_attention_heads); divides d_model."""
    d_ff: int = 512
    """MLP inner size (megatron-core: ffn_hidden_size); 4 x d_model in every named size."""
    max_seq_len: int = 50
    """Longest item history the model reads (positions table rows). 50 is SASRec's choice for
    the sparse Amazon datasets (Kang & McAuley 2018)."""
    dropout: float = 0.1
    """Dropout on embeddings, attention probabilities and residual branches (megatron-core:
    hidden_dropout and attention_dropout)."""
    text_dim: int = 0
    """Width of the frozen item-text embedding table fused into the item embedding;
    0 = ID embeddings only (no text fusion). all-MiniLM-L6-v2 gives 384."""
    init_std: float = 0.02
    """Std of the normal init of all weights (megatron-core: init_method_std); the two residual
    output projections per block use init_std / sqrt(2 n_layers) (GPT-2, megatron-core's
    scaled_init_method_normal)."""
    layernorm_epsilon: float = 1e-5
    """LayerNorm epsilon (megatron-core: layernorm_epsilon)."""
    cross_entropy_chunk_size: int = 0
    """Training loss over the tied item table computed this many positions at a time, never
    holding the [B, L, n_items + 1] logits (recpar.model.loss.chunked_tied_cross_entropy_sum);
    0 = all at once. Same loss and gradients within float rounding. Used by the schemes whose
    loss is the model's own (baseline, dp, zero, async); the model-parallel heads compute
    their logits whole."""
    num_moe_experts: int = 0
    """Mixture-of-Experts (recpar.model.moe; megatron-core's name): 0 = a dense MLP in every
    block; E >= 2 = the blocks chosen by moe_layer_freq get E expert MLPs of d_ff each and a
    top-k router in place of their MLP."""
    moe_router_topk: int = 2
    """Experts each token is routed to (megatron-core's name); 1 <= k <= num_moe_experts."""
    moe_layer_freq: int = 1
    """Every this many blocks is an MoE block, counting from block 0 (megatron-core's integer
    form: block i is MoE when i % moe_layer_freq == 0); 1 = every block."""
    moe_aux_loss_coeff: float = 0.01
    """Weight of the Switch load-balancing loss (megatron-core's name; 0 = off). 0.01 is the
    Switch Transformer's alpha (Fedus et al. 2022, Sec. 2.2)."""
    moe_expert_capacity_factor: float | None = None
    """Expert capacity = ceil(tokens x k / E x factor); the tokens over it are dropped, the
    least confident first (megatron-core's name and drop policy "probs"). None = dropless."""

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig: {name}={value!r} must be a positive integer")
        if not isinstance(self.text_dim, int) or isinstance(self.text_dim, bool) \
                or self.text_dim < 0:
            raise ValueError(f"ModelConfig: text_dim={self.text_dim!r} must be an integer >= 0 "
                             "(0 = no text fusion)")
        if not isinstance(self.cross_entropy_chunk_size, int) \
                or isinstance(self.cross_entropy_chunk_size, bool) \
                or self.cross_entropy_chunk_size < 0:
            raise ValueError(f"ModelConfig: cross_entropy_chunk_size="
                             f"{self.cross_entropy_chunk_size!r} must be an integer >= 0 "
                             "(0 = the whole logits at once)")
        self._check_moe()
        if self.d_model % self.n_heads:
            raise ValueError(f"ModelConfig: d_model={self.d_model} is not divisible by "
                             f"n_heads={self.n_heads}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"ModelConfig: dropout={self.dropout!r} must be in [0, 1)")
        if not float(self.init_std) > 0.0:
            raise ValueError(f"ModelConfig: init_std={self.init_std!r} must be > 0")
        if not float(self.layernorm_epsilon) > 0.0:
            raise ValueError(
                f"ModelConfig: layernorm_epsilon={self.layernorm_epsilon!r} must be > 0")

    def _check_moe(self) -> None:
        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        e, k = self.num_moe_experts, self.moe_router_topk
        if not is_int(e) or e < 0 or e == 1:
            raise ValueError(f"ModelConfig: num_moe_experts={e!r} must be 0 (dense) or an "
                             "integer >= 2")
        if not e:
            return
        if not is_int(k) or not 1 <= k <= e:
            raise ValueError(f"ModelConfig: moe_router_topk={k!r} must be an integer in "
                             f"[1, num_moe_experts={e}]")
        if not is_int(self.moe_layer_freq) or self.moe_layer_freq < 1:
            raise ValueError(f"ModelConfig: moe_layer_freq={self.moe_layer_freq!r} must be a "
                             "positive integer")
        if not float(self.moe_aux_loss_coeff) >= 0.0:
            raise ValueError(f"ModelConfig: moe_aux_loss_coeff={self.moe_aux_loss_coeff!r} "
                             "must be >= 0")
        cf = self.moe_expert_capacity_factor
        if cf is not None and not float(cf) > 0.0:
            raise ValueError(f"ModelConfig: moe_expert_capacity_factor={cf!r} must be > 0, or "
                             "None (dropless)")

    def is_moe_block(self, index: int) -> bool:
        """Whether block `index` routes to experts (megatron-core's moe_layer_freq rule)."""
        return self.num_moe_experts > 0 and index % self.moe_layer_freq == 0

    @property
    def n_moe_blocks(self) -> int:
        return sum(self.is_moe_block(i) for i in range(self.n_layers))

    @property
    def moe_id(self) -> str | None:
        """`moe<E>top<k>`, then `-freq<f>`, `-cap<factor>`, `-aux<coeff>` where they differ
        from the defaults (every block, dropless, 0.01): the run id's MoE part; None if
        dense."""
        if not self.num_moe_experts:
            return None
        parts = [f"moe{self.num_moe_experts}top{self.moe_router_topk}"]
        if self.moe_layer_freq != 1:
            parts.append(f"freq{self.moe_layer_freq}")
        if self.moe_expert_capacity_factor is not None:
            parts.append(f"cap{self.moe_expert_capacity_factor:g}")
        if self.moe_aux_loss_coeff != 0.01:
            parts.append(f"aux{self.moe_aux_loss_coeff:g}")
        return "-".join(parts)

    @property
    def head_dim(self) -> int:
        """Per-head width d_model / n_heads (megatron-core: kv_channels)."""
        return self.d_model // self.n_heads

    @classmethod
    def named(cls, size: str, **overrides) -> "ModelConfig":
        """The named size `size` (tiny, small, base, 350m, 1b) with fields overridden."""
        if size not in NAMED_SIZES:
            raise ValueError(f"ModelConfig: unknown size {size!r}; "
                             f"choose one of {', '.join(NAMED_SIZES)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"ModelConfig: unknown field(s) {', '.join(unknown)}; "
                             f"fields are {', '.join(sorted(fields))}")
        return cls(**{**NAMED_SIZES[size], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    def to_record(self) -> dict:
        """The fields for records, run specs and checkpoint fingerprints: a dense model leaves
        out the moe_* fields, which do not apply to it, so its fingerprint and record are those
        written before MoE existed (an interrupted dense run still resumes)."""
        out = asdict(self)
        if not self.num_moe_experts:
            for name in MOE_FIELDS:
                del out[name]
        return out

    def as_megatron_kwargs(self) -> dict:
        """The same shape as megatron-core `TransformerConfig` keyword arguments."""
        return dict(
            num_layers=self.n_layers,
            hidden_size=self.d_model,
            num_attention_heads=self.n_heads,
            ffn_hidden_size=self.d_ff,
            kv_channels=self.head_dim,
            hidden_dropout=self.dropout,
            attention_dropout=self.dropout,
            init_method_std=self.init_std,
            layernorm_epsilon=self.layernorm_epsilon,
            add_bias_linear=True,
        )

    # --- counts ------------------------------------------------------------------------------

    def param_counts(self, n_items: int) -> ParamCounts:
        """Trainable parameters of `Recommender(self, n_items, ...)`, by part.

        Must agree with the module (checked by tests/model): per block
        qkv d*3d+3d, proj d*d+d, fc d*d_ff+d_ff, proj d_ff*d+d, two LayerNorms 2*2d; an MoE
        block has E such MLPs and a router E*d in place of its one MLP.
        """
        return self._param_counts(n_items, experts_per_moe_block=self.num_moe_experts)

    def active_param_counts(self, n_items: int) -> ParamCounts:
        """The parameters one token's forward uses: an MoE block counts its router and
        moe_router_topk experts, not all E (equal to param_counts for a dense model)."""
        return self._param_counts(n_items, experts_per_moe_block=self.moe_router_topk)

    def _param_counts(self, n_items: int, experts_per_moe_block: int) -> ParamCounts:
        if n_items < 1:
            raise ValueError(f"param_counts: n_items={n_items} must be >= 1")
        d, f = self.d_model, self.d_ff
        attn_ln = (d * 3 * d + 3 * d) + (d * d + d) + 4 * d
        mlp = (d * f + f) + (f * d + d)
        n_moe = self.n_moe_blocks
        moe_block = attn_ln + self.num_moe_experts * d + experts_per_moe_block * mlp
        return ParamCounts(
            item_id_emb=(n_items + 1) * d,
            text_proj=(self.text_dim * d + d) if self.text_dim else 0,
            pos_emb=self.max_seq_len * d,
            blocks=(self.n_layers - n_moe) * (attn_ln + mlp) + n_moe * moe_block,
            final_ln=2 * d,
        )

    def param_count(self, n_items: int) -> int:
        """Total trainable parameters of the recommender for an item vocabulary of n_items."""
        return self.param_counts(n_items).total

    def flops_per_token(self, n_items: int, seq_len: int | None = None,
                        active: bool = True) -> int:
        """Training FLOPs (forward + backward) per token position, model FLOPs convention.

        6 N + 12 L d T, the count of PaLM's MFU (Chowdhery et al. 2022, App. B; the 6N term is
        Kaplan et al. 2020, Sec. 2.1): 2 FLOPs per multiply-add per matmul parameter forward,
        twice that backward; 12 L d T for the attention score and value products
        (QK^T and AV, each 2 d T forward per layer), with T the sequence length (causal masking
        not discounted, as in PaLM). N counts the parameters used in a matmul for every token:
        the blocks, the final LayerNorm and the tied output table (n_items + 1) x d, whose
        logits are computed at every position. The input lookups (IDs, positions) are not
        matmuls and are excluded, as in nanoGPT's estimate_mfu; the text projection runs once
        per step over the whole item table, not per token: see `text_fusion_flops_per_step`.
        Padding positions are computed like any other, so "tokens" means positions B x T.
        An MoE model counts the active parameters (`active_param_counts`: the router and k
        experts per MoE block) with every position routed; padding positions, which recpar's
        MoE layer routes to no expert, are thus counted as if routed (an upper bound).
        `active=False` counts every parameter: a dense model of the same total size.
        """
        t = self.max_seq_len if seq_len is None else seq_len
        c = self.active_param_counts(n_items) if active else self.param_counts(n_items)
        n_matmul = c.blocks + c.final_ln + c.item_id_emb
        return 6 * n_matmul + 12 * self.n_layers * self.d_model * t

    def model_flops(self, n_items: int, samples: float, steps: float) -> float:
        """Model FLOPs (forward + backward) of `steps` optimizer steps over `samples` sequences
        of max_seq_len positions: flops_per_token x T per sample, plus the text projection once
        per step. The one definition behind a record's `model_tflops_per_s` and MFU. Checked
        against torch's FlopCounterMode for every named size (tests/model/test_flops.py)."""
        return (self.flops_per_token(n_items) * self.max_seq_len * samples
                + self.text_fusion_flops_per_step(n_items) * steps)

    def text_fusion_flops_per_step(self, n_items: int) -> int:
        """FLOPs per training step of projecting the frozen text table, independent of batch.

        Forward 2 (n_items+1) text_dim d; backward only the weight gradient (the text table is
        a frozen buffer, no input gradient): another 2 (n_items+1) text_dim d. 0 without text.
        """
        return 4 * (n_items + 1) * self.text_dim * self.d_model
