"""The training loop, the same for every scheme, and the run record it writes.

Order of work for one run: load the prepared dataset -> build the model (single-device code,
`recpar.model`; same seed, so identical on every rank) -> hand it to the scheme's engine
(`recpar.train.engines`: it applies the plan's parallelism with the `apply_*` functions of
`recpar.parallel`) -> cut training sequences -> one engine step per global batch inside the
timing window of `recpar.train.timing` -> every epoch gather the full weights on rank 0,
validate (full ranking), keep the best checkpoint, stop early after `patience` epochs without
improvement -> reload the best weights -> evaluate valid and test under both protocols ->
write the run record (rank 0).

Checkpoints: `last.pt` and `best.pt` hold the full single-device weights whatever the plan
(so any two runs compare key by key); each rank's training state (weights or shard,
optimiser, gradient-sync residuals) lives in `engine-rank<r>.pt` or the engine's own format.
An interrupted run resumes from them.
"""

from __future__ import annotations

import contextlib
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
from recpar.eval.protocols import build_eval_examples, evaluate_protocols, sample_negatives
from recpar.model.config import ModelConfig
from recpar.model.recommender import Recommender
from recpar.model.sequences import build_training_sequences
from recpar.comm.async_ps import AsyncPSConfig
from recpar.comm.config import GradSyncConfig
from recpar.parallel.plan import ParallelPlan
from recpar.train import checkpoint, record
from recpar.train.config import EVAL_PROTOCOLS, TrainConfig
from recpar.train.engines import EngineContext, build_engine
from recpar.train.memory import model_state_gib
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
    async_ps: AsyncPSConfig = field(default_factory=AsyncPSConfig)
    """Parameter-server settings for scheme `async` (damping, timeout); its clip_grad is
    replaced by train.clip_grad (one clipping setting for every scheme)."""


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
    return {split: evaluate_protocols(score_fn, ex, EVAL_PROTOCOLS, k=10, batch_size=batch_size,
                                      seed=seed)
            for split, ex in examples.items()}


@contextlib.contextmanager
def _eval_threads(world: int):
    """Rank 0 evaluates alone: the other ranks wait for it (in a collective, or have exited),
    so it may use every core this process may run on instead of its 1/world share. Evaluation
    lies outside the timing window; only its wall time changes."""
    if world == 1:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(old, len(os.sched_getaffinity(0))))
    try:
        yield
    finally:
        torch.set_num_threads(old)


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
                   "grad_sync": (spec.grad_sync.to_dict()
                                 if spec.plan.dp > 1 and spec.plan.scheme != "async" else None),
                   **({"async_ps": asdict(dataclasses.replace(
                       spec.async_ps, clip_grad=spec.train.clip_grad))}
                      if spec.plan.scheme == "async" else {}),
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


def _model_config(spec: RunSpec, ds: PreparedDataset) -> ModelConfig:
    """The run's model config; the text width comes from the embeddings the data stage wrote
    (384 for MiniLM), 0 without text."""
    emb = ds.item_text_embeddings() if spec.use_text else None
    return dataclasses.replace(spec.model, text_dim=int(emb.shape[1]) if emb is not None else 0)


def run_fingerprint(spec: RunSpec, ds: PreparedDataset, model_cfg: ModelConfig | None = None
                    ) -> str:
    """What a run's checkpoints must match to be resumed: model, training settings, plan, seed,
    gradient sync, ZeRO stage, async settings, data statistics, text on/off."""
    model_cfg = model_cfg or _model_config(spec, ds)
    cfg = spec.train
    return checkpoint.fingerprint({
        "model": asdict(model_cfg), "train": cfg.to_record(), "plan": spec.plan.to_record(),
        "seed": spec.seed, "grad_sync": spec.grad_sync.to_dict() if spec.plan.dp > 1 else None,
        "zero_stage": spec.zero_stage,
        **({"async_ps": {k: v for k, v in asdict(spec.async_ps).items()
                         if k != "timeout_s"}}  # timeout: may change
           if spec.plan.scheme == "async" else {}),
        "data": str(ds.stats), "use_text": spec.use_text})


def replace_stale_run(spec: RunSpec) -> Path | None:
    """If `spec.out_dir` holds a run of another configuration (last.pt with another
    fingerprint, or unreadable), move the directory aside to `<out>.replaced-<UTC time>` so this
    run starts fresh, and return where it went; a run of the same configuration stays (it
    resumes). Nothing is deleted."""
    out = Path(spec.out_dir)
    last = out / "last.pt"
    if not last.exists():
        return None
    fp = run_fingerprint(spec, PreparedDataset.load(spec.data_dir))
    try:
        checkpoint.load(last, expect_fingerprint=fp)
        return None
    except checkpoint.CheckpointError:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = out.with_name(f"{out.name}.replaced-{stamp}")
        out.rename(dest)
        return dest


def train(spec: RunSpec, progress: bool = True) -> dict | None:
    """Train one run (single device, or one rank of a parallel scheme under torchrun); returns
    the record on rank 0 (None on other ranks). The record is written by rank 0 only."""
    cfg = spec.train.validate()
    rank, world = _dist()
    spec.plan.validate(world_size=world, n_heads=spec.model.n_heads, n_layers=spec.model.n_layers)
    dp = spec.plan.dp
    if cfg.global_batch_size % spec.plan.batch_shards:  # dp, or dp - 1 workers for async
        raise ValueError(f"train.global_batch_size = {cfg.global_batch_size} is not divisible "
                         f"by the {spec.plan.batch_shards} ranks that split it (dp = {dp})")
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

    # Same seed on every rank: identical initial weights without a broadcast. The engine
    # applies the plan's parallelism to this single-device model.
    model = Recommender(model_cfg, ds.n_items, text_emb).to(device)
    inputs, targets = build_training_sequences(ds.train, model_cfg.max_seq_len)
    # inputs, targets: [N, L] int64, left-padded with 0
    engine = build_engine(EngineContext(spec=spec, model=model, model_cfg=model_cfg,
                                        device=device, rank=rank, world=world,
                                        seq_len=int(inputs.shape[1])))
    n_seq = inputs.shape[0]
    steps_per_epoch = math.ceil(n_seq / cfg.global_batch_size)
    examples = _eval_examples(ds, model_cfg.max_seq_len, spec.seed) if rank == 0 else None

    fp = run_fingerprint(spec, ds, model_cfg)
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "last.pt", out / "best.pt"
    start_epoch, step, best, bad_epochs, history = 0, 0, -1.0, 0, []
    notes: list[str] = []
    if last_path.exists():
        state = checkpoint.load(last_path, expect_fingerprint=fp)
        engine.load(out, fp)
        checkpoint.set_rng_state(state["rng"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        best, bad_epochs, history = state["best"], state["bad_epochs"], state["history"]
        notes.append(f"resumed from {last_path.name} after epoch {state['epoch']}")

    # A resumed run measures its window on the steps it actually runs.
    window = StepWindow(cfg.warmup_steps, cfg.timed_steps, cfg.device)

    # What rank 0 scores: a plain single-device copy filled from the engine's full weights.
    # Its random init is overwritten; fork_rng keeps it from advancing the training stream.
    eval_model = None
    if rank == 0:
        with torch.random.fork_rng(devices=[]):
            eval_model = Recommender(model_cfg, ds.n_items, text_emb).to(device)

    def score_fn(hist: torch.Tensor) -> torch.Tensor:
        return eval_model.score_last(hist.to(device))

    t_train0 = time.perf_counter()
    stop = False
    fb_ms_in_window: list[float] = []
    comm_stats: dict = {}
    first_epoch_batches = None
    full: dict | None = None
    for epoch in range(start_epoch, cfg.max_epochs):
        engine.train()
        # Identical permutation on every rank; the engine picks this rank's rows.
        g = torch.Generator().manual_seed(spec.seed * 100_003 + epoch)
        perm = torch.randperm(n_seq, generator=g)
        batches = [perm[b * cfg.global_batch_size:(b + 1) * cfg.global_batch_size]
                   for b in range(steps_per_epoch)]
        first_epoch_batches = first_epoch_batches or batches
        # Engines without one synchronous step per batch (async) train the epoch themselves
        # and drive the window; see their module for how the window is measured.
        epoch_batches = batches[:cfg.max_steps - step] if cfg.max_steps else batches
        losses = engine.run_epoch(inputs, targets, epoch_batches, window)
        if losses is not None:
            step += len(epoch_batches)
            stop = bool(cfg.max_steps) and step >= cfg.max_steps
        bar = tqdm(batches if losses is None else [], desc=f"epoch {epoch}",
                   disable=not progress or losses is not None, leave=False, mininterval=2.0)
        losses = [] if losses is None else losses
        for idx in bar:
            # valid (input, target) positions of this batch, counted before the timed region
            tokens = int(Recommender.valid_positions(inputs[idx], targets[idx]).sum())
            was_open = window.open
            window.before_step()
            if window.open and not was_open:
                engine.window_opened()
            in_window = window.open
            res = engine.step(inputs, targets, idx)
            if in_window and res.fwd_bwd_ms is not None:
                fb_ms_in_window.append(res.fwd_bwd_ms)
            window.after_step(samples=int(idx.numel()), tokens=tokens)
            if in_window and window.closed:
                comm_stats = engine.window_closed(window.steps_in_window)
            losses.append(res.loss_mean)
            step += 1
            if cfg.max_steps and step >= cfg.max_steps:
                stop = True
                break
        window.pause()  # validation and checkpoints below are not training time
        entry = {"epoch": epoch, "step": step, "train_loss": float(np.mean(losses))}
        # Full single-device weights on rank 0 (a collective for sharded engines).
        full = engine.full_state_dict()
        if rank == 0:
            eval_model.load_state_dict(full)
        if (epoch + 1) % cfg.eval_every == 0 or stop:
            improved = False
            if rank == 0:
                eval_model.eval()
                with torch.no_grad(), _eval_threads(world):
                    v = evaluate_protocols(score_fn, examples["valid"], ("full",), k=10,
                                           batch_size=cfg.eval_batch_size,
                                           seed=spec.seed)["full"]
                metric = v[cfg.early_stopping_metric]
                entry[f"valid_{cfg.early_stopping_metric}"] = metric
                improved = metric > best
                if improved:
                    best = metric
                    checkpoint.save(best_path, {"model": full, "epoch": epoch,
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
        # Engine state first (every rank), then last.pt: last.pt is the commit marker.
        engine.save(out, fp)
        if world > 1:
            dist.barrier()
        if rank == 0:
            checkpoint.save(last_path, {"model": full, "rng": checkpoint.rng_state(),
                                        "epoch": epoch, "step": step, "best": best,
                                        "bad_epochs": bad_epochs, "history": history,
                                        "plan": spec.plan.to_record(), "fingerprint": fp})
        stop = _bcast(stop, rank, world)
        if stop:
            break
    window.close()
    if window.steps_in_window and not comm_stats:
        comm_stats = engine.window_closed(window.steps_in_window)
    total_train_s = time.perf_counter() - t_train0

    timing_metrics = window.metrics()
    if fb_ms_in_window:
        timing_metrics["fwd_bwd_ms_per_iter"] = float(np.mean(fb_ms_in_window))
    if first_epoch_batches:
        timing_metrics.update(engine.finish(inputs, targets, first_epoch_batches,
                                            {**timing_metrics,
                                             "timed_steps": window.steps_in_window}))
    rank_metrics = {**timing_metrics, **comm_stats, "peak_rss_gib": peak_rss_gib()}
    held = engine.trained_state()
    if held is not None:
        rank_metrics["model_state_gib"] = model_state_gib(*held)
    all_ranks = [rank_metrics]
    if world > 1:
        all_ranks = [None] * world
        dist.all_gather_object(all_ranks, rank_metrics)
    engine.close()
    if rank != 0:
        return None

    if best_path.exists():
        eval_model.load_state_dict(checkpoint.load(best_path, expect_fingerprint=fp)["model"])
    eval_model.eval()
    with torch.no_grad(), _eval_threads(world):
        quality = _quality(score_fn, examples, spec.seed, cfg.eval_batch_size)

    rec = _base_record(spec, ds, spec.plan.scheme, model_cfg)
    rec["timing"] = {**window.to_record(), "total_train_s": total_train_s}
    n_params = sum(p.numel() for p in eval_model.parameters())
    metrics = {
        **timing_metrics,
        "comm_ms_per_iter": 0.0 if world == 1 else comm_stats.get("comm_ms_per_iter"),
        "peak_device_mem_gib": (torch.cuda.max_memory_allocated() / 2**30
                                if device.type == "cuda" else None),
        "params_count": n_params,
        "train_sequences_count": n_seq,
        "steps_count": step,
        "epochs_count": len(history),
        "best_valid_metric": best,
    }
    if engine.loss_is_estimate:
        notes.append("train_loss with dp > 1 is rank 0's share x dp (an estimate of the "
                     "global mean)")
    if timing_metrics.get("throughput_samples_per_s") is not None:
        metrics["throughput_samples_per_s_per_device"] = (
            timing_metrics["throughput_samples_per_s"] / world)
    for k, v in comm_stats.items():
        metrics.setdefault(k, v)
    # Per-rank spread of what each rank measured (max over ranks is what the slowest sees).
    for key in ("peak_rss_gib", "model_state_gib", "comm_ms_per_iter",
                "exposed_comm_ms_per_iter", "tp_comm_ms_per_iter",
                "payload_bytes_per_rank_per_iter", "cpu_util_pct"):
        vals = [r[key] for r in all_ranks if r.get(key) is not None]
        if vals:
            metrics[f"{key}_max_over_ranks"] = float(max(vals))
    metrics["peak_rss_gib"] = rank_metrics["peak_rss_gib"]
    if "model_state_gib" in rank_metrics:
        metrics["model_state_gib"] = rank_metrics["model_state_gib"]
    rec["metrics"] = metrics
    rec["quality"] = quality
    rec["history"] = history
    rec["notes"] = notes
    record.write(rec, out / "record.json")
    return rec
