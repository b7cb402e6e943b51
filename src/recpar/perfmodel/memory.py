"""Peak memory of a rank: model states, sharded by the ZeRO stage, plus the activations of the
micro-batches in flight on its pipeline stage.

Model-state memory with ZeRO stages: Rajbhandari et al. 2020, "ZeRO", §3 (mixed-precision Adam:
2 + 2 + 12 bytes per parameter); activation memory per layer: Korthikanti et al. 2022, "Reducing
Activation Recomputation in Large Transformer Models", §4 (no recomputation, no sequence
parallelism). Memory is a rough estimate: allocator overhead, workspace and fragmentation are
not modelled.
"""

from __future__ import annotations

from recpar.perfmodel.shapes import ModelShape, PlanShape, Precision
from recpar.perfmodel.stages import stage_layers, stage_params


def activation_bytes_per_layer(shape: ModelShape, b: int, tp: int, act_bytes: int) -> float:
    """Korthikanti et al. 2022 eq. (2)/(3): s·b·h·(10 + 24/t + 5·a·s/(h·t)) at 2-byte
    activations (derived for d_ff = 4h), scaled by act_bytes / 2."""
    s, h, a = shape.seq_len, shape.d_model, shape.n_heads
    return s * b * h * (10 + 24 / tp + 5 * a * s / (h * tp)) * act_bytes / 2


def microbatches_in_flight(plan: PlanShape, stage: int) -> int:
    """Micro-batches whose activations `stage` holds at its peak: all of them under GPipe,
    p − stage under 1F1B (at most m), one without a pipeline."""
    pp, m = plan.pipeline_model_parallel_size, plan.num_microbatches
    if pp == 1:
        return 1
    if plan.pipeline_schedule == "gpipe":
        return m
    return min(pp - stage, m)


def memory_per_rank_bytes(shape: ModelShape, plan: PlanShape, b: int, precision: Precision,
                          zero_stage: int) -> float:
    """Peak bytes of the fullest rank: model states (ZeRO-sharded) + activations in flight."""
    tp, pp = plan.tensor_model_parallel_size, plan.pipeline_model_parallel_size
    dp = plan.data_parallel_size
    master = 4 if precision.param_bytes < 4 else 0  # fp32 master copy of 16-bit weights
    optimizer_bytes = precision.optimizer_bytes_per_param + master
    # bytes per parameter on this rank, each kind of state sharded over DP from its ZeRO stage on
    param_bytes = precision.param_bytes / (dp if zero_stage >= 3 else 1)
    grad_bytes = precision.grad_bytes / (dp if zero_stage >= 2 else 1)
    optimizer_bytes = optimizer_bytes / (dp if zero_stage >= 1 else 1)
    layers = stage_layers(shape.n_layers, pp)
    fullest = 0.0
    for stage, params in enumerate(stage_params(shape, plan)):
        states = params / tp * (param_bytes + grad_bytes + optimizer_bytes)
        if stage == 0:
            states += shape.frozen_params * precision.param_bytes
        activations = microbatches_in_flight(plan, stage) * layers[stage] * \
            activation_bytes_per_layer(shape, b, tp, precision.activation_bytes)
        if stage == pp - 1:
            # fp32 logits [b, L, V/tp] and their gradient for the micro-batch being finished
            activations += 2 * 4 * b * shape.seq_len * shape.vocab_size / tp
        fullest = max(fullest, states + activations)
    return fullest
