"""Rank bodies for the pipeline-parallel tests (spawned, gloo on CPU, world size 2).

`pp_worker` runs every pipeline case once and writes what each rank saw to
`<out_dir>/rank<k>.pt`; the tests compare it with single-device training done in the test
process (`reference_run`). Kept out of the test file so spawned children import no pytest.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from recpar.model.config import ModelConfig
from recpar.model.recommender import Recommender
from recpar.parallel.partition import Profile
from recpar.parallel.pipeline_parallel import apply_pp
from recpar.parallel.plan import ParallelPlan, PlanError

N_ITEMS = 60
SEQ_LEN = 12
STEPS = 5
GLOBAL_BATCH = 16
LAST_BATCH = 8  # the 5th step uses a smaller (still divisible) batch: exercises a 2nd shape
MICROBATCHES = 4
LR = 3e-3
CLIP = 1.0
SEED = 0

CASES: dict[str, dict] = {
    "gpipe-uniform": dict(pipeline_schedule="gpipe", partition_method="uniform"),
    "1f1b-uniform": dict(pipeline_schedule="1f1b", partition_method="uniform"),
    "1f1b-balanced": dict(pipeline_schedule="1f1b", partition_method="balanced"),
    # 2 ranks x 2 virtual stages = 4 stages over the 4 units of the tiny model.
    "interleaved-balanced": dict(pipeline_schedule="interleaved-1f1b",
                                 partition_method="balanced"),
}
"""Label -> ParallelPlan overrides (all pp=2, num_microbatches=MICROBATCHES)."""


def model_config() -> ModelConfig:
    # dropout 0: pipeline ranks draw dropout masks from their own RNG streams, so with
    # dropout the pp run is a different (equally valid) sample from the single-device one.
    return ModelConfig.named("tiny", max_seq_len=SEQ_LEN, dropout=0.0, text_dim=16)


def make_model() -> Recommender:
    """The tiny recommender with a text table, identical in every process (seeded)."""
    torch.manual_seed(SEED)
    text = torch.randn(N_ITEMS + 1, 16, generator=torch.Generator().manual_seed(1))
    text[0] = 0.0
    return Recommender(model_config(), N_ITEMS, text)


def make_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """STEPS (input_ids, targets) batches [B, SEQ_LEN], left-padded, some all-padding rows."""
    gen = torch.Generator().manual_seed(2)
    out = []
    for step in range(STEPS):
        b = LAST_BATCH if step == STEPS - 1 else GLOBAL_BATCH
        seq = torch.randint(1, N_ITEMS + 1, (b, SEQ_LEN + 1), generator=gen)
        lengths = torch.randint(0, SEQ_LEN + 2, (b,), generator=gen)  # real items per row
        pos = torch.arange(SEQ_LEN + 1)
        seq = seq.masked_fill(pos[None, :] < (SEQ_LEN + 1 - lengths)[:, None], 0)
        x, y = seq[:, :-1].clone(), seq[:, 1:].clone()
        y = y.masked_fill(x == 0, 0)
        out.append((x, y))
    return out


def make_optimizer(params) -> torch.optim.Optimizer:
    """AdamW with the training loop's grouping: decay on matrices, not on norms/biases."""
    params = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.01},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=LR, betas=(0.9, 0.98))


def reference_run() -> dict:
    """Single-device training on the same batches: losses, final weights, final scores."""
    model = make_model()
    opt = make_optimizer(model.parameters())
    losses = []
    for x, y in make_batches():
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        scores = model.score_last(make_batches()[0][0])
    return {"losses": losses, "state": {k: v.detach().clone() for k, v in
                                        model.state_dict().items()}, "scores": scores}


def _run_case(rank: int, label: str, overrides: dict) -> dict:
    plan = ParallelPlan(scheme="mp", pp=2, num_microbatches=MICROBATCHES, **overrides)
    model = make_model()
    batches = make_batches()
    mb = GLOBAL_BATCH // MICROBATCHES
    runner = apply_pp(model, plan, rank, (batches[0][0][:mb], batches[0][1][:mb]))
    opt = make_optimizer(runner.module.parameters())
    losses, results = [], []
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        res = runner.step(x, y)
        runner.clip_grad_norm_(CLIP)
        opt.step()
        losses.append(res.loss)
        results.append(res.to_record())
    try:
        runner.step(batches[0][0][:GLOBAL_BATCH - 2], batches[0][1][:GLOBAL_BATCH - 2])
        bad_batch_error = None
    except PlanError as e:
        bad_batch_error = str(e)
    state = runner.full_state_dict()
    runner.eval()
    scores = runner.score_last(batches[0][0])
    return {"label": label, "losses": losses, "results": results, "state": state,
            "scores": scores, "record": runner.to_record(),
            "bad_batch_error": bad_batch_error,
            "param_names": sorted(n for n, _ in runner.module.named_parameters())}


def pp_worker(rank: int, world: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    # A file store instead of a TCP port: no clashes with tests running in parallel.
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rdzv", rank=rank,
                            world_size=world)
    try:
        out = {label: _run_case(rank, label, kw) for label, kw in CASES.items()}
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn(world_size: int, out_dir: Path) -> list[dict]:
    """Run pp_worker on world_size spawned processes; return each rank's observations."""
    from ..comm.mp_launch import start_ranks

    start_ranks(pp_worker, (world_size, str(out_dir)), world_size)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


__all__ = ["CASES", "Profile", "make_batches", "make_model", "reference_run", "spawn"]
