"""The recommender as the layer list of DeepSpeed's `PipelineModule` (scheme `deepspeed`; the
layout and the reasons are in `recpar.parallel.deepspeed_pipeline`'s docstring): the tied item
table at both ends (the model's own `TiedItemTable` piece, or the vocab shard's under TP),
positions, the blocks, the final norm, and the loss function DeepSpeed calls.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from recpar.constants import PAD_ITEM
from recpar.model.item_table import TiedItemTable
from recpar.model.loss import cross_entropy_sum
from recpar.model.recommender import Recommender, attention_mask, check_item_ids, positions
from recpar.parallel.vocab_parallel import VocabShardedItemTable, vocab_parallel_cross_entropy_sum

TIED_KEY = "item_table"
"""TiedLayerSpec key of the item table shared by the first and the last layer."""


def _is_tensor_parallel(model: Recommender) -> bool:
    """Whether `model` was sharded by `apply_tp` (a `TensorParallelRecommender`, tp > 1)."""
    return isinstance(model, VocabShardedItemTable)


def _take(module: nn.Module | None, model: Recommender) -> nn.Module | None:
    """A layer's module: a copy of the single-device model's, or under TP the sharded model's
    own module (module docstring: no second copy of a TP shard)."""
    if module is None or _is_tensor_parallel(model):
        return module
    return copy.deepcopy(module)


class ItemTable(TiedItemTable):
    """The tied fused item table (`recpar.model.item_table`), copied from the model.

    forward(ids [mb, L] int) -> (item rows [mb, L, d], ids): the input end
    (`TiedItemTable.embed_items`: the rows are fused for the looked-up items only).
    forward(hidden [mb, L, d] float) -> logits [mb, L, n_items + 1], pad column -inf: the
    output end (`TiedItemTable.logits`, against the whole fused table).
    """

    def __init__(self, model: Recommender):
        super().__init__()
        # modules copied (under TP: the shard's own, module docstring); text table shared
        self.take_item_table(model, lambda m: _take(m, model))
        self.max_seq_len = model.cfg.max_seq_len

    def forward(self, x: torch.Tensor):
        if not x.is_floating_point():  # input end: item ids [mb, L]
            check_item_ids(x, self.max_seq_len)
            return self.embed_items(x), x  # [mb, L, d], [mb, L]
        return self.logits(x)  # [mb, L, d] -> [mb, L, n_items + 1] (or [mb, L, V_local])


class VocabParallelItemTable(VocabShardedItemTable, ItemTable):
    """`ItemTable` of a `TensorParallelRecommender`: this TP rank's vocab shard (tp > 1).

    Holds the sharded model's own `item_id_emb` (megatron `VocabParallelEmbedding`, rows
    [vocab_start_index, vocab_end_index) of the padded vocabulary: [V_local, d]), `text_proj`
    (replicated) and text rows [V_local, text_dim] (not copied, module docstring).
    forward(ids) -> (item rows [mb, L, d], ids), identical on every TP rank (one all-reduce);
    forward(hidden) -> logits of this rank's items [mb, L, V_local], pad item and vocab
    padding rows -inf: the piece's methods are `VocabShardedItemTable`'s.
    """


class PositionEmbedding(nn.Module):
    """(item rows, ids) -> (dropout(item rows + pos_emb[positions(ids)]), ids); pos_emb copied
    (under TP: the sharded model's, replicated)."""

    def __init__(self, model: Recommender):
        super().__init__()
        self.pos_emb = _take(model.pos_emb, model)  # [max_seq_len, d]
        self.drop = _take(model.drop, model)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]):
        x, ids = inputs  # [mb, L, d], [mb, L]
        return self.drop(x + self.pos_emb(positions(ids))), ids


class PipeBlock(nn.Module):
    """Transformer block `index` of the model (copied; under TP the sharded model's own block,
    megatron column/row-parallel linears); the padding mask is rebuilt from ids."""

    def __init__(self, model: Recommender, index: int):
        super().__init__()
        self.index = index
        self.block = _take(model.blocks[index], model)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]):
        x, ids = inputs  # [mb, L, d], [mb, L]
        return self.block(x, attention_mask(ids), ids == PAD_ITEM), ids


class FinalNorm(nn.Module):
    """(hidden, ids) -> ln_f(hidden) [mb, L, d] (copied `ln_f`; under TP the sharded model's,
    replicated); the ids are not needed after."""

    def __init__(self, model: Recommender):
        super().__init__()
        self.ln_f = _take(model.ln_f, model)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.ln_f(inputs[0])


class GlobalMeanLoss:
    """DeepSpeed loss_fn: CE summed over a micro-batch's valid positions / N × (m × dp).

    labels = (targets [mb, L] with IGNORE_INDEX at invalid positions, N: float scalar, the
    valid positions of the whole global batch). The factor m × dp undoes DeepSpeed's division
    by the accumulation steps and its average over dp replicas (module docstring), so gradient
    and reported loss are the baseline's global mean. vocab_parallel: the logits are a TP
    rank's vocab shard [mb, L, V_local] and the CE is megatron's vocab-parallel one (the same
    value on every TP rank).
    """

    def __init__(self, scale: float, vocab_parallel: bool = False):
        self.scale = float(scale)
        """m × dp."""
        self.vocab_parallel = vocab_parallel
        """Logits are vocab-sharded over the TP group (tp > 1)."""
        self.__name__ = type(self).__name__  # DeepSpeed prints loss_fn.__name__

    def __call__(self, logits: torch.Tensor, labels) -> torch.Tensor:
        targets, n_global = labels  # [mb, L], []
        ce = vocab_parallel_cross_entropy_sum if self.vocab_parallel else cross_entropy_sum
        return ce(logits, targets) / n_global * self.scale


def layer_specs(model: Recommender) -> list:
    """The PipelineModule's layer list for `model` (module docstring), weights copied lazily:
    DeepSpeed builds only this stage's layers (and, for `parameters`, each once to count).
    For a `TensorParallelRecommender` the layers hold its modules (no copy) and the tied
    table is `VocabParallelItemTable`."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    tied = model.tied_parameter_names()  # the same names in both tables
    table = VocabParallelItemTable if _is_tensor_parallel(model) else ItemTable
    return [TiedLayerSpec(TIED_KEY, table, model, tied_weight_attr=tied),
            LayerSpec(PositionEmbedding, model),
            *(LayerSpec(PipeBlock, model, i) for i in range(model.cfg.n_layers)),
            LayerSpec(FinalNorm, model),
            TiedLayerSpec(TIED_KEY, table, model, tied_weight_attr=tied)]


def recommender_key(key: str, n_layers: int) -> str:
    """PipelineModule state-dict key -> the single-device `Recommender` key.

    `tied_modules.item_table.item_id_emb.weight` -> `item_id_emb.weight`,
    `1.pos_emb.weight` -> `pos_emb.weight`, `<2+i>.block.ln_1.bias` -> `blocks.<i>.ln_1.bias`,
    `<L+2>.ln_f.weight` -> `ln_f.weight`.
    """
    head, _, rest = key.partition(".")
    if head == "tied_modules":
        return rest.partition(".")[2]
    idx = int(head)
    if 2 <= idx < 2 + n_layers:
        return f"blocks.{idx - 2}.{rest.partition('.')[2]}"
    if idx in (1, n_layers + 2):
        return rest
    raise KeyError(f"recommender_key: {key!r} is not a parameter of the pipeline layers")


