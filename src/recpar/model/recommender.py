"""The recommender: a GPT-style decoder over item-ID sequences (SASRec-like), single device.

    item embedding  E = item_id_emb.weight + text_proj(text_emb)        [n_items + 1, d]
    input           x = E[input_ids] + pos_emb[positions]               [B, L, d]
    blocks          pre-LN: x += attn(ln_1(x)); x += mlp(ln_2(x))       [B, L, d]
                    (mlp: dense, or top-k routed experts in the blocks an MoE config picks,
                    recpar.model.moe)
    output          logits = ln_f(x) @ E^T, pad column masked           [B, L, n_items + 1]

Item 0 is padding; inputs are LEFT-padded. This module knows nothing of parallelism. The
parallel code relies on these names and layouts:

- `blocks[i].attn.qkv`, `.attn.proj`, `.mlp.fc`, `.mlp.proj` are separate `nn.Linear`s, so
  tensor parallelism can swap them for megatron-core column-/row-parallel layers (qkv and fc
  column-parallel, the two proj row-parallel); `blocks` is an `nn.ModuleList` a pipeline stage
  can slice.
- The qkv output is laid out per head as [q_h | k_h | v_h] (megatron-core's layout), so a
  contiguous column split gives each tensor-parallel rank whole heads; attention derives the
  number of local heads from the tensor width, so it works unchanged on a shard.
- The output layer has no weight of its own: logits use the fused item table (weight tying).
  The table, both its ends and the cross-entropy are one piece, `recpar.model.item_table`,
  that every parallel form reuses (a pipeline stage, DeepSpeed's tied layer, a TP shard).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recpar.constants import PAD_ITEM
from recpar.model.config import ModelConfig
from recpar.model.item_table import TiedItemTable
from recpar.model.loss import mask_targets, mean_divisor
from recpar.model.mlp import MLP
from recpar.model.moe import MoEMLP


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through F.scaled_dot_product_attention."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # d -> per head [q_h|k_h|v_h]
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        # x: [B, L, d]; attn_mask: [B, 1, L, L] bool, True = query may attend to key
        b, l, _ = x.shape
        qkv = self.qkv(x)  # [B, L, 3 H hd]
        # H = local heads (TP shards qkv), written out: a rank's share of a short last batch
        # may have B = 0 rows, which a -1 in view() cannot resolve.
        h = qkv.shape[-1] // (3 * self.head_dim)
        qkv = qkv.view(b, l, h, 3 * self.head_dim)  # [B, L, H, 3 hd]
        q, k, v = qkv.transpose(1, 2).split(self.head_dim, dim=-1)  # each [B, H, L, hd]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask,
            dropout_p=self.attn_dropout if self.training else 0.0)  # [B, H, L, hd]
        y = y.transpose(1, 2).reshape(b, l, h * self.head_dim)  # [B, L, H hd]
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    """Pre-LayerNorm transformer block; with `moe`, its MLP is a routed mixture of experts."""

    def __init__(self, cfg: ModelConfig, moe: bool = False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layernorm_epsilon)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.layernorm_epsilon)
        self.mlp = MoEMLP(cfg) if moe else MLP(cfg)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor,
                pad: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, d]; attn_mask [B, 1, L, L]; pad [B, L] bool, True = padding position
        (used by an MoE MLP to route padding nowhere; None = no padding)."""
        x = x + self.attn(self.ln_1(x), attn_mask)
        h = self.ln_2(x)
        return x + (self.mlp(h, pad) if isinstance(self.mlp, MoEMLP) else self.mlp(h))


def attention_mask(input_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] item ids -> [B, 1, L, L] bool mask: causal, padding keys hidden.

    Every query also sees itself, so a padding query (and an all-padding row) has one key
    and softmax never normalises over nothing (which would give NaN).
    """
    l = input_ids.shape[1]
    idx = torch.arange(l, device=input_ids.device)
    causal = idx[None, :] <= idx[:, None]  # [L, L], query row i sees keys j <= i
    key_real = (input_ids != PAD_ITEM)[:, None, :]  # [B, 1, L]
    diag = torch.eye(l, dtype=torch.bool, device=input_ids.device)  # [L, L]
    return ((causal & key_real) | diag)[:, None, :, :]  # [B, 1, L, L]


def positions(input_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] -> [B, L] position of each item counted from the user's oldest item in view.

    Positions count real items (cumsum of the non-pad mask) rather than slots, so the same
    history gets the same positions however much left padding precedes it, and a training
    prefix looks exactly like an evaluation history of the same length. Pads get 0.
    """
    real = (input_ids != PAD_ITEM).long()
    return (real.cumsum(dim=1) - 1).clamp(min=0)


def check_item_ids(input_ids: torch.Tensor, max_seq_len: int) -> None:
    """Raise ValueError unless input_ids is [B, L] with L <= max_seq_len."""
    if input_ids.dim() != 2:
        raise ValueError(f"Recommender: input_ids must be [B, L], got {tuple(input_ids.shape)}")
    if input_ids.shape[1] > max_seq_len:
        raise ValueError(f"Recommender: sequence length {input_ids.shape[1]} exceeds "
                         f"max_seq_len={max_seq_len}")


class Recommender(TiedItemTable):
    """Next-item recommender over left-padded item-ID sequences; see the module docstring."""

    def __init__(self, cfg: ModelConfig, n_items: int,
                 text_emb: torch.Tensor | np.ndarray | None = None):
        super().__init__()
        if n_items < 1:
            raise ValueError(f"Recommender: n_items={n_items} must be >= 1")
        self.cfg = cfg
        self.n_items = n_items
        d = cfg.d_model
        # item_id_emb [n_items+1, d], text_proj text_dim -> d, frozen text_emb buffer
        self.init_item_table(n_items, d, cfg.text_dim, text_emb)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, d)  # [max_seq_len, d]
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, moe=cfg.is_moe_block(i))
                                    for i in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d, eps=cfg.layernorm_epsilon)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 / megatron-core init: N(0, init_std), residual outputs N(0, std/sqrt(2L))
        (every expert's proj too, as megatron-core's experts; the router N(0, init_std))."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2.0 * self.cfg.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_out = name.endswith(("attn.proj", "mlp.proj")) or (
                    ".mlp.experts." in name and name.endswith(".proj"))
                nn.init.normal_(module.weight, mean=0.0, std=out_std if is_out else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.item_id_emb.weight[PAD_ITEM].zero_()

    # --- input -------------------------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor,
              item_table: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] ids -> [B, L, d] fused item embedding + position embedding (pre-dropout).

        `item_table`: see `TiedItemTable.embed_items`.
        """
        check_item_ids(input_ids, self.cfg.max_seq_len)
        return self.embed_items(input_ids, item_table) + self.pos_emb(positions(input_ids))

    # --- forward ------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor,
                item_table: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] left-padded item ids -> [B, L, d] final hidden states (after ln_f)."""
        mask = attention_mask(input_ids)  # [B, 1, L, L]
        pad = input_ids == PAD_ITEM  # [B, L]
        x = self.drop(self.embed(input_ids, item_table))  # [B, L, d]
        for block in self.blocks:
            x = block(x, mask, pad)
        return self.ln_f(x)

    def loss_sum(self, input_ids: torch.Tensor,
                 targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of next-item cross-entropy over valid positions, number of valid positions).

        Valid: `recpar.model.loss.valid_positions`. Full softmax over items 1..n_items: the pad
        column is -inf, so it takes no probability mass. Shapes are static (no host sync);
        memory is the [B, L, n_items + 1] logits, or one chunk of them with
        cfg.cross_entropy_chunk_size.
        """
        masked, count = mask_targets(input_ids, targets)  # [B, L], scalar
        table = self.item_embeddings()  # one text projection per step, shared in and out
        hidden = self.forward(input_ids, item_table=table)  # [B, L, d]
        if self.cfg.cross_entropy_chunk_size:
            return self.chunked_cross_entropy_sum(hidden, masked,
                                                  self.cfg.cross_entropy_chunk_size,
                                                  item_table=table), count
        logits = self.logits(hidden, item_table=table)  # [B, L, n_items + 1]
        return self.cross_entropy_sum(logits, masked), count

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-item cross-entropy over valid positions (0 when there are none)."""
        total, count = self.loss_sum(input_ids, targets)
        return total / mean_divisor(count)

    def score_last(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] histories -> [B, n_items + 1] scores for the next item (pad column -inf).

        Reads the last position, which holds the most recent item under left padding. Callers
        put the model in eval mode and no_grad themselves.
        """
        hidden = self.forward(input_ids)[:, -1]  # [B, d]
        return self.full_scores(self.logits(hidden))
