"""Run ids that spell out what ran, e.g. `baseline-tiny-n1`, `dp8-topk0.01-ring-n2`,
`async4-damped-tiny-n1`."""

from __future__ import annotations

from recpar.parallel.plan import ParallelPlan


DEFAULT_PIPELINE_SCHEDULE = "1f1b"
DEFAULT_PARTITION = "balanced"
"""`recpar train`'s defaults for pipelines: a run id names the schedule and partition only
when they differ (so `pp2-gpipe-uniform-tiny-n1` and `pp2-tiny-n1` never collide)."""


def make_run_id(plan: ParallelPlan, model_size: str, nodes: int = 1,
                grad_sync: str | None = None, cpu_cores: float | None = None,
                precision: str | None = None, compiled: bool = False,
                moe: str | None = None) -> str:
    """`<degrees>[-<schedule>][-<partition>][-<grad sync>][-bf16][-compile][-<moe>]-<model
    size>-n<nodes>[-cpu<cores>]`; degrees name only what is > 1; schedule and partition only
    for pp > 1 and when not the default; `-bf16` (or `-fp32`) when the precision is not what
    train.precision `auto` gives the device and scheme (recpar train passes it only then);
    `-compile` under train.compile; `<moe>` is ModelConfig.moe_id (`moe4top2`, ...) for an
    MoE model; `-cpu0.2` when every device ran on a budget of 0.2 cores
    (recpar.cluster.cpu_budget)."""
    if plan.scheme == "baseline":
        head = "baseline"
    elif plan.scheme == "async":  # `async4-damped-tiny-n1`: 4 ranks = server + 3 workers
        head = f"async{plan.dp}"
    else:
        degrees = [f"{k}{getattr(plan, k)}" for k in ("dp", "ep", "tp", "pp")
                   if getattr(plan, k) > 1]
        head = "".join(degrees) or plan.scheme
        if plan.scheme in ("zero", "deepspeed"):
            head = f"{plan.scheme}-{head}"
    parts = [head]
    if plan.pp > 1:
        if plan.pipeline_schedule != DEFAULT_PIPELINE_SCHEDULE:
            parts.append(plan.pipeline_schedule)
        if plan.partition_method != DEFAULT_PARTITION:
            parts.append(plan.partition_method)
    if grad_sync:
        parts.append(grad_sync)
    if precision:
        parts.append(precision)
    if compiled:
        parts.append("compile")
    if moe:
        parts.append(moe)
    parts += [model_size, f"n{nodes}"]
    if cpu_cores is not None:
        parts.append(f"cpu{cpu_cores:g}")
    return "-".join(parts)


def grad_sync_id(cfg) -> str:
    """`ring`, `hierarchical`, `topk0.01-ring`, `sign-ring`, `powersgd-ring`, plus `-nooverlap`."""
    parts = []
    if cfg.compressor == "topk":
        parts.append(f"topk{cfg.topk_ratio:g}")
    elif cfg.compressor != "none":
        parts.append(cfg.compressor)
    if cfg.compressor != "none" and not cfg.error_feedback:
        parts.append("noef")
    parts.append(cfg.algorithm)
    if not cfg.overlap_grad_reduce:
        parts.append("nooverlap")
    return "-".join(parts)
