"""What a run record measured as communication, part by part: the one definition that the
report's communication share (recpar.report.metrics) and the cost model's validation
(recpar.perfmodel.validation) both read, so the two never count different things.

Parts, by what the plan implies:

- `tp` (tp > 1): time blocked in megatron's TP collectives (`tp_comm_ms_per_iter`);
- `pp_wait` (pp > 1): the pipeline's waits, P2P and bubble (torch's schedules do not separate
  them), with the tied-table all-reduce and the loss broadcast;
- `dp_exposed` / `dp_hook` (dp > 1): DP gradient sync, exposed (fwd+bwd with sync − a replay
  without) where the engine measured it, else the hooks' time, which also counts what backward
  hid (`comm_ms_per_iter` for pure DP, `dp_grad_sync_ms_per_iter` beside TP or PP).

A metric a part needs that the record lacks makes the whole communication not measured, never
a sum that counts it as 0. The labels are the reader's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EXPOSED = "exposed_comm_ms_per_iter"
"""DP sync not hidden by overlap: fwd+bwd with sync minus a replay without, ms per iteration."""


@dataclass(frozen=True)
class CommPart:
    """One measured part of a record's communication."""

    kind: str
    """tp | pp_wait | dp_exposed | dp_hook."""
    metrics: tuple[str, ...]
    """Record metrics summed for it."""


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        return None
    return float(v)


def _degrees(record: Mapping[str, Any]) -> tuple[int, int, int]:
    p = record.get("plan") or {}
    return int(p.get("dp") or 1), int(p.get("tp") or 1), int(p.get("pp") or 1)


def comm_parts(record: Mapping[str, Any]) -> list[CommPart]:
    """The parts of a record's communication (module docstring); [] for a single device."""
    dp, tp, pp = _degrees(record)
    m = record.get("metrics") or {}
    parts: list[CommPart] = []
    if tp > 1:
        parts.append(CommPart("tp", ("tp_comm_ms_per_iter",)))
    if pp > 1:
        parts.append(CommPart("pp_wait", ("pp_idle_ms_per_iter",
                                          "pp_tied_grad_allreduce_ms_per_iter",
                                          "pp_loss_broadcast_ms_per_iter")))
    if dp > 1:
        if _num(m.get(EXPOSED)) is not None:
            parts.append(CommPart("dp_exposed", (EXPOSED,)))
        else:
            hook = "dp_grad_sync_ms_per_iter" if (tp > 1 or pp > 1) else "comm_ms_per_iter"
            parts.append(CommPart("dp_hook", (hook,)))
    return parts


def measured_comm(record: Mapping[str, Any]
                  ) -> tuple[float | None, list[CommPart], list[str]]:
    """(ms per iteration or None, the parts, the metrics they need that the record lacks).

    The total is None exactly when something is missing. A DP part without exposed time or
    hook time is listed as `exposed_comm_ms_per_iter or <hook metric>`."""
    m = record.get("metrics") or {}
    parts = comm_parts(record)
    missing: list[str] = []
    total = 0.0
    for part in parts:
        for name in part.metrics:
            v = _num(m.get(name))
            if v is None:
                missing.append(f"{EXPOSED} or {name}" if part.kind == "dp_hook" else name)
            else:
                total += v
    return (None if missing else total), parts, missing
