"""megatron-core process groups (`parallel_state`) for a `ParallelPlan`, plus accessors.

One place creates the tensor-, pipeline- and data-parallel groups so that `apply_tp`,
pipeline and hybrid schemes all agree on which ranks share what. It runs on top of an
already initialised torch.distributed default group (gloo on CPU, NCCL on GPU; torchrun or
`mp.spawn` set that up) and only calls `megatron.core.parallel_state`.

Rank layout: megatron-core's default order `tp-cp-ep-dp-pp` — tensor parallelism innermost
(consecutive ranks, i.e. inside one node), pipeline outermost. With tp=2, dp=2 on 4 ranks:
TP groups [0,1] [2,3], DP groups [0,2] [1,3].

megatron-core 0.16.1 on CPU/gloo (checked): `initialize_model_parallel` itself needs no CUDA
unless SHARP or hybrid context parallelism is asked for (neither is used here); its layers
allocate on `torch.cuda.current_device()` unless `use_cpu_initialization=True`, which
`apply_tp` sets. `model_parallel_cuda_manual_seed` and the RNG tracker are CUDA-only and are
not called (apply_tp copies weights instead of drawing them).

megatron is imported inside the functions: importing it costs ~10 s of CPU (it pulls in
torch._inductor), which the CLI and the single-device paths should not pay.
"""

from __future__ import annotations

import torch.distributed as dist

from recpar.parallel.plan import ParallelPlan

DEFAULT_ORDER = "tp-cp-ep-dp-pp"
"""megatron-core's `order` argument: rank-layout order, innermost first."""


def init_parallel_groups(plan: ParallelPlan, *, order: str = DEFAULT_ORDER,
                         distributed_timeout_minutes: int = 30) -> None:
    """Create megatron-core's parallel groups for `plan` on the default process group.

    Validates the plan against the world size first (PlanError naming the numbers).
    Idempotent for the same degrees; a different plan while groups exist is an error
    (call `destroy()` first).
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("init_parallel_groups: torch.distributed is not initialised; "
                           "call torch.distributed.init_process_group (gloo on CPU) first")
    plan.validate(world_size=dist.get_world_size())
    from recpar import import_without_compile

    ps = import_without_compile.megatron_core().parallel_state

    if ps.model_parallel_is_initialized():
        have = (ps.get_tensor_model_parallel_world_size(),
                ps.get_pipeline_model_parallel_world_size(), ps.get_data_parallel_world_size())
        if have == (plan.tp, plan.pp, plan.dp):
            return
        raise RuntimeError(f"init_parallel_groups: groups already exist for tp×pp×dp = "
                           f"{have[0]}×{have[1]}×{have[2]}, plan asks "
                           f"{plan.tp}×{plan.pp}×{plan.dp}; call destroy() first")
    ps.initialize_model_parallel(
        tensor_model_parallel_size=plan.tp,
        pipeline_model_parallel_size=plan.pp,
        order=order,
        distributed_timeout_minutes=distributed_timeout_minutes,
        # Separate gloo copies of the DP groups exist for megatron's distributed-optimizer
        # checkpointing; with a gloo default backend they would only duplicate the DP groups.
        create_gloo_process_groups=dist.get_backend() != "gloo",
    )


def destroy() -> None:
    """Tear down megatron-core's groups (not the default torch.distributed group)."""
    from megatron.core import parallel_state as ps

    ps.destroy_model_parallel()


def is_initialized() -> bool:
    """Whether `init_parallel_groups` has run (and `destroy` has not)."""
    from megatron.core import parallel_state as ps

    return ps.model_parallel_is_initialized()


def _ps():
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        raise RuntimeError("megatron-core parallel groups are not initialised; "
                           "call recpar.parallel.process_groups.init_parallel_groups(plan)")
    return ps


def tp_group() -> dist.ProcessGroup:
    """This rank's tensor-parallel group."""
    return _ps().get_tensor_model_parallel_group()


def tp_rank() -> int:
    """Rank inside the tensor-parallel group (0..tp-1)."""
    return _ps().get_tensor_model_parallel_rank()


def tp_world_size() -> int:
    """Tensor-parallel degree."""
    return _ps().get_tensor_model_parallel_world_size()


def tp_src_rank() -> int:
    """Global rank of tensor-parallel rank 0 in this rank's group (broadcast source)."""
    return _ps().get_tensor_model_parallel_src_rank()


def dp_group() -> dist.ProcessGroup:
    """This rank's data-parallel group (what DDP should reduce over under TP/PP)."""
    return _ps().get_data_parallel_group()


def dp_rank() -> int:
    """Rank inside the data-parallel group."""
    return _ps().get_data_parallel_rank()


def dp_world_size() -> int:
    """Data-parallel degree."""
    return _ps().get_data_parallel_world_size()


def pp_group() -> dist.ProcessGroup:
    """This rank's pipeline-parallel group."""
    return _ps().get_pipeline_model_parallel_group()


def pp_rank() -> int:
    """Pipeline stage index of this rank (0..pp-1)."""
    return _ps().get_pipeline_model_parallel_rank()


def pp_world_size() -> int:
    """Pipeline-parallel degree."""
    return _ps().get_pipeline_model_parallel_world_size()


def model_parallel_group() -> dist.ProcessGroup:
    """Ranks holding one model replica together (tp × pp): where a global grad norm is summed."""
    return _ps().get_model_parallel_group()
