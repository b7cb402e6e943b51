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


GEMM_DTYPES = ("fp32", "bf16", "fp16")
"""Element types a GEMM peak can be measured for."""


def gemm_flops_per_s(dtype: str = "fp32", n: int = 2048, repeats: int = 3,
                     device: str = "cpu") -> float:
    """Sustained FLOP/s of torch.mm on two n×n matrices of `dtype` (2n³ FLOPs per product):
    the best of `repeats` timed products after one warm-up, with the calling process's threads
    (and, on CPU, its CPU budget, if it runs in one). The peak a run's model FLOP/s is divided
    by for its MFU."""
    import time

    import torch

    if dtype not in GEMM_DTYPES:
        raise ValueError(f"gemm_flops_per_s: dtype must be one of {GEMM_DTYPES}, got {dtype!r}")
    if n < 1 or repeats < 1:
        raise ValueError(f"gemm_flops_per_s: n and repeats must be >= 1, got {n}, {repeats}")
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dt)  # [n, n]
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dt)  # [n, n]
    torch.mm(a, b)
    device_sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        device_sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best
