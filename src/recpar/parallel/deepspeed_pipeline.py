"""The paper's "DeepSpeed auto-scheduled hybrid" scheme: DeepSpeed pipeline + ZeRO-1 + data
parallelism (scheme `deepspeed`), on CPU/gloo or NCCL.

`apply_deepspeed_pipeline` rebuilds the single-device `Recommender` as a
`deepspeed.pipe.PipelineModule` (weights copied, so the same seed gives the baseline's init),
generates the DeepSpeed config from the plan and the `TrainConfig`, and returns DeepSpeed's
`PipelineEngine`; `pipeline_step` trains one global batch with `engine.train_batch`:

    engine = apply_deepspeed_pipeline(model, train_cfg, plan)    # every rank, world = pp × dp
    loss = pipeline_step(engine, x_global, y_global)             # same [B, L] batch everywhere
    state = pipeline_state_dict(engine)                          # collective; rank 0: full weights

Layers of the PipelineModule (DeepSpeed partitions this list; recpar's units in brackets):

    0       TiedLayerSpec('item_table', ItemTable)   ids -> (item rows [mb, L, d], ids)   [embedding]
    1       LayerSpec(PositionEmbedding)             + positions, dropout                 [embedding]
    2..L+1  LayerSpec(PipeBlock, i)                  transformer block i                  [block.i]
    L+2     LayerSpec(FinalNorm)                     ln_f -> hidden [mb, L, d]            [head]
    L+3     TiedLayerSpec('item_table', ItemTable)   hidden -> logits [mb, L, n_items+1]  [head]

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
  (the tied table counted at both ends). recpar's `balanced` balances *profiled time*; the
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
- **Tensor parallelism** (tp > 1) is refused with a PlanError (see `TP_UNSUPPORTED`).
- **Known warning.** On the last stage the first backward prints torch's UserWarning
  "c10d::broadcast_: an autograd kernel was not registered ..." from inside DeepSpeed; no
  broadcast node is in the loss's autograd graph (checked by walking it) and the gradients of
  every stage, tied copies included, equal the single-device ones
  (tests/parallel/test_deepspeed_pipeline.py), so it is left alone (not diagnosed further).
- **Out of scope: DeepSpeed's autotuner** (`deepspeed --autotuning`), which searches micro-batch
  size and ZeRO stage by launching trial jobs through the `deepspeed` launcher on GPUs; on
  CPU/gloo under torchrun it does not run. "Auto-scheduled" here means DeepSpeed's own pipeline
  schedule, partitioner and gradient accumulation, driven by the plan.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recpar.model.recommender import PAD_ITEM, Recommender, attention_mask, positions
from recpar.parallel.plan import ParallelPlan, PlanError
from recpar.parallel.zero import adamw_fp32_config, init_deepspeed
from recpar.train.config import TrainConfig
from recpar.train.optim import adamw_param_groups

TIED_KEY = "item_table"
"""TiedLayerSpec key of the item table shared by the first and the last layer."""

PARTITION_METHODS = {"uniform": "type:PipeBlock", "balanced": "parameters"}
"""ParallelPlan.partition_method -> DeepSpeed PipelineModule partition_method (module docstring)."""

ZERO_STAGE = 1
"""ZeRO stage of the scheme: DeepSpeed's pipeline engine asserts stage < 2."""

TP_UNSUPPORTED = (
    "the deepspeed scheme runs tp = 1 only: combining megatron-core tensor-parallel layers "
    "with DeepSpeed's PipelineModule needs megatron's parallel_state groups built to match "
    "DeepSpeed's pipe x model x data topology, the vocabulary-parallel tied item table across "
    "TiedLayerSpec, and ZeRO-1's gradient norm told which parameters are TP shards; this was "
    "not built or verified here (use --scheme hybrid for TP + PP + DP)")
"""Why tp > 1 is refused (the message of the PlanError)."""

DS_REDUCE_BUCKET_SIZE = 500_000_000
"""DeepSpeed's default zero_optimization.reduce_bucket_size (elements)."""

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index


# --- layers ----------------------------------------------------------------------------------


class ItemTable(nn.Module):
    """The tied fused item table: `item_id_emb` + `text_proj`(frozen `text_emb`), copied.

    forward(ids [mb, L] int) -> (item rows [mb, L, d], ids): the input end (the rows are fused
    for the looked-up items only, as `Recommender.embed` without an item table does).
    forward(hidden [mb, L, d] float) -> logits [mb, L, n_items + 1], pad column -inf: the
    output end, against the whole fused table (`Recommender.logits`).
    """

    def __init__(self, model: Recommender):
        super().__init__()
        self.item_id_emb = copy.deepcopy(model.item_id_emb)  # [n_items + 1, d]
        self.text_proj = copy.deepcopy(model.text_proj)  # text_dim -> d, or None
        # Frozen and never changed: shared with the model, not copied, not checkpointed.
        self.register_buffer("text_emb", model.text_emb, persistent=False)
        self.max_seq_len = model.cfg.max_seq_len

    def table(self) -> torch.Tensor:
        """Fused item table [n_items + 1, d] (`Recommender.item_embeddings`)."""
        table = self.item_id_emb.weight
        if self.text_proj is not None:
            table = table + self.text_proj(self.text_emb)
        return table

    def forward(self, x: torch.Tensor):
        if not x.is_floating_point():  # input end: item ids [mb, L]
            if x.dim() != 2 or x.shape[1] > self.max_seq_len:
                raise ValueError(f"ItemTable: ids must be [mb, L <= {self.max_seq_len}], got "
                                 f"{tuple(x.shape)}")
            rows = self.item_id_emb(x)  # [mb, L, d]
            if self.text_proj is not None:
                rows = rows + self.text_proj(F.embedding(x, self.text_emb))
            return rows, x
        scores = x @ self.table().t()  # [mb, L, d] -> [mb, L, n_items + 1]
        pad = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        pad[PAD_ITEM] = True
        return scores.masked_fill(pad, float("-inf"))

    @staticmethod
    def tied_weight_attrs(model: Recommender) -> list[str]:
        """Names (inside ItemTable) of the parameters DeepSpeed ties between the two ends."""
        names = ["item_id_emb.weight"]
        if model.text_proj is not None:
            names += ["text_proj.weight", "text_proj.bias"]
        return names


class PositionEmbedding(nn.Module):
    """(item rows, ids) -> (dropout(item rows + pos_emb[positions(ids)]), ids); pos_emb copied."""

    def __init__(self, model: Recommender):
        super().__init__()
        self.pos_emb = copy.deepcopy(model.pos_emb)  # [max_seq_len, d]
        self.drop = copy.deepcopy(model.drop)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]):
        x, ids = inputs  # [mb, L, d], [mb, L]
        return self.drop(x + self.pos_emb(positions(ids))), ids


class PipeBlock(nn.Module):
    """Transformer block `index` of the model (copied); the padding mask is rebuilt from ids."""

    def __init__(self, model: Recommender, index: int):
        super().__init__()
        self.index = index
        self.block = copy.deepcopy(model.blocks[index])

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]):
        x, ids = inputs  # [mb, L, d], [mb, L]
        return self.block(x, attention_mask(ids)), ids


class FinalNorm(nn.Module):
    """(hidden, ids) -> ln_f(hidden) [mb, L, d] (copied `ln_f`); the ids are not needed after."""

    def __init__(self, model: Recommender):
        super().__init__()
        self.ln_f = copy.deepcopy(model.ln_f)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.ln_f(inputs[0])


class GlobalMeanLoss:
    """DeepSpeed loss_fn: CE summed over a micro-batch's valid positions / N × (m × dp).

    labels = (targets [mb, L] with IGNORE_INDEX at invalid positions, N: float scalar, the
    valid positions of the whole global batch). The factor m × dp undoes DeepSpeed's division
    by the accumulation steps and its average over dp replicas (module docstring), so gradient
    and reported loss are the baseline's global mean.
    """

    def __init__(self, scale: float):
        self.scale = float(scale)
        """m × dp."""
        self.__name__ = type(self).__name__  # DeepSpeed prints loss_fn.__name__

    def __call__(self, logits: torch.Tensor, labels) -> torch.Tensor:
        targets, n_global = labels  # [mb, L], []
        total = F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                ignore_index=IGNORE_INDEX, reduction="sum")
        return total / n_global * self.scale


def layer_specs(model: Recommender) -> list:
    """The PipelineModule's layer list for `model` (module docstring), weights copied lazily:
    DeepSpeed builds only this stage's layers (and, for `parameters`, each once to count)."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    tied = ItemTable.tied_weight_attrs(model)
    return [TiedLayerSpec(TIED_KEY, ItemTable, model, tied_weight_attr=tied),
            LayerSpec(PositionEmbedding, model),
            *(LayerSpec(PipeBlock, model, i) for i in range(model.cfg.n_layers)),
            LayerSpec(FinalNorm, model),
            TiedLayerSpec(TIED_KEY, ItemTable, model, tied_weight_attr=tied)]


def recommender_key(key: str, n_layers: int) -> str:
    """PipelineModule state-dict key -> the single-device `Recommender` key.

    `tied_modules.item_table.item_id_emb.weight` -> `item_id_emb.weight`,
    `1.pos_emb.weight` -> `pos_emb.weight`, `<2+i>.block.ln_1.bias` -> `blocks.<i>.ln_1.bias`,
    `<L+2>.ln_f.weight` -> `ln_f.weight`.
    """
    head, _, rest = key.partition(".")
    if head == "tied_modules":
        return rest.partition(".")[2]
    idx = int(head)
    if 2 <= idx < 2 + n_layers:
        return f"blocks.{idx - 2}.{rest.partition('.')[2]}"
    if idx in (1, n_layers + 2):
        return rest
    raise KeyError(f"recommender_key: {key!r} is not a parameter of the pipeline layers")


# --- plan and config -------------------------------------------------------------------------


def validate_deepspeed_plan(plan: ParallelPlan, train_cfg: TrainConfig) -> int:
    """Raise PlanError naming the value when the plan cannot run as the deepspeed scheme;
    returns train_micro_batch_size_per_gpu = global_batch_size / (dp × num_microbatches)."""
    if plan.tp != 1:
        raise PlanError(f"tp = {plan.tp}: {TP_UNSUPPORTED}")
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


def deepspeed_pipeline_config(train_cfg: TrainConfig, plan: ParallelPlan,
                              n_params: int | None = None) -> dict[str, Any]:
    """DeepSpeed config: global batch = micro × m × dp, m = plan.num_microbatches accumulation
    steps, ZeRO-1, the baseline's AdamW, clipping and fp32 (`zero.adamw_fp32_config`).

    n_params (the model's parameter count) caps ZeRO's reduce_bucket_size: under pipeline
    parallelism ZeRO-1 allocates a fresh gradient bucket of reduce_bucket_size elements every
    step (`reduce_gradients(pipeline_parallel=True)`), and with
    torch.use_deterministic_algorithms (the loop's default) torch fills every new tensor with
    NaN: with DeepSpeed's default of 5e8 elements that is 2 GB written per rank and step
    (measured on the shared 2-core dev machine: torch.empty(5e8) 1.7 s with deterministic
    algorithms; a tiny-model pp2 run took 17 s per step at 4.2 GiB RSS, 0.18 s at 0.5 GiB with
    the cap). A bucket of the whole model holds every gradient, as the default does for any
    model below 5e8 parameters, so the reductions are the same: one bucket per step.
    """
    micro = validate_deepspeed_plan(plan, train_cfg)
    zero: dict[str, Any] = {"stage": ZERO_STAGE}
    if n_params is not None:
        zero["reduce_bucket_size"] = max(1, min(DS_REDUCE_BUCKET_SIZE, int(n_params)))
    return adamw_fp32_config(train_cfg, micro, plan.num_microbatches, zero)


# --- apply -----------------------------------------------------------------------------------


def apply_deepspeed_pipeline(model: Recommender, train_cfg: TrainConfig, plan: ParallelPlan):
    """Build this rank's pipeline stage from `model` and return DeepSpeed's PipelineEngine.

    torch.distributed must be initialised with world size pp × dp (tp = 1); DeepSpeed's
    `PipeDataParallelTopology` lays ranks out as pipe-major (rank = stage × dp + dp_rank).
    `model` is the single-device Recommender, identical on every rank (same seed); its weights
    are copied into the stage's layers. No activation checkpointing (not tested here).
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("apply_deepspeed_pipeline: torch.distributed is not initialised "
                           "(init_process_group first; gloo on CPU)")
    plan.validate(world_size=dist.get_world_size(), n_heads=model.cfg.n_heads,
                  n_layers=model.cfg.n_layers)
    config = deepspeed_pipeline_config(train_cfg, plan,
                                       n_params=sum(p.numel() for p in model.parameters()))
    deepspeed = init_deepspeed(train_cfg.device, caller="apply_deepspeed_pipeline")
    from deepspeed.pipe import PipelineModule
    from deepspeed.runtime.pipe.topology import PipeDataParallelTopology

    specs = layer_specs(model)
    module = PipelineModule(
        layers=specs, topology=PipeDataParallelTopology(num_pp=plan.pp, num_dp=plan.dp),
        loss_fn=GlobalMeanLoss(plan.num_microbatches * plan.dp),
        partition_method=PARTITION_METHODS[plan.partition_method])
    parts = [int(p) for p in module.parts]
    empty = [s for s in range(plan.pp) if parts[s] == parts[s + 1]]
    if empty:  # every rank computed the same parts, so every rank raises here
        raise PlanError(f"DeepSpeed partition {PARTITION_METHODS[plan.partition_method]!r} left "
                        f"stage(s) {empty} without layers (boundaries {parts} over "
                        f"{len(specs)} layers); use fewer stages or partition_method='uniform'")
    module.recpar_n_layers = model.cfg.n_layers  # read by pipeline_state_dict
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
    valid = Recommender.valid_positions(x_global, y_global)  # [B, L]
    # Clamped to 1 like Recommender.loss (an all-padding batch has loss 0).
    n_global = valid.sum().clamp(min=1).to(torch.float32)
    masked = y_global.masked_fill(~valid, IGNORE_INDEX)
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
    is taken from the first stage (both copies are equal)."""
    import torch.distributed as dist

    n_layers = engine.module.recpar_n_layers
    mine: dict[str, torch.Tensor] = {}
    if engine.grid.data_parallel_id == 0:
        mine = {recommender_key(k, n_layers): v.detach().to("cpu", copy=True)
                for k, v in engine.module.state_dict().items()}
    world = dist.get_world_size()
    gathered: list[dict] | None = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if gathered is None:
        return None
    full: dict[str, torch.Tensor] = {}
    for part in gathered:  # rank order: stage 0 (the tied table's first copy) comes first
        for k, v in part.items():
            full.setdefault(k, v)
    return full


def pipeline_record(engine) -> dict:
    """Layout DeepSpeed chose, for logs and tests: stage boundaries and this rank's place."""
    parts = [int(p) for p in engine.module.parts]
    return {"stage_id": int(engine.stage_id), "num_stages": int(engine.num_stages),
            "dp_rank": int(engine.grid.data_parallel_id), "dp": int(engine.grid.data_parallel_size),
            "parts": parts, "micro_batch_size": int(engine.train_micro_batch_size_per_gpu()),
            "micro_batches": int(engine.gradient_accumulation_steps()),
            "zero_stage": int(engine.zero_optimization_stage())}
