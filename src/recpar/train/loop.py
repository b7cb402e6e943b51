"""The single-device training loop and the run record it writes.

Order of work for one run: load the prepared dataset -> build the model (single-device code,
`recpar.model`) -> cut training sequences -> AdamW steps with the timing window of
`recpar.train.timing` -> validate every epoch (full ranking), keep the best checkpoint, stop
early after `patience` epochs without improvement -> reload the best weights -> evaluate valid
and test under both protocols -> write the run record. An interrupted run resumes from
`last.pt` in its output directory.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from recpar.data.prepared import PreparedDataset
from recpar.eval.popularity import popularity_scorer
from recpar.eval.protocols import build_eval_examples, evaluate, sample_negatives
from recpar.model.config import ModelConfig
from recpar.model.recommender import Recommender
from recpar.model.sequences import build_training_sequences
from recpar.parallel.plan import ParallelPlan
from recpar.train import checkpoint, record
from recpar.train.config import EVAL_PROTOCOLS, TrainConfig
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


def _set_determinism(cfg: TrainConfig, seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.use_deterministic_algorithms(cfg.deterministic)


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # Decay matrices (embeddings, linears), not norms/biases: the usual GPT recipe.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def _text_embeddings(ds: PreparedDataset, use_text: bool) -> torch.Tensor | None:
    if not use_text:
        return None
    emb = ds.item_text_embeddings()
    if emb is None:
        raise DataMissingError(
            f"{ds.root / 'item_text_emb.npy'}: item text embeddings missing "
            "(run `recpar data embed --data {ds.root}` or train with --no-text)")
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


def train_baseline(spec: RunSpec, progress: bool = True) -> dict:
    """Single-device training; returns (and writes) the run record."""
    cfg = spec.train.validate()
    spec.plan.validate(world_size=1, n_heads=spec.model.n_heads, n_layers=spec.model.n_layers)
    _set_determinism(cfg, spec.seed)
    ds = PreparedDataset.load(spec.data_dir)
    text_emb = _text_embeddings(ds, spec.use_text)
    # The text width comes from the embeddings the data stage wrote (384 for MiniLM).
    model_cfg = dataclasses.replace(spec.model,
                                    text_dim=int(text_emb.shape[1]) if text_emb is not None else 0)
    device = torch.device(cfg.device)

    model = Recommender(model_cfg, ds.n_items, text_emb).to(device)
    opt = _optimizer(model, cfg)
    inputs, targets = build_training_sequences(ds.train, model_cfg.max_seq_len)
    # inputs, targets: [N, L] int64, left-padded with 0
    n_seq = inputs.shape[0]
    steps_per_epoch = math.ceil(n_seq / cfg.global_batch_size)
    examples = _eval_examples(ds, model_cfg.max_seq_len, spec.seed)

    fp = checkpoint.fingerprint({"model": asdict(model_cfg), "train": cfg.to_record(),
                                 "plan": spec.plan.to_record(), "seed": spec.seed,
                                 "data": str(ds.stats), "use_text": spec.use_text})
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "last.pt", out / "best.pt"
    start_epoch, step, best, bad_epochs, history = 0, 0, -1.0, 0, []
    notes: list[str] = []
    if last_path.exists():
        state = checkpoint.load(last_path, expect_fingerprint=fp)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        checkpoint.set_rng_state(state["rng"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        best, bad_epochs, history = state["best"], state["bad_epochs"], state["history"]
        notes.append(f"resumed from {last_path.name} after epoch {state['epoch']}")

    window = StepWindow(cfg.warmup_steps, cfg.timed_steps, cfg.device)
    # A resumed run measures its window on the steps it actually runs.
    def score_fn(hist: torch.Tensor) -> torch.Tensor:
        return model.score_last(hist.to(device))

    t_train0 = time.perf_counter()
    stop = False
    for epoch in range(start_epoch, cfg.max_epochs):
        model.train()
        g = torch.Generator().manual_seed(spec.seed * 100_003 + epoch)
        perm = torch.randperm(n_seq, generator=g)
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", disable=not progress,
                   leave=False, mininterval=2.0)
        for b in bar:
            idx = perm[b * cfg.global_batch_size:(b + 1) * cfg.global_batch_size]
            x, y = inputs[idx].to(device), targets[idx].to(device)
            window.before_step()
            loss = model.loss(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            window.after_step(samples=int(x.shape[0]), tokens=int((y != 0).sum()))
            losses.append(float(loss.detach()))
            step += 1
            if cfg.max_steps and step >= cfg.max_steps:
                stop = True
                break
        entry = {"epoch": epoch, "step": step, "train_loss": float(np.mean(losses))}
        if (epoch + 1) % cfg.eval_every == 0 or stop:
            model.eval()
            with torch.no_grad():
                v = evaluate(score_fn, examples["valid"], "full", k=10,
                             batch_size=cfg.eval_batch_size, seed=spec.seed)
            metric = v[cfg.early_stopping_metric]
            entry[f"valid_{cfg.early_stopping_metric}"] = metric
            if metric > best:
                best, bad_epochs = metric, 0
                checkpoint.save(best_path, {"model": model.state_dict(), "epoch": epoch,
                                            "fingerprint": fp, "metric": metric})
            else:
                bad_epochs += 1
            if bad_epochs >= cfg.patience:
                stop = True
                notes.append(f"early stop after epoch {epoch}: no better valid "
                             f"{cfg.early_stopping_metric} for {cfg.patience} epochs")
        history.append(entry)
        if progress:
            tqdm.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in entry.items()))
        checkpoint.save(last_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "rng": checkpoint.rng_state(), "epoch": epoch, "step": step,
                                    "best": best, "bad_epochs": bad_epochs, "history": history,
                                    "fingerprint": fp})
        if stop:
            break
    window.close()
    total_train_s = time.perf_counter() - t_train0

    if best_path.exists():
        model.load_state_dict(checkpoint.load(best_path, expect_fingerprint=fp)["model"])
    model.eval()
    with torch.no_grad():
        quality = _quality(score_fn, examples, spec.seed, cfg.eval_batch_size)

    rec = _base_record(spec, ds, spec.plan.scheme, model_cfg)
    rec["timing"] = {**window.to_record(), "total_train_s": total_train_s}
    n_params = sum(p.numel() for p in model.parameters())
    rec["metrics"] = {
        **window.metrics(),
        "comm_ms_per_iter": 0.0,  # single device: no communication by construction
        "peak_rss_gib": peak_rss_gib(),
        "peak_device_mem_gib": (torch.cuda.max_memory_allocated() / 2**30
                                if cfg.device == "cuda" else None),
        "params_count": n_params,
        "train_sequences_count": n_seq,
        "steps_count": step,
        "epochs_count": len(history),
        "best_valid_metric": best,
    }
    rec["quality"] = quality
    rec["history"] = history
    rec["notes"] = notes
    record.write(rec, out / "record.json")
    return rec
