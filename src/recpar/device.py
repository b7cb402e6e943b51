"""Device helpers every layer may use (the bottom of DESIGN.md's import order).

`device_sync` is the one place that waits for queued device work: the timing window, the
engines, the pipeline stages, the partition profiler and the collective benchmark all call
it before reading a clock.
"""

from __future__ import annotations


def device_sync(device) -> None:
    """Wait for queued device work before reading a clock (CUDA launches are asynchronous;
    CPU needs nothing). `device`: a torch.device or its type name."""
    if getattr(device, "type", device) == "cuda":
        import torch

        torch.cuda.synchronize(device)  # that device, not just the current one
