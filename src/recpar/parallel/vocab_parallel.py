"""The tied item table's piece for one tensor-parallel rank's vocab shard (megatron-core's
vocab-parallel embedding, output layer and cross-entropy): what `apply_tp` swaps in for
`recpar.model.item_table.TiedItemTable`, in the model and in every pipeline stage or DeepSpeed
layer cut from it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from recpar.constants import IGNORE_INDEX
from recpar.model.item_table import TiedItemTable


def _vocab_parallel_lookup(input_ids: torch.Tensor, local_table: torch.Tensor,
                           start: int, end: int) -> torch.Tensor:
    """[B, L] global ids -> [B, L, d] rows of the vocab-sharded table, summed over TP ranks.

    Written out because megatron's VocabParallelEmbedding.forward looks up its own weight
    only, and the item table here is that weight plus the projected text (a fused table).
    Same steps as megatron's forward: mask ids outside [start, end), look up, zero them,
    reduce_from_tensor_model_parallel_region (all-reduce forward, identity backward).
    """
    from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

    outside = (input_ids < start) | (input_ids >= end)  # [B, L]
    local_ids = (input_ids - start).masked_fill(outside, 0)
    rows = F.embedding(local_ids, local_table)  # [B, L, d]
    rows = rows.masked_fill(outside.unsqueeze(-1), 0.0)
    return reduce_from_tensor_model_parallel_region(rows)


def vocab_parallel_cross_entropy_sum(logits: torch.Tensor,
                                     masked_targets: torch.Tensor) -> torch.Tensor:
    """`recpar.model.loss.cross_entropy_sum` for vocab-sharded logits [..., L, V_local]: the
    same value on every TP rank (three all-reduces of [..., L] instead of gathering logits).

    megatron's vocab_parallel_cross_entropy has no ignore_index: ignored positions get target
    item 1 (any real item keeps the per-position loss finite; the pad item's -inf logit would
    make it inf) and are zeroed with `where`, so they add neither loss nor gradient.
    """
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    valid = masked_targets != IGNORE_INDEX  # [..., L]
    # fp32 softmax whatever the logits' dtype (bf16 under autocast), as torch's cross_entropy
    # runs under autocast and megatron's GPT loss does (fp16_lm_cross_entropy off)
    per_pos = vocab_parallel_cross_entropy(logits.float(), masked_targets.masked_fill(~valid, 1))
    return torch.where(valid, per_pos, torch.zeros_like(per_pos)).sum()


class VocabShardedItemTable(TiedItemTable):
    """The tied item table's piece for one TP rank's vocab shard (`TiedItemTable`'s methods
    for rows [vocab_start_index, vocab_end_index) of the padded vocabulary).

    `item_embeddings()` and `logits()` return this rank's shard ([V_local, d] and
    [..., V_local], V_local = padded_vocab_size / tp); `embed_items` and `cross_entropy_sum`
    return the same values as the single-device piece, on every TP rank; `full_scores`
    all-gathers the shards. Used by `TensorParallelRecommender`, and by a pipeline stage or
    DeepSpeed layer cut from one.
    """

    vocab_start_index: int
    """First global item id of this rank's vocab shard."""
    vocab_end_index: int
    """One past the last global item id of this rank's vocab shard."""
    vocab_size: int
    """Items + the pad item (n_items + 1): the columns of `full_scores`."""
    tp_size: int
    """Tensor-parallel degree the table was sharded for."""
    tp_vocab_pad_mask: torch.Tensor
    """[V_local] buffer, True for the pad item and the vocab padding rows (logits -inf)."""

    def take_item_table(self, source: TiedItemTable, copy) -> None:
        """`TiedItemTable.take_item_table` plus the shard's layout (shared, not copied)."""
        super().take_item_table(source, copy)
        assert isinstance(source, VocabShardedItemTable)
        self.vocab_start_index = source.vocab_start_index
        self.vocab_end_index = source.vocab_end_index
        self.vocab_size = source.vocab_size
        self.tp_size = source.tp_size
        self.register_buffer("tp_vocab_pad_mask", source.tp_vocab_pad_mask, persistent=False)

    def item_embeddings(self) -> torch.Tensor:
        """This rank's shard of the fused item table [V_local, d]."""
        table = self.item_id_emb.weight  # [V_local, d]
        if self.text_proj is not None:
            from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

            # text_proj is replicated but each rank projects only its own rows, so its
            # gradient is partial per rank: copy_to_... (identity forward, all-reduce of the
            # gradient backward) makes it the full, identical gradient on every rank.
            w = copy_to_tensor_model_parallel_region(self.text_proj.weight)  # [d, text_dim]
            b = copy_to_tensor_model_parallel_region(self.text_proj.bias)  # [d]
            table = table + F.linear(self.text_emb, w, b)  # [V_local, text_dim] -> [V_local, d]
        return table

    def embed_items(self, input_ids: torch.Tensor,
                    item_table: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] ids -> [B, L, d], identical on every TP rank (one all-reduce)."""
        if item_table is None and self.text_proj is None:
            return self.item_id_emb(input_ids)  # megatron's VocabParallelEmbedding.forward
        # the text rows are sharded too: look up the fused shard
        table = self.item_embeddings() if item_table is None else item_table
        return _vocab_parallel_lookup(input_ids, table, self.vocab_start_index,
                                      self.vocab_end_index)

    def logits(self, hidden: torch.Tensor,
               item_table: torch.Tensor | None = None) -> torch.Tensor:
        """[..., d] -> [..., V_local] scores of this rank's items; pad/padding columns -inf."""
        from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

        table = self.item_embeddings() if item_table is None else item_table
        # Identity forward; backward all-reduces the hidden-state gradient, which each rank
        # only knows for its own items (megatron's output layer does the same).
        hidden = copy_to_tensor_model_parallel_region(hidden)
        scores = hidden @ table.t()  # [..., V_local]
        # in place (no copy of the logits): the product's backward does not need its output
        return scores.masked_fill_(self.tp_vocab_pad_mask, float("-inf"))

    def cross_entropy_sum(self, logits: torch.Tensor,
                          masked_targets: torch.Tensor) -> torch.Tensor:
        return vocab_parallel_cross_entropy_sum(logits, masked_targets)

    def full_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """[B, V_local] -> [B, n_items + 1] (pad column -inf): all-gathers the vocab shards
        and drops the padding columns. Collective over the TP group. torch's all_gather rather
        than megatron's gather_from_tensor_model_parallel_region, which allocates its output
        on torch.cuda.current_device() (fails on CPU); evaluation needs no autograd through it.
        """
        from recpar.parallel import process_groups as pg

        local = scores.contiguous()
        shards = [torch.empty_like(local) for _ in range(self.tp_size)]
        dist.all_gather(shards, local, group=pg.tp_group())
        full = torch.cat(shards, dim=-1)  # [B, padded_vocab_size]
        return full[:, : self.vocab_size]


