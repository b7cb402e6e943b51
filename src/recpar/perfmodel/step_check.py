"""One device's training step at a named model size: its time, model FLOP/s, MFU against the
device's datasheet peak and a measured GEMM, and its peak memory against the cost model's
estimate. The GPU check (`bench/gpu_check.sh`) runs it for base and 1b in bf16, with and
without torch.compile; on CPU it covers the same code path at small sizes.

The step is the single-device training step of `recpar train --scheme baseline`: the
recommender's summed loss over the valid positions divided by their count, under
train.precision's autocast (`recpar.device.forward_context`), backward, AdamW as every scheme
builds it (`recpar.train.optim`). ID embeddings only (no text table), dropout 0.

Definitions (written once elsewhere): model FLOPs `ModelConfig.model_flops`; MFU = model
FLOP/s / peak FLOP/s; predicted memory `recpar.perfmodel.memory.memory_per_rank_bytes`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

DATASHEET_PEAK_FLOPS: list[tuple[str, dict[str, float], str]] = [
    # (substring of torch.cuda.get_device_name, dense peak FLOP/s per dtype, source); the first
    # match wins, so the narrower names come first. fp32 is the non-tensor-core rate (torch
    # multiplies fp32 without TF32 by default).
    ("H100 PCIe", {"bf16": 756e12, "fp32": 51e12},
     "NVIDIA H100 Tensor Core GPU datasheet, H100 PCIe: BF16 Tensor Core 1,513 TFLOPS with "
     "sparsity (dense: half), FP32 51 TFLOPS"),
    ("H100 NVL", {"bf16": 835e12, "fp32": 60e12},
     "NVIDIA H100 Tensor Core GPU datasheet, H100 NVL: BF16 Tensor Core 1,671 TFLOPS with "
     "sparsity (dense: half), FP32 60 TFLOPS"),
    ("H100", {"bf16": 989e12, "fp32": 67e12},
     "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: BF16 Tensor Core 1,979 TFLOPS with "
     "sparsity (dense: half), FP32 67 TFLOPS"),
    ("H200", {"bf16": 989e12, "fp32": 67e12},
     "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: BF16 Tensor Core 1,979 TFLOPS with "
     "sparsity (dense: half), FP32 67 TFLOPS"),
    ("A100", {"bf16": 312e12, "fp32": 19.5e12},
     "NVIDIA A100 Tensor Core GPU datasheet: BF16 Tensor Core 312 TFLOPS (dense), FP32 19.5 "
     "TFLOPS (also src/recpar/perfmodel/profiles/paper-a100.yaml)"),
]
"""Datasheet peaks of the GPUs recpar has met or models; MFU against the datasheet is absent
for any other device (a CPU has no datasheet figure here: its MFU is against the measured
GEMM only)."""


def datasheet_peak(device_name: str, precision: str) -> tuple[float, str] | None:
    """(dense peak FLOP/s, source) of `device_name` for `precision`; None if not listed."""
    for key, peaks, source in DATASHEET_PEAK_FLOPS:
        if key in device_name and precision in peaks:
            return peaks[precision], source
    return None


@dataclass
class StepCheck:
    """What one configuration measured (units in the names)."""

    size: str
    """Named model size (recpar.model.config.NAMED_SIZES)."""
    precision: str
    """fp32 or bf16 (autocast)."""
    compile: bool
    """The loss function ran through torch.compile."""
    cross_entropy_chunk_size: int
    """Positions per chunk of the memory-lean loss; 0: the whole logits at once."""
    device_name: str
    """torch's name for the device (a CPU is `cpu`)."""
    batch: int
    """Sequences per step."""
    n_items: int
    """Item vocabulary (the full-softmax width is n_items + 1)."""
    steps: int
    """Timed steps (after the warm-up steps, which include compilation)."""
    step_ms: float
    """Mean wall time of a timed step, device synchronised at the window's edges."""
    samples_per_s: float
    """batch / step time."""
    model_tflops_per_s: float
    """ModelConfig.model_flops over the window."""
    gemm_peak_tflops_per_s: float
    """Measured: best torch.mm of two n×n matrices in the step's precision (recpar.device)."""
    mfu_pct_measured_gemm: float
    """model_tflops_per_s / gemm_peak_tflops_per_s, %."""
    datasheet_peak_tflops_per_s: float | None
    """The device's datasheet dense peak for the precision; None if not listed."""
    mfu_pct_datasheet: float | None
    """model_tflops_per_s / datasheet peak, %; None without a datasheet figure."""
    peak_mem_gib: float
    """CUDA: torch.cuda.max_memory_allocated over the timed steps. CPU: the process's peak
    resident set (ru_maxrss), which counts more than tensors."""
    predicted_mem_gib: float
    """The cost model's peak for one device, no parallelism (memory_per_rank_bytes)."""
    loss: float
    """The last step's mean loss (finite, about ln(n_items) at initialisation)."""


def check_step(size: str, precision: str, compile: bool, *, batch: int, n_items: int,
               device: str = "cpu", steps: int = 10, warmup: int = 3, gemm_n: int | None = None,
               seed: int = 0, compile_backend: str = "inductor",
               chunk_size: int = 0) -> StepCheck:
    """Build the model at `size`, run `warmup` then `steps` training steps on random item
    sequences of max_seq_len, and measure (StepCheck's fields). `compile_backend`: torch.compile's
    backend (`eager` traces with dynamo but generates no code: the tests' cheap stand-in).
    `chunk_size`: the model's cross_entropy_chunk_size (0: the whole [B, L, n_items + 1]
    logits at once; N: the memory-lean loss, N positions at a time)."""
    import resource

    import torch

    from recpar.device import device_sync, forward_context, gemm_flops_per_s
    from recpar.model.config import ModelConfig
    from recpar.model.recommender import Recommender
    from recpar.perfmodel.memory import memory_per_rank_bytes
    from recpar.perfmodel.shapes import ModelShape, PlanShape, Precision
    from recpar.train.config import TrainConfig
    from recpar.train.optim import build_adamw

    if steps < 1 or warmup < 0 or batch < 1 or n_items < 1:
        raise ValueError(f"check_step: steps {steps} >= 1, warmup {warmup} >= 0, batch {batch} "
                         f">= 1 and n_items {n_items} >= 1 required")
    train_cfg = TrainConfig(device=device, precision=precision).validate()
    dev = torch.device(device)
    dtype = train_cfg.autocast_dtype()
    cfg = ModelConfig.named(size, dropout=0.0, text_dim=0, cross_entropy_chunk_size=chunk_size)
    torch.manual_seed(seed)
    model = Recommender(cfg, n_items).to(dev).train()
    opt = build_adamw(model, train_cfg)
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, cfg.max_seq_len)  # [B, L]
    x = torch.randint(1, n_items + 1, shape, generator=gen).to(dev)
    y = torch.randint(1, n_items + 1, shape, generator=gen).to(dev)
    loss_sum = (torch.compile(model.loss_sum, backend=compile_backend) if compile
                else model.loss_sum)

    def step() -> torch.Tensor:
        with forward_context(dtype, dev.type):
            total, count = loss_sum(x, y)
        loss = total / count.clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    for _ in range(warmup):
        step()
    device_sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    device_sync(dev)
    s = (time.perf_counter() - t0) / steps
    if dev.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(dev)
        name = torch.cuda.get_device_name(dev)
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        name = "cpu"
    flops_per_s = cfg.model_flops(n_items, samples=batch / s, steps=1 / s)
    gemm = gemm_flops_per_s(train_cfg.resolved_precision(),
                            n=gemm_n or (8192 if dev.type == "cuda" else 1024), device=device)
    sheet = datasheet_peak(name, train_cfg.resolved_precision())
    predicted = memory_per_rank_bytes(
        ModelShape.from_config(cfg, n_items), PlanShape(), batch,
        Precision(activation_bytes=2 if dtype is not None else 4), zero_stage=0)
    return StepCheck(
        size=size, precision=train_cfg.resolved_precision(), compile=compile,
        cross_entropy_chunk_size=chunk_size, device_name=name,
        batch=batch, n_items=n_items, steps=steps, step_ms=1e3 * s, samples_per_s=batch / s,
        model_tflops_per_s=flops_per_s / 1e12, gemm_peak_tflops_per_s=gemm / 1e12,
        mfu_pct_measured_gemm=100 * flops_per_s / gemm,
        datasheet_peak_tflops_per_s=None if sheet is None else sheet[0] / 1e12,
        mfu_pct_datasheet=None if sheet is None else 100 * flops_per_s / sheet[0],
        peak_mem_gib=peak_mem / 2**30, predicted_mem_gib=predicted / 2**30, loss=float(loss))


def format_row(c: StepCheck) -> str:
    """One line of the check's table."""
    sheet = "—" if c.mfu_pct_datasheet is None else f"{c.mfu_pct_datasheet:.1f}"
    return (f"{c.size:>5} {c.precision:>4} compile={'on ' if c.compile else 'off'} "
            f"chunk {c.cross_entropy_chunk_size or 'off'} "
            f"b{c.batch} items {c.n_items}: {c.step_ms:9.1f} ms/step "
            f"{c.samples_per_s:9.1f} samples/s {c.model_tflops_per_s:8.3f} TFLOP/s | "
            f"MFU {sheet} % of datasheet, {c.mfu_pct_measured_gemm:.1f} % of measured GEMM "
            f"({c.gemm_peak_tflops_per_s:.3f} TFLOP/s) | memory {c.peak_mem_gib:.2f} GiB, "
            f"predicted {c.predicted_mem_gib:.2f} GiB")


def to_record(c: StepCheck) -> dict:
    return asdict(c)
