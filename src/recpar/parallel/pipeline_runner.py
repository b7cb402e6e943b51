"""`PipelineRunner`: one rank's pipeline stage(s) at work — a training step on a global batch
(schedule, tied-gradient all-reduce, loss broadcast, timing), gradient-norm clipping over the
pipeline, evaluation (`score_last`) and gathering the full weights. `apply_pp`
(`recpar.parallel.pipeline_parallel`) builds it; the design is described there.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from recpar.device import device_sync
from recpar.model.loss import mask_targets, mean_divisor
from recpar.parallel.partition import Partition, Profile
from recpar.parallel.pipeline_stage import InstrumentedStage, StageSchedule, build_schedule
from recpar.parallel.pipeline_theory import bubble_fraction_theory, bubble_ratio_theory
from recpar.parallel.plan import ParallelPlan, PlanError


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

    @classmethod
    def measured(cls, *, loss: float, stage_indices: list[int], built: StageSchedule,
                 schedule_s: float, loss_s: float, tied_s: float, tied_bytes: int,
                 bcast_s: float) -> "PipelineStepResult":
        """The result from a step's raw timings (seconds) and its stages' counters."""
        fwd, bwd = built.forward_s, built.backward_s
        compute = fwd + bwd + loss_s
        idle = max(schedule_s - compute, 0.0)
        return cls(
            loss=loss,
            stage_indices=list(stage_indices),
            schedule_ms=schedule_s * 1e3,
            forward_ms=fwd * 1e3,
            backward_ms=bwd * 1e3,
            loss_ms=loss_s * 1e3,
            compute_ms=compute * 1e3,
            idle_ms=idle * 1e3,
            bubble_fraction_measured=idle / schedule_s if schedule_s > 0 else 0.0,
            bubble_ratio_measured=idle / compute if compute > 0 else 0.0,
            activation_bytes_sent=built.activation_bytes_sent,
            activation_grad_bytes_sent=built.grad_bytes_sent,
            tied_grad_allreduce_ms=tied_s * 1e3,
            tied_grad_payload_bytes=tied_bytes,
            loss_broadcast_ms=bcast_s * 1e3,
        )


def _flat_grads(params: list[nn.Parameter]) -> torch.Tensor:
    """The parameters' gradients (zeros where None) concatenated into one flat tensor."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    return torch.cat([g.reshape(-1) for g in grads])


def _set_grads_from_flat(params: list[nn.Parameter], flat: torch.Tensor) -> None:
    """Inverse of `_flat_grads`: each parameter's .grad becomes a copy of its slice."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


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
    tp_rank: int = 0
    """Rank in the TP group: TP-replicated parameters enter the grad norm on TP rank 0 only."""
    norm_group: object = None
    """Group the squared gradient norm is summed over (None = pp_group; under TP megatron's
    model-parallel group, tp x pp ranks)."""
    loss_chunk_size: int = 0
    """ModelConfig.cross_entropy_chunk_size: > 0 makes the head stage hand its hidden states
    [mb, L, d] to the loss, which scores them a chunk of positions at a time
    (`recpar.model.loss.chunked_tied_cross_entropy_sum`); 0 = whole logits."""
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

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

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

    # -- schedule (built once per micro-batch shape) --
    def _loss_fn(self, logits: torch.Tensor, target: torch.Tensor,
                 valid_count: torch.Tensor) -> torch.Tensor:
        device_sync(self.device)
        t0 = time.perf_counter()
        # the last stage's module (this rank computes the loss): logits, or hidden states
        # scored a chunk at a time (loss_chunk_size), vocab-parallel under TP
        total = self.module[-1].head_loss_sum(logits, target)
        loss = total / valid_count  # summed over micro-batches: the global mean
        device_sync(self.device)
        self._loss_s += time.perf_counter() - t0
        return loss

    def _schedule_for(self, mb: int, seq_len: int) -> StageSchedule:
        key = (mb, seq_len)
        if key not in self._built:
            self._built[key] = self._build_schedule(mb, seq_len)
        return self._built[key]

    def _build_schedule(self, mb: int, seq_len: int) -> StageSchedule:
        submods = self.stage_wrappers or list(self.module)
        stages = [self._make_stage(s, mod, mb, seq_len)
                  for s, mod in zip(self.stage_indices, submods)]
        return build_schedule(self.plan.pipeline_schedule, stages, self.plan.num_microbatches,
                              self._loss_fn)

    def _make_stage(self, s: int, mod: nn.Module, mb: int, seq_len: int) -> InstrumentedStage:
        """torch stage `s` over `mod`, with static metadata for [mb, seq_len] micro-batches."""
        inp, out = self._io_templates(s, mb, seq_len)
        return InstrumentedStage(mod, s, self.num_stages, self.device, input_args=(inp,),
                                 output_args=(out,), group=self.pp_group)

    def _io_templates(self, s: int, mb: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Empty tensors shaped as stage `s`'s input and output (no metadata forward)."""
        dtype = self._dtype
        d_model, n_cols = self.d_model, self.local_cols or self.n_cols
        if s == 0:
            inp = torch.empty(mb, seq_len, dtype=torch.long, device=self.device)  # ids
        else:
            inp = torch.empty(mb, seq_len, d_model, dtype=dtype, device=self.device,
                              requires_grad=True)  # hidden states
        if s == self.num_stages - 1 and not self.loss_chunk_size:
            out = torch.empty(mb, seq_len, n_cols, dtype=dtype, device=self.device,
                              requires_grad=True)  # logits [mb, L, n_items + 1 or V_local]
        else:
            out = torch.empty(mb, seq_len, d_model, dtype=dtype, device=self.device,
                              requires_grad=True)
        return inp, out

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
        mb, seq_len = self._microbatch_shape(input_ids, targets)
        input_ids, targets = input_ids.to(self.device), targets.to(self.device)
        built = self._schedule_for(mb, seq_len)
        masked, count = self._loss_targets(input_ids, targets, valid_count)
        schedule_s, losses = self._run_schedule(built, input_ids, masked, count)
        tied_s, tied_bytes = self._allreduce_tied_grads()
        loss, bcast_s = self._step_loss(losses)
        return PipelineStepResult.measured(
            loss=loss, stage_indices=self.stage_indices, built=built, schedule_s=schedule_s,
            loss_s=self._loss_s, tied_s=tied_s, tied_bytes=tied_bytes, bcast_s=bcast_s)

    def _microbatch_shape(self, input_ids: torch.Tensor, targets: torch.Tensor
                          ) -> tuple[int, int]:
        """(micro-batch size, sequence length) of a [B, L] global batch; checks the shapes."""
        if input_ids.dim() != 2 or targets.shape != input_ids.shape:
            raise ValueError(f"PipelineRunner.step: input_ids {tuple(input_ids.shape)} and "
                             f"targets {tuple(targets.shape)} must be the same [B, L] shape")
        b, seq_len = input_ids.shape
        m = self.plan.num_microbatches
        if b % m:
            raise PlanError(f"global batch of {b} sequences is not divisible by "
                            f"num_microbatches = {m}")
        return b // m, seq_len

    def _loss_targets(self, input_ids: torch.Tensor, targets: torch.Tensor,
                      valid_count: torch.Tensor | float | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked targets, the count the loss sum is divided by: `valid_count` if given)."""
        masked, count = mask_targets(input_ids, targets)
        count = mean_divisor(count)
        if valid_count is not None:
            count = torch.as_tensor(valid_count, dtype=torch.float32,
                                    device=self.device).clamp(min=1)
        return masked, count

    def _run_schedule(self, built: StageSchedule, input_ids: torch.Tensor,
                      masked: torch.Tensor, count: torch.Tensor
                      ) -> tuple[float, list[torch.Tensor]]:
        """All micro-batches forward and backward; (wall seconds, last stage's losses)."""
        built.reset_counters()
        self._loss_s = 0.0
        losses: list[torch.Tensor] = []
        device_sync(self.device)
        t0 = time.perf_counter()
        built.schedule.step(input_ids, target=masked, losses=losses, return_outputs=False,
                            loss_kwargs={"valid_count": count}, input_ids=input_ids)
        device_sync(self.device)
        return time.perf_counter() - t0, losses

    def _step_loss(self, losses: list[torch.Tensor]) -> tuple[float, float]:
        """(global-batch loss, NaN where unknown; seconds spent broadcasting it)."""
        t1 = time.perf_counter()
        loss = (torch.stack([l.detach() for l in losses]).sum() if self.is_last
                else torch.zeros((), device=self.device))
        if self.broadcast_loss:
            loss = loss.to(torch.float32).contiguous()
            dist.broadcast(loss, src=self._global(self._stage_rank(self.num_stages - 1)),
                           group=self.pp_group)
        loss_value = float(loss) if (self.is_last or self.broadcast_loss) else math.nan
        return loss_value, time.perf_counter() - t1

    def _allreduce_tied_grads(self) -> tuple[float, int]:
        """Sum the tied item-table gradients of the first and last stage (one all-reduce);
        (seconds, payload bytes), zeros on ranks without exactly one end."""
        params = self._tied_params()
        if not params or (self.is_first and self.is_last):
            return 0.0, 0
        flat = _flat_grads(params)
        device_sync(self.device)
        t0 = time.perf_counter()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.embedding_group)
        device_sync(self.device)
        dt = time.perf_counter() - t0
        _set_grads_from_flat(params, flat)
        return dt, flat.numel() * flat.element_size()

    # -- gradient norm --
    def clip_grad_norm_(self, max_norm: float) -> float:
        """Clip all stages' gradients to a global L2 norm of max_norm; returns the norm.

        Collective over the pipeline group (`norm_group` when set). The tied table is counted
        once (the last stage's copy is left out of the norm), and under TP replicated
        parameters once (TP rank 0), so the norm equals the single-device one.
        """
        total = self._global_grad_norm()
        if max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(
                [p for p in self.module.parameters() if p.grad is not None], max_norm, total)
        return float(total)

    def _global_grad_norm(self) -> torch.Tensor:
        """L2 norm of the gradients over all stages (and TP shards); a 0-dim float32 tensor."""
        grads = self._norm_grads()
        sq = (torch.nn.utils.get_total_norm(grads, 2.0).to(torch.float64) ** 2 if grads
              else torch.zeros((), dtype=torch.float64, device=self.device))
        sq = sq.reshape(1).to(self.device)
        dist.all_reduce(sq, op=dist.ReduceOp.SUM,
                        group=self.pp_group if self.norm_group is None else self.norm_group)
        return sq.sqrt().to(torch.float32).reshape(())

    def _norm_grads(self) -> list[torch.Tensor]:
        """This rank's gradients that enter the global norm: no tied copy, and TP-replicated
        parameters only on TP rank 0."""
        tied_copies = self._tied_copy_ids()
        return [p.grad for p in self.module.parameters()
                if p.grad is not None and id(p) not in tied_copies
                and (self.tp_rank == 0 or getattr(p, "tensor_model_parallel", False))]

    def _tied_copy_ids(self) -> set[int]:
        """ids of the tied-table parameters left out of the norm (the last stage's copy)."""
        if not self.is_first:
            return {id(p) for p in self._tied_params()}
        if self.is_last:  # both ends on this rank: count only the first stage's copy
            return {id(p) for p in self.module[-1].tied_parameters()}
        return set()

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
        x = self._forward_blocking(input_ids)
        return self._broadcast_scores(x, input_ids.shape[0])

    def _forward_blocking(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run this rank's stages in stage order over the whole batch, receiving each stage's
        input from and sending its output to the neighbouring ranks; returns the output of
        this rank's last stage ([B, n_items + 1] scores on the last stage's rank)."""
        last = self.num_stages - 1
        x: torch.Tensor | None = None
        for s, mod in zip(self.stage_indices, self.module):
            if s == 0:
                x = input_ids
            elif self._stage_rank(s - 1) != self.pp_rank:
                x = self._recv_hidden(s - 1, input_ids.shape)
            x = mod(x, input_ids=input_ids, last_only=(s == last))
            if s == last:  # under TP [B, V_local] -> [B, n_items + 1] (all-gather)
                x = mod.full_scores(x)
            if s < last and self._stage_rank(s + 1) != self.pp_rank:
                dist.send(x.contiguous(), dst=self._global(self._stage_rank(s + 1)),
                          group=self.pp_group)
        return x

    def _recv_hidden(self, src_stage: int, ids_shape: torch.Size) -> torch.Tensor:
        """Blocking receive of stage `src_stage`'s [B, L, d] hidden states."""
        b, seq_len = ids_shape
        x = torch.empty(b, seq_len, self.d_model, dtype=self._dtype, device=self.device)
        dist.recv(x, src=self._global(self._stage_rank(src_stage)), group=self.pp_group)
        return x

    def _broadcast_scores(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """The last stage's [B, n_items + 1] scores, broadcast to every pipeline rank."""
        scores = (x if self.is_last
                  else torch.empty(b, self.n_cols, dtype=self._dtype, device=self.device))
        dist.broadcast(scores, src=self._global(self._stage_rank(self.num_stages - 1)),
                       group=self.pp_group)
        return scores

    # -- state and record --
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


