"""The tied item table: the one piece that both ends of the recommender use.

    fused table   E = item_id_emb.weight + text_proj(text_emb)       [n_items + 1, d]
    input end     rows = item_id_emb(ids) + text_proj(text_emb[ids])  [B, L, d]
    output end    logits = hidden @ E^T, pad column -inf              [..., n_items + 1]
    loss          cross-entropy summed over the valid positions       (recpar.model.loss)

`TiedItemTable` is a base class rather than a submodule, so that every module holding the
table keeps the single-device parameter names (`item_id_emb.weight`, `text_proj.weight`,
`text_proj.bias`) and their state dicts merge key by key: the `Recommender` itself, a pipeline
stage at either end, DeepSpeed's tied layer. Tensor parallelism shards it by swapping in
`recpar.parallel.tensor_parallel.VocabShardedItemTable`, which overrides the methods below for
a vocab shard; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recpar.constants import PAD_ITEM
from recpar.model import loss as loss_pieces


class TiedItemTable(nn.Module):
    """Holds `item_id_emb` [n_items + 1, d], `text_proj` (text_dim -> d, or None) and the
    frozen, non-persistent `text_emb` buffer [n_items + 1, text_dim] (or None)."""

    item_id_emb: nn.Module
    text_proj: nn.Module | None
    text_emb: torch.Tensor | None

    # --- building -----------------------------------------------------------------------------

    def init_item_table(self, n_items: int, d_model: int, text_dim: int,
                        text_emb: torch.Tensor | np.ndarray | None) -> None:
        """Create the table's modules for n_items real items (+ the pad item 0)."""
        self.item_id_emb = nn.Embedding(n_items + 1, d_model, padding_idx=PAD_ITEM)
        if text_dim:
            if text_emb is None:
                raise ValueError(f"Recommender: cfg.text_dim={text_dim} needs a text "
                                 f"embedding table [n_items + 1 = {n_items + 1}, {text_dim}]")
            text_emb = torch.as_tensor(text_emb, dtype=torch.float32)
            if tuple(text_emb.shape) != (n_items + 1, text_dim):
                raise ValueError(f"Recommender: text_emb has shape {tuple(text_emb.shape)}, "
                                 f"expected (n_items + 1, text_dim) = "
                                 f"({n_items + 1}, {text_dim})")
            # Frozen, not trained. Non-persistent: checkpoints stay small and the table is
            # rebuilt from the data; DDP must run with broadcast_buffers=False or it re-sends
            # this table every step.
            self.register_buffer("text_emb", text_emb.clone(), persistent=False)
            self.text_proj = nn.Linear(text_dim, d_model)  # text_dim -> d
        else:
            if text_emb is not None:
                raise ValueError(
                    f"Recommender: got a text embedding table of shape {tuple(text_emb.shape)} "
                    f"but cfg.text_dim=0 (no text fusion); set text_dim={text_emb.shape[-1]} "
                    "or pass text_emb=None")
            self.text_emb = None
            self.text_proj = None

    def take_item_table(self, source: TiedItemTable,
                        copy: Callable[[nn.Module | None], nn.Module | None]) -> None:
        """Hold `source`'s table: its modules passed through `copy` (a deep copy for a stage of
        the single-device model, the identity to share a tensor-parallel shard); the frozen
        text table is shared, never copied (it never changes)."""
        self.item_id_emb = copy(source.item_id_emb)
        self.text_proj = copy(source.text_proj)
        self.register_buffer("text_emb", source.text_emb, persistent=False)

    # --- the two ends ---------------------------------------------------------------------

    def item_embeddings(self) -> torch.Tensor:
        """The fused item table [n_items + 1, d]: ID embedding + projected text embedding."""
        table = self.item_id_emb.weight  # [n_items + 1, d]
        if self.text_proj is not None:
            table = table + self.text_proj(self.text_emb)  # [n_items+1, text_dim] -> [.., d]
        return table

    def embed_items(self, input_ids: torch.Tensor,
                    item_table: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] ids -> [B, L, d] fused item rows (no positions).

        With `item_table` (from `item_embeddings()`) rows are gathered from it; without, the
        fusion is done for the B*L looked-up items only (cheaper than the whole table).
        """
        if item_table is not None:
            return F.embedding(input_ids, item_table)  # [B, L, d]
        x = self.item_id_emb(input_ids)  # [B, L, d]
        if self.text_proj is not None:
            x = x + self.text_proj(F.embedding(input_ids, self.text_emb))  # [B, L, d]
        return x

    def logits(self, hidden: torch.Tensor,
               item_table: torch.Tensor | None = None) -> torch.Tensor:
        """[..., d] -> [..., n_items + 1] scores against the tied item table; pad column -inf."""
        table = self.item_embeddings() if item_table is None else item_table
        scores = hidden @ table.t()  # [..., n_items + 1]
        # In place, one column: the product's backward does not need its output, and an
        # out-of-place masked_fill copied the whole [..., n_items + 1] logits (one logits
        # tensor less at the peak; gradients bit-identical; tiny model, batch 128, quiet
        # 1-thread CPU: fwd+bwd 396 ms before, 402 after, the same within noise).
        scores[..., PAD_ITEM] = float("-inf")
        return scores

    def cross_entropy_sum(self, logits: torch.Tensor,
                          masked_targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of `logits()` output summed over the non-ignored positions."""
        return loss_pieces.cross_entropy_sum(logits, masked_targets)

    def chunked_cross_entropy_sum(self, hidden: torch.Tensor, masked_targets: torch.Tensor,
                                  chunk: int, item_table: torch.Tensor | None = None
                                  ) -> torch.Tensor:
        """`cross_entropy_sum(logits(hidden))` scored `chunk` positions at a time, the logits
        never held whole (`recpar.model.loss.chunked_tied_cross_entropy_sum`)."""
        table = self.item_embeddings() if item_table is None else item_table
        return loss_pieces.chunked_tied_cross_entropy_sum(hidden, table, masked_targets, chunk)

    def full_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """`logits()` output -> scores of every item [..., n_items + 1] (here: unchanged; a
        vocab shard gathers the other shards)."""
        return scores

    # --- tying --------------------------------------------------------------------------------

    def tied_parameter_names(self) -> list[str]:
        """Names of the parameters the two ends share (what a pipeline ties between stages)."""
        names = ["item_id_emb.weight"]
        if self.text_proj is not None:
            names += ["text_proj.weight", "text_proj.bias"]
        return names

    def tied_parameters(self) -> list[nn.Parameter]:
        """The parameters named by `tied_parameter_names`, in that order."""
        params = [self.item_id_emb.weight]
        if self.text_proj is not None:
            params += [self.text_proj.weight, self.text_proj.bias]
        return params
