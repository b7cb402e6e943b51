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


# --- training precision -------------------------------------------------------------------------
# bf16 is torch.autocast's mixed precision, the recipe of torchtitan and Megatron on A100/H100:
# weights, gradients, optimiser state and gradient communication stay fp32; inside a forward,
# the ops autocast lists as lower-precision-safe (matmul, linear, attention and, on CPU, layer
# norm) run in bf16 and the cross-entropy in fp32. Every gradient-sync hook, ZeRO and the
# optimiser therefore see fp32 tensors whatever the precision, and checkpoints hold fp32
# weights. Autocast wraps forwards only, never a backward (backward ops run in the dtype their
# forward op used: the PyTorch AMP recipe). Validation scores in fp32.
#
# `auto` is fp32 on CPU and bf16 on CUDA: a CPU without bf16 matrix units (AVX512-BF16, AMX)
# multiplies bf16 matrices far slower than fp32 (`recpar perfmodel peak --dtype bf16` shows it),
# while every GPU the cost model knows has bf16 tensor cores.

PRECISIONS = ("auto", "fp32", "bf16")
"""Values of `train.precision`."""


def resolve_precision(precision: str, device_type: str) -> str:
    """`fp32` or `bf16`: what `precision` means on a device of type `device_type`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision


def autocast_dtype(precision: str, device_type: str):
    """The autocast dtype (torch.bfloat16) of `precision` on `device_type`; None for fp32."""
    import torch

    return torch.bfloat16 if resolve_precision(precision, device_type) == "bf16" else None


def forward_context(dtype, device_type: str):
    """The context a training forward runs in: torch.autocast to `dtype`, or none for None."""
    import contextlib

    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)
