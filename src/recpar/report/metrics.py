"""Metrics derived from one run record: utilisation, communication share, device memory,
quality, and the per-record measures that table rows average over seeds (`MEASURES`).

Each reader returns None when the record lacks what it needs; a measure is never invented.
"""

from __future__ import annotations

import math
from typing import Any

from recpar.train.measured_comm import measured_comm

QUALITY_SPLIT = "test"
"""The split whose quality the tables and claims report."""
PROTOCOLS = ("full", "sampled100")
"""Evaluation protocols every record's quality carries."""
QUALITY_METRICS = ("hr_at_10", "ndcg_at_10")
"""Quality metrics every protocol carries."""


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def utilisation(rec: dict) -> tuple[float | None, str | None]:
    """(percent, basis): NVML GPU utilisation when the record has it, else process CPU share."""
    m = rec["metrics"]
    if _num(m.get("gpu_util_pct")) is not None:
        return float(m["gpu_util_pct"]), "gpu"
    if _num(m.get("cpu_util_pct")) is not None:
        return float(m["cpu_util_pct"]), "cpu"
    return None, None


NOT_MEASURED = "not measured"
"""Prefix of the basis of a share that could not be computed (followed by what is missing)."""


def _not_measured(*missing: str) -> tuple[None, str]:
    return None, f"{NOT_MEASURED}: {' and '.join(missing)} absent"


_MODEL_PARALLEL_LABELS = {"tp": "TP blocked", "pp_wait": "PP wait (P2P + bubble)",
                          "dp_exposed": "DP exposed",
                          "dp_hook": "DP hook time (incl. overlapped)"}
_DATA_PARALLEL_LABELS = {"dp_exposed": "exposed", "dp_hook": "hook time (incl. overlapped)"}
"""recpar.train.measured_comm part -> the basis this table states, beside TP/PP and alone."""


def comm_share(rec: dict) -> tuple[float | None, str]:
    """(percent of an iteration spent communicating, basis).

    The record's measured communication, part by part (recpar.train.measured_comm: TP time
    blocked, pipeline waits, DP sync exposed or else hook time, which also counts what overlap
    hid), over iter_ms. A single-device run communicates nothing: 0. When a part or iter_ms is
    absent: (None, "not measured: <what is absent>").
    """
    m = rec["metrics"]
    if rec["plan"]["world_size"] == 1:
        return 0.0, "single device"
    it = _num(m.get("iter_ms"))
    if it is None:
        return _not_measured("iter_ms")
    if it <= 0:
        return None, f"{NOT_MEASURED}: iter_ms is {it:g}"
    ms, parts, missing = measured_comm(rec)
    if missing:
        return _not_measured(*missing)
    p = rec["plan"]
    labels = (_MODEL_PARALLEL_LABELS if p.get("tp", 1) > 1 or p.get("pp", 1) > 1
              else _DATA_PARALLEL_LABELS)
    return 100.0 * ms / it, " + ".join(labels[part.kind] for part in parts)


def device_mem_pct(rec: dict) -> float | None:
    """Peak device memory as % of the accelerator's memory (None on CPU)."""
    peak = _num(rec["metrics"].get("peak_device_mem_gib"))
    acc = rec["hardware"].get("accelerators") or []
    total = _num(acc[0].get("mem_gib")) if acc else None
    return 100.0 * peak / total if peak is not None and total else None


def quality(rec: dict, protocol: str, metric: str) -> float | None:
    try:
        return _num(rec["quality"][QUALITY_SPLIT][protocol][metric])
    except KeyError:
        return None


def _mib(gib: Any) -> float | None:
    v = _num(gib)
    return None if v is None else v * 1024


MEASURES = {
    "throughput_samples_per_s": lambda r: _num(r["metrics"].get("throughput_samples_per_s")),
    "throughput_samples_per_s_per_device":
        lambda r: _num(r["metrics"].get("throughput_samples_per_s_per_device")),
    "iter_ms": lambda r: _num(r["metrics"].get("iter_ms")),
    "model_tflops_per_s": lambda r: _num(r["metrics"].get("model_tflops_per_s")),
    "mfu_pct": lambda r: _num(r["metrics"].get("mfu_pct")),
    "util_pct": lambda r: utilisation(r)[0],
    "comm_ms_per_iter": lambda r: _num(r["metrics"].get("comm_ms_per_iter")),
    "exposed_comm_ms_per_iter": lambda r: (0.0 if r["plan"]["world_size"] == 1 else
                                           _num(r["metrics"].get("exposed_comm_ms_per_iter"))),
    "comm_share_pct": lambda r: comm_share(r)[0],
    # model parallelism: the slowest rank's blocked time in megatron's TP collectives, the
    # pipeline's idle time (P2P waits and bubble; rank 0's stage), per-rank state and memory
    "tp_comm_ms_per_iter": lambda r: _num(r["metrics"].get("tp_comm_ms_per_iter_max_over_ranks")),
    "pp_idle_ms_per_iter": lambda r: _num(r["metrics"].get("pp_idle_ms_per_iter")),
    "model_state_mib": lambda r: _mib(r["metrics"].get("model_state_gib_max_over_ranks",
                                                        r["metrics"].get("model_state_gib"))),
    "peak_rss_gib": lambda r: _num(r["metrics"].get("peak_rss_gib_max_over_ranks",
                                                     r["metrics"].get("peak_rss_gib"))),
    "device_mem_pct": device_mem_pct,
    "gpu_util_min_over_ranks_pct": lambda r: _num(r["metrics"].get("gpu_util_pct_min_over_ranks")),
    **{f"{m}_{p}": (lambda r, m=m, p=p: quality(r, p, m))
       for p in PROTOCOLS for m in QUALITY_METRICS},
}
"""Row measure -> how to read it from one record (None when the record lacks it)."""
