"""`apply_dp`: synchronous data parallelism with torch DDP and recpar's gradient-sync hooks.

Order of application (torchtitan style; tensor and pipeline parallelism, when present, are
applied before this, data parallelism last, outermost):

    model (single device) -> [apply_tp] -> [apply_pp] -> TrainStep -> apply_dp

DDP only synchronises gradients of work done through its `forward`, so the training step is a
module (`TrainStep`) whose forward returns the loss: the recommender's other methods stay
ordinary single-device code.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from recpar.comm.config import GradSyncConfig
from recpar.comm.hooks import GradSyncState, make_grad_sync_hook


class TrainStep(nn.Module):
    """forward(x, y, global_count) -> this rank's share of the global mean loss.

    Each rank returns loss_sum_local / global_count × dp_size; DDP averages gradients over the
    dp ranks (Formula 8), so the synchronised gradient is d(Σ_all loss) / global_count — the
    single-device mean-loss gradient of the same global batch, up to summation order.
    """

    def __init__(self, model: nn.Module, dp_size: int = 1):
        super().__init__()
        self.model = model
        self.dp_size = dp_size

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor,
                global_count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total, count = self.model.loss_sum(input_ids, targets)
        scaled = total * (self.dp_size / global_count.clamp(min=1))
        return scaled, total.detach()


def apply_dp(step: TrainStep, grad_sync: GradSyncConfig, device: torch.device,
             not_synced: list[nn.Parameter] = ()) -> tuple[DDP, GradSyncState]:
    """Wrap the train step in DDP and register the configured gradient-sync hook.

    broadcast_buffers=False: the only buffer is the frozen item-text table, identical on every
    rank by construction; broadcasting it would resend it (97 MB on Amazon) every step.
    `not_synced`: parameters DDP leaves alone (sharded experts: recpar.parallel.expert_parallel
    reduces their gradients).
    """
    grad_sync.validate(dist.get_world_size())
    return wrap_ddp(step, grad_sync, device, not_synced=not_synced, names_from=step.model)


def wrap_ddp(module: nn.Module, grad_sync: GradSyncConfig, device: torch.device, *,
             group: dist.ProcessGroup | None = None, not_synced: list[nn.Parameter] = (),
             names_from: nn.Module | None = None, **hook_kwargs) -> tuple[DDP, GradSyncState]:
    """DDP over `group` (None: the world) with the configured gradient-sync hook: what
    `apply_dp` and the model-parallel engine's dp wrapping share. `not_synced` parameters are
    left out of DDP and of the hook's buckets; `names_from`: the module whose parameter names
    the hook sees (default `module`); `hook_kwargs` go to `make_grad_sync_hook`."""
    skip = {id(p) for p in not_synced}
    if skip:
        DDP._set_params_and_buffers_to_ignore_for_model(
            module, [n for n, p in module.named_parameters() if id(p) in skip])
    ddp = DDP(module, process_group=group, broadcast_buffers=False,
              device_ids=[device.index] if device.type == "cuda" else None,
              **grad_sync.ddp_kwargs())
    named = [(n, p) for n, p in (names_from or module).named_parameters() if id(p) not in skip]
    state, hook = make_grad_sync_hook(grad_sync, group, named_parameters=named, **hook_kwargs)
    ddp.register_comm_hook(state, hook)
    return ddp, state
