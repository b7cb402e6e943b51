"""ZeRO stage 1/2/3 through DeepSpeed: the `zero` scheme (paper III.A, memory-partitioned DP).

The single-device `Recommender` is handed to `deepspeed.initialize` unchanged; DeepSpeed
partitions optimizer state (stage 1), + gradients (stage 2), + parameters (stage 3) over the
data-parallel ranks of an already initialised torch.distributed process group (gloo on CPU,
NCCL on GPU). Same model, data, AdamW and clipping as the baseline loop.

    engine = apply_zero(model, train_cfg, plan, stage=2)    # every rank
    for x_local, y_local in my_shard_of_each_global_batch:
        loss = zero_step(engine, x_local, y_local)          # global mean loss (detached)
    with zero_full_parameters(engine):                      # collective on all ranks
        if rank == 0: evaluate(engine.module.model)

Environment (DeepSpeed 0.19.8 checked on CPU, torch 2.13 / gloo):
- LOCAL_RANK must be set (torchrun sets it); DeepSpeed asserts on it.
- DS_ACCELERATOR=cpu selects DeepSpeed's CPU accelerator; without it DeepSpeed falls back to
  CPU with a warning when no GPU is found. `apply_zero` sets it (setdefault) for device cpu
  before DeepSpeed is first imported.
- DeepSpeed's comm layer JIT-compiles a shared-memory all-reduce op (`deepspeed_shm_comm`) at
  init on the CPU accelerator: ~3.5 min on 2 cores the first time (cached afterwards in
  ~/.cache/torch_extensions). Only `inference_all_reduce` (inference tensor parallelism) uses it;
  training collectives go through torch.distributed. `apply_zero` therefore marks it
  incompatible in `deepspeed.ops.__compatible_ops__` (DeepSpeed documents that edits to this
  dict persist), so no compiler runs.
- The optimizer is torch's AdamW (`torch_adam: true`), not DeepSpeed's CPU Adam op: the op does
  JIT-build here (measured 7 min wall / 2.7 min CPU on 2 busy cores, once per fresh machine),
  but it would make the zero runs differ from the baseline's torch AdamW in implementation;
  torch's AdamW is on ZeRO's list of supported optimizers.
- Importing DeepSpeed's engine pulls in torch._dynamo/inductor (~7-12 s per process on 2 cores),
  paid once per process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import nn

from recpar import import_without_compile
from recpar.constants import PAD_ITEM
from recpar.device import forward_context
from recpar.model.loss import mean_divisor, valid_positions
from recpar.model.param_groups import adamw_param_groups
from recpar.parallel.plan import ParallelPlan, PlanError

ZERO_STAGES = (1, 2, 3)

ADAMW_EPS = 1e-8
"""AdamW epsilon: torch.optim.AdamW's default, which the baseline loop uses."""

STEPS_PER_PRINT = 2**31 - 1
"""DeepSpeed prints a progress line every this many steps: effectively never."""

SHM_COMM_OP = "deepspeed_shm_comm"
"""DeepSpeed's JIT-built shared-memory all-reduce op (inference only; see the module docstring)."""


class TrainSettings(Protocol):
    """What the DeepSpeed engines read of a run's training settings: the fields of
    `recpar.train.config.TrainConfig` (which sits above this package, so its fields are named
    here rather than the class imported)."""

    global_batch_size: int
    """Sequences per optimiser step, over all data-parallel ranks."""
    lr: float
    """AdamW learning rate."""
    betas: tuple[float, float]
    """AdamW betas."""
    weight_decay: float
    """AdamW weight decay of the matrices (`recpar.model.param_groups`)."""
    clip_grad: float
    """Global gradient-norm clip (0 = off)."""
    device: str
    """`cpu` or `cuda`."""


class ZeroLossSum(nn.Module):
    """Wraps the recommender so that `engine(ids, tgt)` runs `Recommender.loss_sum`.

    DeepSpeed's engine (and ZeRO-3's parameter-gathering hooks) act on `forward`; the loss of the
    recommender is `loss_sum`, which is not a forward. The wrapper's forward is that call.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        """The single-device `Recommender` (its parameters are the engine's parameters)."""

    def forward(self, input_ids: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # [B, L], [B, L] -> (sum of CE over valid positions, number of valid positions)
        return self.model.loss_sum(input_ids, targets)


def _check_stage(stage: int) -> None:
    if isinstance(stage, bool) or stage not in ZERO_STAGES:
        raise PlanError(f"zero stage must be one of {ZERO_STAGES}, got {stage!r}")


def gradient_accumulation_steps(train_cfg: TrainSettings, plan: ParallelPlan,
                                micro_batch_per_rank: int) -> int:
    """global_batch_size / (micro_batch_per_rank × dp); error unless it divides exactly."""
    if isinstance(micro_batch_per_rank, bool) or not isinstance(micro_batch_per_rank, int) \
            or micro_batch_per_rank < 1:
        raise PlanError(f"micro_batch_per_rank must be a positive integer, got {micro_batch_per_rank!r}")
    per_step = micro_batch_per_rank * plan.dp
    if train_cfg.global_batch_size % per_step:
        raise PlanError(
            f"train.global_batch_size = {train_cfg.global_batch_size} is not divisible by "
            f"micro_batch_per_rank × dp = {micro_batch_per_rank} × {plan.dp} = {per_step}")
    return train_cfg.global_batch_size // per_step


DS_REDUCE_BUCKET_SIZE = 500_000_000
"""DeepSpeed's default zero_optimization.reduce_bucket_size (elements)."""


def reduce_bucket_size(n_params: int) -> int:
    """zero_optimization.reduce_bucket_size for a model of `n_params` parameters: DeepSpeed's
    default, capped at the model's size.

    ZeRO allocates its gradient bucket of reduce_bucket_size elements with torch.empty (stage 3
    once, at initialisation; stages 1 and 2 before every backward, `setup_buckets`; ZeRO-1
    under pipeline parallelism in every step, `reduce_gradients`), and with
    torch.use_deterministic_algorithms (the loop's default) torch fills every new tensor with
    NaN: with the default of 5e8 elements that is 2 GB written and held per rank. Measured on
    the shared 2-core dev machine: torch.empty(5e8) 1.7 s with deterministic algorithms; a
    tiny-model deepspeed pp2 run took 17 s per step at 4.2 GiB RSS, 0.18 s at 0.5 GiB with the
    cap; a tiny-model zero dp2 run held 2.35 GiB per rank, and ZeRO-1's timed window counted
    the fill as communication (1.4 s per step). A bucket of the whole model holds every
    gradient, as the default does for any model below 5e8 parameters, so the reductions are the
    same: one bucket per step.
    """
    return max(1, min(DS_REDUCE_BUCKET_SIZE, int(n_params)))


def deepspeed_config(train_cfg: TrainSettings, plan: ParallelPlan, stage: int,
                     micro_batch_per_rank: int,
                     zero_overrides: dict[str, Any] | None = None,
                     n_params: int | None = None) -> dict[str, Any]:
    """DeepSpeed config dict for ZeRO `stage` with the baseline's AdamW, clipping and fp32.

    Parameter groups (weight decay on matrices only) are passed to `deepspeed.initialize` as
    model_parameters; the per-group weight_decay there overrides the default given here.
    `zero_overrides` merges extra keys into `zero_optimization` (DeepSpeed's names, e.g.
    `stage3_param_persistence_threshold`: DeepSpeed keeps parameters with fewer elements than
    this (default 1e5) unpartitioned under ZeRO-3; 0 partitions every one).
    n_params (the model's parameter count) caps reduce_bucket_size (`reduce_bucket_size`).
    """
    _check_stage(stage)
    if plan.tp != 1 or plan.pp != 1:
        raise PlanError(f"the zero scheme is pure data parallelism: tp = {plan.tp}, pp = {plan.pp} "
                        "(use the deepspeed scheme for ZeRO with tensor/pipeline parallelism)")
    gas = gradient_accumulation_steps(train_cfg, plan, micro_batch_per_rank)
    zero: dict[str, Any] = {"stage": stage}
    if n_params is not None:
        zero["reduce_bucket_size"] = reduce_bucket_size(n_params)
    if zero_overrides:
        if "stage" in zero_overrides and zero_overrides["stage"] != stage:
            raise PlanError(f"zero_overrides.stage = {zero_overrides['stage']!r} contradicts stage = {stage}")
        zero.update(zero_overrides)
    return adamw_fp32_config(train_cfg, micro_batch_per_rank, gas, zero)


def adamw_fp32_config(train_cfg: TrainSettings, micro_batch_per_rank: int, gas: int,
                      zero: dict[str, Any]) -> dict[str, Any]:
    """The DeepSpeed config body every recpar DeepSpeed engine shares: global batch =
    train_cfg.global_batch_size split as micro_batch_per_rank × gas × dp, torch AdamW with the
    baseline's hyper-parameters, the baseline's clipping, fp32, `zero` as zero_optimization."""
    return {
        "train_batch_size": train_cfg.global_batch_size,
        "train_micro_batch_size_per_gpu": micro_batch_per_rank,
        "gradient_accumulation_steps": gas,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": train_cfg.lr,
                "betas": list(train_cfg.betas),
                "eps": ADAMW_EPS,
                "weight_decay": train_cfg.weight_decay,
                "torch_adam": True,  # torch.optim.AdamW, as in the baseline (module docstring)
            },
        },
        # DeepSpeed clips to this global norm (coefficient max_norm / (norm + 1e-6), as
        # torch.nn.utils.clip_grad_norm_); 0 disables clipping, as train.clip_grad = 0 does.
        "gradient_clipping": float(train_cfg.clip_grad),
        "zero_optimization": zero,
        # fp32 everywhere, like the baseline; DeepSpeed's CPU accelerator has no fp16 kernels.
        "fp16": {"enabled": False},
        "bf16": {"enabled": False},
        "steps_per_print": STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
    }


def _prepare_deepspeed_env(device: str, caller: str = "apply_zero") -> None:
    """Environment DeepSpeed needs, set before its accelerator is first resolved."""
    if "LOCAL_RANK" not in os.environ:
        raise RuntimeError(f"{caller}: environment variable LOCAL_RANK is not set "
                           "(DeepSpeed needs it; torchrun sets it)")
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _skip_shm_op_build() -> None:
    """Mark DeepSpeed's inference-only shm all-reduce op unbuildable (see module docstring)."""
    import deepspeed.ops

    compatible = deepspeed.ops.__compatible_ops__  # probed once, cached in the module
    compatible[SHM_COMM_OP] = False


def init_deepspeed(device: str, caller: str = "apply_zero"):
    """Import DeepSpeed for `device` on the initialised torch.distributed group; returns the
    `deepspeed` module. Sets the environment (module docstring), checks DeepSpeed's accelerator
    is `device`, skips the shm op build and adopts the existing process group."""
    import torch.distributed as dist

    _prepare_deepspeed_env(device, caller)
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator().device_name()  # 'cpu' or 'cuda'
    if accelerator != device:
        raise RuntimeError(f"{caller}: DeepSpeed's accelerator is {accelerator!r} but "
                           f"train.device is {device!r} (set DS_ACCELERATOR="
                           f"{device} before DeepSpeed is first imported)")
    _skip_shm_op_build()
    import_without_compile.deepspeed_muon()  # initialize imports it; uncompiled, ~2.5 s less
    deepspeed.init_distributed(dist_backend=dist.get_backend())  # adopts the existing group
    return deepspeed


def apply_zero(model: nn.Module, train_cfg: TrainSettings, plan: ParallelPlan, stage: int,
               micro_batch_per_rank: int | None = None,
               zero_overrides: dict[str, Any] | None = None):
    """Wrap the recommender in a DeepSpeed ZeRO engine on the current process group.

    torch.distributed must already be initialised (gloo on CPU) with world size = plan.dp.
    `micro_batch_per_rank` defaults to global_batch_size / dp (no gradient accumulation).
    Returns the `deepspeed.DeepSpeedEngine`; `engine.module` is a `ZeroLossSum` and
    `engine.module.model` the recommender.
    """
    import torch.distributed as dist

    _check_stage(stage)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("apply_zero: torch.distributed is not initialised "
                           "(init_process_group first; gloo on CPU)")
    plan.validate(world_size=dist.get_world_size())
    if micro_batch_per_rank is None:
        if train_cfg.global_batch_size % plan.dp:
            raise PlanError(f"train.global_batch_size = {train_cfg.global_batch_size} is not "
                            f"divisible by dp = {plan.dp}")
        micro_batch_per_rank = train_cfg.global_batch_size // plan.dp
    config = deepspeed_config(train_cfg, plan, stage, micro_batch_per_rank, zero_overrides,
                              n_params=sum(p.numel() for p in model.parameters()))
    deepspeed = init_deepspeed(train_cfg.device)
    wrapper = ZeroLossSum(model)
    if stage == 3:
        # loss_sum reads item_id_emb.weight directly (item_embeddings(): the fused, tied item
        # table), outside the Embedding's own forward where ZeRO-3 would gather it. Registering
        # it on the wrapper gathers it for the wrapper's whole forward (DeepSpeed's documented
        # way for parameters used outside their module).
        deepspeed.zero.register_external_parameter(wrapper, model.item_id_emb.weight)
    engine, _, _, _ = deepspeed.initialize(
        model=wrapper, model_parameters=adamw_param_groups(wrapper, train_cfg.weight_decay),
        config=config)
    return engine


def all_reduce_token_count(count_local: torch.Tensor, group=None) -> torch.Tensor:
    """Sum of the ranks' valid-position counts (one scalar all-reduce)."""
    import torch.distributed as dist

    total = count_local.detach().clone().to(torch.int64)
    dist.all_reduce(total, group=group)
    return total


def zero_step(engine, x_local: torch.Tensor, y_local: torch.Tensor,
              global_token_count: int | torch.Tensor | None = None,
              autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """One optimiser step on this rank's share [b, L] of the global batch; returns the global
    mean loss (detached scalar, all-reduced: identical on every rank).

    The global batch's mean loss is sum_r loss_sum_r / N (N = valid positions over all ranks).
    Each micro-batch backpropagates loss_sum_mb / N × dp: the engine AVERAGES gradients over the
    dp ranks (divides their sum by dp), so the reduced gradient is
    (1/dp) sum_r dp × grad(loss_sum_r) / N = grad(global mean loss), exactly the single-process
    gradient of the same global batch. Micro-batches (gradient accumulation) are summed with
    scale_wrt_gas=False, since the 1/N already makes the total a mean.

    `global_token_count` is N; None: computed by one scalar all-reduce of the local counts.
    `autocast_dtype`: the forwards run under torch.autocast to it (bf16 mixed precision:
    DeepSpeed still holds, reduces and steps fp32 weights and gradients); None = fp32.
    A share with fewer rows than accumulation steps (a tail batch, even 0 rows) is topped up
    with all-padding rows, which change neither loss nor gradient.
    """
    import torch.distributed as dist

    if x_local.shape != y_local.shape or x_local.dim() != 2:
        raise ValueError(f"zero_step: x_local {tuple(x_local.shape)} and y_local "
                         f"{tuple(y_local.shape)} must be equal [b, L] shapes")
    device = engine.device
    x_local, y_local = x_local.to(device), y_local.to(device)
    gas = engine.gradient_accumulation_steps()
    if x_local.shape[0] < gas:
        # A short tail batch: every micro-batch needs >= 1 row (the model rejects B = 0) and
        # every rank must run all of them (ZeRO's collectives). All-padding rows have no valid
        # position, so they add nothing to the loss or the gradient.
        fill = torch.full((gas - x_local.shape[0], x_local.shape[1]), PAD_ITEM,
                          dtype=x_local.dtype, device=device)
        x_local, y_local = torch.cat([x_local, fill]), torch.cat([y_local, fill])
    dp = engine.dp_world_size
    if global_token_count is None:
        global_token_count = all_reduce_token_count(valid_positions(x_local, y_local).sum())
    n_global = mean_divisor(torch.as_tensor(global_token_count, device=device))
    loss_total = torch.zeros((), dtype=torch.float32, device=device)
    for x_mb, y_mb in zip(x_local.tensor_split(gas), y_local.tensor_split(gas)):
        with forward_context(autocast_dtype, device.type):
            loss_sum, _ = engine(x_mb, y_mb)
        engine.backward(loss_sum / n_global * dp, scale_wrt_gas=False)
        engine.step()  # DeepSpeed steps the optimizer only at the accumulation boundary
        loss_total += loss_sum.detach().float()
    loss_mean = loss_total / n_global
    dist.all_reduce(loss_mean)  # sum over ranks of loss_sum_r / N = global mean
    return loss_mean


@contextlib.contextmanager
def zero_full_parameters(engine) -> Iterator[nn.Module]:
    """Context in which `engine.module.model` holds its full parameters on every rank.

    A collective under ZeRO-3 (every rank must enter): parameters are all-gathered with
    `deepspeed.zero.GatheredParameters` and released on exit (read-only: changes are dropped).
    Stages 1/2 keep full parameters on every rank, so nothing is gathered.
    """
    model = engine.module.model
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()),
                                               modifier_rank=None):
            yield model
    else:
        yield model


def zero_state_dict(engine) -> dict[str, torch.Tensor]:
    """Full fp32 state dict of the recommender (cloned, on CPU) on every rank; a collective."""
    with zero_full_parameters(engine) as model:
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
