"""How a plan cuts the model into pipeline stages: layers, forward FLOPs and parameters of each
stage (before the TP split). The first stage holds the item input, the last the item head."""

from __future__ import annotations

from recpar.perfmodel.shapes import CostInputError, ModelShape, PlanShape


def stage_layers(n_layers: int, pp: int) -> list[int]:
    """Uniform partition: the first n_layers % pp stages get one extra layer."""
    return [n_layers // pp + (1 if s < n_layers % pp else 0) for s in range(pp)]


def stage_layer_counts(shape: ModelShape, plan: PlanShape) -> list[float]:
    """Layers each stage runs, as per-layer costs (TP all-reduces) count them: the uniform
    partition's, or n_layers / pp each when stages are cut to equal FLOPs."""
    pp = plan.pipeline_model_parallel_size
    if plan.partition_method == "uniform" or pp == 1:
        return stage_layers(shape.n_layers, pp)
    return [shape.n_layers / pp] * pp


def stage_fwd_flops_per_token(shape: ModelShape, plan: PlanShape) -> list[float]:
    """Forward FLOPs per token of each pipeline stage (before the TP split)."""
    pp = plan.pipeline_model_parallel_size
    if pp > shape.n_layers:
        raise CostInputError(f"plan.pipeline_model_parallel_size {pp} exceeds "
                             f"model.n_layers {shape.n_layers}")
    layer = shape.layer_fwd_flops_per_token
    head, inp = shape.head_fwd_flops_per_token, shape.input_fwd_flops_per_token
    if plan.partition_method == "balanced" and pp > 1:
        # Layers are cut so stages carry equal FLOPs, except that the item head cannot be split
        # across stages: the last stage costs at least the head.
        total = shape.n_layers * layer + head + inp
        return [max(total / pp, head)] * pp
    out = [n * layer for n in stage_layers(shape.n_layers, pp)]
    out[0] += inp
    out[-1] += head
    return out


def stage_params(shape: ModelShape, plan: PlanShape) -> list[int]:
    """Trainable parameters of each stage (before the TP split).

    With pp > 1 and a tied head the last stage keeps its own copy of the item table (as
    megatron-core does) and the two copies' gradients are all-reduced between the stages.
    """
    pp = plan.pipeline_model_parallel_size
    layers = stage_layers(shape.n_layers, pp)
    out = [n * shape.layer_params for n in layers]
    out[0] += shape.input_params
    out[-1] += shape.head_params
    if pp > 1 and shape.tied_output:
        out[-1] += shape.vocab_size * shape.d_model
    return out
