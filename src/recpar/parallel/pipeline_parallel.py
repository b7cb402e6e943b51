"""Pipeline parallelism for the recommender on `torch.distributed.pipelining`.

`apply_pp` cuts the single-device `Recommender` into stages (`recpar.parallel.partition`:
uniform, or balanced from a profiling pass), builds this rank's stage module(s) from copies of
the model's weights (`recpar.parallel.stage_module`), and returns a `PipelineRunner` that
trains one global batch per `step` with torch's GPipe, 1F1B or interleaved 1F1B schedule
(`recpar.parallel.pipeline_stage`; they run on CPU/gloo and on NCCL; megatron-core's pipeline
schedules hard-code CUDA, see DESIGN.md).

Design choices:

- **Tied item table.** The logits use the fused item table (ID embedding + projected text),
  whose weights live in the embedding unit on the first stage. The last stage keeps its own
  copy of `item_id_emb` and `text_proj` (same names, same initial values) and after each step
  the two copies' gradients are summed by an all-reduce between the first and last stage,
  so both apply the same update and stay identical: what Megatron does for tied embeddings
  (its "embedding group"). Computing the logits on the first stage instead would need the
  last hidden states sent back to rank 0 every micro-batch, which the linear schedules do not
  do. The copy costs memory ((n_items + 1) x d on the last stage) and one all-reduce of the
  tied gradients per step.
- **Padding mask.** Every stage recomputes the attention mask from the item ids, which each
  rank receives as a keyword argument of `schedule.step` (every pipeline rank reads the same
  global batch, as in Megatron where first and last stage both read the data). Only the
  hidden states [mb, L, d] travel between stages; the ids cost no communication.
- **Loss.** The last stage returns logits; the loss function sums the cross-entropy of a
  micro-batch over its valid positions and divides by the number of valid positions in the
  *global* batch, and the schedule runs with scale_grads=False. The summed gradient over
  micro-batches is then exactly the gradient of the single-device mean loss.
- **Evaluation.** `score_last` runs the stages one after another with blocking send/recv
  (forward only, last position only) and broadcasts the [B, n_items + 1] scores from the last
  stage, so every rank can run `recpar.eval.evaluate` unchanged.

Stage metadata (shapes of what travels) is given statically from the micro-batch shape, so
no metadata-inference forward runs inside the first step; a batch of another size gets its
own stage objects and schedule (built once, cached), on every rank alike.

**With tensor parallelism** (`apply_pp` over a model `apply_tp` has sharded): the stages
are cut from the TP shard this rank holds; each TP rank of a stage runs the same schedule,
so the TP all-reduces inside a stage pair up. Copies keep megatron's process groups shared
and its TP marks on the parameters (`stage_module._copy_module`); the first stage looks up the
vocab-sharded item table with one all-reduce, the last stage's logits are this rank's vocab
shard and the loss is megatron's vocab-parallel cross-entropy, as in
`TensorParallelRecommender`. The gradient norm is summed over the model-parallel group
(`norm_group`), TP-replicated parameters counted on TP rank 0 only.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from recpar.model.recommender import Recommender
from recpar.parallel.partition import Profile, cut, profile_units, unit_names
from recpar.parallel.pipeline_runner import PipelineRunner
from recpar.parallel.plan import ParallelPlan, PlanError
from recpar.parallel.stage_module import build_stage
from recpar.parallel.vocab_parallel import VocabShardedItemTable

# --- apply -----------------------------------------------------------------------------------


def apply_pp(model: Recommender, plan: ParallelPlan, stage_index: int,
             example_microbatch: tuple[torch.Tensor, torch.Tensor], *,
             pp_group=None, embedding_group=None, profile: Profile | bool | None = None,
             profile_repeats: int = 5, virtual_pipeline_model_parallel_size: int = 2,
             broadcast_loss: bool = True,
             autocast_dtype: torch.dtype | None = None) -> PipelineRunner:
    """Build this rank's pipeline stage(s) from the single-device `model`; return the runner.

    model: the single-device Recommender, built identically (same seed) on every pipeline
        rank; this rank's units are deep-copied out of it (the caller may drop it afterwards).
    plan: pp, num_microbatches, pipeline_schedule, partition_method.
    stage_index: this rank's index in the pipeline group (must equal its group rank); with
        interleaved 1F1B the rank holds stages stage_index + k pp, k < v.
    example_microbatch: (input_ids, targets) [mb, L] of one micro-batch; its shape sets the
        static stage metadata and it is the profiling input.
    pp_group: process group of the pipeline (None = default group, size must be pp).
    embedding_group: group of the ranks holding the first and last stage (tied table); built
        here when pp_group is the default group, required otherwise when pp > 2 (on the
        ranks of the first and last stage; the others never use it).
    profile: a `Profile` to use, True to profile, None to profile only for `balanced`.
        Profiling runs on pipeline rank 0 and is broadcast, so every rank cuts alike.
    virtual_pipeline_model_parallel_size: stages per rank for interleaved 1F1B (megatron-core's
        name); ignored by the other schedules.
    autocast_dtype: the stages' forwards run under torch.autocast to this dtype (bf16 mixed
        precision, recpar.device); None = fp32. The partition profile is timed in fp32.
    """
    v, names = _check_layout(model, plan, example_microbatch,
                             virtual_pipeline_model_parallel_size)
    pp_rank = _check_pipeline_group(plan, stage_index, pp_group)
    prof = _shared_profile(model, plan, profile, example_microbatch, profile_repeats, pp_rank,
                           pp_group)
    if prof is not None and len(prof.units) != len(names):
        raise PlanError(f"apply_pp: profile has {len(prof.units)} units, model has {len(names)}")
    n_stages = plan.pp * v
    partition = cut(None if prof is None else prof.times_ms(), n_stages,
                    plan.partition_method, n_units=len(names))

    stage_indices = [pp_rank + k * plan.pp for k in range(v)]
    device = next(model.parameters()).device
    module = nn.ModuleList(build_stage(model, *partition.boundaries[s]).train(model.training)
                           for s in stage_indices)
    for stage in module:
        stage.autocast_dtype = autocast_dtype
    embedding_group = _embedding_group(plan, n_stages, pp_rank, pp_group, embedding_group)
    return PipelineRunner(plan=plan, partition=partition, profile=prof, names=names,
                          pp_rank=pp_rank, stage_indices=stage_indices, module=module,
                          device=device, virtual_stages=v, d_model=model.cfg.d_model,
                          n_cols=model.n_items + 1, pp_group=pp_group,
                          embedding_group=embedding_group, broadcast_loss=broadcast_loss,
                          loss_chunk_size=model.cfg.cross_entropy_chunk_size,
                          **_tp_fields(model))


def _check_layout(model: Recommender, plan: ParallelPlan,
                  example_microbatch: tuple[torch.Tensor, torch.Tensor],
                  virtual_pipeline_model_parallel_size: int) -> tuple[int, list[str]]:
    """(stages per rank, layer unit names); PlanError, before any communication, if the plan
    cannot cut this model."""
    plan.validate()
    if plan.pp < 2:
        raise PlanError(f"apply_pp: pp = {plan.pp}; pipeline parallelism needs pp >= 2")
    v = virtual_pipeline_model_parallel_size if plan.pipeline_schedule == "interleaved-1f1b" else 1
    if not isinstance(v, int) or v < 1:
        raise PlanError(f"apply_pp: virtual_pipeline_model_parallel_size must be a positive "
                        f"integer, got {v!r}")
    ids, targets = example_microbatch
    if ids.dim() != 2 or targets.shape != ids.shape:
        raise PlanError(f"apply_pp: example micro-batch must be two [mb, L] tensors, got "
                        f"{tuple(ids.shape)} and {tuple(targets.shape)}")
    names = unit_names(model.cfg.n_layers)
    n_stages = plan.pp * v
    if n_stages > len(names):
        raise PlanError(f"apply_pp: pp = {plan.pp} x {v} virtual stage(s) = {n_stages} stages "
                        f"but the model has only {len(names)} layer units (embedding, "
                        f"{model.cfg.n_layers} blocks, head)")
    if plan.partition_method == "uniform":
        cut(None, n_stages, "uniform", n_units=len(names))  # fail before any communication
    return v, names


def _check_pipeline_group(plan: ParallelPlan, stage_index: int, pp_group) -> int:
    """This rank's index in the pipeline group, checked against the plan and `stage_index`."""
    if not dist.is_available() or not dist.is_initialized():
        raise PlanError(f"apply_pp: torch.distributed is not initialised (need {plan.pp} ranks)")
    group_size = dist.get_world_size(pp_group)
    if group_size != plan.pp:
        raise PlanError(f"apply_pp: pipeline group has {group_size} ranks but pp = {plan.pp}")
    pp_rank = dist.get_rank(pp_group)
    if stage_index != pp_rank:
        raise PlanError(f"apply_pp: stage_index = {stage_index} but this rank is rank {pp_rank} "
                        "of the pipeline group")
    return pp_rank


def _shared_profile(model: Recommender, plan: ParallelPlan, profile: Profile | bool | None,
                    example_microbatch: tuple[torch.Tensor, torch.Tensor],
                    profile_repeats: int, pp_rank: int, pp_group) -> Profile | None:
    """The profile to cut by, the same on every pipeline rank: the given one, or (profile
    True, or None with `balanced`) measured on pipeline rank 0 and broadcast; else None."""
    if isinstance(profile, Profile):
        return profile
    if not (profile is True or (profile is None and plan.partition_method == "balanced")):
        return None
    box: list = [None]
    if pp_rank == 0:
        box[0] = profile_units(model, example_microbatch, repeats=profile_repeats).to_record()
    src = 0 if pp_group is None else dist.get_global_rank(pp_group, 0)
    dist.broadcast_object_list(box, src=src, group=pp_group)
    return Profile.from_record(box[0])


def _embedding_group(plan: ParallelPlan, n_stages: int, pp_rank: int, pp_group,
                     embedding_group):
    """The group of the first and last stage's ranks (tied-gradient all-reduce): the given
    one, pp_group when pp = 2, else built over the default group (collective there)."""
    first_rank, last_rank = 0, (n_stages - 1) % plan.pp
    holds_tied = pp_rank in (first_rank, last_rank)
    if embedding_group is None and first_rank != last_rank and (holds_tied or pp_group is None):
        if plan.pp == 2:
            embedding_group = pp_group
        elif pp_group is None:
            # new_group is collective over the default group: every rank builds it.
            embedding_group = dist.new_group([first_rank, last_rank])
        else:
            raise PlanError("apply_pp: pp > 2 inside a non-default pipeline group needs "
                            "embedding_group (ranks of the first and last stage)")
    return embedding_group


def _tp_fields(model: Recommender) -> dict:
    """PipelineRunner fields for stages cut from a TensorParallelRecommender's shards."""
    if not isinstance(model, VocabShardedItemTable):
        return {}
    from recpar.parallel import process_groups as pg

    return {"vocab_parallel": True, "local_cols": model.padded_vocab_size // model.tp_size,
            "tp_rank": pg.tp_rank(),
            "norm_group": pg.model_parallel_group()}
