"""The training loop (single device, or one rank of synchronous data parallelism) and the
run record it writes.

Order of work for one run: load the prepared dataset -> build the model (single-device code,
`recpar.model`; same seed, so identical on every rank) -> apply data parallelism when dp > 1
(`recpar.parallel.data_parallel.apply_dp`) -> cut training sequences -> AdamW steps inside the
timing window of `recpar.train.timing` -> validate every epoch on rank 0 (full ranking), keep
the best checkpoint, stop early after `patience` epochs without improvement -> reload the best
weights -> evaluate valid and test under both protocols -> write the run record (rank 0). An
interrupted run resumes from `last.pt` (and each rank's `grad-sync-rank<r>.pt` residuals).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from recpar.data.prepared import PreparedDataset
from recpar.eval.popularity import popularity_scorer
from recpar.eval.protocols import build_eval_examples, evaluate, sample_negatives
from recpar.model.config import ModelConfig
from recpar.model.recommender import Recommender
from recpar.model.sequences import build_training_sequences
from recpar.comm.config import GradSyncConfig
from recpar.parallel.data_parallel import TrainStep, apply_dp
from recpar.parallel.plan import ParallelPlan
from recpar.parallel.zero import zero_state_dict, zero_step
from recpar.train import checkpoint, record
from recpar.train.config import EVAL_PROTOCOLS, TrainConfig
from recpar.train.optim import build_adamw
from recpar.train.timing import StepWindow, peak_rss_gib


class DataMissingError(FileNotFoundError):
    """An input the run needs (prepared data, text embeddings) is absent."""


@dataclass
class RunSpec:
    """Everything `recpar train` was asked to do, resolved and validated."""

    data_dir: Path
    """Prepared dataset directory (`recpar data prepare` output)."""
    out_dir: Path
    """Where record.json, checkpoints and the log go."""
    run_id: str
    """Spells out what ran, e.g. `baseline-tiny-n1`."""
    model: ModelConfig
    """Model architecture (named size plus overrides)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimiser, schedule, timing window."""
    plan: ParallelPlan = field(default_factory=ParallelPlan)
    """Parallel degrees; baseline = all ones."""
    seed: int = 0
    """Seeds torch (init, dropout, shuffling) and the sampled-negatives protocol."""
    use_text: bool = True
    """Fuse the item text embeddings (needs `recpar data embed`); False = ID embeddings only."""
    topology: dict = field(default_factory=lambda: {"kind": "local", "nodes": 1,
                                                     "ranks_per_node": 1})
    """Topology actually used (recpar.cluster provides it for multi-node runs)."""
    grad_sync: GradSyncConfig = field(default_factory=GradSyncConfig)
    """How data-parallel gradients travel (scheme dp; ignored when dp = 1)."""
    zero_stage: int = 0
    """ZeRO stage 1/2/3 for scheme `zero` (DeepSpeed); 0 otherwise."""


def _set_determinism(cfg: TrainConfig, seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.use_deterministic_algorithms(cfg.deterministic)


def _text_embeddings(ds: PreparedDataset, use_text: bool) -> torch.Tensor | None:
    if not use_text:
        return None
    emb = ds.item_text_embeddings()
    if emb is None:
        raise DataMissingError(
            f"{ds.root / 'item_text_emb.npy'}: item text embeddings missing "
            f"(run `recpar data embed --data {ds.root}` or train with --no-text)")
    return torch.from_numpy(emb).float()


def _eval_examples(ds: PreparedDataset, max_seq_len: int, seed: int) -> dict:
    examples = {s: build_eval_examples(ds, s, max_seq_len) for s in ("valid", "test")}
    for ex in examples.values():
        # Draw (and cache) the sampled100 negatives now: a dataset too small for the
        # protocol fails here, before any training, not after it.
        sample_negatives(ex, seed)
    return examples


def _quality(score_fn, examples: dict, seed: int, batch_size: int) -> dict:
    return {split: {proto: evaluate(score_fn, ex, proto, k=10, batch_size=batch_size, seed=seed)
                    for proto in EVAL_PROTOCOLS}
            for split, ex in examples.items()}


def _dataset_record(ds: PreparedDataset) -> dict:
    return {"source": str(ds.stats.get("source", "unknown")), "path": str(ds.root),
            "stats": ds.stats}


def _base_record(spec: RunSpec, ds: PreparedDataset, scheme: str,
                 model_cfg: ModelConfig | None = None) -> dict:
    return {
        "schema_version": 1,
        "run_id": spec.run_id,
        "scheme": scheme,
        "status": "completed",
        "created_utc": record.utc_now(),
        "config": {"model": asdict(model_cfg or spec.model), "train": spec.train.to_record(),
                   "grad_sync": spec.grad_sync.to_dict() if spec.plan.dp > 1 else None,
                   "use_text": spec.use_text},
        "plan": spec.plan.to_record(),
        "topology": spec.topology,
        "dataset": _dataset_record(ds),
        "versions": record.versions(),
        "git": record.git_state(),
        "hardware": record.hardware(spec.train.device),
        "seed": spec.seed,
    }


def run_most_popular(spec: RunSpec) -> dict:
    """The non-learned reference: rank items by training-split popularity."""
    ds = PreparedDataset.load(spec.data_dir)
    examples = _eval_examples(ds, spec.model.max_seq_len, spec.seed)
    t0 = time.perf_counter()
    quality = _quality(popularity_scorer(ds), examples, spec.seed, spec.train.eval_batch_size)
    rec = _base_record(spec, ds, "most-popular")
    rec["timing"] = {"warmup_steps": 0, "timed_steps": 0, "window_start_utc": None,
                     "window_end_utc": None, "window_s": None, "device_sync": "none (no training)",
                     "total_train_s": 0.0}
    rec["metrics"] = {"eval_s": time.perf_counter() - t0, "peak_rss_gib": peak_rss_gib()}
    rec["quality"] = quality
    record.write(rec, spec.out_dir / "record.json")
    return rec


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _bcast(obj, rank: int, world: int):
    """Rank 0's value of a small Python object, on every rank."""
    if world == 1:
        return obj
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _measure_compute_only(step_module, ddp, inputs, targets, idx_batches, rank, world, device,
                          n_steps: int) -> list[float]:
    """Forward+backward ms of steps WITHOUT gradient synchronisation (DDP no_sync).

    Subtracted from the synchronised forward+backward time of the timed window, this gives the
    exposed communication time: what overlap with backward did not hide. No optimiser step is
    taken, so the trained weights are untouched.
    """
    times = []
    for idx in idx_batches[:n_steps]:
        local = idx[rank::world]
        x, y = inputs[local].to(device), targets[local].to(device)
        gcount = Recommender.valid_positions(inputs[idx], targets[idx]).sum().to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with ddp.no_sync():
            loss, _ = ddp(x, y, gcount)
            loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t0))
        step_module.zero_grad(set_to_none=True)
    return times


def train(spec: RunSpec, progress: bool = True) -> dict | None:
    """Train one run (single device, or synchronous DP under torchrun); returns the record on
    rank 0 (None on other ranks). The record is written by rank 0 only."""
    cfg = spec.train.validate()
    rank, world = _dist()
    spec.plan.validate(world_size=world, n_heads=spec.model.n_heads, n_layers=spec.model.n_layers)
    if spec.plan.tp > 1 or spec.plan.pp > 1:
        raise ValueError(f"plan tp={spec.plan.tp}, pp={spec.plan.pp}: tensor/pipeline "
                         "parallelism is not wired into the training loop yet")
    dp = spec.plan.dp
    if cfg.global_batch_size % dp:
        raise ValueError(f"train.global_batch_size = {cfg.global_batch_size} is not divisible "
                         f"by dp = {dp}")
    progress = progress and rank == 0
    _set_determinism(cfg, spec.seed)
    ds = PreparedDataset.load(spec.data_dir)
    text_emb = _text_embeddings(ds, spec.use_text)
    # The text width comes from the embeddings the data stage wrote (384 for MiniLM).
    model_cfg = dataclasses.replace(spec.model,
                                    text_dim=int(text_emb.shape[1]) if text_emb is not None else 0)
    device = torch.device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)

    # Same seed on every rank: identical initial weights without a broadcast.
    model = Recommender(model_cfg, ds.n_items, text_emb).to(device)
    step_module = TrainStep(model, dp_size=dp)
    ddp, sync_state, engine, opt = None, None, None, None
    runner = step_module
    if spec.plan.scheme == "zero":
        from recpar.parallel.zero import apply_zero

        # Persistence threshold 0: under ZeRO-3 every parameter is partitioned, not only the
        # large ones (DeepSpeed keeps tensors below 1e5 elements whole by default).
        engine = apply_zero(model, cfg, spec.plan, spec.zero_stage,
                            zero_overrides={"stage3_param_persistence_threshold": 0}
                            if spec.zero_stage == 3 else None)
    elif dp > 1:
        ddp, sync_state = apply_dp(step_module, spec.grad_sync, device)
        runner = ddp
    if engine is None:
        opt = build_adamw(model, cfg)
    inputs, targets = build_training_sequences(ds.train, model_cfg.max_seq_len)
    # inputs, targets: [N, L] int64, left-padded with 0
    n_seq = inputs.shape[0]
    steps_per_epoch = math.ceil(n_seq / cfg.global_batch_size)
    examples = _eval_examples(ds, model_cfg.max_seq_len, spec.seed) if rank == 0 else None

    fp = checkpoint.fingerprint({"model": asdict(model_cfg), "train": cfg.to_record(),
                                 "plan": spec.plan.to_record(), "seed": spec.seed,
                                 "grad_sync": spec.grad_sync.to_dict() if dp > 1 else None,
                                 "zero_stage": spec.zero_stage,
                                 "data": str(ds.stats), "use_text": spec.use_text})
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "last.pt", out / "best.pt"
    comm_path = out / f"grad-sync-rank{rank}.pt"
    start_epoch, step, best, bad_epochs, history = 0, 0, -1.0, 0, []
    notes: list[str] = []
    ds_dir = out / "deepspeed"  # ZeRO engine checkpoint (partitioned optimizer state)
    if last_path.exists():
        state = checkpoint.load(last_path, expect_fingerprint=fp)
        if engine is not None:
            engine.load_checkpoint(str(ds_dir), tag="last")
        else:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        checkpoint.set_rng_state(state["rng"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        best, bad_epochs, history = state["best"], state["bad_epochs"], state["history"]
        if sync_state is not None and comm_path.exists():
            sync_state.load_state_dict(checkpoint.load(comm_path, expect_fingerprint=fp)["state"])
        notes.append(f"resumed from {last_path.name} after epoch {state['epoch']}")

    # A resumed run measures its window on the steps it actually runs.
    window = StepWindow(cfg.warmup_steps, cfg.timed_steps, cfg.device)

    # What rank 0 scores: the model itself, or under ZeRO a plain single-device copy.
    eval_model = model
    if engine is not None:
        eval_model = Recommender(model_cfg, ds.n_items, text_emb).to(device)

    def score_fn(hist: torch.Tensor) -> torch.Tensor:
        return eval_model.score_last(hist.to(device))

    t_train0 = time.perf_counter()
    stop = False
    fb_ms_in_window: list[float] = []
    comm_stats: dict = {}
    first_epoch_batches = None
    for epoch in range(start_epoch, cfg.max_epochs):
        model.train()
        # Identical permutation on every rank; rank r takes every dp-th row of each batch.
        g = torch.Generator().manual_seed(spec.seed * 100_003 + epoch)
        perm = torch.randperm(n_seq, generator=g)
        batches = [perm[b * cfg.global_batch_size:(b + 1) * cfg.global_batch_size]
                   for b in range(steps_per_epoch)]
        first_epoch_batches = first_epoch_batches or batches
        losses = []
        bar = tqdm(batches, desc=f"epoch {epoch}", disable=not progress, leave=False,
                   mininterval=2.0)
        for idx in bar:
            local = idx[rank::dp]
            x, y = inputs[local].to(device), targets[local].to(device)
            gcount = Recommender.valid_positions(inputs[idx], targets[idx]).sum().to(device)
            was_open = window.open
            window.before_step()
            if window.open and not was_open and sync_state is not None:
                sync_state.stats.snapshot_and_reset()  # drop warm-up: count the window only
            in_window = window.open
            t0 = time.perf_counter()
            if engine is not None:
                # DeepSpeed: forward, backward (ZeRO reduce-scatter/all-gather), clipping and
                # the optimizer step in one call; its loss is already the global mean.
                loss_mean = float(zero_step(engine, x, y, gcount))
            else:
                loss, loss_sum = runner(x, y, gcount)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # with DDP: returns once every bucket is reduced
                if window.open and device.type == "cuda":
                    torch.cuda.synchronize()
                fb_ms = 1e3 * (time.perf_counter() - t0)
                if cfg.clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                opt.step()
                loss_mean = float(loss_sum) / max(1, int(gcount)) * dp
                if window.open:
                    fb_ms_in_window.append(fb_ms)
            window.after_step(samples=int(idx.numel()), tokens=int(gcount))
            if in_window and window.closed and sync_state is not None:
                comm_stats = sync_state.stats.snapshot_and_reset(window.steps_in_window)
            losses.append(loss_mean)
            step += 1
            if cfg.max_steps and step >= cfg.max_steps:
                stop = True
                break
        window.pause()  # validation and checkpoints below are not training time
        # Mean global loss: local sums are per-rank shares; report rank 0's share x dp as an
        # estimate only when dp > 1 (exact for dp = 1).
        entry = {"epoch": epoch, "step": step, "train_loss": float(np.mean(losses))}
        if (epoch + 1) % cfg.eval_every == 0 or stop:
            improved = False
            if engine is not None:
                # ZeRO: gather the full weights (a collective on every rank) into rank 0's
                # plain copy; the engine's own modules carry ZeRO-3 fetch hooks, which are
                # collectives too and would hang if rank 0 alone ran a forward through them.
                full = zero_state_dict(engine)
                if rank == 0:
                    eval_model.load_state_dict(full)
            if rank == 0:
                eval_model.eval()
                with torch.no_grad():
                    v = evaluate(score_fn, examples["valid"], "full", k=10,
                                 batch_size=cfg.eval_batch_size, seed=spec.seed)
                metric = v[cfg.early_stopping_metric]
                entry[f"valid_{cfg.early_stopping_metric}"] = metric
                improved = metric > best
                if improved:
                    best = metric
                    checkpoint.save(best_path, {"model": eval_model.state_dict(), "epoch": epoch,
                                                "fingerprint": fp, "metric": metric})
            improved, best = _bcast((improved, best), rank, world)
            bad_epochs = 0 if improved else bad_epochs + 1
            if bad_epochs >= cfg.patience:
                stop = True
                notes.append(f"early stop after epoch {epoch}: no better valid "
                             f"{cfg.early_stopping_metric} for {cfg.patience} epochs")
        history.append(entry)
        if rank == 0:  # one line per epoch, also in logs where the bar is off
            tqdm.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in entry.items()), file=sys.stdout)
            sys.stdout.flush()
        if engine is not None:
            engine.save_checkpoint(str(ds_dir), tag="last")  # collective: every rank
        if rank == 0:
            checkpoint.save(last_path, {"model": None if engine else model.state_dict(),
                                        "optimizer": None if engine else opt.state_dict(),
                                        "rng": checkpoint.rng_state(), "epoch": epoch,
                                        "step": step, "best": best, "bad_epochs": bad_epochs,
                                        "history": history, "fingerprint": fp})
        if sync_state is not None:
            checkpoint.save(comm_path, {"state": sync_state.state_dict(), "fingerprint": fp})
        stop = _bcast(stop, rank, world)
        if stop:
            break
    window.close()
    if window.steps_in_window and sync_state is not None and not comm_stats:
        comm_stats = sync_state.stats.snapshot_and_reset(window.steps_in_window)
    total_train_s = time.perf_counter() - t_train0

    timing_metrics = window.metrics()
    if fb_ms_in_window:
        timing_metrics["fwd_bwd_ms_per_iter"] = float(np.mean(fb_ms_in_window))
    if ddp is not None and fb_ms_in_window and first_epoch_batches:
        model.train()
        nosync = _measure_compute_only(step_module, ddp, inputs, targets, first_epoch_batches,
                                       rank, dp, device, n_steps=min(10, len(fb_ms_in_window)))
        compute_fb = float(np.mean(nosync))
        timing_metrics["fwd_bwd_no_sync_ms_per_iter"] = compute_fb
        timing_metrics["exposed_comm_ms_per_iter"] = max(
            0.0, timing_metrics["fwd_bwd_ms_per_iter"] - compute_fb)
        timing_metrics["comm_share_pct"] = (100.0 * timing_metrics["exposed_comm_ms_per_iter"]
                                            / timing_metrics["iter_ms"])
    rank_metrics = {**timing_metrics, **comm_stats, "peak_rss_gib": peak_rss_gib()}
    all_ranks = [rank_metrics]
    if world > 1:
        all_ranks = [None] * world
        dist.all_gather_object(all_ranks, rank_metrics)
    if sync_state is not None:
        sync_state.close()
    if rank != 0:
        return None

    if best_path.exists():
        eval_model.load_state_dict(checkpoint.load(best_path, expect_fingerprint=fp)["model"])
    eval_model.eval()
    with torch.no_grad():
        quality = _quality(score_fn, examples, spec.seed, cfg.eval_batch_size)

    rec = _base_record(spec, ds, spec.plan.scheme, model_cfg)
    rec["timing"] = {**window.to_record(), "total_train_s": total_train_s}
    n_params = sum(p.numel() for p in eval_model.parameters())
    metrics = {
        **timing_metrics,
        "comm_ms_per_iter": 0.0 if dp == 1 else comm_stats.get("comm_ms_per_iter"),
        "peak_device_mem_gib": (torch.cuda.max_memory_allocated() / 2**30
                                if device.type == "cuda" else None),
        "params_count": n_params,
        "train_sequences_count": n_seq,
        "steps_count": step,
        "epochs_count": len(history),
        "best_valid_metric": best,
    }
    if timing_metrics.get("throughput_samples_per_s") is not None:
        metrics["throughput_samples_per_s_per_device"] = (
            timing_metrics["throughput_samples_per_s"] / world)
    for k, v in comm_stats.items():
        metrics.setdefault(k, v)
    # Per-rank spread of what each rank measured (max over ranks is what the slowest sees).
    for key in ("peak_rss_gib", "comm_ms_per_iter", "exposed_comm_ms_per_iter",
                "payload_bytes_per_rank_per_iter", "cpu_util_pct"):
        vals = [r[key] for r in all_ranks if r.get(key) is not None]
        if vals:
            metrics[f"{key}_max_over_ranks"] = float(max(vals))
    metrics["peak_rss_gib"] = rank_metrics["peak_rss_gib"]
    rec["metrics"] = metrics
    rec["quality"] = quality
    rec["history"] = history
    rec["notes"] = notes
    record.write(rec, out / "record.json")
    return rec

