"""Engine for schemes `mp` (tensor and/or pipeline parallelism) and `hybrid` (TP × PP × DP).

Order of application, on every rank, to the single-device model the loop built:

    init_parallel_groups(plan)     megatron-core groups: tp innermost, then dp, pp outermost
    -> apply_tp(model, plan)       shard the model in place for this rank's TP group
    -> apply_pp(model, plan, ...)  cut this rank's pipeline stage(s) out of the TP shard
    -> DDP over megatron's dp group, with recpar's gradient-sync hook (spec.grad_sync)

Data parallelism is torch DDP over the dp group with the comm hook of `recpar.comm`, so the
all-reduce algorithms and compressors of scheme `dp` apply unchanged: for pp = 1 DDP wraps a
`TrainStep` over the TP model (as scheme dp does); for pp > 1 DDP wraps each stage module,
which torch.distributed.pipelining supports directly (its stages run DDP's `no_sync` for all
but the last micro-batch's backward, then DDP's reducer all-reduces the accumulated
gradients). No explicit all-reduce of gradients is needed.

Rows and loss: dp replica r (its dp rank) takes rows idx[r::dp] of the global batch; the TP
ranks of a replica feed identical rows; the pipeline splits a replica's rows into
plan.num_microbatches micro-batches (a short last batch is padded with all-padding rows,
which add neither loss nor gradient). Each replica divides its loss sum by the global
batch's valid-position count / dp, so DDP's average over replicas is the single-device
mean-loss gradient. The loss reported is the global mean: the replicas' loss sums are
all-reduced over the dp group (exact, not an estimate).

Clipping uses the global norm: squares of TP-sharded gradients on every TP rank, replicated
ones on TP rank 0 only, the tied item table once, summed over the model-parallel group (tp ×
pp ranks of one replica); the dp replicas already hold identical, reduced gradients.

Checkpoints: `full_state_dict` gathers the pipeline stages (`PipelineRunner.full_state_dict`)
and the TP shards (concatenated along each parameter's megatron `partition_dim`, the vocab
padding cut off) into the plain single-device layout on rank 0; dp replicas other than the
first take no part. `state_dict` is this rank's shard/stages, optimiser and grad-sync state.

Measured per iteration (timing window): DP gradient sync from the hook's statistics
(`comm_ms_per_iter`, bytes, as scheme dp) and, for pp = 1, its exposed part
(`exposed_comm_ms_per_iter`: the window's fwd+bwd − a replay without DP sync, as scheme dp;
recpar.train.engines.no_sync_replay); pipeline schedule/compute/idle time, bubble
fraction measured (idle / schedule) vs theory, activation bytes between stages, tied-table
all-reduce (from `PipelineRunner.step`), per pipeline rank in the record; TP collectives
as measured by `recpar.comm.group_timer` on megatron's TP group (calls, payload bytes and
the time this rank is blocked in them: `tp_comm_ms_per_iter`, max over ranks in the record),
next to the `tp_comm_per_step` formula's bytes as a cross-check. The pipeline's P2P waits
are inside `pp_idle` (with the bubble: torch's schedules do not separate the two).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from recpar.constants import PAD_ITEM
from recpar.device import device_sync
from recpar.model.loss import valid_positions
from recpar.parallel.data_parallel import TrainStep, wrap_ddp
from recpar.parallel.plan import PlanError
from recpar.train.engines.base import Engine, EngineContext, StepResult
from recpar.train.engines.no_sync_replay import exposed_metrics, no_sync_fwd_bwd_ms
from recpar.train.optim import build_adamw

PP_STEP_FIELDS = ("schedule_ms", "forward_ms", "backward_ms", "loss_ms", "compute_ms", "idle_ms",
                  "activation_bytes_sent", "activation_grad_bytes_sent",
                  "tied_grad_allreduce_ms", "tied_grad_payload_bytes", "loss_broadcast_ms")
"""PipelineStepResult fields summed over the timing window (then divided by its steps)."""


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """[r, L] -> [rows, L], appending all-padding rows (no loss, no gradient)."""
    if x.shape[0] == rows:
        return x
    pad = torch.full((rows - x.shape[0], x.shape[1]), PAD_ITEM, dtype=x.dtype)
    return torch.cat([x, pad])


def _per_iter_name(field: str) -> str:
    """PipelineStepResult field -> record metric name (units kept in the name)."""
    if field.endswith("_ms"):
        return f"pp_{field}_per_iter"
    return f"pp_{field}_per_iter".replace("_sent_per_iter", "_sent_per_rank_per_iter")


class ModelParallelEngine(Engine):
    """TP (megatron-core) × PP (torch.distributed.pipelining) × DP (DDP) on this rank."""

    def __init__(self, ctx: EngineContext):
        super().__init__(ctx)
        from recpar import import_without_compile

        ps = import_without_compile.megatron_core().parallel_state

        from recpar.parallel import process_groups as pg
        from recpar.parallel.pipeline_parallel import apply_pp
        from recpar.parallel.tensor_parallel import apply_tp, validate_tp

        spec = ctx.spec
        plan = spec.plan
        self.plan, self.cfg = plan, spec.train
        self.tp, self.pp, self.dp = plan.tp, plan.pp, plan.dp
        validate_tp(ctx.model_cfg, plan)
        batch = self.cfg.global_batch_size
        if batch % self.dp or (self.pp > 1 and (batch // self.dp) % plan.num_microbatches):
            raise PlanError(f"train.global_batch_size = {batch} is not divisible by dp × "
                            f"num_microbatches = {self.dp} × {plan.num_microbatches}")
        pg.init_parallel_groups(plan)
        self.pg = pg
        self.tp_rank, self.pp_rank, self.dp_rank = pg.tp_rank(), pg.pp_rank(), pg.dp_rank()
        # What full_state_dict must return: the single-device keys and shapes.
        self._plain_shapes = {k: tuple(v.shape) for k, v in ctx.model.state_dict().items()}
        self.replica_rows = batch // self.dp
        """Rows of a full global batch fed to one dp replica."""
        profile = None
        if self.pp > 1 and plan.partition_method == "balanced":
            profile = self._profile_single_device(self.replica_rows // plan.num_microbatches)

        self.model = apply_tp(ctx.model, plan, seed=spec.seed)
        self.expert_groups, self.experts = None, []
        if self.dp > 1 and self.pp == 1:
            from recpar.parallel.moe_data_parallel import apply_moe_dp

            # an MoE model's load-balancing loss over the global batch: the dp replicas' token
            # counts (the TP ranks of a replica route the same tokens); no-op when dense
            apply_moe_dp(self.model, self.dp, group=pg.dp_group())
            if plan.ep > 1:  # experts sharded over ep dp ranks (recpar.parallel.expert_parallel)
                from recpar.parallel.expert_parallel import apply_ep, expert_groups

                self.expert_groups = expert_groups(self._all_dp_groups(), plan.ep)
                self.experts = apply_ep(self.model, self.expert_groups)
        # parameter name -> dim its TP shards split (megatron's partition_dim)
        self._shard_dims = {n: int(p.partition_dim) for n, p in self.model.named_parameters()
                            if getattr(p, "tensor_model_parallel", False)}
        self.runner = None
        if self.pp > 1:
            mb = self.replica_rows // plan.num_microbatches
            example = (torch.ones(mb, ctx.seq_len, dtype=torch.long),) * 2  # shape only
            self.runner = apply_pp(self.model, plan, self.pp_rank, example,
                                   pp_group=pg.pp_group(),
                                   embedding_group=ps.get_embedding_group(check_initialized=False),
                                   profile=profile if profile is not None else False,
                                   autocast_dtype=self.cfg.autocast_dtype())
            # The stages hold copies: free the TP model's own weights (they are never read
            # again; the frozen text buffer is shared with the stages and kept).
            for p in self.model.parameters():
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        self.trained = self.model if self.runner is None else self.runner.module
        """The modules whose parameters this rank trains (TP model, or its pipeline stages)."""
        self.step_module = TrainStep(self.model, dp_size=self.dp) if self.runner is None else None

        self.ddps: list[DDP] = []
        self.sync_states: list = []
        if self.dp > 1:
            self._wrap_dp(spec.grad_sync)
        self.opt = build_adamw(self.trained, self.cfg)
        self.tp_timer = None
        if self.tp > 1:
            from recpar.comm.group_timer import GroupCollectiveTimer

            self.tp_timer = GroupCollectiveTimer(ps.get_tensor_model_parallel_group(),
                                                 ctx.device).__enter__()
        self._reset_window()
        self._window_stats: dict = {}

    # -- construction helpers --
    def _profile_single_device(self, mb: int):
        """Profile of the layer units, measured on global rank 0 on the single-device model
        (before TP) and broadcast to every rank: every TP rank of a stage must cut alike,
        which per-rank timings would not guarantee. Random ids of the micro-batch shape."""
        from recpar.parallel.partition import Profile, profile_units

        box: list = [None]
        if self.ctx.rank == 0:
            g = torch.Generator().manual_seed(self.ctx.spec.seed)  # not the training stream
            ids = torch.randint(1, self.ctx.model.n_items + 1, (mb, self.ctx.seq_len), generator=g)
            box[0] = profile_units(self.ctx.model, (ids, ids.roll(-1, dims=1))).to_record()
        dist.broadcast_object_list(box, src=0)
        return Profile.from_record(box[0])

    def _all_dp_groups(self) -> list[list[int]]:
        """Every dp group's global ranks, in dp-rank order, identical on all ranks (a
        collective)."""
        mine = list(dist.get_process_group_ranks(self.pg.dp_group()))
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        return [list(r) for r in sorted({tuple(r) for r in everyone})]

    def _wrap_dp(self, grad_sync) -> None:
        """DDP over megatron's dp group, one per trained module, each with its hook state;
        sharded experts are left out (reduce_expert_grads averages them)."""
        group = self.pg.dp_group()
        # the hook state creates its own copies of every dp group, collectively
        all_groups = self._all_dp_groups()
        targets = [self.step_module] if self.runner is None else list(self.runner.module)
        for mod in targets:
            ddp, state = wrap_ddp(mod, grad_sync, self.ctx.device, group=group,
                                  not_synced=self.experts, all_group_ranks=all_groups)
            self.ddps.append(ddp)
            self.sync_states.append(state)
        if self.runner is not None:
            self.runner.stage_wrappers = self.ddps

    # -- training --
    def train(self) -> None:
        self.model.train()  # also the TP attention-dropout hooks' reference modules
        self.trained.train()
        for d in self.ddps:
            d.train()

    def _dp_sum(self, value: torch.Tensor) -> torch.Tensor:
        """The replicas' loss sums added up, on the run's device (where NCCL needs them; no
        host sync: the loop averages the epoch's losses)."""
        if self.dp == 1:
            return value
        t = value.to(torch.float64, copy=True)  # the all-reduce works in place
        dist.all_reduce(t, group=self.pg.dp_group())
        return t

    def _replica_batch(self, inputs, targets, idx) -> tuple[torch.Tensor, torch.Tensor, int]:
        """This replica's rows of global batch idx, padded to whole micro-batches, and the
        global batch's valid-position count."""
        dev = self.ctx.device
        local = idx[self.dp_rank::self.dp]
        gcount = int(valid_positions(inputs[idx], targets[idx]).sum())
        m = self.plan.num_microbatches if self.runner is not None else 1
        rows = max(m, -(-local.numel() // m) * m)  # a multiple of m, at least one row
        x = _pad_rows(inputs[local], rows).to(dev)  # [rows, L]
        y = _pad_rows(targets[local], rows).to(dev)
        return x, y, gcount

    def step(self, inputs, targets, idx) -> StepResult:
        dev = self.ctx.device
        x, y, gcount = self._replica_batch(inputs, targets, idx)
        self.opt.zero_grad(set_to_none=True)
        device_sync(dev)
        t0 = time.perf_counter()
        if self.runner is None:
            fn = self.ddps[0] if self.ddps else self.step_module
            with self.autocast():
                loss, loss_sum = fn(x, y, torch.tensor(gcount, device=dev))
            loss.backward()  # TP all-reduces inside; with DDP returns once buckets are reduced
            if self.expert_groups is not None:
                from recpar.parallel.expert_parallel import reduce_expert_grads

                reduce_expert_grads(self.experts, self.expert_groups)
            device_sync(dev)
            fb_ms = 1e3 * (time.perf_counter() - t0)
            replica_loss_sum = loss_sum.detach()
        else:
            res = self.runner.step(x, y, valid_count=max(1, gcount) / self.dp)
            fb_ms = 1e3 * (time.perf_counter() - t0)
            replica_loss_sum = torch.tensor(res.loss * max(1, gcount) / self.dp, device=dev)
            self._accumulate(res)
        if self.cfg.clip_grad:
            self._clip(self.cfg.clip_grad)
        self.opt.step()
        self._steps_in_window += 1
        return StepResult(loss_mean=self._dp_sum(replica_loss_sum) / max(1, gcount),
                          fwd_bwd_ms=fb_ms)

    def _clip(self, max_norm: float) -> None:
        """Global-norm clipping over TP shards and pipeline stages (dp already reduced)."""
        if self.runner is not None:
            self.runner.clip_grad_norm_(max_norm)
        else:
            from recpar.parallel.tensor_parallel import clip_grad_norm_

            ep_group = self.expert_groups.ep_group if self.expert_groups is not None else None
            clip_grad_norm_(self.model, max_norm, self.experts, ep_group)

    # -- weights --
    def full_state_dict(self):
        if self.expert_groups is not None:
            from recpar.parallel.expert_parallel import gather_full_state_dict

            # a collective over each EP group: its ep rank 0 gets every expert beside its own
            # TP shard; the dp rank 0 of every TP rank is such a rank, and merges below
            local = gather_full_state_dict(self.model, self.expert_groups)
            if self.dp_rank != 0:
                return None
        elif self.dp_rank != 0:
            return None  # the other replicas hold the same weights
        elif self.runner is not None:
            local = self.runner.full_state_dict()  # collective over this pipeline group
        else:
            local = self.model.state_dict()
        # drop megatron's `_extra_state` entries: not part of the single-device layout
        local = {k: v.detach().to("cpu", copy=True) for k, v in local.items()
                 if k in self._plain_shapes}
        if self.tp > 1:
            if self.pp_rank != 0:
                return None
            parts = [None] * self.tp if self.tp_rank == 0 else None
            dist.gather_object(local, parts, dst=self.pg.tp_src_rank(), group=self.pg.tp_group())
            if self.tp_rank != 0:
                return None
            local = self._merge_tp(parts)
        if self.ctx.rank != 0:
            return None
        missing = set(self._plain_shapes) - set(local)
        if missing:
            raise RuntimeError(f"full_state_dict: gathered weights lack {sorted(missing)}")
        return local

    def _merge_tp(self, parts: list[dict]) -> dict[str, torch.Tensor]:
        """TP ranks' shards -> single-device tensors (vocab padding rows cut off)."""
        out = {}
        for k, shape in self._plain_shapes.items():
            if k not in parts[0]:
                continue
            if k in self._shard_dims:
                dim = self._shard_dims[k]
                t = torch.cat([p[k] for p in parts], dim=dim).narrow(dim, 0, shape[dim])
            else:
                t = parts[0][k]
            if tuple(t.shape) != shape:
                raise RuntimeError(f"full_state_dict: {k} gathered as {tuple(t.shape)}, "
                                   f"single-device shape is {shape}")
            out[k] = t.contiguous()
        return out

    def state_dict(self) -> dict:
        return {"model": self.trained.state_dict(), "optimizer": self.opt.state_dict(),
                "grad_sync": [s.state_dict() for s in self.sync_states]}

    def trained_state(self):
        return list(self.trained.parameters()), self.opt

    def load_state_dict(self, state: dict) -> None:
        self.trained.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        for s, saved in zip(self.sync_states, state.get("grad_sync", [])):
            s.load_state_dict(saved)

    # -- measurement --
    def _reset_window(self) -> None:
        self._pp_sums = dict.fromkeys(PP_STEP_FIELDS, 0.0)
        self._steps_in_window = 0

    def _accumulate(self, res) -> None:
        for f in PP_STEP_FIELDS:
            self._pp_sums[f] += float(getattr(res, f))

    def window_opened(self) -> None:
        self._reset_window()
        if self.tp_timer is not None:
            self.tp_timer.reset()
        for s in self.sync_states:
            s.stats.snapshot_and_reset()  # drop warm-up: count the window only

    def window_closed(self, steps: int) -> dict:
        if not steps:
            return {}
        from recpar.parallel.tensor_parallel import tp_comm_per_step

        out: dict = {}
        if self.sync_states:
            snaps = [s.stats.snapshot_and_reset(steps) for s in self.sync_states]
            merged = {k: float(sum(s[k] for s in snaps)) for k in snaps[0]}
            dense, payload = (merged["dense_bytes_per_rank_per_iter"],
                              merged["payload_bytes_per_rank_per_iter"])
            merged["compression_ratio"] = dense / payload if payload else 0.0
            out.update(merged)
            out["dp_grad_sync_ms_per_iter"] = merged["comm_ms_per_iter"]
        if self.tp > 1:
            c = tp_comm_per_step(self.ctx.model_cfg, self.replica_rows, self.ctx.seq_len,
                                 self.tp, clip_grad=bool(self.cfg.clip_grad))
            out["tp_allreduce_calls_per_replica_per_iter"] = float(c.allreduce_calls)
            out["tp_allreduce_payload_bytes_per_replica_per_iter"] = float(
                c.allreduce_payload_bytes)
            out["tp_ring_bytes_per_rank_per_iter"] = float(c.ring_bytes_per_rank_per_iter)
            measured = self.tp_timer.snapshot_and_reset(steps)
            out["tp_comm_calls_per_rank_per_iter"] = measured["calls_per_iter"]
            out["tp_comm_payload_bytes_per_rank_per_iter"] = measured["payload_bytes_per_iter"]
            out["tp_comm_ms_per_iter"] = measured["blocked_ms_per_iter"]
        if self.runner is not None:
            n = max(1, self._steps_in_window)
            for f, total in self._pp_sums.items():
                out[_per_iter_name(f)] = total / n
            sched = self._pp_sums["schedule_ms"]
            out["pp_bubble_fraction_measured"] = self._pp_sums["idle_ms"] / sched if sched else 0.0
            layout = self.runner.to_record()
            out["pp_bubble_fraction_theory"] = layout["bubble_fraction_theory"]
            out["pp_bubble_ratio_theory"] = layout["bubble_ratio_theory"]
        self._window_stats = out
        return out

    def _exposed_dp(self, inputs, targets, batches, timing) -> dict:
        """pp = 1 with dp > 1: exposed DP time from a replay without DP sync (no_sync_replay);
        every rank replays the same batches, so the TP all-reduces inside still pair up."""
        fb = timing.get("fwd_bwd_ms_per_iter")
        if self.runner is not None or not self.ddps or fb is None or not batches:
            return {}
        self.train()
        ddp, dev = self.ddps[0], self.ctx.device

        def fwd_bwd(idx) -> None:
            x, y, gcount = self._replica_batch(inputs, targets, idx)
            with self.autocast():
                loss, _ = ddp(x, y, torch.tensor(gcount, device=dev))
            loss.backward()

        ms = no_sync_fwd_bwd_ms(ddp, fwd_bwd, batches, timing.get("timed_steps", 10),
                                lambda: self.opt.zero_grad(set_to_none=True), dev)
        return exposed_metrics(fb, ms)  # the share adds TP time: recpar.report.metrics

    def finish(self, inputs, targets, batches, timing) -> dict:
        """Exposed DP time of a pp = 1 hybrid (_exposed_dp), then per pipeline rank numbers
        of the first replica (TP rank 0) into rank 0's record: a collective gather of every
        rank's window statistics."""
        out: dict = self._exposed_dp(inputs, targets, batches, timing)
        mine = {"pp": self.pp_rank, "tp": self.tp_rank, "dp": self.dp_rank,
                "stats": self._window_stats}
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        if self.runner is None or not self._window_stats:
            return out
        replica = [r for r in everyone if r["dp"] == 0]
        for r in sorted((r for r in replica if r["tp"] == 0), key=lambda r: r["pp"]):
            s, p = r["stats"], r["pp"]
            out[f"pp_rank{p}_compute_ms_per_iter"] = s.get("pp_compute_ms_per_iter")
            out[f"pp_rank{p}_idle_ms_per_iter"] = s.get("pp_idle_ms_per_iter")
            out[f"pp_rank{p}_bubble_fraction_measured"] = s.get("pp_bubble_fraction_measured")
        out["pp_p2p_bytes_per_replica_per_iter"] = float(sum(
            r["stats"].get("pp_activation_bytes_sent_per_rank_per_iter", 0.0)
            + r["stats"].get("pp_activation_grad_bytes_sent_per_rank_per_iter", 0.0)
            for r in replica))
        fracs = [r["stats"]["pp_bubble_fraction_measured"] for r in replica
                 if "pp_bubble_fraction_measured" in r["stats"]]
        if fracs:
            out["pp_bubble_fraction_measured_mean_over_ranks"] = sum(fracs) / len(fracs)
        return out

    def close(self) -> None:
        if self.tp_timer is not None:
            self.tp_timer.__exit__(None, None, None)
            self.tp_timer = None
        for s in self.sync_states:
            s.close()
