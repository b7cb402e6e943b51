"""Rank bodies for the multi-process tests in this directory (spawned, gloo on CPU).

Each entry point runs on every rank, does all the distributed work of one test module once,
and writes its observations to `<out_dir>/rank<k>.pt`; the tests assert on those files. Kept
out of the test files so that spawned children do not import pytest or the tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist

from recpar.comm.config import GradSyncConfig
from recpar.comm.hooks import SyntheticBucket, make_grad_sync_hook

# ---------------------------------------------------------------- shared with the tests

DDP_STEPS = 12
DDP_GLOBAL_BATCH = 8
DDP_LR = 0.1
DDP_BUCKET_SIZE = 200  # elements: DDP then splits the 273k-parameter model into several buckets

DDP_CASES: dict[str, dict] = {
    "ring": {},
    "ring_no_overlap": {"overlap_grad_reduce": False},
    "hierarchical": {"algorithm": "hierarchical", "ranks_per_node": 1},
    "sign": {"compressor": "sign"},
    "sign_no_overlap": {"compressor": "sign", "overlap_grad_reduce": False},
    "topk": {"compressor": "topk", "topk_ratio": 0.25},
    "fp16": {"compressor": "fp16"},
    "bf16": {"compressor": "bf16"},
    "powersgd": {"compressor": "powersgd", "powersgd_rank": 2},
}
"""Label -> GradSyncConfig overrides for the DDP test (all with bucket_size=DDP_BUCKET_SIZE)."""


def make_model() -> torch.nn.Module:
    """Tiny MLP, identical on every rank (seeded); ~273k parameters so DDP uses several buckets."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 512), torch.nn.Tanh(), torch.nn.Linear(512, 512),
                               torch.nn.Tanh(), torch.nn.Linear(512, 4))


def make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X (steps, B, 16), Y (steps, B, 4), X_eval (64, 16), Y_eval (64, 4)): a linear teacher."""
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(16, 4, generator=gen)
    x = torch.randn(DDP_STEPS, DDP_GLOBAL_BATCH, 16, generator=gen)
    xe = torch.randn(64, 16, generator=gen)
    return x, x @ w, xe, xe @ w


def train_reference() -> tuple[list[torch.Tensor], float, float]:
    """Single process, full global batch: final params, eval loss before and after."""
    model = make_model()
    x, y, xe, ye = make_data()
    opt = torch.optim.SGD(model.parameters(), lr=DDP_LR)
    with torch.no_grad():
        before = torch.nn.functional.mse_loss(model(xe), ye).item()
    for step in range(DDP_STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[step]), y[step]).backward()
        opt.step()
    with torch.no_grad():
        after = torch.nn.functional.mse_loss(model(xe), ye).item()
    return [p.detach().clone() for p in model.parameters()], before, after


# ---------------------------------------------------------------- helpers

def _init(rank: int, world: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    # A file store instead of a TCP port: no port clashes with tests running in parallel.
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rdzv", rank=rank, world_size=world)


def _reduce(state, hook, tensor: torch.Tensor, index: int = 0, grad_shapes=None) -> torch.Tensor:
    """Run one hook on a synthetic bucket holding a copy of `tensor`; return the result."""
    bucket = SyntheticBucket(tensor.clone(), index=index, grad_shapes=grad_shapes)
    return hook(state, bucket).wait().clone()


def _residual(state, n: int) -> torch.Tensor:
    """The error-feedback residual a SyntheticBucket of n elements at index 0 sees."""
    from recpar.comm.hooks import _bucket_view
    view = _bucket_view(SyntheticBucket(torch.zeros(n)))
    return state.residuals.get(0, state.layout(view), view.buffer).clone()


# ---------------------------------------------------------------- 4 ranks: collectives

def collectives_worker(rank: int, world: int, out_dir: str) -> None:
    """4 ranks as 2 nodes x 2: hierarchical vs ring, compressors vs dense references, bytes."""
    _init(rank, world, out_dir)
    res: dict = {}
    gen = torch.Generator().manual_seed(1234 + rank)

    for overlap in (False, True):
        ring_state, ring = make_grad_sync_hook(GradSyncConfig(overlap_grad_reduce=overlap))
        hier_state, hier = make_grad_sync_hook(GradSyncConfig(algorithm="hierarchical", ranks_per_node=2,
                                                              overlap_grad_reduce=overlap))
        for n in (1000, 1001, 7):  # 1001 and 7 are not divisible by the node size: padding
            g = torch.randn(n, generator=gen)
            every = torch.empty(world * n)
            dist.all_gather_single(every, g)
            res[f"dense_mean/{overlap}/{n}"] = every.view(world, n).double().mean(0)
            res[f"ring/{overlap}/{n}"] = _reduce(ring_state, ring, g)
            res[f"ring_stats/{overlap}/{n}"] = ring_state.stats.snapshot_and_reset()
            res[f"hier/{overlap}/{n}"] = _reduce(hier_state, hier, g)
            res[f"hier_stats/{overlap}/{n}"] = hier_state.stats.snapshot_and_reset()
        hier_state.close()

    # Compressors: result vs a dense re-computation from every rank's p = g + r; bytes.
    n = 1001
    for name, extra in (("sign", {}), ("topk", {"topk_ratio": 0.07}), ("fp16", {}), ("bf16", {})):
        for overlap in (False, True):
            state, hook = make_grad_sync_hook(GradSyncConfig(compressor=name, overlap_grad_reduce=overlap,
                                                             **extra))
            for step in range(3):  # several steps so that error feedback carries a residual
                g = torch.randn(n, generator=gen)
                r = _residual(state, n) if name in ("sign", "topk") else torch.zeros(n)
                p_all = torch.empty(world * n)
                dist.all_gather_single(p_all, g + r)
                res[f"{name}/{overlap}/p_all/{step}"] = p_all.view(world, n)
                res[f"{name}/{overlap}/out/{step}"] = _reduce(state, hook, g)
                res[f"{name}/{overlap}/stats/{step}"] = state.stats.snapshot_and_reset()
            state.close()

    # PowerSGD: dense before start_powerSGD_iter, then P/Q; bytes vs formula for the shapes.
    shapes = [(32, 16), (16,), (8, 4)]
    n = sum(math.prod(s) for s in shapes)
    state, hook = make_grad_sync_hook(GradSyncConfig(compressor="powersgd", powersgd_rank=2,
                                                     powersgd_start_iter=2, overlap_grad_reduce=False))
    for step in range(4):
        g = torch.randn(n, generator=gen)
        every = torch.empty(world * n)
        dist.all_gather_single(every, g)
        res[f"powersgd/dense_mean/{step}"] = every.view(world, n).mean(0)
        res[f"powersgd/out/{step}"] = _reduce(state, hook, g, grad_shapes=shapes)
        res[f"powersgd/stats/{step}"] = state.stats.snapshot_and_reset()
    sd = state.state_dict()
    fresh, _ = make_grad_sync_hook(GradSyncConfig(compressor="powersgd", powersgd_rank=2))
    torch.save(sd, Path(out_dir) / f"psgd{rank}.pt")
    fresh.load_state_dict(torch.load(Path(out_dir) / f"psgd{rank}.pt", weights_only=True))
    g = torch.randn(n, generator=gen)
    res["powersgd/resume_a"] = _reduce(state, hook, g, grad_shapes=shapes)
    res["powersgd/resume_b"] = _reduce(fresh, hook, g, grad_shapes=shapes)

    # Error feedback on 1-rank groups: the hook returns exactly this rank's decoded g_hat.
    for name in ("sign", "topk"):
        state, hook = make_grad_sync_hook(GradSyncConfig(compressor=name, topk_ratio=0.1,
                                                         overlap_grad_reduce=False),
                                          all_group_ranks=[[r] for r in range(world)])
        for step in range(3):
            g = torch.randn(333, generator=gen)
            r_before = _residual(state, 333)
            g_hat = _reduce(state, hook, g)
            res[f"ef/{name}/{step}"] = (g, r_before, g_hat, _residual(state, 333))

    # Checkpoint round trip: continuing from a saved state == continuing without saving.
    cfg = GradSyncConfig(compressor="topk", topk_ratio=0.05, overlap_grad_reduce=False)
    a_state, hook = make_grad_sync_hook(cfg)
    for _ in range(2):
        _reduce(a_state, hook, torch.randn(500, generator=gen))
    path = Path(out_dir) / f"ef_state{rank}.pt"
    torch.save(a_state.state_dict(), path)
    b_state, _ = make_grad_sync_hook(cfg)
    b_state.load_state_dict(torch.load(path, weights_only=True))
    g = torch.randn(500, generator=gen)
    res["ckpt/residual_saved"] = _residual(a_state, 500)
    res["ckpt/a"] = _reduce(a_state, hook, g)
    res["ckpt/b"] = _reduce(b_state, hook, g)
    res["ckpt/residual_a"] = _residual(a_state, 500)
    res["ckpt/residual_b"] = _residual(b_state, 500)

    torch.save(res, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


# ---------------------------------------------------------------- 2 ranks: DDP training

def ddp_worker(rank: int, world: int, out_dir: str) -> None:
    """DDP + each hook trains the tiny MLP on this rank's half of every global batch."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    _init(rank, world, out_dir)
    x, y, xe, ye = make_data()
    local = DDP_GLOBAL_BATCH // world
    res: dict = {}
    for label, overrides in DDP_CASES.items():
        cfg = GradSyncConfig(bucket_size=DDP_BUCKET_SIZE, **overrides)
        model = make_model()
        ddp = DDP(model, **cfg.ddp_kwargs(element_size_bytes=4))
        state, hook = make_grad_sync_hook(cfg, named_parameters=model.named_parameters())
        ddp.register_comm_hook(state, hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=DDP_LR)
        with torch.no_grad():
            before = torch.nn.functional.mse_loss(model(xe), ye).item()
        stats = []
        for step in range(DDP_STEPS):
            sl = slice(rank * local, (rank + 1) * local)
            opt.zero_grad()
            torch.nn.functional.mse_loss(ddp(x[step, sl]), y[step, sl]).backward()
            opt.step()
            stats.append(state.stats.snapshot_and_reset())
        with torch.no_grad():
            after = torch.nn.functional.mse_loss(model(xe), ye).item()
        state.close()
        res[label] = {"params": [p.detach().clone() for p in model.parameters()], "before": before,
                      "after": after, "stats": stats,
                      "residual_keys": sorted(state.state_dict()["residuals"]["per_param"])}
    torch.save(res, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
