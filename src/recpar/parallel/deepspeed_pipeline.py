"""The paper's "DeepSpeed auto-scheduled hybrid" scheme: DeepSpeed pipeline + ZeRO-1 + data
parallelism (scheme `deepspeed`), with megatron-core tensor parallelism inside the stages when
tp > 1, on CPU/gloo or NCCL.

`apply_deepspeed_pipeline` rebuilds the single-device `Recommender` as a
`deepspeed.pipe.PipelineModule` (weights copied, or under TP sliced by `apply_tp`, so the same
seed gives the baseline's init),
generates the DeepSpeed config from the plan and the training settings (`TrainConfig`), and returns DeepSpeed's
`PipelineEngine`; `pipeline_step` trains one global batch with `engine.train_batch`:

    engine = apply_deepspeed_pipeline(model, train_cfg, plan)    # every rank, world = pp×tp×dp
    loss = pipeline_step(engine, x_global, y_global)             # same [B, L] batch everywhere
    state = pipeline_state_dict(engine)                          # collective; rank 0: full weights

Layers of the PipelineModule (`recpar.parallel.deepspeed_layers`; DeepSpeed partitions this
list; recpar's units in brackets):

    0       TiedLayerSpec('item_table', ItemTable)   ids -> (item rows [mb, L, d], ids)   [embedding]
    1       LayerSpec(PositionEmbedding)             + positions, dropout                 [embedding]
    2..L+1  LayerSpec(PipeBlock, i)                  transformer block i                  [block.i]
    L+2     LayerSpec(FinalNorm)                     ln_f -> hidden [mb, L, d]            [head]
    L+3     TiedLayerSpec('item_table', ItemTable)   hidden -> logits [mb, L, n_items+1]  [head]

(with tp > 1 the table is `VocabParallelItemTable` and the logits are [mb, L, V_local].)

- **Tied item table.** The fused item table (ID embedding + projected text, `item_id_emb` and
  `text_proj`) is a `TiedLayerSpec` used at both ends: DeepSpeed builds a copy on the first and
  the last stage, broadcasts it from the lower rank at init and all-reduces (sums) the two
  copies' gradients each step (`ReduceTiedGrads`), and marks the upper copy `ds_pipe_replicated`
  so the global gradient norm counts it once. Both roles are one `forward` told apart by its
  input (integer item ids: lookup; float hidden states: logits) rather than a `forward_fn`,
  because DeepSpeed's checkpoint writes only layers that are modules (a `forward_fn` partial has
  no state_dict, so the tied table would be missing from the layer files).
- **Item ids travel with the activations.** Every block needs the padding mask, so each layer
  passes `(hidden [mb, L, d], ids [mb, L])`; DeepSpeed's pipe engine sends tuples of tensors and
  skips gradients of integer tensors. The ids cost mb × L int64 per micro-batch and stage.
- **Partition.** plan.partition_method maps to a DeepSpeed method:
  `uniform` -> `type:PipeBlock`: equal numbers of transformer blocks per stage, the embedding
  layers on the first and the head layers on the last (recpar's uniform cut; with
  n_layers % pp != 0 DeepSpeed gives the extra blocks to the first stages where recpar gives them
  to the middle ones first). DeepSpeed's own `uniform` counts every layer of the list above,
  so with pp > 2 it can give the first or last stage no block at all.
  `balanced` -> `parameters`: DeepSpeed's default, stages balanced by trainable parameter count
  (the tied table counted at both ends; under TP this rank's shard sizes, equal on every TP
  rank, so all TP ranks cut alike). recpar's `balanced` balances *profiled time*; the
  closest DeepSpeed method would be `profile`, which raises NotImplementedError in DeepSpeed
  0.19.8, so the parameter count stands in for cost.
- **Schedule.** DeepSpeed's `TrainSchedule` (its synchronous 1F1B); other plan schedules are
  refused. Micro-batches: `train_micro_batch_size_per_gpu` = B / (dp × m) and
  `gradient_accumulation_steps` = m = plan.num_microbatches.
- **Loss, exactly the baseline's.** The baseline minimises sum(CE over valid positions of the
  global batch) / N, N = valid positions of the whole global batch. DeepSpeed's pipeline engine
  divides each micro-batch loss by gradient_accumulation_steps before backward and averages the
  gradients (and the reported loss) over the dp replicas. The loss function therefore returns
  CE_sum(micro-batch) / N × (m × dp), with N passed in each micro-batch's labels, so that
  (1/dp) Σ_replicas Σ_mb (1/m) × grad(CE_sum_mb × m × dp / N) = grad(Σ CE_sum / N): the
  single-device gradient; and train_batch's returned loss, (1/dp) Σ_replicas (1/m) Σ_mb
  CE_sum_mb × m × dp / N, is the global mean loss.
- **Short batches.** DeepSpeed's batch size is fixed; a shorter (tail) global batch is topped
  up with all-padding rows, which have no valid position and so change neither loss nor
  gradient.
- **ZeRO-1.** Optimizer state partitioned over the dp ranks of each stage (DeepSpeed's pipeline
  engine refuses ZeRO-2/3). Optimizer: torch AdamW (`torch_adam`), clipping, fp32 and the DeepSpeed
  set-up on CPU exactly as the `zero` scheme (`recpar.parallel.zero`: `adamw_fp32_config`,
  `init_deepspeed`).
- **Tensor parallelism** (tp > 1): megatron-core layers inside DeepSpeed's PipelineModule.
  - *Topology.* `PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)`, DeepSpeed's
    axes [pipe, data, model] (model fastest): rank = (stage × dp + dp_rank) × tp + tp_rank.
    megatron's `parallel_state` (`recpar.parallel.process_groups`, default order
    tp-cp-ep-dp-pp, tp fastest) gives the same formula, so both build the same tp, pp and dp
    groups; `check_megatron_matches_topology` asserts it for this rank's actual groups before
    any layer is built (RuntimeError naming both rank lists otherwise).
  - *Layers.* `recpar.parallel.tensor_parallel.apply_tp` shards `model` in place (column/row-
    parallel linears in the blocks, `VocabParallelEmbedding` item table padded to a multiple
    of 128 × tp rows, attention dropout on a per-TP-rank stream). The layers then take this
    rank's modules from the sharded model *without a copy*: the sharded model is no longer a
    single-device model anyway, and sharing keeps megatron's process groups, the
    `tensor_model_parallel` marks and the dropout hooks bound to the modules that run; the
    model's parameters on other stages are freed. The tied table is `VocabParallelItemTable`:
    input end = the masked lookup of this rank's rows + one TP all-reduce (megatron's
    `VocabParallelEmbedding.forward`, or `_vocab_parallel_lookup` of the fused shard with
    text), output end = `copy_to_tensor_model_parallel_region(hidden) @ shard^T`, logits of
    this rank's vocab shard [mb, L, V_local] (pad item and padding rows -inf), as in
    `TensorParallelRecommender`. DeepSpeed builds one tied group per (dp, model) coordinate,
    so each TP rank ties, broadcasts and all-reduces its own shard between first and last
    stage. The loss is megatron's `vocab_parallel_cross_entropy`
    (`tensor_parallel.vocab_parallel_cross_entropy_sum`) with the same m × dp scale.
  - *Between stages.* Every TP rank of a stage holds the same activations; DeepSpeed's
    `pipe_partitioned`/`grad_partitioned` (default on when tp > 1) sends each TP rank 1/tp of
    them and all-gathers them in the TP group on arrival: exact (a split and a concatenation).
  - *Gradient norm.* The grid is DeepSpeed's mpu; ZeRO-1's `get_grad_norm_direct` skips the
    `ds_pipe_replicated` tied copy, counts a parameter when `is_model_parallel_parameter(p)`
    (megatron's `tensor_model_parallel=True`, set on the sharded weights, column-parallel
    biases and the vocab shard) or when this rank's *tensor*-parallel rank
    (`bwc_tensor_model_parallel_rank(grid)`) is 0, so replicated LayerNorms, row-parallel
    biases, positions and text_proj count once; the squares are summed over the dp group and
    the grid's model-parallel group (pp × tp ranks of one replica). The TP-replicated
    gradients are identical on every TP rank (megatron's copy/reduce regions all-reduce the
    input gradients), so one TP rank's count is the whole. Checked numerically against the
    single device with active clipping (tests/parallel/test_deepspeed_pipeline_tp.py).
  - *Weights.* `pipeline_state_dict` gathers every (stage, TP rank) of dp replica 0 on rank 0
    and concatenates the TP shards along megatron's `partition_dim`, cutting the vocab
    padding rows: the single-device state dict. DeepSpeed's checkpoint writes one file per
    layer and TP rank (`layer_XX-model_YY-model_states.pt`) and loads TP rank r's file back
    on TP rank r (same tp only).
- **Known warning.** The first backward prints torch's UserWarning "c10d::broadcast_: an
  autograd kernel was not registered ..." from inside DeepSpeed; no broadcast node is in the
  loss's autograd graph (checked by walking it) and the gradients of every stage, tied copies
  included, equal the single-device ones (tests/parallel/test_deepspeed_pipeline.py, _tp.py),
  so it is left alone. Cause (found while adding TP, where every TP rank of both stages
  prints it, once per tied parameter and backward): DeepSpeed's `_synchronize_tied_weights`
  calls `dist.broadcast` in place on the tied parameters at init, with grad mode on; torch's
  autograd fallback for c10d ops then warns whenever a gradient later reaches such a leaf,
  without changing it (reproduced on one rank: a parameter broadcast this way warns in
  backward and gets the exact gradient; one that was not does not warn).
- **Out of scope: DeepSpeed's autotuner** (`deepspeed --autotuning`), which searches micro-batch
  size and ZeRO stage by launching trial jobs through the `deepspeed` launcher on GPUs; on
  CPU/gloo under torchrun it does not run. "Auto-scheduled" here means DeepSpeed's own pipeline
  schedule, partitioner and gradient accumulation, driven by the plan.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recpar.constants import IGNORE_INDEX, PAD_ITEM
from recpar.model.config import ModelConfig
from recpar.model.loss import mask_targets, mean_divisor
from recpar.model.param_groups import adamw_param_groups
from recpar.model.recommender import Recommender
from recpar.parallel.deepspeed_layers import GlobalMeanLoss, layer_specs, recommender_key
from recpar.parallel.plan import ParallelPlan, PlanError
from recpar.parallel.tensor_parallel import validate_tp
from recpar.parallel.zero import (TrainSettings, adamw_fp32_config, init_deepspeed,
                                  reduce_bucket_size)

PARTITION_METHODS = {"uniform": "type:PipeBlock", "balanced": "parameters"}
"""ParallelPlan.partition_method -> DeepSpeed PipelineModule partition_method (module docstring)."""

ZERO_STAGE = 1
"""ZeRO stage of the scheme: DeepSpeed's pipeline engine asserts stage < 2."""

MEGATRON_TO_DEEPSPEED_AXIS = {"tp": "model", "pp": "pipe", "dp": "data"}
"""megatron parallel_state group name -> DeepSpeed ProcessTopology axis of the same ranks."""

# --- plan and config -------------------------------------------------------------------------


def validate_deepspeed_plan(plan: ParallelPlan, train_cfg: TrainSettings,
                            model_cfg: ModelConfig | None = None) -> int:
    """Raise PlanError naming the value when the plan cannot run as the deepspeed scheme;
    returns train_micro_batch_size_per_gpu = global_batch_size / (dp × num_microbatches).

    model_cfg: with tp > 1, also check that heads and d_ff split into whole TP shards
    (`tensor_parallel.validate_tp`; the vocabulary is padded, so any size splits)."""
    if plan.tp > 1 and model_cfg is not None:
        validate_tp(model_cfg, plan)
    if plan.pp > 1 and plan.pipeline_schedule != "1f1b":
        raise PlanError(f"pipeline_schedule = {plan.pipeline_schedule!r}: the deepspeed scheme "
                        "runs DeepSpeed's own TrainSchedule (synchronous 1F1B); use 1f1b")
    if plan.partition_method not in PARTITION_METHODS:
        raise PlanError(f"partition_method = {plan.partition_method!r} has no DeepSpeed "
                        f"equivalent; known: {', '.join(PARTITION_METHODS)}")
    per_step = plan.dp * plan.num_microbatches
    if train_cfg.global_batch_size % per_step:
        raise PlanError(f"train.global_batch_size = {train_cfg.global_batch_size} is not "
                        f"divisible by dp × num_microbatches = {plan.dp} × "
                        f"{plan.num_microbatches} = {per_step}")
    return train_cfg.global_batch_size // per_step


def deepspeed_pipeline_config(train_cfg: TrainSettings, plan: ParallelPlan,
                              n_params: int | None = None) -> dict[str, Any]:
    """DeepSpeed config: global batch = micro × m × dp, m = plan.num_microbatches accumulation
    steps, ZeRO-1, the baseline's AdamW, clipping and fp32 (`zero.adamw_fp32_config`).

    n_params (the model's parameter count) caps ZeRO's reduce_bucket_size
    (`zero.reduce_bucket_size`: under pipeline parallelism ZeRO-1 allocates a fresh gradient
    bucket of that many elements every step, `reduce_gradients(pipeline_parallel=True)`).
    """
    micro = validate_deepspeed_plan(plan, train_cfg)
    zero: dict[str, Any] = {"stage": ZERO_STAGE}
    if n_params is not None:
        zero["reduce_bucket_size"] = reduce_bucket_size(n_params)
    return adamw_fp32_config(train_cfg, micro, plan.num_microbatches, zero)


# --- topology --------------------------------------------------------------------------------


def deepspeed_topology(plan: ParallelPlan):
    """DeepSpeed's ProcessTopology for the plan: `PipeDataParallelTopology` (axes [pipe, data])
    for tp = 1, as before; `PipeModelDataParallelTopology` (axes [pipe, data, model], model
    fastest) for tp > 1."""
    from deepspeed.runtime.pipe.topology import (
        PipeDataParallelTopology,
        PipeModelDataParallelTopology,
    )

    if plan.tp == 1:
        return PipeDataParallelTopology(num_pp=plan.pp, num_dp=plan.dp)
    return PipeModelDataParallelTopology(num_pp=plan.pp, num_mp=plan.tp, num_dp=plan.dp)


def topology_mismatches(topology, megatron_groups: dict[str, list[int]], rank: int) -> list[str]:
    """Where megatron's groups of `rank` differ from DeepSpeed's `topology` (empty: they agree).

    megatron_groups: {"tp": ranks, "pp": ranks, "dp": ranks} of this rank's megatron groups;
    each is compared with the ranks sharing all of this rank's DeepSpeed coordinates but the
    matching axis (`MEGATRON_TO_DEEPSPEED_AXIS`).
    """
    out = []
    for name, axis in MEGATRON_TO_DEEPSPEED_AXIS.items():
        ds = next((sorted(g) for g in topology.get_axis_comm_lists(axis) if rank in g), [rank])
        mine = sorted(int(r) for r in megatron_groups[name])
        if mine != ds:
            out.append(f"{name} group of rank {rank}: megatron {mine}, DeepSpeed "
                       f"{axis!r} axis {ds}")
    return out


def check_megatron_matches_topology(topology) -> None:
    """Assert that this rank's megatron `parallel_state` tp, pp and dp groups hold the same
    ranks as DeepSpeed's model, pipe and data axes of `topology` (module docstring);
    RuntimeError listing the differences otherwise. Needs `init_parallel_groups` first."""
    import torch.distributed as dist

    from recpar.parallel import process_groups as pg

    groups = {"tp": dist.get_process_group_ranks(pg.tp_group()),
              "pp": dist.get_process_group_ranks(pg.pp_group()),
              "dp": dist.get_process_group_ranks(pg.dp_group())}
    bad = topology_mismatches(topology, groups, dist.get_rank())
    if bad:
        raise RuntimeError("megatron's parallel_state groups do not match DeepSpeed's "
                           f"topology {topology}: " + "; ".join(bad))


# --- apply -----------------------------------------------------------------------------------


def _free_unused(model: Recommender, module: nn.Module) -> None:
    """Release the sharded model's parameters that are not in this rank's stage (the stage
    shares the others' storage; the frozen text buffer is kept)."""
    keep = {id(p) for p in module.parameters()}
    for p in model.parameters():
        if id(p) not in keep:
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)


def apply_deepspeed_pipeline(model: Recommender, train_cfg: TrainSettings, plan: ParallelPlan,
                             seed: int | None = None):
    """Build this rank's pipeline stage from `model` and return DeepSpeed's PipelineEngine.

    torch.distributed must be initialised with world size pp × tp × dp. `model` is the
    single-device Recommender, identical on every rank (same seed). tp = 1: its weights are
    copied into the stage's layers, DeepSpeed's `PipeDataParallelTopology` lays ranks out
    pipe-major (rank = stage × dp + dp_rank). tp > 1: megatron's groups are initialised and
    checked against `PipeModelDataParallelTopology` (rank = (stage × dp + dp_rank) × tp +
    tp_rank), `apply_tp` shards `model` IN PLACE (it is unusable as a single-device model
    afterwards, as in the mp engine) and the layers take its modules (module docstring).
    seed: run seed of the TP attention-dropout stream (`apply_tp`; None = torch.initial_seed()).
    No activation checkpointing (not tested here).
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("apply_deepspeed_pipeline: torch.distributed is not initialised "
                           "(init_process_group first; gloo on CPU)")
    plan.validate(world_size=dist.get_world_size(), n_heads=model.cfg.n_heads,
                  n_layers=model.cfg.n_layers)
    validate_deepspeed_plan(plan, train_cfg, model.cfg)
    # the single-device layout pipeline_state_dict returns (before any sharding)
    plain_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    config = deepspeed_pipeline_config(train_cfg, plan,
                                       n_params=sum(p.numel() for p in model.parameters()))
    deepspeed = init_deepspeed(train_cfg.device, caller="apply_deepspeed_pipeline")
    from deepspeed.pipe import PipelineModule

    topology = deepspeed_topology(plan)
    tp_model = plan.tp > 1
    if tp_model:
        from recpar.parallel import process_groups as pg
        from recpar.parallel.tensor_parallel import apply_tp

        pg.init_parallel_groups(plan)  # megatron's tp-cp-ep-dp-pp layout
        check_megatron_matches_topology(topology)
        model = apply_tp(model, plan, seed=seed)
    specs = layer_specs(model)
    module = PipelineModule(
        layers=specs, topology=topology,
        loss_fn=GlobalMeanLoss(plan.num_microbatches * plan.dp, vocab_parallel=tp_model),
        partition_method=PARTITION_METHODS[plan.partition_method])
    parts = [int(p) for p in module.parts]
    empty = [s for s in range(plan.pp) if parts[s] == parts[s + 1]]
    if empty:  # every rank computed the same parts, so every rank raises here
        raise PlanError(f"DeepSpeed partition {PARTITION_METHODS[plan.partition_method]!r} left "
                        f"stage(s) {empty} without layers (boundaries {parts} over "
                        f"{len(specs)} layers); use fewer stages or partition_method='uniform'")
    if tp_model:
        _free_unused(model, module)
    module.recpar_n_layers = model.cfg.n_layers  # read by pipeline_state_dict
    module.recpar_plain_shapes = plain_shapes
    module.train(model.training)
    engine, _, _, _ = deepspeed.initialize(
        model=module, model_parameters=adamw_param_groups(module, train_cfg.weight_decay),
        config=config)
    return engine


# --- train / gather --------------------------------------------------------------------------


def microbatches(engine, x_global: torch.Tensor, y_global: torch.Tensor,
                 global_batch_size: int) -> list[tuple[torch.Tensor, tuple]]:
    """This dp replica's micro-batches of the global batch, as DeepSpeed's data_iter yields them:
    (ids [mb, L], (masked targets [mb, L], N)) with N the global batch's valid positions.

    Rows d::dp of the global batch go to dp replica d (as in the dp and zero engines); a batch
    shorter than global_batch_size is topped up with all-padding rows first.
    """
    if x_global.shape != y_global.shape or x_global.dim() != 2:
        raise ValueError(f"pipeline_step: inputs {tuple(x_global.shape)} and targets "
                         f"{tuple(y_global.shape)} must be equal [B, L] shapes")
    b = x_global.shape[0]
    if not 0 < b <= global_batch_size:
        raise ValueError(f"pipeline_step: batch of {b} sequences; DeepSpeed's train batch is "
                         f"{global_batch_size}")
    masked, count = mask_targets(x_global, y_global)  # [B, L], valid positions
    n_global = mean_divisor(count)  # as Recommender.loss (an all-padding batch has loss 0)
    if b < global_batch_size:
        rows = (global_batch_size - b, x_global.shape[1])
        x_global = torch.cat([x_global, x_global.new_full(rows, PAD_ITEM)])
        masked = torch.cat([masked, masked.new_full(rows, IGNORE_INDEX)])
    dp, dp_rank = engine.grid.data_parallel_size, engine.grid.data_parallel_id
    x_mine, y_mine = x_global[dp_rank::dp], masked[dp_rank::dp]
    m = engine.gradient_accumulation_steps()
    return [(x, (y, n_global)) for x, y in zip(x_mine.tensor_split(m), y_mine.tensor_split(m))]


def pipeline_step(engine, x_global: torch.Tensor, y_global: torch.Tensor) -> torch.Tensor:
    """One optimiser step on the global batch [B, L] (the same on every rank, B <= the
    configured global batch); returns the global mean loss (detached scalar, every rank)."""
    batches = microbatches(engine, x_global, y_global, engine.train_batch_size())
    return engine.train_batch(iter(batches)).detach()


def pipeline_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """Collective over all ranks: the full single-device `Recommender` state dict (CPU clones)
    on global rank 0, None elsewhere. Stages of dp replica 0 send their layers; the tied table
    is taken from the first stage (both copies are equal). With tp > 1 each key's TP shards
    are concatenated along megatron's `partition_dim` and cut to the single-device shape
    (the vocab padding rows), as `ModelParallelEngine.full_state_dict` does."""
    import torch.distributed as dist

    module = engine.module
    n_layers = module.recpar_n_layers
    plain: dict[str, tuple[int, ...]] = module.recpar_plain_shapes
    mine: dict[str, torch.Tensor] = {}
    shard_dims: dict[str, int] = {}
    if engine.grid.data_parallel_id == 0:
        # (megatron's `_extra_state` entries are None and not in the single-device layout)
        mine = {key: v.detach().to("cpu", copy=True)
                for key, v in ((recommender_key(k, n_layers), v)
                               for k, v in module.state_dict().items()) if key in plain}
        shard_dims = {recommender_key(k, n_layers): int(p.partition_dim)
                      for k, p in module.named_parameters()
                      if getattr(p, "tensor_model_parallel", False)}
    payload = (int(engine.grid.get_slice_parallel_rank()), mine, shard_dims)
    gathered: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(payload, gathered, dst=0)
    if gathered is None:
        return None
    tp = int(engine.grid.get_slice_parallel_world_size())
    by_tp: list[dict[str, torch.Tensor]] = [{} for _ in range(tp)]
    dims: dict[str, int] = {}
    for tp_rank, part, part_dims in gathered:  # rank order: stage 0 (tied original) first
        for k, v in part.items():
            by_tp[tp_rank].setdefault(k, v)
        dims.update(part_dims)
    full: dict[str, torch.Tensor] = {}
    for k, shape in plain.items():
        if k not in by_tp[0]:
            raise RuntimeError(f"pipeline_state_dict: no stage holds {k}")
        t = by_tp[0][k]
        if k in dims:  # TP shards -> the single-device tensor (vocab padding rows cut off)
            dim = dims[k]
            t = torch.cat([by_tp[r][k] for r in range(tp)], dim=dim).narrow(dim, 0, shape[dim])
        if tuple(t.shape) != shape:
            raise RuntimeError(f"pipeline_state_dict: {k} gathered as {tuple(t.shape)}, the "
                               f"single-device shape is {shape}")
        full[k] = t.contiguous()
    return full


def pipeline_record(engine) -> dict:
    """Layout DeepSpeed chose, for logs and tests: stage boundaries and this rank's place."""
    parts = [int(p) for p in engine.module.parts]
    return {"stage_id": int(engine.stage_id), "num_stages": int(engine.num_stages),
            "dp_rank": int(engine.grid.data_parallel_id), "dp": int(engine.grid.data_parallel_size),
            "tp_rank": int(engine.grid.get_slice_parallel_rank()),
            "tp": int(engine.grid.get_slice_parallel_world_size()),
            "parts": parts, "micro_batch_size": int(engine.train_micro_batch_size_per_gpu()),
            "micro_batches": int(engine.gradient_accumulation_steps()),
            "zero_stage": int(engine.zero_optimization_stage())}
