"""`apply_tp`: megatron-core tensor parallelism applied to the single-device recommender.

What each tensor-parallel (TP) rank holds after `apply_tp(model, plan)`, tp = plan.tp:

    blocks[i].attn.qkv   ColumnParallelLinear  d -> 3d/tp   whole heads: rows [q_h|k_h|v_h]
    blocks[i].attn.proj  RowParallelLinear     d/tp -> d    all-reduce of the output
    blocks[i].mlp.fc     ColumnParallelLinear  d -> d_ff/tp
    blocks[i].mlp.proj   RowParallelLinear     d_ff/tp -> d all-reduce of the output
                         (an MoE block's router and experts: whole on every TP rank)
    item_id_emb          VocabParallelEmbedding rows [vocab_start, vocab_end) of the padded table
    text_emb (buffer)    the same rows of the frozen text table (zero rows for padding)
    everything else      replicated (positions, LayerNorms, text_proj, row-parallel biases)

Attention keeps the model's own SDPA core (`F.scaled_dot_product_attention`), which runs on
CPU and GPU; it reads the number of local heads, n_heads / tp, from the width of the qkv
shard, so the attention module's code is untouched. Its dropout draws from a per-TP-rank
stream (`TensorParallelRNG`, megatron's seed + 2718 + tp_rank rule); all other dropout
draws from the default stream, identical on every TP rank.

The item vocabulary (n_items + 1 rows, row 0 = padding) is padded to `padded_vocab_size`: the
next multiple of make_vocab_size_divisible_by × tp (Megatron-LM's `--make-vocab-size-
divisible-by` rule, default 128), so every rank gets an equal shard. Logit columns of the pad
item and of the padding rows are -inf: they never win a ranking and take no softmax mass.

Output logits are computed against the local vocab shard only ([..., padded/tp]); the loss is
megatron's `vocab_parallel_cross_entropy` (three all-reduces of [B, L] instead of gathering
[B, L, V] logits). `score_last` all-gathers the shards for evaluation.

Weights are COPIED from the single-device model (rank r takes shard r), so a TP model built
from the same seed starts identical to the single-device one. The model's class is swapped
in place to `TensorParallelRecommender`, a subclass that overrides the vocabulary-facing
methods (the same in-place class swap as torch's FSDP2 `fully_shard`); the model file stays
single-device code.

Communication per training step, forward + backward, for L layers (see `tp_comm_per_step`):
2L + 1 all-reduces of [B, T, d] forward (attn.proj, mlp.proj, embedding lookup), 2L + 1
backward (qkv and fc input gradients, logits input gradient), 3 of [B, T] in the loss,
and with text fusion 2 more in backward for text_proj's weight and bias gradients.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from recpar.constants import PAD_ITEM
from recpar.model.config import ModelConfig
from recpar.model.moe import MoEMLP
from recpar.model.recommender import Recommender
from recpar.parallel.plan import ParallelPlan, PlanError
from recpar.parallel.vocab_parallel import VocabShardedItemTable

MAKE_VOCAB_SIZE_DIVISIBLE_BY = 128
"""Megatron-LM's default `--make-vocab-size-divisible-by`: shards a multiple of 128 rows."""


def padded_vocab_size(vocab_size: int, tp: int,
                      make_vocab_size_divisible_by: int = MAKE_VOCAB_SIZE_DIVISIBLE_BY) -> int:
    """Smallest multiple of make_vocab_size_divisible_by × tp that is >= vocab_size.

    Megatron-LM's `_vocab_size_with_padding`. vocab_size counts the pad item (n_items + 1).
    """
    if vocab_size < 1 or tp < 1 or make_vocab_size_divisible_by < 1:
        raise ValueError(f"padded_vocab_size: vocab_size={vocab_size}, tp={tp}, "
                         f"make_vocab_size_divisible_by={make_vocab_size_divisible_by} "
                         "must all be >= 1")
    multiple = make_vocab_size_divisible_by * tp
    return math.ceil(vocab_size / multiple) * multiple


def validate_tp(cfg: ModelConfig, plan: ParallelPlan) -> None:
    """Raise PlanError naming the numbers when cfg cannot be split tp ways."""
    plan.validate(n_heads=cfg.n_heads, n_layers=cfg.n_layers)
    if cfg.d_ff % plan.tp:
        raise PlanError(f"d_ff = {cfg.d_ff} is not divisible by tp = {plan.tp}")


# --- megatron layers that return a tensor ---------------------------------------------------
# megatron's parallel linears return (output, bias); the model calls them like nn.Linear.
# Subclasses (not wrappers) keep the parameter names of the single-device model
# (`blocks.0.attn.qkv.weight`), so optimiser grouping and state-dict keys line up.

# Under CPU autocast the layers take another path. megatron's forward runs the matmul inside
# its own autograd function (LinearWithGradAccumulationAndAsyncCommunication), whose backward
# re-enters autocast for CUDA only (torch.amp.custom_bwd(device_type="cuda")): on CPU it would
# meet a bf16 output gradient and an fp32 weight. There the same TP operators are composed from
# pieces autograd and autocast both know: megatron's own f / g mappings
# (copy_to_tensor_model_parallel_region: identity forward, all-reduce of the input gradient;
# reduce_from_tensor_model_parallel_region: all-reduce forward) around F.linear, which CPU
# autocast runs in bf16 and differentiates in the weight's dtype. Outside CPU autocast (fp32 on
# CPU, anything on CUDA) megatron's forward runs unchanged.

def _cpu_autocast(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu")


@functools.cache
def _layer_classes():
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.tensor_parallel.mappings import (copy_to_tensor_model_parallel_region,
                                                        reduce_from_tensor_model_parallel_region)

    class TPColumnLinear(ColumnParallelLinear):
        """ColumnParallelLinear (gather_output=False) whose forward returns only the output."""

        def forward(self, input_: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            if _cpu_autocast(input_):
                x = copy_to_tensor_model_parallel_region(input_)  # [.., d], grad all-reduced
                return torch.nn.functional.linear(x, self.weight, self.bias)  # [.., out/tp]
            out, _ = super().forward(input_)
            return out

    class TPRowLinear(RowParallelLinear):
        """RowParallelLinear (input_is_parallel=True) whose forward returns only the output."""

        def forward(self, input_: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            if _cpu_autocast(input_):
                partial = torch.nn.functional.linear(input_, self.weight)  # [.., d] partial sum
                out = reduce_from_tensor_model_parallel_region(partial)
                return out + self.bias.to(out.dtype)  # the bias once, after the sum
            out, _ = super().forward(input_)
            return out

    return TPColumnLinear, TPRowLinear


def _megatron_config(cfg: ModelConfig, plan: ParallelPlan, dtype: torch.dtype):
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        **cfg.as_megatron_kwargs(),
        tensor_model_parallel_size=plan.tp,
        pipeline_model_parallel_size=plan.pp,
        # megatron requires it whenever pp > 1 (dtype of what its schedules send between
        # stages; ours are torch.distributed.pipelining's, which send the params' dtype)
        pipeline_dtype=dtype,
        params_dtype=dtype,
        # Allocate on the host (the GPU branch calls torch.cuda.current_device()); apply_tp
        # then moves each new layer to the device the single-device model lives on.
        use_cpu_initialization=True,
        # Weights are copied from the single-device model, not drawn (the GPU init path
        # needs megatron's CUDA-only RNG tracker).
        perform_initialization=False,
        # Needs APEX's fused_weight_gradient_mlp_cuda; plain autograd weight gradients instead.
        gradient_accumulation_fusion=False,
        sequence_parallel=False,
    )


def _shard(t: torch.Tensor, dim: int, rank: int, tp: int) -> torch.Tensor:
    return t.chunk(tp, dim=dim)[rank]


def _copy_linear(dst: nn.Module, src: nn.Linear, weight_dim: int, bias_sharded: bool,
                 rank: int, tp: int) -> None:
    from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes

    dst.to(src.weight.device)
    with torch.no_grad():
        dst.weight.copy_(_shard(src.weight, weight_dim, rank, tp))
        dst.bias.copy_(_shard(src.bias, 0, rank, tp) if bias_sharded else src.bias)
    # megatron marks the weight as sharded only inside its own init, which is skipped here
    # (perform_initialization=False); the grad-norm and checkpoint code read these marks.
    set_tensor_model_parallel_attributes(dst.weight, is_parallel=True, dim=weight_dim, stride=1)


TENSOR_PARALLEL_SEED_OFFSET = 2718
"""megatron's model_parallel_cuda_manual_seed: TP-region seed = seed + 2718 + tp_rank."""


class TensorParallelRNG:
    """Random stream of the tensor-parallel region (attention dropout), one per TP rank.

    What megatron's 'model-parallel-rng' state is, for CPU and GPU alike (megatron's
    CudaRNGStatesTracker and model_parallel_cuda_manual_seed are CUDA-only). Dropout in the
    replicated regions (embeddings, residual branches) keeps drawing from the default stream,
    identical on every TP rank, so the replicated activations stay identical; attention
    dropout on this rank's heads draws from this stream instead, so head groups on different
    ranks get independent masks, as the heads of the single-device model do.
    `enter(device)` swaps this stream in for the device's default generator, `exit()` swaps
    it back (the default stream is left exactly where it was).
    """

    def __init__(self, seed: int):
        self.seed = seed
        """Seed of this rank's stream (run seed + 2718 + tp_rank)."""
        self._states: dict[str, torch.Tensor] = {}  # device -> generator state, lazily seeded
        self._saved: tuple[torch.device, torch.Tensor] | None = None

    @staticmethod
    def _get(device: torch.device) -> torch.Tensor:
        return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()

    @staticmethod
    def _set(device: torch.device, state: torch.Tensor) -> None:
        if device.type == "cuda":
            torch.cuda.set_rng_state(state, device)
        else:
            torch.set_rng_state(state)

    @property
    def active(self) -> bool:
        """Whether the TP stream is swapped in."""
        return self._saved is not None

    def enter(self, device: torch.device) -> None:
        if self._saved is not None:
            raise RuntimeError("TensorParallelRNG.enter: already entered")
        key = str(device)
        if key not in self._states:
            self._states[key] = torch.Generator(device=device).manual_seed(self.seed).get_state()
        self._saved = (device, self._get(device))
        self._set(device, self._states[key])

    def exit(self) -> None:
        if self._saved is None:
            raise RuntimeError("TensorParallelRNG.exit: not entered")
        device, saved = self._saved
        self._states[str(device)] = self._get(device)
        self._set(device, saved)
        self._saved = None


def _fork_attention_dropout(attn: nn.Module, rng: TensorParallelRNG) -> None:
    """Run the attention core (between qkv and proj) on the TP stream while it drops out.

    The model's attention forward is qkv -> SDPA (the only random op) -> proj -> resid
    dropout: the stream is entered after qkv and left before proj, so resid dropout stays on
    the shared stream. Hooks rather than a copy of the forward, so the model file stays the
    single source of the attention code.
    """

    def enter(module, args, output):
        if attn.training and attn.attn_dropout > 0.0:
            rng.enter(output.device)

    def leave(module, args):
        if rng.active:
            rng.exit()

    attn.qkv.register_forward_hook(enter)
    attn.proj.register_forward_pre_hook(leave)


def apply_tp(model: Recommender, plan: ParallelPlan, *,
             make_vocab_size_divisible_by: int = MAKE_VOCAB_SIZE_DIVISIBLE_BY,
             seed: int | None = None) -> "TensorParallelRecommender":
    """Shard `model` in place for this rank's tensor-parallel group; returns the same object.

    Needs `recpar.parallel.process_groups.init_parallel_groups(plan)` first, and every rank of
    a TP group must have built `model` from the same seed (as the training loop does for its
    data-parallel ranks): each rank keeps its own shard of its own copy, nothing is
    broadcast. Call before creating the optimiser and before DDP (`apply_dp` then wraps the
    result over the data-parallel group). With plan.tp == 1 the model is returned unchanged.

    seed: run seed for the attention-dropout stream (`TensorParallelRNG`, seeded
    seed + 2718 + tp_rank); None = torch.initial_seed(), i.e. the last torch.manual_seed.
    """
    if not isinstance(model, Recommender):
        raise TypeError(f"apply_tp: expected a recpar Recommender, got {type(model).__name__}")
    if isinstance(model, TensorParallelRecommender):
        raise ValueError("apply_tp: model is already tensor-parallel")
    cfg = model.cfg
    validate_tp(cfg, plan)
    if plan.tp == 1:
        return model  # type: ignore[return-value]
    # megatron imported only now: the checks above need no megatron (its import costs ~10 s).
    from megatron.core.tensor_parallel import (VocabParallelEmbedding,
                                               set_tensor_model_parallel_attributes)

    from recpar.parallel import process_groups as pg

    if not pg.is_initialized():
        raise RuntimeError("apply_tp: megatron-core groups are not initialised; call "
                           "recpar.parallel.process_groups.init_parallel_groups(plan) first")
    tp, rank = pg.tp_world_size(), pg.tp_rank()
    if tp != plan.tp:
        raise PlanError(f"apply_tp: plan tp = {plan.tp} but the initialised tensor-parallel "
                        f"group has {tp} ranks")
    device = model.item_id_emb.weight.device
    dtype = model.item_id_emb.weight.dtype
    mcfg = _megatron_config(cfg, plan, dtype)
    column, row = _layer_classes()
    ident = lambda w: None  # noqa: E731  (init_method is unused: perform_initialization=False)

    rng = TensorParallelRNG((torch.initial_seed() if seed is None else seed)
                            + TENSOR_PARALLEL_SEED_OFFSET + rank)
    d, f = cfg.d_model, cfg.d_ff
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        qkv = column(d, 3 * d, config=mcfg, init_method=ident, bias=True, gather_output=False)
        attn_proj = row(d, d, config=mcfg, init_method=ident, bias=True,
                        input_is_parallel=True, skip_bias_add=False)
        # column-parallel: output rows (and bias) split; row-parallel: input columns split,
        # bias replicated (added once, after the all-reduce)
        _copy_linear(qkv, attn.qkv, 0, True, rank, tp)
        _copy_linear(attn_proj, attn.proj, 1, False, rank, tp)
        attn.qkv, attn.proj = qkv, attn_proj
        if not isinstance(mlp, MoEMLP):
            fc = column(d, f, config=mcfg, init_method=ident, bias=True, gather_output=False)
            mlp_proj = row(f, d, config=mcfg, init_method=ident, bias=True,
                           input_is_parallel=True, skip_bias_add=False)
            _copy_linear(fc, mlp.fc, 0, True, rank, tp)
            _copy_linear(mlp_proj, mlp.proj, 1, False, rank, tp)
            mlp.fc, mlp.proj = fc, mlp_proj
        # An MoE block's router and experts stay whole on every TP rank (megatron-core's
        # expert_tensor_parallel_size = 1, without its token split over the TP group): each
        # rank routes every token of its replica through full experts. Their input (the
        # residual stream) and their output gradient are the same on every TP rank, so their
        # gradients are complete and equal there, like a LayerNorm's: no TP collective.
        # megatron's name for the local head count; the forward derives it from the width.
        attn.num_attention_heads_per_partition = cfg.n_heads // tp
        _fork_attention_dropout(attn, rng)

    vocab = model.n_items + 1
    padded = padded_vocab_size(vocab, tp, make_vocab_size_divisible_by)
    emb = VocabParallelEmbedding(padded, d, init_method=ident, config=mcfg).to(device)
    start, end = emb.vocab_start_index, emb.vocab_end_index
    full = model.item_id_emb.weight.detach()
    with torch.no_grad():
        emb.weight.zero_()  # padding rows [vocab, padded) stay zero
        emb.weight[: max(0, min(end, vocab) - start)].copy_(full[start:min(end, vocab)])
    set_tensor_model_parallel_attributes(emb.weight, is_parallel=True, dim=0, stride=1)
    model.item_id_emb = emb

    if model.text_emb is not None:
        text = torch.zeros(end - start, model.text_emb.shape[1], dtype=model.text_emb.dtype,
                           device=device)
        text[: max(0, min(end, vocab) - start)] = model.text_emb[start:min(end, vocab)]
        model.register_buffer("text_emb", text, persistent=False)  # [V_local, text_dim]

    ids = torch.arange(start, end, device=device)
    # [V_local] True for the pad item and the padding rows: their logits are -inf.
    model.register_buffer("tp_vocab_pad_mask", (ids == PAD_ITEM) | (ids >= vocab),
                          persistent=False)
    model.vocab_start_index, model.vocab_end_index = start, end
    model.vocab_size = vocab
    model.padded_vocab_size = padded
    model.tp_size = tp
    model.tp_rng = rng
    model.__class__ = TensorParallelRecommender
    return model  # type: ignore[return-value]


class TensorParallelRecommender(VocabShardedItemTable, Recommender):
    """A `Recommender` after `apply_tp`: vocab-sharded item table, TP linears in the blocks.

    Never constructed directly (apply_tp swaps the class of a built model). It differs from
    the single-device model only in its item-table piece (`VocabShardedItemTable`):
    `item_embeddings()` and `logits()` return this rank's vocab shard; `loss_sum`, `loss` and
    `score_last` return the same values as the single-device model, on every TP rank.
    """

    padded_vocab_size: int
    """n_items + 1 rounded up to make_vocab_size_divisible_by × tp."""
    tp_rng: TensorParallelRNG
    """This rank's attention-dropout stream."""

    def reset_parameters(self) -> None:
        raise RuntimeError("reset_parameters on a tensor-parallel model would draw each shard "
                           "independently; re-initialise the single-device model and apply_tp")


def clip_grad_norm_(model: nn.Module, max_norm: float, expert_params=(),
                    ep_group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Clip gradients by the global norm of the model-parallel replica; returns that norm.

    Sharded parameters count on every rank, replicated ones on TP rank 0 only (megatron's
    `param_is_not_tensor_parallel_duplicate`); squares are summed over the model-parallel
    group. `expert_params` sharded over `ep_group` (recpar.parallel.expert_parallel): their
    squares are summed over that group first, so every expert of the model counts once.
    Written here because megatron's get_grad_norm_fp32 allocates on 'cuda' unconditionally;
    the scaling itself is torch's `clip_grads_with_norm_`.
    """
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

    from recpar.parallel import process_groups as pg

    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return torch.zeros(())
    experts = {id(p) for p in expert_params}
    sq = torch.zeros((), dtype=torch.float32, device=params[0].grad.device)
    esq = torch.zeros_like(sq)
    for p in params:
        if param_is_not_tensor_parallel_duplicate(p):
            g2 = p.grad.detach().float().pow(2).sum()
            if id(p) in experts:
                esq = esq + g2
            else:
                sq = sq + g2
    if experts:
        dist.all_reduce(esq, group=ep_group)  # every block of experts once
        sq = sq + esq
    if pg.is_initialized():
        dist.all_reduce(sq, group=pg.model_parallel_group())
    total = sq.sqrt()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


@dataclass(frozen=True)
class TPCommPerStep:
    """Tensor-parallel collectives of one training step (forward + backward), per rank."""

    allreduce_calls: int
    """All-reduces in the TP group per step."""
    allreduce_payload_bytes: int
    """Sum of the all-reduced tensors' sizes (bytes), before the algorithm's own traffic."""
    ring_bytes_per_rank_per_iter: int
    """Bytes each rank sends under a ring all-reduce: 2 (tp-1)/tp × payload."""


def tp_comm_per_step(cfg: ModelConfig, batch_size: int, seq_len: int, tp: int,
                     dtype_bytes: int = 4, clip_grad: bool = False) -> TPCommPerStep:
    """Formula for the TP all-reduces of one training step of `TensorParallelRecommender`.

    Per layer: attn.proj and mlp.proj outputs forward, qkv and fc input gradients backward —
    4 of [B, T, d]; 2 in an MoE block, whose experts are not split (`apply_tp`). Plus the
    embedding lookup (forward) and the logits' hidden-state gradient (backward): 2 of
    [B, T, d]. The vocab-parallel loss: max, target logit, sum of exp —
    3 of [B, T] fp32. Text fusion: text_proj weight and bias gradients, d·text_dim + d.
    clip_grad: one fp32 scalar for the global norm.
    """
    act = batch_size * seq_len * cfg.d_model * dtype_bytes
    per_layer = 4 * cfg.n_layers - 2 * cfg.n_moe_blocks
    calls = per_layer + 2 + 3
    payload = (per_layer + 2) * act + 3 * batch_size * seq_len * 4
    if cfg.text_dim:
        calls += 2
        payload += (cfg.d_model * cfg.text_dim + cfg.d_model) * dtype_bytes
    if clip_grad:
        calls += 1
        payload += 4
    ring = int(2 * (tp - 1) / tp * payload) if tp > 1 else 0
    return TPCommPerStep(allreduce_calls=calls, allreduce_payload_bytes=payload,
                         ring_bytes_per_rank_per_iter=ring)
