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
from recpar.model.loss import add_chunk_gradients, chunk_matmul_dtype, scaled_saved_gradients


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


class _ChunkedVocabParallelCrossEntropy(torch.autograd.Function):
    """sum CE over the full vocabulary of hidden @ table_shard^T, each TP rank holding one vocab
    shard, `chunk` positions at a time, the [N, V_local] logits never held for backward.

    The tensor-parallel counterpart of `recpar.model.loss._ChunkedTiedCrossEntropy` (same
    reason to write it by hand: megatron's vocab-parallel cross-entropy takes whole logits, and
    the fused-kernel libraries are CUDA only). Per chunk: the shard's logits [c, V_local]; the
    global log-sum-exp from each shard's (all-reduce of max, then of the rescaled sums: [c]
    each); the target's logit from the shard holding it (all-reduce of [c]); the gradients of
    the summed loss with respect to the shard's logits (softmax − one-hot) give this rank's
    part of the hidden gradient and its table shard's gradient at once. The hidden gradient is
    partial (this shard's items only): the caller's `copy_to_tensor_model_parallel_region`
    all-reduces it in backward, as megatron's output layer does.
    """

    @staticmethod
    def forward(ctx, hidden, table, targets, chunk, mm_dtype, start, pad_mask, group):
        # hidden [N, d] (identical on every TP rank), table [V_local, d] (this rank's shard),
        # targets [N] global item ids (IGNORE_INDEX where a position does not count),
        # pad_mask [V_local] (the pad item and vocab padding rows: -inf)
        want_h, want_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if want_h else None  # [N, d], partial
        grad_t = torch.zeros_like(table) if want_t else None  # [V_local, d]
        table_mm = table.to(mm_dtype)
        soft_dtype = torch.promote_types(mm_dtype, torch.float32)
        total = hidden.new_zeros((), dtype=soft_dtype)
        v_local = table.shape[0]
        for s in range(0, hidden.shape[0], chunk):
            h, y = hidden[s:s + chunk].to(mm_dtype), targets[s:s + chunk]  # [c, d], [c]
            logits = (h @ table_mm.t()).to(soft_dtype)  # [c, V_local]
            logits.masked_fill_(pad_mask, float("-inf"))
            # global log-sum-exp from the shards' (fused kernels: no denormal-slow exp of
            # the whole [c, V_local])
            lse_local = torch.logsumexp(logits, dim=-1)  # [c]
            top = lse_local.clone()
            dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
            scaled = torch.exp(lse_local - top)  # [c], in (0, 1]
            dist.all_reduce(scaled, group=group)
            lse = top + torch.log(scaled)  # [c]
            valid = y != IGNORE_INDEX
            local = y - start
            mine = valid & (local >= 0) & (local < v_local)  # [c]: target in this shard
            local_safe = torch.where(mine, local, torch.zeros_like(local))
            picked = logits.gather(1, local_safe[:, None]).squeeze(1)  # [c]
            target_logit = torch.where(mine, picked, torch.zeros_like(picked))
            dist.all_reduce(target_logit, group=group)
            total = total + torch.where(valid, lse - target_logit,
                                        torch.zeros_like(lse)).sum()
            if not (want_h or want_t):
                continue
            # this shard's softmax over the full vocabulary: local softmax x exp(lse_local - lse)
            probs = torch.softmax(logits, dim=-1).mul_(torch.exp(lse_local - lse)[:, None])
            del logits
            rows = torch.arange(len(y), device=y.device)
            probs[rows[mine], local_safe[mine]] -= 1.0
            probs.mul_(valid[:, None].to(probs.dtype))  # d(sum CE)/d(logits) [c, V_local]
            add_chunk_gradients(probs, h, table_mm, grad_h, grad_t, slice(s, s + chunk))
        ctx.save_for_backward(grad_h, grad_t)  # None where no gradient is wanted
        return total

    @staticmethod
    def backward(ctx, grad_out):
        return scaled_saved_gradients(ctx, grad_out, 6)


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

    def chunked_cross_entropy_sum(self, hidden: torch.Tensor, masked_targets: torch.Tensor,
                                  chunk: int, item_table: torch.Tensor | None = None
                                  ) -> torch.Tensor:
        """The summed cross-entropy over the full vocabulary, `chunk` positions at a time
        (`_ChunkedVocabParallelCrossEntropy`): the same value on every TP rank."""
        from megatron.core import parallel_state as ps
        from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

        if chunk < 1:
            raise ValueError(f"chunked cross-entropy: chunk must be >= 1, got {chunk}")
        table = self.item_embeddings() if item_table is None else item_table
        # identity forward; backward all-reduces the hidden gradient, partial per vocab shard
        hidden = copy_to_tensor_model_parallel_region(hidden)
        dev = hidden.device.type
        mm_dtype = chunk_matmul_dtype(hidden, table)
        with torch.autocast(dev, enabled=False):
            return _ChunkedVocabParallelCrossEntropy.apply(
                hidden.reshape(-1, hidden.shape[-1]), table, masked_targets.reshape(-1), chunk,
                mm_dtype, self.vocab_start_index, self.tp_vocab_pad_mask,
                ps.get_tensor_model_parallel_group())

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


