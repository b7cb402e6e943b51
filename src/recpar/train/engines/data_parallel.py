"""Engines `baseline` (one device) and `dp` (torch DDP with recpar's gradient-sync hooks).

Both keep a full replica of the model on every rank; `dp` feeds rank r the rows idx[r::dp] of
each global batch and lets DDP average the gradients (`recpar.parallel.data_parallel`).
"""

from __future__ import annotations

import time

import torch

from recpar.device import device_sync
from recpar.model.loss import valid_positions
from recpar.parallel.data_parallel import TrainStep, apply_dp
from recpar.parallel.expert_parallel import apply_ep, expert_groups, gather_full_state_dict
from recpar.parallel.expert_parallel import clip_grad_norm_ as ep_clip_grad_norm_
from recpar.parallel.expert_parallel import reduce_expert_grads
from recpar.parallel.moe_data_parallel import apply_moe_dp
from recpar.train.engines.base import Engine, EngineContext, StepResult
from recpar.train.engines.no_sync_replay import exposed_metrics, no_sync_fwd_bwd_ms
from recpar.train.optim import build_adamw


class ReplicaEngine(Engine):
    """A full model replica per rank: dp = 1 is the baseline, dp > 1 wraps it in DDP."""

    def __init__(self, ctx: EngineContext):
        super().__init__(ctx)
        spec = ctx.spec
        self.dp = spec.plan.dp
        self.cfg = spec.train
        self.step_module = TrainStep(ctx.model, dp_size=self.dp)
        if self.cfg.compile:  # in place, before DDP: parameter names stay the model's
            self.step_module.compile(backend=self.cfg.compile_backend)
        self.runner = self.step_module
        self.ddp, self.sync_state = None, None
        self.expert_groups, self.experts = None, []
        if self.dp > 1:
            apply_moe_dp(ctx.model, self.dp)  # no-op for a dense model
            if spec.plan.ep > 1:  # experts sharded over groups of ep ranks
                self.expert_groups = expert_groups(self.dp, spec.plan.ep)
                self.experts = apply_ep(ctx.model, self.expert_groups)
            self.ddp, self.sync_state = apply_dp(self.step_module, spec.grad_sync, ctx.device,
                                                 not_synced=self.experts)
            self.runner = self.ddp
        self.opt = build_adamw(ctx.model, self.cfg)
        # Rank 0's share x dp estimates the global mean loss when dp > 1 (exact for dp = 1).
        self.loss_is_estimate = self.dp > 1

    def _local(self, inputs, targets, idx):
        local = idx[self.ctx.rank::self.dp]
        dev = self.ctx.device
        count = int(valid_positions(inputs[idx], targets[idx]).sum())  # on the host
        return (inputs[local].to(dev), targets[local].to(dev),
                torch.tensor(count, device=dev), count)

    def step(self, inputs, targets, idx) -> StepResult:
        x, y, gcount, count = self._local(inputs, targets, idx)
        t0 = time.perf_counter()
        with self.autocast():
            loss, loss_sum = self.runner(x, y, gcount)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # with DDP: returns once every bucket is reduced
        if self.expert_groups is not None:
            reduce_expert_grads(self.experts, self.expert_groups)
        device_sync(self.ctx.device)
        fb_ms = 1e3 * (time.perf_counter() - t0)
        if self.cfg.clip_grad and self.expert_groups is not None:  # norm over every expert
            ep_clip_grad_norm_(self.ctx.model, self.experts, self.cfg.clip_grad,
                               self.expert_groups)
        elif self.cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.ctx.model.parameters(), self.cfg.clip_grad)
        self.opt.step()
        # left on the device: the loop averages the epoch's losses (one host sync)
        return StepResult(loss_mean=loss_sum.detach() * (self.dp / max(1, count)),
                          fwd_bwd_ms=fb_ms)

    def full_state_dict(self):
        if self.expert_groups is not None:  # a collective: every expert to rank 0
            full = gather_full_state_dict(self.ctx.model, self.expert_groups)
            return full if self.ctx.rank == 0 else None
        if self.ctx.rank != 0:
            return None
        return {k: v.detach().to("cpu", copy=True) for k, v in self.ctx.model.state_dict().items()}

    def trained_state(self):
        return list(self.ctx.model.parameters()), self.opt

    def state_dict(self) -> dict:
        state = {"model": self.ctx.model.state_dict(), "optimizer": self.opt.state_dict()}
        if self.sync_state is not None:
            state["grad_sync"] = self.sync_state.state_dict()  # per-bucket EF residuals
        return state

    def load_state_dict(self, state: dict) -> None:
        self.ctx.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.sync_state is not None and "grad_sync" in state:
            self.sync_state.load_state_dict(state["grad_sync"])

    def window_opened(self) -> None:
        if self.sync_state is not None:
            self.sync_state.stats.snapshot_and_reset()  # drop warm-up: count the window only

    def window_closed(self, steps: int) -> dict:
        if self.sync_state is None or not steps:
            return {}
        return self.sync_state.stats.snapshot_and_reset(steps)

    def finish(self, inputs, targets, batches, timing) -> dict:
        """Exposed communication = synchronised fwd+bwd − fwd+bwd without synchronisation
        (recpar.train.engines.no_sync_replay), replayed on the first epoch's batches."""
        fb = timing.get("fwd_bwd_ms_per_iter")
        if self.ddp is None or fb is None or not batches:
            return {}
        ms = self.no_sync_ms(inputs, targets, batches, timing.get("timed_steps", 10))
        return exposed_metrics(fb, ms)  # the share (exposed / iter_ms): recpar.report.metrics

    def no_sync_ms(self, inputs, targets, batches, steps: int) -> float:
        """The no-sync replay: mean ms of this rank's fwd+bwd on `batches` (at most `steps` of
        them) with no gradient synchronisation (DDP's no_sync; a single replica has none)."""
        self.ctx.model.train()
        runner = self.ddp if self.ddp is not None else self.step_module

        def fwd_bwd(idx) -> None:
            x, y, gcount, _ = self._local(inputs, targets, idx)
            with self.autocast():
                loss, _ = runner(x, y, gcount)
            loss.backward()

        return no_sync_fwd_bwd_ms(self.ddp, fwd_bwd, batches, steps,
                                  lambda: self.step_module.zero_grad(set_to_none=True),
                                  self.ctx.device)

    def close(self) -> None:
        if self.sync_state is not None:
            self.sync_state.close()
