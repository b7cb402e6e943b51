"""Comparisons of a spawned DeepSpeed pipeline run with single-process training, shared by
test_deepspeed_pipeline.py (pp only) and test_deepspeed_pipeline_tp.py (tp × pp).

`ranks` is what spawn_ranks returned: per rank, per case label, the worker's results; the
single-process reference sits in rank 0's `reference`.
"""

from __future__ import annotations

import torch


def assert_reference_clips(ranks, cases, clip_grad: float) -> None:
    """The reference's gradient norm exceeds the clip threshold: clipping is active."""
    for label in cases:
        assert max(ranks[0][label]["reference"]["grad_norms"]) > clip_grad


def assert_series_equal_reference(ranks, label: str, key: str, atol: float,
                                  steps: int | None = None) -> None:
    """Every rank's per-step `key` (losses, grad_norms) equals the reference's within atol."""
    ref = ranks[0][label]["reference"][key]
    if steps is not None:
        assert len(ref) == steps
    for res in ranks:
        torch.testing.assert_close(torch.tensor(res[label][key]), torch.tensor(ref),
                                   rtol=0, atol=atol)


def assert_final_state_equals_reference(ranks, label: str, atol: float) -> None:
    """Rank 0's gathered single-device state equals the reference's (same keys and shapes),
    the other ranks gathered nothing, and training moved the weights far beyond atol (so the
    equality is not trivial)."""
    ref = ranks[0][label]["reference"]
    state = ranks[0][label]["state"]
    assert all(r[label]["state"] is None for r in ranks[1:])  # gathered on rank 0 only
    assert set(state) == set(ref["state"])
    for name, value in ref["state"].items():
        assert state[name].shape == value.shape, name
        torch.testing.assert_close(state[name], value, rtol=0, atol=atol, msg=name)
    assert max(float((ref["state"][k] - ref["init"][k]).abs().max()) for k in ref["state"]) \
        > 100 * atol
