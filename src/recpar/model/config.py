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
        qkv d*3d+3d, proj d*d+d, fc d*d_ff+d_ff, proj d_ff*d+d, two LayerNorms 2*2d.
        """
        if n_items < 1:
            raise ValueError(f"param_counts: n_items={n_items} must be >= 1")
        d, f = self.d_model, self.d_ff
        per_block = (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
        return ParamCounts(
            item_id_emb=(n_items + 1) * d,
            text_proj=(self.text_dim * d + d) if self.text_dim else 0,
            pos_emb=self.max_seq_len * d,
            blocks=self.n_layers * per_block,
            final_ln=2 * d,
        )

    def param_count(self, n_items: int) -> int:
        """Total trainable parameters of the recommender for an item vocabulary of n_items."""
        return self.param_counts(n_items).total

    def flops_per_token(self, n_items: int, seq_len: int | None = None) -> int:
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
        """
        t = self.max_seq_len if seq_len is None else seq_len
        c = self.param_counts(n_items)
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
