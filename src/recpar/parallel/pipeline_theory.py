"""Pipeline bubble in theory: the two ways of stating it, each with its own name.

- `bubble_ratio_theory` = (p - 1) / (v m): bubble time relative to the ideal compute time.
- `bubble_fraction_theory` = (p - 1) / (v m + p - 1): idle time as a share of the whole step,
  what a stage's measured idle / schedule time compares with.

p pipeline stages (ranks), m micro-batches, v model chunks per rank (1 for GPipe and 1F1B,
more for interleaved 1F1B). Both assume equal stage times and free communication.
"""

from __future__ import annotations


def bubble_ratio_theory(pp: int, num_microbatches: int, virtual_stages: int = 1) -> float:
    """Bubble time / ideal compute time, (p - 1) / (v m): the formula of Narayanan et al.,
    "Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM"
    (SC'21), Sec. 2.2 (v = 1 for GPipe and 1F1B, v model chunks per rank when interleaved).
    Assumes equal stage times and free communication."""
    _check_positive(pp=pp, num_microbatches=num_microbatches, virtual_stages=virtual_stages)
    return (pp - 1) / (virtual_stages * num_microbatches)


def bubble_fraction_theory(pp: int, num_microbatches: int, virtual_stages: int = 1) -> float:
    """Idle time / total step time on a stage, (p - 1) / (v m + p - 1): the same bubble as
    `bubble_ratio_theory` expressed against the whole step, which is what idle/total measures."""
    _check_positive(pp=pp, num_microbatches=num_microbatches, virtual_stages=virtual_stages)
    return (pp - 1) / (virtual_stages * num_microbatches + pp - 1)


def _check_positive(**values: int) -> None:
    for k, v in values.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{k} must be a positive integer, got {v!r}")
