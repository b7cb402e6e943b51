"""Pipeline parallelism for the recommender on `torch.distributed.pipelining`.

`apply_pp` cuts the single-device `Recommender` into stages (`recpar.parallel.partition`:
uniform, or balanced from a profiling pass), builds this rank's stage module(s) from copies of
the model's weights, and returns a `PipelineRunner` that trains one global batch per `step`
with torch's GPipe, 1F1B or interleaved 1F1B schedule (they run on CPU/gloo and on NCCL;
megatron-core's pipeline schedules hard-code CUDA, see DESIGN.md).

Design choices:

- **Tied item table.** The logits use the fused item table (ID embedding + projected text),
  whose weights live in the embedding unit on the first stage. The last stage keeps its own
  copy of `item_id_emb` and `text_proj` (same names, same initial values) and after each step
  the two copies' gradients are summed by an all-reduce between the first and last stage,
  so both apply the same update and stay identical: what Megatron does for tied embeddings
  (its "embedding group"). Computing the logits on the first stage instead would need the
  last hidden states sent back to rank 0 every micro-batch, which the linear schedules do not
  do. The copy costs memory ((n_items + 1) x d on the last stage) and one all-reduce of the
  tied gradients per step.
- **Padding mask.** Every stage recomputes the attention mask from the item ids, which each
  rank receives as a keyword argument of `schedule.step` (every pipeline rank reads the same
  global batch, as in Megatron where first and last stage both read the data). Only the
  hidden states [mb, L, d] travel between stages; the ids cost no communication.
- **Loss.** The last stage returns logits; the loss function sums the cross-entropy of a
  micro-batch over its valid positions and divides by the number of valid positions in the
  *global* batch, and the schedule runs with scale_grads=False. The summed gradient over
  micro-batches is then exactly the gradient of the single-device mean loss.
- **Evaluation.** `score_last` runs the stages one after another with blocking send/recv
  (forward only, last position only) and broadcasts the [B, n_items + 1] scores from the last
  stage, so every rank can run `recpar.eval.evaluate` unchanged.

Stage metadata (shapes of what travels) is given statically from the micro-batch shape, so
no metadata-inference forward runs inside the first step; a batch of another size gets its
own stage objects and schedule (built once, cached), on every rank alike.

**With tensor parallelism** (`apply_pp` over a model `apply_tp` has sharded): the stages
are cut from the TP shard this rank holds; each TP rank of a stage runs the same schedule,
so the TP all-reduces inside a stage pair up. Copies keep megatron's process groups shared
and its TP marks on the parameters (`_copy_module`); the first stage looks up the
vocab-sharded item table with one all-reduce, the last stage's logits are this rank's vocab
shard and the loss is megatron's vocab-parallel cross-entropy, as in
`TensorParallelRecommender`. The gradient norm is summed over the model-parallel group
(`norm_group`), TP-replicated parameters counted on TP rank 0 only.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
)

from recpar.device import device_sync
from recpar.model.recommender import PAD_ITEM, Recommender, attention_mask, positions
from recpar.parallel.partition import Partition, Profile, cut, profile_units, unit_names
from recpar.parallel.pipeline_theory import bubble_fraction_theory, bubble_ratio_theory
from recpar.parallel.plan import ParallelPlan, PlanError

SCHEDULE_CLASSES = {
    "gpipe": ScheduleGPipe,
    "1f1b": Schedule1F1B,
    "interleaved-1f1b": ScheduleInterleaved1F1B,
}
"""ParallelPlan.pipeline_schedule -> torch.distributed.pipelining schedule class."""

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index


# --- loss ------------------------------------------------------------------------------------


def prepare_targets(input_ids: torch.Tensor, targets: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets with invalid positions set to IGNORE_INDEX, valid count as a float tensor >= 1).

    Valid = real target after a real input, the rule of `Recommender.loss_sum`; the count is
    clamped to 1 as `Recommender.loss` does (an all-padding batch has loss 0).
    """
    valid = (targets != PAD_ITEM) & (input_ids != PAD_ITEM)  # [B, L]
    masked = targets.masked_fill(~valid, IGNORE_INDEX)
    return masked, valid.sum().clamp(min=1).to(torch.float32)


def microbatch_loss(logits: torch.Tensor, masked_targets: torch.Tensor,
                    valid_count: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over one micro-batch's valid positions / global valid count.

    logits [mb, L, n_items + 1]; masked_targets [mb, L] (IGNORE_INDEX where invalid);
    valid_count: scalar, valid positions in the whole global batch. Summing this over the
    micro-batches gives the single-device mean loss, and so the same gradient.
    """
    total = F.cross_entropy(logits.flatten(0, 1), masked_targets.flatten(),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total / valid_count


def vocab_parallel_microbatch_loss(logits: torch.Tensor, masked_targets: torch.Tensor,
                                   valid_count: torch.Tensor) -> torch.Tensor:
    """`microbatch_loss` for vocab-sharded logits [mb, L, V_local] (tensor parallelism).

    megatron's vocab_parallel_cross_entropy has no ignore_index: ignored positions get target
    item 1 (finite loss) and are zeroed with `where`, so they add neither loss nor gradient.
    """
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    valid = masked_targets != IGNORE_INDEX  # [mb, L]
    per_pos = vocab_parallel_cross_entropy(logits, masked_targets.masked_fill(~valid, 1))
    return torch.where(valid, per_pos, torch.zeros_like(per_pos)).sum() / valid_count


# --- stage module ----------------------------------------------------------------------------

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



class StageModule(nn.Module):
    """Layer units [start, stop) of a `Recommender` (see `partition.unit_names`), weights copied.

    Parameter names equal the single-device ones (`item_id_emb.weight`, `blocks.3.attn.qkv
    .weight`, `ln_f.bias`, ...), so the stages' state dicts merge into a `Recommender` state
    dict. A stage holding the head but not the embedding carries its own copies of
    `item_id_emb` and `text_proj` for the tied output layer (module docstring). Cut from a
    `TensorParallelRecommender`, it holds this TP rank's shards (`vocab_parallel`).

    forward(x, input_ids): x is the [mb, L] item ids on the first stage, else the [mb, L, d]
    hidden states; returns [mb, L, d] hidden states, or on the head stage [mb, L, n_items + 1]
    logits ([mb, n_items + 1] for the last position only with last_only=True).
    """

    def __init__(self, model: Recommender, start: int, stop: int):
        super().__init__()
        cfg = model.cfg
        n_units = cfg.n_layers + 2
        if not 0 <= start < stop <= n_units:
            raise ValueError(f"StageModule: unit range [{start}, {stop}) outside [0, {n_units})")
        self.start, self.stop = start, stop
        self.max_seq_len = cfg.max_seq_len
        self.has_embedding = start == 0
        self.has_head = stop == n_units
        # Tensor-parallel model: the item table is this rank's vocab shard.
        self.vocab_parallel = getattr(model, "tp_size", 1) > 1
        if self.has_embedding or self.has_head:
            # [n_items + 1, d], or [V_local, d] (VocabParallelEmbedding) under TP
            self.item_id_emb = _copy_module(model.item_id_emb)
            self.text_proj = _copy_module(model.text_proj)  # text_dim -> d, or None
            # The frozen text table is shared with the model, not copied: it never changes.
            self.register_buffer("text_emb", model.text_emb, persistent=False)
            if self.vocab_parallel:
                self.vocab_start_index = model.vocab_start_index
                self.vocab_end_index = model.vocab_end_index
                # [V_local] True for the pad item and the vocab padding rows
                self.register_buffer("tp_vocab_pad_mask", model.tp_vocab_pad_mask,
                                     persistent=False)
        if self.has_embedding:
            self.pos_emb = _copy_module(model.pos_emb)
            self.drop = _copy_module(model.drop)
        # ModuleDict keyed by the global block index keeps the single-device names.
        first_block, last_block = max(start, 1) - 1, min(stop, n_units - 1) - 1
        self.blocks = nn.ModuleDict({str(i): _copy_module(model.blocks[i])
                                     for i in range(first_block, last_block)})
        if self.has_head:
            self.ln_f = _copy_module(model.ln_f)

    def item_table(self) -> torch.Tensor:
        """Fused item table [n_items + 1, d], as `Recommender.item_embeddings` ([V_local, d]
        under TP, as `TensorParallelRecommender.item_embeddings`)."""
        if self.vocab_parallel:
            from recpar.parallel.tensor_parallel import TensorParallelRecommender

            return TensorParallelRecommender.item_embeddings(self)  # type: ignore[arg-type]
        table = self.item_id_emb.weight
        if self.text_proj is not None:
            table = table + self.text_proj(self.text_emb)
        return table

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor,
                last_only: bool = False) -> torch.Tensor:
        if self.has_embedding:
            ids = x  # [mb, L]
            if ids.shape[1] > self.max_seq_len:
                raise ValueError(f"StageModule: sequence length {ids.shape[1]} exceeds "
                                 f"max_seq_len={self.max_seq_len}")
            if self.vocab_parallel and self.text_proj is not None:
                from recpar.parallel.tensor_parallel import _vocab_parallel_lookup

                # the text rows are sharded too: look up the fused shard, one all-reduce
                x = _vocab_parallel_lookup(ids, self.item_table(), self.vocab_start_index,
                                           self.vocab_end_index)  # [mb, L, d]
            else:
                # Fuse only the looked-up rows (Recommender.embed without item_table): the
                # same sum as gathering from the fused table, for mb*L rows, not all items.
                # (Under TP without text: VocabParallelEmbedding, masked lookup + all-reduce.)
                x = self.item_id_emb(ids)  # [mb, L, d]
                if self.text_proj is not None:
                    x = x + self.text_proj(F.embedding(ids, self.text_emb))
            x = self.drop(x + self.pos_emb(positions(ids)))
        if len(self.blocks):
            mask = attention_mask(input_ids)  # [mb, 1, L, L], recomputed on every stage
            for block in self.blocks.values():
                x = block(x, mask)
        if not self.has_head:
            return x  # [mb, L, d]
        h = self.ln_f(x[:, -1] if last_only else x)  # [mb, d] or [mb, L, d]
        if self.vocab_parallel:
            from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

            # identity forward; backward all-reduces the hidden-state gradient over TP
            h = copy_to_tensor_model_parallel_region(h)
            scores = h @ self.item_table().t()  # [..., V_local]
            return scores.masked_fill(self.tp_vocab_pad_mask, float("-inf"))
        scores = h @ self.item_table().t()  # [..., n_items + 1]
        pad = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        pad[PAD_ITEM] = True
        return scores.masked_fill(pad, float("-inf"))

    def tied_parameters(self) -> list[nn.Parameter]:
        """Parameters of the tied item table held by this stage (empty if neither end)."""
        if not (self.has_embedding or self.has_head):
            return []
        params = [self.item_id_emb.weight]
        if self.text_proj is not None:
            params += list(self.text_proj.parameters())
        return params


# --- instrumented stage ----------------------------------------------------------------------


class _InstrumentedStage(PipelineStage):
    """A `PipelineStage` that times its forward/backward compute and counts bytes it sends.

    Only the hooks torch's schedules call per micro-batch are wrapped; all scheduling,
    buffering and communication is torch's. On CUDA each timed region is bracketed by device
    syncs (the schedule blocks on its P2P work anyway).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reset_counters()

    def reset_counters(self) -> None:
        self.forward_s = 0.0
        self.backward_s = 0.0
        self.activation_bytes_sent = 0
        self.grad_bytes_sent = 0

    def forward_maybe_with_nosync(self, *args, **kwargs):
        device_sync(self.device)
        t0 = time.perf_counter()
        out = super().forward_maybe_with_nosync(*args, **kwargs)
        device_sync(self.device)
        self.forward_s += time.perf_counter() - t0
        return out

    def backward_maybe_with_nosync(self, *args, **kwargs):
        device_sync(self.device)
        t0 = time.perf_counter()
        out = super().backward_maybe_with_nosync(*args, **kwargs)
        device_sync(self.device)
        self.backward_s += time.perf_counter() - t0
        return out

    def get_fwd_send_ops(self, fwd_chunk_id: int):
        ops = super().get_fwd_send_ops(fwd_chunk_id)
        self.activation_bytes_sent += sum(op.tensor.numel() * op.tensor.element_size()
                                          for op in ops)
        return ops

    def get_bwd_send_ops(self, bwd_chunk_id: int):
        ops = super().get_bwd_send_ops(bwd_chunk_id)
        self.grad_bytes_sent += sum(op.tensor.numel() * op.tensor.element_size() for op in ops)
        return ops


# --- runner ----------------------------------------------------------------------------------


@dataclass
class PipelineStepResult:
    """What one pipeline training step did on this rank (times are wall clock)."""

    loss: float
    """Global-batch mean loss over valid positions (same on every rank when broadcast)."""
    stage_indices: list[int]
    """Pipeline stages this rank holds."""
    schedule_ms: float
    """Wall time of `schedule.step` (all micro-batches, forward and backward), ms."""
    forward_ms: float
    """Time in this rank's stage forwards, ms."""
    backward_ms: float
    """Time in this rank's stage backwards (the last stage's includes the loss backward), ms."""
    loss_ms: float
    """Time computing micro-batch losses (last stage only), ms."""
    compute_ms: float
    """forward_ms + backward_ms + loss_ms."""
    idle_ms: float
    """schedule_ms - compute_ms: waiting on other stages and P2P transfers (the bubble)."""
    bubble_fraction_measured: float
    """idle_ms / schedule_ms; compare with bubble_fraction_theory."""
    bubble_ratio_measured: float
    """idle_ms / compute_ms; compare with bubble_ratio_theory = (p - 1) / (v m)."""
    activation_bytes_sent: int
    """Bytes of activations this rank sent to the next stage(s) this step."""
    activation_grad_bytes_sent: int
    """Bytes of activation gradients this rank sent to the previous stage(s) this step."""
    tied_grad_allreduce_ms: float
    """Time of the tied item-table gradient all-reduce (first and last stage; else 0), ms."""
    tied_grad_payload_bytes: int
    """Size of the tied gradients all-reduced by this rank (0 on middle ranks)."""
    loss_broadcast_ms: float
    """Time broadcasting the loss from the last stage, ms."""

    def to_record(self) -> dict:
        return asdict(self)


@dataclass
class _Built:
    """Stage objects and schedule for one micro-batch shape."""

    stages: list[_InstrumentedStage]
    """This rank's torch PipelineStage wrappers (over the runner's StageModules)."""
    schedule: object
    """The torch.distributed.pipelining schedule driving them."""


@dataclass
class PipelineRunner:
    """This rank's share of a pipelined recommender and the schedule that trains it.

    Usage per optimiser step (every rank of the pipeline group, same global batch):
        opt.zero_grad(set_to_none=True)
        res = runner.step(input_ids, targets)
        runner.clip_grad_norm_(max_norm)   # optional; global norm over all stages
        opt.step()
    with `opt` built over `runner.module.parameters()`.
    """

    plan: ParallelPlan
    """The plan (pp, num_microbatches, pipeline_schedule, partition_method)."""
    partition: Partition
    """Stage boundaries over layer units (pp x virtual stages of them)."""
    profile: Profile | None
    """Profiling pass behind the partition (None for an unprofiled uniform cut)."""
    names: list[str]
    """Layer unit names."""
    pp_rank: int
    """This rank's index in the pipeline group."""
    stage_indices: list[int]
    """Stages held by this rank (one, or v for interleaved: pp_rank + k pp)."""
    module: nn.ModuleList
    """This rank's StageModules in stage order: build the optimiser over its parameters."""
    device: torch.device
    """Device of the stage modules."""
    virtual_stages: int
    """Stages per rank (1, or the interleaved schedule's virtual pipeline size)."""
    d_model: int
    """Hidden size: the [mb, L, d_model] activations travel between stages."""
    n_cols: int
    """n_items + 1: width of the logits / scores."""
    pp_group: object = None
    """Pipeline process group (None = the default group)."""
    embedding_group: object = None
    """Group of the first and last stage's ranks for the tied-gradient all-reduce."""
    broadcast_loss: bool = True
    """Broadcast the loss from the last stage so every rank returns it."""
    vocab_parallel: bool = False
    """Stages hold TP shards of the item table: logits [..., local_cols], vocab-parallel loss."""
    local_cols: int | None = None
    """Width of this rank's logits under TP (padded vocab / tp); None = n_cols."""
    tp_group: object = None
    """Tensor-parallel group (`score_last` gathers the vocab shards over it)."""
    tp_rank: int = 0
    """Rank in the TP group: TP-replicated parameters enter the grad norm on TP rank 0 only."""
    norm_group: object = None
    """Group the squared gradient norm is summed over (None = pp_group; under TP megatron's
    model-parallel group, tp x pp ranks)."""
    stage_wrappers: list | None = None
    """Modules handed to torch's PipelineStage instead of `module`'s entries, same order (e.g.
    DDP over the data-parallel group: torch's stages run DDP's no_sync until the last
    micro-batch); None = the StageModules themselves."""
    _built: dict = field(default_factory=dict, repr=False)
    _loss_s: float = field(default=0.0, repr=False)

    # -- layout --
    @property
    def num_stages(self) -> int:
        return self.partition.num_stages

    def _stage_rank(self, stage: int) -> int:
        return stage % self.plan.pp  # torch's "loop" stage -> rank mapping

    def _global(self, group_rank: int) -> int:
        if self.pp_group is None:
            return group_rank
        return dist.get_global_rank(self.pp_group, group_rank)

    @property
    def is_first(self) -> bool:
        return 0 in self.stage_indices

    @property
    def is_last(self) -> bool:
        return self.num_stages - 1 in self.stage_indices

    def _tied_params(self) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        for mod in self.module:
            params += mod.tied_parameters()
        return params

    def train(self, mode: bool = True) -> "PipelineRunner":
        self.module.train(mode)
        return self

    def eval(self) -> "PipelineRunner":
        return self.train(False)

    # -- schedule --
    def _loss_fn(self, logits: torch.Tensor, target: torch.Tensor,
                 valid_count: torch.Tensor) -> torch.Tensor:
        device_sync(self.device)
        t0 = time.perf_counter()
        loss_fn = vocab_parallel_microbatch_loss if self.vocab_parallel else microbatch_loss
        loss = loss_fn(logits, target, valid_count)
        device_sync(self.device)
        self._loss_s += time.perf_counter() - t0
        return loss

    def _schedule_for(self, mb: int, seq_len: int) -> _Built:
        key = (mb, seq_len)
        if key in self._built:
            return self._built[key]
        dtype = next(self.module.parameters()).dtype
        d_model, n_cols = self.d_model, self.local_cols or self.n_cols
        stages = []
        submods = self.stage_wrappers or list(self.module)
        for s, mod in zip(self.stage_indices, submods):
            if s == 0:
                inp = torch.empty(mb, seq_len, dtype=torch.long, device=self.device)  # ids
            else:
                inp = torch.empty(mb, seq_len, d_model, dtype=dtype, device=self.device,
                                  requires_grad=True)  # hidden states
            if s == self.num_stages - 1:
                out = torch.empty(mb, seq_len, n_cols, dtype=dtype, device=self.device,
                                  requires_grad=True)  # logits [mb, L, n_items + 1 or V_local]
            else:
                out = torch.empty(mb, seq_len, d_model, dtype=dtype, device=self.device,
                                  requires_grad=True)
            stages.append(_InstrumentedStage(mod, s, self.num_stages, self.device,
                                             input_args=(inp,), output_args=(out,),
                                             group=self.pp_group))
        cls = SCHEDULE_CLASSES[self.plan.pipeline_schedule]
        arg = stages if self.plan.pipeline_schedule == "interleaved-1f1b" else stages[0]
        schedule = cls(arg, self.plan.num_microbatches, loss_fn=self._loss_fn,
                       scale_grads=False)
        built = self._built[key] = _Built(stages, schedule)
        return built

    # -- training --
    def step(self, input_ids: torch.Tensor, targets: torch.Tensor,
             valid_count: torch.Tensor | float | None = None) -> PipelineStepResult:
        """One forward+backward over a global batch on every rank of the pipeline group.

        input_ids, targets: [B, L] int64 (the same on every rank); B must be a multiple of
        num_microbatches. Leaves summed gradients in the stage parameters (tied copies
        all-reduced), ready for the optimiser. Collective: all pipeline ranks call it.
        valid_count: what the loss sum is divided by; None = the valid positions of this
        batch (a data-parallel replica passes the global batch's count / dp, so that DDP's
        average over replicas gives the single-device gradient).
        """
        if input_ids.dim() != 2 or targets.shape != input_ids.shape:
            raise ValueError(f"PipelineRunner.step: input_ids {tuple(input_ids.shape)} and "
                             f"targets {tuple(targets.shape)} must be the same [B, L] shape")
        b, seq_len = input_ids.shape
        m = self.plan.num_microbatches
        if b % m:
            raise PlanError(f"global batch of {b} sequences is not divisible by "
                            f"num_microbatches = {m}")
        input_ids, targets = input_ids.to(self.device), targets.to(self.device)
        built = self._schedule_for(b // m, seq_len)
        masked, count = prepare_targets(input_ids, targets)
        if valid_count is not None:
            count = torch.as_tensor(valid_count, dtype=torch.float32,
                                    device=self.device).clamp(min=1)
        for st in built.stages:
            st.reset_counters()
        self._loss_s = 0.0
        losses: list[torch.Tensor] = []

        device_sync(self.device)
        t0 = time.perf_counter()
        built.schedule.step(input_ids, target=masked, losses=losses, return_outputs=False,
                            loss_kwargs={"valid_count": count}, input_ids=input_ids)
        device_sync(self.device)
        schedule_s = time.perf_counter() - t0

        tied_s, tied_bytes = self._allreduce_tied_grads()

        t1 = time.perf_counter()
        loss = (torch.stack([l.detach() for l in losses]).sum() if self.is_last
                else torch.zeros((), device=self.device))
        if self.broadcast_loss:
            loss = loss.to(torch.float32).contiguous()
            dist.broadcast(loss, src=self._global(self._stage_rank(self.num_stages - 1)),
                           group=self.pp_group)
        loss_value = float(loss) if (self.is_last or self.broadcast_loss) else math.nan
        bcast_s = time.perf_counter() - t1

        fwd = sum(st.forward_s for st in built.stages)
        bwd = sum(st.backward_s for st in built.stages)
        compute = fwd + bwd + self._loss_s
        idle = max(schedule_s - compute, 0.0)
        return PipelineStepResult(
            loss=loss_value,
            stage_indices=list(self.stage_indices),
            schedule_ms=schedule_s * 1e3,
            forward_ms=fwd * 1e3,
            backward_ms=bwd * 1e3,
            loss_ms=self._loss_s * 1e3,
            compute_ms=compute * 1e3,
            idle_ms=idle * 1e3,
            bubble_fraction_measured=idle / schedule_s if schedule_s > 0 else 0.0,
            bubble_ratio_measured=idle / compute if compute > 0 else 0.0,
            activation_bytes_sent=sum(st.activation_bytes_sent for st in built.stages),
            activation_grad_bytes_sent=sum(st.grad_bytes_sent for st in built.stages),
            tied_grad_allreduce_ms=tied_s * 1e3,
            tied_grad_payload_bytes=tied_bytes,
            loss_broadcast_ms=bcast_s * 1e3,
        )

    def _allreduce_tied_grads(self) -> tuple[float, int]:
        """Sum the tied item-table gradients of the first and last stage (one all-reduce)."""
        params = self._tied_params()
        if not params or (self.is_first and self.is_last):
            return 0.0, 0
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        device_sync(self.device)
        t0 = time.perf_counter()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.embedding_group)
        device_sync(self.device)
        dt = time.perf_counter() - t0
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n
        return dt, flat.numel() * flat.element_size()

    def clip_grad_norm_(self, max_norm: float) -> float:
        """Clip all stages' gradients to a global L2 norm of max_norm; returns the norm.

        Collective over the pipeline group (`norm_group` when set). The tied table is counted
        once (the last stage's copy is left out of the norm), and under TP replicated
        parameters once (TP rank 0), so the norm equals the single-device one.
        """
        tied_copies = set()
        if not self.is_first:
            tied_copies = {id(p) for p in self._tied_params()}
        elif self.is_last:  # both ends on this rank: count only the first stage's copy
            tied_copies = {id(p) for p in self.module[-1].tied_parameters()}
        grads = [p.grad for p in self.module.parameters()
                 if p.grad is not None and id(p) not in tied_copies
                 and (self.tp_rank == 0 or getattr(p, "tensor_model_parallel", False))]
        sq = (torch.nn.utils.get_total_norm(grads, 2.0).to(torch.float64) ** 2 if grads
              else torch.zeros((), dtype=torch.float64, device=self.device))
        sq = sq.reshape(1).to(self.device)
        dist.all_reduce(sq, op=dist.ReduceOp.SUM,
                        group=self.pp_group if self.norm_group is None else self.norm_group)
        total = sq.sqrt().to(torch.float32).reshape(())
        if max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(
                [p for p in self.module.parameters() if p.grad is not None], max_norm, total)
        return float(total)

    # -- evaluation --
    @torch.no_grad()
    def score_last(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] histories -> [B, n_items + 1] next-item scores (pad column -inf) on every rank.

        Collective: every pipeline rank calls it with the same histories. The stages run in
        order with blocking send/recv of [B, L, d] hidden states; the last stage scores only
        the last position and broadcasts the scores (B x (n_items + 1) floats). Put the runner
        in eval mode first (`runner.eval()`), as for the single-device model.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"score_last: input_ids must be [B, L], got {tuple(input_ids.shape)}")
        input_ids = input_ids.to(self.device)
        b, seq_len = input_ids.shape
        dtype = next(self.module.parameters()).dtype
        d_model = self.d_model
        local = dict(zip(self.stage_indices, self.module))
        x: torch.Tensor | None = None
        last = self.num_stages - 1
        for s in range(self.num_stages):
            owner = self._stage_rank(s)
            if owner != self.pp_rank:
                continue
            if s == 0:
                x = input_ids
            elif self._stage_rank(s - 1) != self.pp_rank:
                x = torch.empty(b, seq_len, d_model, dtype=dtype, device=self.device)
                dist.recv(x, src=self._global(self._stage_rank(s - 1)), group=self.pp_group)
            x = local[s](x, input_ids=input_ids, last_only=(s == last))
            if s == last and self.vocab_parallel:  # [B, V_local] -> [B, n_items + 1]
                shards = [torch.empty_like(x) for _ in range(dist.get_world_size(self.tp_group))]
                dist.all_gather(shards, x.contiguous(), group=self.tp_group)
                x = torch.cat(shards, dim=-1)[:, : self.n_cols]
            if s < last and self._stage_rank(s + 1) != self.pp_rank:
                dist.send(x.contiguous(), dst=self._global(self._stage_rank(s + 1)),
                          group=self.pp_group)
        scores = x if self.is_last else torch.empty(b, self.n_cols, dtype=dtype, device=self.device)
        dist.broadcast(scores, src=self._global(self._stage_rank(last)), group=self.pp_group)
        return scores

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """All stages' parameters gathered on every rank under single-device names (CPU
        tensors), loadable into a `Recommender` with the same config. Collective; pickles
        the weights through all_gather_object, so meant for checkpoints and checks, not for
        every step."""
        # (non-tensor entries, e.g. megatron's `_extra_state` = None under TP, are skipped)
        mine = {k: v.detach().cpu() for mod in self.module for k, v in mod.state_dict().items()
                if isinstance(v, torch.Tensor)}
        gathered: list[dict] = [None] * self.plan.pp  # type: ignore[list-item]
        dist.all_gather_object(gathered, mine, group=self.pp_group)
        merged: dict[str, torch.Tensor] = {}
        for part in gathered:  # group rank order: rank 0 holds stage 0, the tied originals
            for k, v in part.items():
                merged.setdefault(k, v)
        return merged

    def gather_step_results(self, result: PipelineStepResult) -> list[dict]:
        """Every rank's step result, in pipeline-rank order, on every rank. Collective."""
        out: list[dict] = [None] * self.plan.pp  # type: ignore[list-item]
        dist.all_gather_object(out, result.to_record(), group=self.pp_group)
        return out

    def to_record(self) -> dict:
        """Layout and theory for the run record."""
        v = self.virtual_stages
        return {
            "pipeline_schedule": self.plan.pipeline_schedule,
            "pp": self.plan.pp,
            "num_microbatches": self.plan.num_microbatches,
            "virtual_pipeline_model_parallel_size": v,
            "stage_to_rank": [self._stage_rank(s) for s in range(self.num_stages)],
            "partition": self.partition.to_record(self.names),
            "profile": None if self.profile is None else self.profile.to_record(),
            "bubble_ratio_theory": bubble_ratio_theory(self.plan.pp, self.plan.num_microbatches, v),
            "bubble_fraction_theory": bubble_fraction_theory(self.plan.pp,
                                                             self.plan.num_microbatches, v),
            "tied_embedding": "copy on last stage, gradients all-reduced with first stage",
        }


# --- apply -----------------------------------------------------------------------------------


def apply_pp(model: Recommender, plan: ParallelPlan, stage_index: int,
             example_microbatch: tuple[torch.Tensor, torch.Tensor], *,
             pp_group=None, embedding_group=None, profile: Profile | bool | None = None,
             profile_repeats: int = 5, virtual_pipeline_model_parallel_size: int = 2,
             broadcast_loss: bool = True) -> PipelineRunner:
    """Build this rank's pipeline stage(s) from the single-device `model`; return the runner.

    model: the single-device Recommender, built identically (same seed) on every pipeline
        rank; this rank's units are deep-copied out of it (the caller may drop it afterwards).
    plan: pp, num_microbatches, pipeline_schedule, partition_method.
    stage_index: this rank's index in the pipeline group (must equal its group rank); with
        interleaved 1F1B the rank holds stages stage_index + k pp, k < v.
    example_microbatch: (input_ids, targets) [mb, L] of one micro-batch; its shape sets the
        static stage metadata and it is the profiling input.
    pp_group: process group of the pipeline (None = default group, size must be pp).
    embedding_group: group of the ranks holding the first and last stage (tied table); built
        here when pp_group is the default group, required otherwise when pp > 2 (on the
        ranks of the first and last stage; the others never use it).
    profile: a `Profile` to use, True to profile, None to profile only for `balanced`.
        Profiling runs on pipeline rank 0 and is broadcast, so every rank cuts alike.
    virtual_pipeline_model_parallel_size: stages per rank for interleaved 1F1B (megatron-core's
        name); ignored by the other schedules.
    """
    plan.validate()
    if plan.pp < 2:
        raise PlanError(f"apply_pp: pp = {plan.pp}; pipeline parallelism needs pp >= 2")
    v = virtual_pipeline_model_parallel_size if plan.pipeline_schedule == "interleaved-1f1b" else 1
    if not isinstance(v, int) or v < 1:
        raise PlanError(f"apply_pp: virtual_pipeline_model_parallel_size must be a positive "
                        f"integer, got {v!r}")
    ids, targets = example_microbatch
    if ids.dim() != 2 or targets.shape != ids.shape:
        raise PlanError(f"apply_pp: example micro-batch must be two [mb, L] tensors, got "
                        f"{tuple(ids.shape)} and {tuple(targets.shape)}")
    names = unit_names(model.cfg.n_layers)
    n_stages = plan.pp * v
    if n_stages > len(names):
        raise PlanError(f"apply_pp: pp = {plan.pp} x {v} virtual stage(s) = {n_stages} stages "
                        f"but the model has only {len(names)} layer units (embedding, "
                        f"{model.cfg.n_layers} blocks, head)")
    if plan.partition_method == "uniform":
        cut(None, n_stages, "uniform", n_units=len(names))  # fail before any communication

    if not dist.is_available() or not dist.is_initialized():
        raise PlanError(f"apply_pp: torch.distributed is not initialised (need {plan.pp} ranks)")
    group_size = dist.get_world_size(pp_group)
    if group_size != plan.pp:
        raise PlanError(f"apply_pp: pipeline group has {group_size} ranks but pp = {plan.pp}")
    pp_rank = dist.get_rank(pp_group)
    if stage_index != pp_rank:
        raise PlanError(f"apply_pp: stage_index = {stage_index} but this rank is rank {pp_rank} "
                        "of the pipeline group")

    want_profile = profile is True or (profile is None and plan.partition_method == "balanced")
    if isinstance(profile, Profile):
        prof = profile
    elif want_profile:
        box: list = [None]
        if pp_rank == 0:
            box[0] = profile_units(model, (ids, targets), repeats=profile_repeats).to_record()
        src = 0 if pp_group is None else dist.get_global_rank(pp_group, 0)
        dist.broadcast_object_list(box, src=src, group=pp_group)
        prof = Profile.from_record(box[0])
    else:
        prof = None
    if prof is not None and len(prof.units) != len(names):
        raise PlanError(f"apply_pp: profile has {len(prof.units)} units, model has {len(names)}")
    partition = cut(None if prof is None else prof.times_ms(), n_stages,
                    plan.partition_method, n_units=len(names))

    stage_indices = [pp_rank + k * plan.pp for k in range(v)]
    device = next(model.parameters()).device
    module = nn.ModuleList(StageModule(model, *partition.boundaries[s]).train(model.training)
                           for s in stage_indices)

    first_rank, last_rank = 0, (n_stages - 1) % plan.pp
    holds_tied = pp_rank in (first_rank, last_rank)
    if embedding_group is None and first_rank != last_rank and (holds_tied or pp_group is None):
        if plan.pp == 2:
            embedding_group = pp_group
        elif pp_group is None:
            # new_group is collective over the default group: every rank builds it.
            embedding_group = dist.new_group([first_rank, last_rank])
        else:
            raise PlanError("apply_pp: pp > 2 inside a non-default pipeline group needs "
                            "embedding_group (ranks of the first and last stage)")

    tp_fields: dict = {}
    if getattr(model, "tp_size", 1) > 1:  # stages over a TensorParallelRecommender's shards
        from recpar.parallel import process_groups as pg

        tp_fields = {"vocab_parallel": True, "local_cols": model.padded_vocab_size // model.tp_size,
                     "tp_group": pg.tp_group(), "tp_rank": pg.tp_rank(),
                     "norm_group": pg.model_parallel_group()}
    return PipelineRunner(plan=plan, partition=partition, profile=prof, names=names,
                          pp_rank=pp_rank, stage_indices=stage_indices, module=module,
                          device=device, virtual_stages=v, d_model=model.cfg.d_model,
                          n_cols=model.n_items + 1, pp_group=pp_group,
                          embedding_group=embedding_group, broadcast_loss=broadcast_loss,
                          **tp_fields)
