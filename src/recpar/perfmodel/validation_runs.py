"""Which of a sweep's runs validate the cost model, and what the calibration needs from them.

Used by the workflow's rule perfmodel_validation (workflow/rules/common.smk). `runs` is the
config's `sweep.runs` mapping: run id -> the options `recpar train --run-options` takes
({scheme, dp, tp, pp, nodes, ...}; an absent degree is 1, absent nodes 1).

Every run of the sweep is validated, whatever its scheme: a run the cost model cannot price
gets a row that says why (recpar.perfmodel.validation), it is not left out.
"""

from __future__ import annotations

from typing import Any, Mapping

from recpar.perfmodel.shapes import PlanShape

RunOptions = Mapping[str, Any]


def world_size(run_id: str, options: RunOptions) -> int:
    """Ranks of one run: dp × tp × pp (recpar.perfmodel.shapes.PlanShape)."""
    return PlanShape.from_mapping(options, f"sweep.runs.{run_id}").world_size


def sweep_schemes(runs: Mapping[str, RunOptions]) -> list[str]:
    """The schemes of the sweep's runs, each once, in sweep order (`recpar perfmodel validate
    --schemes`)."""
    return list(dict.fromkeys(v["scheme"] for v in runs.values()))


def validated_runs(runs: Mapping[str, RunOptions]) -> dict[str, RunOptions]:
    """Every run of the sweep, in sweep order; one of them must be a baseline run (the
    calibration's workload)."""
    if not any(v["scheme"] == "baseline" for v in runs.values()):
        raise ValueError("config perfmodel_validation: sweep.runs has no baseline run to "
                         "calibrate against")
    return dict(runs)


def baseline_run(runs: Mapping[str, RunOptions]) -> str:
    """Id of the first baseline run: the record the profile is calibrated against."""
    return next(k for k, v in validated_runs(runs).items() if v["scheme"] == "baseline")


def loaded_ranks(runs: Mapping[str, RunOptions]) -> list[int]:
    """Rank counts of the validated runs, each once, ascending: each gets its own loaded-step
    line (`recpar perfmodel calibrate --loaded-ranks`)."""
    return sorted({world_size(k, v) for k, v in validated_runs(runs).items()})


def ranks_per_node(runs: Mapping[str, RunOptions]) -> int:
    """The most ranks a validated run puts on one node, ⌈world size / nodes⌉
    (`recpar perfmodel calibrate --ranks-per-node`)."""
    return max(-(-world_size(k, v) // v.get("nodes", 1)) for k, v in validated_runs(runs).items())
