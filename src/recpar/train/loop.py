"""The training loop, the same for every scheme, and the non-learned reference run.

Order of work for one run (`train`): set up (load the prepared dataset -> build the model,
single-device code, `recpar.model`, same seed so identical on every rank -> hand it to the
scheme's engine, `recpar.train.engines`, which applies the plan's parallelism with the `apply_*`
functions of `recpar.parallel` -> cut training sequences) -> resume from the last saved epoch,
if any -> per epoch: one engine step per global batch inside the timing window of
`recpar.train.timing`; gather the full weights on rank 0, validate (full ranking), keep the
best checkpoint, stop early after `patience` epochs without improvement; save checkpoints ->
gather every rank's measurements -> reload the best weights, evaluate valid and test under both
protocols (`recpar.train.validation`) -> write the run record (rank 0,
`recpar.train.run_record`).

Checkpoints: `last.pt` and `best.pt` hold the full single-device weights whatever the plan
(so any two runs compare key by key); each rank's training state (weights or shard,
optimiser, gradient-sync residuals) lives in `engine-rank<r>.pt` or the engine's own format.
One generation per epoch (`checkpoints/epoch-<n>/`: engine state, last.pt, a checksummed
manifest), the last two kept (`recpar.train.checkpoint_generations`); an interrupted run
resumes from the newest undamaged one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from recpar.cluster import cpu_budget
from recpar.cluster.cpu_budget import own_throttling
from recpar.data.prepared import PreparedDataset
from recpar.eval.popularity import popularity_scorer
from recpar.model.config import ModelConfig
from recpar.model.loss import valid_positions
from recpar.model.recommender import Recommender
from recpar.model.sequences import build_training_sequences
from recpar.train import checkpoint, checkpoint_generations, injected_faults, record
from recpar.train.config import TrainConfig
from recpar.train.engines import Engine, EngineContext, build_engine
from recpar.train.memory import model_state_gib
from recpar.train.restarts import RestartTracker
from recpar.train.run_record import base_record, training_metrics
from recpar.train.spec import RunSpec
from recpar.train.step_timeline import StepTimeline
from recpar.train.timing import StepWindow, peak_rss_gib
from recpar.train.validation import EvalCopy, eval_examples, quality


class DataMissingError(FileNotFoundError):
    """An input the run needs (prepared data, text embeddings) is absent."""


def _set_determinism(cfg: TrainConfig, seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.compile or "torch._inductor" in sys.modules:
        torch.use_deterministic_algorithms(cfg.deterministic)
    else:
        # torch.use_deterministic_algorithms also sets torch._inductor.config.deterministic,
        # and importing torch._inductor for that one flag pulls in torch._dynamo: about 2 s of
        # CPU in every rank of every run (torch 2.13, measured with cProfile on a baseline
        # run: 3.2 of its 8.1 s). Only a compiled model reads that flag, so without
        # train.compile the flag ATen reads is set alone, by the setter the public call uses.
        torch._C._set_deterministic_algorithms(cfg.deterministic)


def _text_embeddings(ds: PreparedDataset, use_text: bool) -> torch.Tensor | None:
    if not use_text:
        return None
    emb = ds.item_text_embeddings()
    if emb is None:
        raise DataMissingError(
            f"{ds.root / 'item_text_emb.npy'}: item text embeddings missing "
            f"(run `recpar data embed --data {ds.root}` or train with --no-text)")
    return torch.from_numpy(emb).float()


def run_most_popular(spec: RunSpec) -> dict:
    """The non-learned reference: rank items by training-split popularity."""
    ds = PreparedDataset.load(spec.data_dir)
    examples = eval_examples(ds, spec.model.max_seq_len, spec.seed)
    t0 = time.perf_counter()
    q = quality(popularity_scorer(ds), examples, spec.seed, spec.train.eval_batch_size)
    rec = base_record(spec, ds, "most-popular")
    rec["timing"] = {"warmup_steps": 0, "timed_steps": 0, "window_start_utc": None,
                     "window_end_utc": None, "window_s": None, "device_sync": "none (no training)",
                     "total_train_s": 0.0}
    rec["metrics"] = {"eval_s": time.perf_counter() - t0, "peak_rss_gib": peak_rss_gib()}
    rec["quality"] = q
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
    gradient sync, ZeRO stage, async settings, data statistics, text on/off, and the topology
    the run was launched on (an emulated cluster's configured links and their calibration:
    the same cluster instance, as calibrated). A run whose cluster was brought up again
    starts afresh instead of resuming: Snakemake re-runs a finished run when its cluster state
    changes, and resuming its completed checkpoint wrote a record with nothing trained and no
    timing window (stop 33, the MoE emulated grid)."""
    model_cfg = model_cfg or _model_config(spec, ds)
    cfg = spec.train
    return checkpoint.fingerprint({
        "model": model_cfg.to_record(), "train": cfg.to_record(), "plan": spec.plan.to_record(),
        "seed": spec.seed, "grad_sync": spec.grad_sync.to_dict() if spec.plan.dp > 1 else None,
        "zero_stage": spec.zero_stage,
        **({"async_ps": {k: v for k, v in asdict(spec.async_ps).items()
                         if k != "timeout_s"}}  # timeout: may change
           if spec.plan.scheme == "async" else {}),
        "data": str(ds.stats), "use_text": spec.use_text,
        "topology": _cluster_identity(spec.topology)})


def _cluster_identity(topology: dict) -> dict:
    """The part of a run's topology its checkpoints must match: the layout and, on an emulated
    cluster, its links as configured and calibrated (`recpar train` puts them in the spec
    before any rank starts; each rank gets the same from the launcher)."""
    ident = {k: topology.get(k) for k in ("kind", "nodes", "ranks_per_node")}
    if topology.get("kind") == "emulated":
        ident.update({k: topology.get(k) for k in EMULATED_LINK_KEYS})
    return ident


EMULATED_LINK_KEYS = ("inter_node", "intra_node", "scale_model")
"""Topology record keys that describe an emulated cluster's links (configured and calibrated)."""


def replace_stale_run(spec: RunSpec) -> Path | None:
    """If `spec.out_dir` holds a run of another configuration (checkpoints with another
    fingerprint, or unreadable ones), move the directory aside to `<out>.replaced-<UTC time>` so
    this run starts fresh, and return where it went; a run of the same configuration stays (it
    resumes). Nothing is deleted."""
    out = Path(spec.out_dir)
    stored = checkpoint_generations.stored_fingerprint(out)
    if stored is None or stored == run_fingerprint(spec, PreparedDataset.load(spec.data_dir)):
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest, k = out.with_name(f"{out.name}.replaced-{stamp}"), 1
    while dest.exists():  # replaced twice within a second
        dest, k = out.with_name(f"{out.name}.replaced-{stamp}-{k}"), k + 1
    out.rename(dest)
    return dest


def train(spec: RunSpec, progress: bool = True) -> dict | None:
    """Train one run (single device, or one rank of a parallel scheme under torchrun); returns
    the record on rank 0 (None on other ranks). The record is written by rank 0 only."""
    run = _set_up(spec, progress)
    state = _resume(run)
    # A resumed run measures its window on the steps it actually runs.
    timed = _Timed(StepWindow(run.cfg.warmup_steps, run.cfg.timed_steps, run.cfg.device))
    scorer = (EvalCopy(run.model_cfg, run.ds.n_items, run.text_emb, run.device, run.world)
              if run.rank == 0 else None)
    # After a torchrun restart: what the dead attempt had done (recpar.train.restarts).
    run.restarts = RestartTracker.begin(run.out, run.rank, state.step)
    run.timeline = StepTimeline()
    if run.rank == 0 and spec.fault_schedule is not None:
        injected_faults.mark_training_started(run.out)  # the fault schedule's clock starts
    # A device's CPU budget (the scale model) paces training from here: the set-up above
    # (imports, data, model, process groups) is not what a device is timed on, and at a
    # device's pace it took most of a budgeted run's wall time.
    cpu_budget.join_from_env(run.rank)
    t_train0 = time.perf_counter()
    for epoch in range(state.start_epoch, run.cfg.max_epochs):
        t_epoch0 = time.perf_counter()
        entry = _train_epoch(run, state, timed, epoch)
        # Training seconds so far, validation and checkpoints not counted (time to quality is
        # read off the history: recpar.report.quality_ablation, the straggler ablation).
        entry["train_s"] = (state.history[-1].get("train_s", 0.0) if state.history else 0.0) \
            + time.perf_counter() - t_epoch0
        # Full single-device weights on rank 0 (a collective for sharded engines).
        full = run.engine.full_state_dict()
        if scorer is not None:
            scorer.load(full)
        if (epoch + 1) % run.cfg.eval_every == 0 or state.stop:
            _validate(run, state, scorer, epoch, full, entry)
        state.history.append(entry)
        _log_epoch(run, entry)
        _save_epoch(run, state, epoch, full)
        run.restarts.committed(state.step)
        state.stop = _bcast(state.stop, run.rank, run.world)
        if state.stop:
            break
    measured = _gather_measurements(run, timed, t_train0)  # reads the CPU throttling, too
    if cpu_budget.release():  # the budget paced training; the final evaluation runs unpaced
        state.notes.append("set-up, validation and the final evaluation ran outside the "
                           "device's CPU budget (the budget applies to the training steps)")
    if run.rank != 0:
        return None
    return _write_record(run, state, timed, measured, scorer, _final_quality(run, scorer))


@dataclass
class _Run:
    """One rank's fixed parts of a run (`_set_up`)."""

    spec: RunSpec
    cfg: TrainConfig
    rank: int
    world: int
    progress: bool
    """Show progress bars (rank 0 only)."""
    ds: PreparedDataset
    text_emb: torch.Tensor | None
    model_cfg: ModelConfig
    """spec.model with the text width of the embeddings on disk."""
    device: torch.device
    engine: Engine
    inputs: torch.Tensor
    """[N, L] int64 training sequences, left-padded with 0."""
    targets: torch.Tensor
    """[N, L] int64 next-item targets."""
    examples: dict | None
    """Rank 0's valid/test examples (`eval_examples`); None on other ranks."""
    fingerprint: str
    out: Path
    restarts: RestartTracker = field(default_factory=RestartTracker.disabled)
    """Rank 0's progress and restart bookkeeping (set when training starts)."""
    timeline: StepTimeline = field(default_factory=StepTimeline)
    """Every step's wall time (reset when training starts): the record's slow windows."""
    rank0_wait_group: object | None = None
    """All ranks, made with cfg.rank0_phase_timeout_s: where the others wait for rank 0's
    validation (`_wait_for_rank0`); None on one rank."""

    @property
    def n_seq(self) -> int:
        return self.inputs.shape[0]

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"


@dataclass
class _Progress:
    """What carries from epoch to epoch; last.pt saves it for a resume."""

    start_epoch: int = 0
    step: int = 0
    best: float = -1.0
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stop: bool = False


@dataclass
class _Timed:
    """The timing window and what this rank measured inside it."""

    window: StepWindow
    fwd_bwd_ms: list[float] = field(default_factory=list)
    comm_stats: dict = field(default_factory=dict)
    first_epoch_batches: list[torch.Tensor] | None = None
    """The batches of the first epoch run, which `Engine.finish` replays."""
    moe_counted_step: tuple[int, int] | None = None
    """An MoE run's first step, a warm-up step, counted: this rank's (expert MLP forward FLOPs,
    routed token assignments); None when no step was counted."""


@dataclass
class _Measured:
    """This rank's measurements after training, and every rank's."""

    timing: dict
    comm_stats: dict
    this_rank: dict
    all_ranks: list[dict]
    total_train_s: float
    moe: dict | None = None
    """An MoE model's router load over the training steps (recpar.model.moe.moe_record),
    taken before the engine's after-training replays, which also run forwards."""
    gemm_peak_flops_per_s: float | None = None
    """Rank 0's device's measured GEMM peak (train.measure_mfu), taken on the device as it
    trained: inside its CPU budget, if it has one, so the MFU of a budgeted device is against
    the budgeted peak."""


def _set_up(spec: RunSpec, progress: bool) -> _Run:
    """Validate, seed, load the data, build the model and the scheme's engine, cut the training
    sequences; rank 0 builds its evaluation examples."""
    cfg = spec.train.validate()
    rank, world = _dist()
    spec.plan.validate(world_size=world, n_heads=spec.model.n_heads, n_layers=spec.model.n_layers,
                       num_experts=spec.model.num_moe_experts)
    dp = spec.plan.dp
    if cfg.global_batch_size % spec.plan.batch_shards:  # dp, or dp - 1 workers for async
        raise ValueError(f"train.global_batch_size = {cfg.global_batch_size} is not divisible "
                         f"by the {spec.plan.batch_shards} ranks that split it (dp = {dp})")
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
    engine = build_engine(EngineContext(spec=spec, model=model, model_cfg=model_cfg,
                                        device=device, rank=rank, world=world,
                                        seq_len=int(inputs.shape[1])))
    examples = eval_examples(ds, model_cfg.max_seq_len, spec.seed) if rank == 0 else None
    # every rank, same point: the group the others wait in while rank 0 validates
    wait_group = (dist.new_group(timeout=timedelta(seconds=cfg.rank0_phase_timeout_s))
                  if world > 1 else None)
    fp = run_fingerprint(spec, ds, model_cfg)
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return _Run(spec=spec, cfg=cfg, rank=rank, world=world, progress=progress and rank == 0,
                ds=ds, text_emb=text_emb, model_cfg=model_cfg, device=device, engine=engine,
                inputs=inputs, targets=targets, examples=examples, fingerprint=fp, out=out,
                rank0_wait_group=wait_group)


def _resume(run: _Run) -> _Progress:
    """After the newest undamaged checkpoint generation (engine state and RNG state restored;
    damaged newer ones named in the notes), or from scratch."""
    found = checkpoint_generations.resume_point(run.out, run.fingerprint, run.rank, run.world)
    if found is None:
        return _Progress()
    state = checkpoint.load(found.last_path, expect_fingerprint=run.fingerprint)
    run.engine.load(found.path, run.fingerprint)
    # Each rank's own RNG state: ranks draw differently (dropout on an uneven last batch), so
    # rank 0's alone would change the other ranks' draws (older checkpoints kept only it).
    checkpoint.set_rng_state((state.get("rng_by_rank") or [state["rng"]] * run.world)[run.rank])
    return _Progress(start_epoch=state["epoch"] + 1, step=state["step"], best=state["best"],
                     bad_epochs=state["bad_epochs"], history=state["history"],
                     notes=[f"resumed from {run.last_path.name} after epoch {state['epoch']}",
                            *found.notes])


def _train_epoch(run: _Run, state: _Progress, timed: _Timed, epoch: int) -> dict:
    """One epoch of engine steps (the timed ones inside the window); its history entry."""
    cfg, engine = run.cfg, run.engine
    engine.train()
    # Identical permutation on every rank; the engine picks this rank's rows.
    g = torch.Generator().manual_seed(run.spec.seed * 100_003 + epoch)
    perm = torch.randperm(run.n_seq, generator=g)
    steps_per_epoch = math.ceil(run.n_seq / cfg.global_batch_size)
    batches = [perm[b * cfg.global_batch_size:(b + 1) * cfg.global_batch_size]
               for b in range(steps_per_epoch)]
    timed.first_epoch_batches = timed.first_epoch_batches or batches
    # Engines without one synchronous step per batch (async) train the epoch themselves
    # and drive the window; see their module for how the window is measured.
    epoch_batches = batches[:cfg.max_steps - state.step] if cfg.max_steps else batches
    losses = engine.run_epoch(run.inputs, run.targets, epoch_batches, timed.window)
    if losses is not None:
        state.step += len(epoch_batches)
        run.restarts.step_done(state.step)
        state.stop = bool(cfg.max_steps) and state.step >= cfg.max_steps
    else:
        losses = _step_batches(run, state, timed, batches, epoch)
    timed.window.pause()  # validation and checkpoints below are not training time
    # engines may leave each step's loss on the device (StepResult.loss_mean): synced here
    return {"epoch": epoch, "step": state.step,
            "train_loss": float(np.mean([float(x) for x in losses]))}


def _step_batches(run: _Run, state: _Progress, timed: _Timed, batches: list[torch.Tensor],
                  epoch: int) -> list[float]:
    """One engine step per global batch until the epoch or `max_steps` ends; the losses."""
    engine, window, inputs, targets = run.engine, timed.window, run.inputs, run.targets
    losses = []
    for idx in tqdm(batches, desc=f"epoch {epoch}", disable=not run.progress, leave=False,
                    mininterval=2.0):
        # valid (input, target) positions of this batch, counted before the timed region
        tokens = int(valid_positions(inputs[idx], targets[idx]).sum())
        was_open = window.open
        window.before_step()
        if window.open and not was_open:
            engine.window_opened()
        in_window = window.open
        t_start = time.time()
        if run.model_cfg.num_moe_experts and state.step == 0 and not in_window:
            res = _counted_moe_step(run, timed, idx)
        else:
            res = engine.step(inputs, targets, idx)
        run.timeline.add(state.step + 1, t_start, time.time())
        if in_window and res.fwd_bwd_ms is not None:
            timed.fwd_bwd_ms.append(res.fwd_bwd_ms)
        window.after_step(samples=int(idx.numel()), tokens=tokens)
        if in_window and window.closed:
            timed.comm_stats = engine.window_closed(window.steps_in_window)
        losses.append(res.loss_mean)
        state.step += 1
        run.restarts.step_done(state.step)
        if run.cfg.max_steps and state.step >= run.cfg.max_steps:
            state.stop = True
            break
    return losses


def _counted_moe_step(run: _Run, timed: _Timed, idx: torch.Tensor):
    """The engine's step with the expert MLPs' forward FLOPs counted (torch's FlopCounterMode),
    to measure how many experts a token runs through (recpar.model.moe.measured_experts_per_
    token). A warm-up step: the counter's dispatch overhead stays out of the timing window."""
    from recpar.model.moe import expert_forward_flops, routed_assignments

    model = run.engine.ctx.model
    routed0 = routed_assignments(model)
    with expert_forward_flops(model) as flops:
        res = run.engine.step(run.inputs, run.targets, idx)
    timed.moe_counted_step = (flops[0], routed_assignments(model) - routed0)
    return res


def _validate(run: _Run, state: _Progress, scorer: EvalCopy | None, epoch: int,
              full: dict | None, entry: dict) -> None:
    """Validation on rank 0 (into `entry`), best.pt on improvement, early stopping (every rank
    learns rank 0's verdict)."""
    cfg = run.cfg
    improved = False
    if run.rank == 0:
        with cpu_budget.paused():  # a device's budget paces training steps, not validation
            metric = scorer.validate(run.examples, cfg.early_stopping_metric,
                                     cfg.eval_batch_size, run.spec.seed)
        entry[f"valid_{cfg.early_stopping_metric}"] = metric
        improved = metric > state.best
        if improved:
            state.best = metric
            checkpoint.save(run.best_path, {"model": full, "epoch": epoch,
                                            "fingerprint": run.fingerprint, "metric": metric})
    if run.world > 1:
        _wait_for_rank0(cfg, run.rank0_wait_group)
    improved, state.best = _bcast((improved, state.best), run.rank, run.world)
    state.bad_epochs = 0 if improved else state.bad_epochs + 1
    if state.bad_epochs >= cfg.patience:
        state.stop = True
        state.notes.append(f"early stop after epoch {epoch}: no better valid "
                           f"{cfg.early_stopping_metric} for {cfg.patience} epochs")


def _model_flops_metrics(run: _Run, timing: dict, peak: float | None) -> dict:
    """Model FLOP/s of the whole run over the timing window (ModelConfig.model_flops: one
    definition) and, with train.measure_mfu, rank 0's device's measured GEMM peak `peak`
    (_Measured) in the run's precision (fp32, or bf16 under bf16 autocast, whose FLOPs are
    nearly all bf16 matmuls) and the MFU = model FLOP/s / (devices × that peak). MFU is model
    FLOPs (what the math needs) over peak, the metric of PaLM, Megatron and TorchTitan; the
    paper's "GPU utilisation" is the share of time a kernel runs, another quantity. It
    assumes a device per rank (GPUs, or CPU budgets); ranks time-sharing the same cores
    (topology local) each measure the shared peak, so their MFU is understated."""
    samples_per_s, iter_ms = timing.get("throughput_samples_per_s"), timing.get("iter_ms")
    if not samples_per_s or not iter_ms:
        return {}
    flops_per_s = run.model_cfg.model_flops(run.ds.n_items, samples=samples_per_s,
                                            steps=1e3 / iter_ms)
    out = {"model_tflops_per_s": flops_per_s / 1e12}
    if peak is not None:
        out.update(gemm_peak_tflops_per_s=peak / 1e12,
                   mfu_pct=100.0 * flops_per_s / (run.world * peak))
    return out


def _wait_for_rank0(cfg: TrainConfig, group) -> None:
    """The other ranks wait here while rank 0 alone validates: up to cfg.rank0_phase_timeout_s,
    not the collective timeout. `group` (all ranks) was made with that timeout: gloo's
    monitored barrier takes a timeout of its own, but its sends still wait, under the group's
    timeout, for rank 0 to post the matching receive (gloo's TCP transport sends only to a
    posted receive), so on the default group a validation longer than collective_timeout_s
    failed the run. NCCL's barrier waits the group's timeout."""
    if dist.get_backend(group) == "gloo":
        dist.monitored_barrier(group=group, timeout=timedelta(seconds=cfg.rank0_phase_timeout_s),
                               wait_all_ranks=True)
    else:
        dist.barrier(group=group)


def _log_epoch(run: _Run, entry: dict) -> None:
    if run.rank == 0:  # one line per epoch, also in logs where the bar is off
        tqdm.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in entry.items()), file=sys.stdout)
        sys.stdout.flush()


def _save_epoch(run: _Run, state: _Progress, epoch: int, full: dict | None) -> None:
    """Engine state first (every rank) into this epoch's generation, then rank 0 commits it
    (last.pt, then the checksummed manifest)."""
    gen = checkpoint_generations.generation_dir(run.out, epoch)
    run.engine.save(gen, run.fingerprint)
    if run.world > 1:
        dist.barrier()
    rngs = _every_rank(checkpoint.rng_state(), run.world)
    if run.rank == 0:
        checkpoint_generations.commit(gen, {
            "model": full, "rng": rngs[0], "rng_by_rank": rngs, "epoch": epoch, "step": state.step,
            "best": state.best, "bad_epochs": state.bad_epochs, "history": state.history,
            "plan": run.spec.plan.to_record(), "fingerprint": run.fingerprint})


def _every_rank(obj, world: int) -> list:
    """Every rank's value of a small Python object, on every rank (a collective)."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _gather_measurements(run: _Run, timed: _Timed, t_train0: float) -> _Measured:
    """Close the window; this rank's timing, communication and memory figures, then every
    rank's (a collective); release the engine."""
    engine, window = run.engine, timed.window
    window.close()
    if window.steps_in_window and not timed.comm_stats:
        timed.comm_stats = engine.window_closed(window.steps_in_window)
    total_train_s = time.perf_counter() - t_train0

    moe = None
    if run.model_cfg.num_moe_experts:
        from recpar.model.moe import moe_record

        counted = timed.moe_counted_step
        if run.world > 1:  # every rank's, summed (a collective: every rank counted or none)
            every = [None] * run.world
            dist.all_gather_object(every, counted)
            counted = (None if any(c is None for c in every)
                       else tuple(map(sum, zip(*every))))
        moe = moe_record(run.model_cfg, run.ds.n_items, run.engine.ctx.model, counted)
    timing_metrics = window.metrics()
    if timed.fwd_bwd_ms:
        timing_metrics["fwd_bwd_ms_per_iter"] = float(np.mean(timed.fwd_bwd_ms))
    if timed.first_epoch_batches:
        timing_metrics.update(engine.finish(run.inputs, run.targets, timed.first_epoch_batches,
                                            {**timing_metrics,
                                             "timed_steps": window.steps_in_window}))
    rank_metrics = {**timing_metrics, **timed.comm_stats, "peak_rss_gib": peak_rss_gib(),
                    **own_throttling()}
    held = engine.trained_state()
    if held is not None:
        rank_metrics["model_state_gib"] = model_state_gib(*held)
    all_ranks = [rank_metrics]
    if run.world > 1:
        all_ranks = [None] * run.world
        dist.all_gather_object(all_ranks, rank_metrics)
    engine.close()
    peak = None
    if run.cfg.measure_mfu and run.rank == 0:
        from recpar.device import gemm_flops_per_s

        peak = gemm_flops_per_s(run.cfg.resolved_precision(), device=run.device.type)
    return _Measured(timing=timing_metrics, comm_stats=timed.comm_stats, this_rank=rank_metrics,
                     all_ranks=all_ranks, total_train_s=total_train_s, moe=moe,
                     gemm_peak_flops_per_s=peak)


def _final_quality(run: _Run, scorer: EvalCopy) -> dict:
    """Rank 0: the best weights (the last ones if no epoch was validated) on valid and test
    under both protocols."""
    if run.best_path.exists():
        scorer.load(checkpoint.load(run.best_path,
                                    expect_fingerprint=run.fingerprint)["model"])
    return scorer.quality(run.examples, run.spec.seed, run.cfg.eval_batch_size)


def _write_record(run: _Run, state: _Progress, timed: _Timed, measured: _Measured,
                  scorer: EvalCopy, quality: dict) -> dict:
    """Rank 0: build the run record, write record.json, return it."""
    rec = base_record(run.spec, run.ds, run.spec.plan.scheme, run.model_cfg)
    rec["timing"] = {**timed.window.to_record(), "total_train_s": measured.total_train_s}
    metrics = training_metrics(
        measured.timing, measured.comm_stats, measured.this_rank, measured.all_ranks,
        world=run.world, device=run.device, params_count=scorer.params_count(),
        train_sequences_count=run.n_seq, steps_count=state.step,
        epochs_count=len(state.history), best_valid_metric=state.best)
    if run.engine.loss_is_estimate:
        state.notes.append("train_loss with dp > 1 is rank 0's share x dp (an estimate of the "
                           "global mean)")
    metrics.update(_model_flops_metrics(run, measured.timing,
                                        measured.gemm_peak_flops_per_s))
    metrics.update(run.restarts.metrics())
    metrics.update(run.timeline.metrics())
    state.notes.extend(run.restarts.notes(run.spec.plan.scheme))
    rec["slow_windows"] = run.timeline.slow_windows()
    if run.spec.fault_schedule is not None:
        rec["faults"] = injected_faults.for_record(run.spec.fault_schedule,
                                                   run.out / injected_faults.LOG_FILE,
                                                   run.timeline.t0_unix_s)
    if measured.moe is not None:
        rec["moe"] = measured.moe
    rec["metrics"] = metrics
    rec["quality"] = quality
    rec["history"] = state.history
    rec["notes"] = state.notes
    record.write(rec, run.out / "record.json")
    return rec
