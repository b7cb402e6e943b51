"""One pipeline stage's share of the recommender: a contiguous range of layer units.

`StageModule` holds copies of the units [start, stop) of a `Recommender` (see
`recpar.parallel.partition.unit_names`: embedding, blocks, head) under their single-device
parameter names, so the stages' state dicts merge back into a `Recommender` state dict.

- **Tied item table.** The logits use the fused item table (ID embedding + projected text),
  whose weights live in the embedding unit on the first stage. A stage holding the head but
  not the embedding keeps its own copy of `item_id_emb` and `text_proj` (same names, same
  initial values); `tied_parameters` lists them, and `PipelineRunner` all-reduces their
  gradients with the first stage's after each step so both copies stay identical.
- **Padding mask.** Every stage recomputes the attention mask from the item ids, passed to
  `forward` as `input_ids`; only the hidden states travel between stages.
- **One model path.** The item table's two ends and the loss are the model's own piece
  (`recpar.model.item_table.TiedItemTable`, which `StageModule` inherits), the blocks and the
  final norm are copies of the model's modules: a stage re-implements none of them.
- **Tensor parallelism.** Cut from a `TensorParallelRecommender`, a stage holds this TP
  rank's shards (`TensorParallelStageModule`, whose item-table piece is the vocab shard's);
  `_copy_module` keeps megatron's process groups shared and its TP marks on the copied
  parameters. `build_stage` picks the class.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from recpar.constants import PAD_ITEM
from recpar.device import forward_context
from recpar.model.item_table import TiedItemTable
from recpar.model.recommender import Recommender, attention_mask, check_item_ids, positions
from recpar.parallel.vocab_parallel import VocabShardedItemTable

_TP_PARAM_ATTRS = ("tensor_model_parallel", "partition_dim", "partition_stride")
"""megatron's marks on a sharded parameter (read by grad-norm and checkpoint code)."""


def _copy_module(module: nn.Module | None) -> nn.Module | None:
    """deepcopy that shares process groups and keeps megatron's TP marks on the parameters.

    megatron's parallel layers hold their TP group (a ProcessGroup cannot be copied), and a
    Parameter's deepcopy drops attributes such as `tensor_model_parallel`.
    """
    if module is None:
        return None
    memo: dict[int, object] = {}
    for sub in module.modules():
        for value in vars(sub).values():
            if isinstance(value, dist.ProcessGroup):
                memo[id(value)] = value
    new = copy.deepcopy(module, memo)
    for p in module.parameters():
        q = memo.get(id(p))
        for attr in _TP_PARAM_ATTRS:
            if q is not None and hasattr(p, attr):
                setattr(q, attr, getattr(p, attr))
    return new


class StageModule(TiedItemTable):
    """Layer units [start, stop) of a `Recommender` (see `partition.unit_names`), weights copied.

    Parameter names equal the single-device ones (`item_id_emb.weight`, `blocks.3.attn.qkv
    .weight`, `ln_f.bias`, ...), so the stages' state dicts merge into a `Recommender` state
    dict. A stage holding the head but not the embedding carries its own copies of
    `item_id_emb` and `text_proj` for the tied output layer (module docstring).

    forward(x, input_ids): x is the [mb, L] item ids on the first stage, else the [mb, L, d]
    hidden states; returns [mb, L, d] hidden states, or on the head stage [mb, L, n_items + 1]
    logits ([mb, n_items + 1] for the last position only with last_only=True; [..., V_local]
    under TP).
    """

    autocast_dtype: torch.dtype | None = None
    """Set by `apply_pp`: the forward runs under torch.autocast to this dtype (train.precision
    bf16), None = fp32."""

    def __init__(self, model: Recommender, start: int, stop: int):
        super().__init__()
        cfg = model.cfg
        self.chunk_size = cfg.cross_entropy_chunk_size
        self.hidden_out = bool(self.chunk_size) and stop == cfg.n_layers + 2
        """The head's training forward returns its final hidden states [mb, L, d], not the
        logits: with ModelConfig.cross_entropy_chunk_size the pipeline's loss function scores
        them against the tied table a chunk at a time (`PipelineRunner`); scoring the last
        position (`last_only`, evaluation) still returns logits."""
        n_units = cfg.n_layers + 2
        if not 0 <= start < stop <= n_units:
            raise ValueError(f"StageModule: unit range [{start}, {stop}) outside [0, {n_units})")
        self.start, self.stop = start, stop
        self.max_seq_len = cfg.max_seq_len
        self.has_embedding = start == 0
        self.has_head = stop == n_units
        if self.has_embedding or self.has_head:
            # [n_items + 1, d] (or this TP rank's [V_local, d]) and text_proj, copied; the
            # frozen text table shared
            self.take_item_table(model, _copy_module)
        if self.has_embedding:
            self.pos_emb = _copy_module(model.pos_emb)
            self.drop = _copy_module(model.drop)
        # ModuleDict keyed by the global block index keeps the single-device names.
        first_block, last_block = max(start, 1) - 1, min(stop, n_units - 1) - 1
        self.blocks = nn.ModuleDict({str(i): _copy_module(model.blocks[i])
                                     for i in range(first_block, last_block)})
        if self.has_head:
            self.ln_f = _copy_module(model.ln_f)

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor,
                last_only: bool = False) -> torch.Tensor:
        if self.autocast_dtype is None:
            return self._forward(x, input_ids, last_only)
        with forward_context(self.autocast_dtype, x.device.type):
            out = self._forward(x, input_ids, last_only)
        # Under autocast the head's logits are bf16 (the hidden states stay fp32: the residual
        # stream adds to fp32 embeddings). Handed on as fp32, exactly, as the single-device
        # loss's autocast does before its cross-entropy, so every stage's output template
        # stays fp32 and the loss function sees what the single-device loss sees.
        return out.float()

    def _forward(self, x: torch.Tensor, input_ids: torch.Tensor,
                 last_only: bool) -> torch.Tensor:
        if self.has_embedding:
            ids = x  # [mb, L]
            check_item_ids(ids, self.max_seq_len)
            # the looked-up rows only (Recommender.embed without an item table)
            x = self.drop(self.embed_items(ids) + self.pos_emb(positions(ids)))  # [mb, L, d]
        if len(self.blocks):
            mask = attention_mask(input_ids)  # [mb, 1, L, L], recomputed on every stage
            pad = input_ids == PAD_ITEM  # [mb, L]
            for block in self.blocks.values():
                x = block(x, mask, pad)
        if not self.has_head:
            return x  # [mb, L, d]
        h = self.ln_f(x[:, -1] if last_only else x)  # [mb, d] or [mb, L, d]
        if self.hidden_out and not last_only:
            return h  # [mb, L, d]: the loss computes its logits a chunk at a time
        return self.logits(h)  # [..., n_items + 1], or [..., V_local] under TP

    def head_loss_sum(self, out: torch.Tensor, masked_targets: torch.Tensor) -> torch.Tensor:
        """The head's summed cross-entropy of its training output `out`: logits (the item
        table's `cross_entropy_sum`, vocab-parallel under TP), or hidden states scored a chunk
        at a time (`hidden_out`)."""
        if self.hidden_out:
            return self.chunked_cross_entropy_sum(out, masked_targets, self.chunk_size)
        return self.cross_entropy_sum(out, masked_targets)

    def tied_parameters(self) -> list[nn.Parameter]:
        """Parameters of the tied item table held by this stage (empty if neither end)."""
        if not (self.has_embedding or self.has_head):
            return []
        return super().tied_parameters()


class TensorParallelStageModule(VocabShardedItemTable, StageModule):
    """A `StageModule` cut from a `TensorParallelRecommender`: its item-table piece is this TP
    rank's vocab shard (`VocabShardedItemTable`: the fused shard's lookup with one all-reduce,
    logits of this rank's items, megatron's vocab-parallel cross-entropy)."""


def build_stage(model: Recommender, start: int, stop: int) -> StageModule:
    """The stage of units [start, stop) of `model`, tensor-parallel when `model` is."""
    cls = TensorParallelStageModule if isinstance(model, VocabShardedItemTable) else StageModule
    return cls(model, start, stop)
