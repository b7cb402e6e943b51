"""The sweep runs rule perfmodel_validation compares, and the rank counts it calibrates for."""

import pytest
import yaml

from recpar.perfmodel import validation_runs as vr
from recpar.perfmodel.shapes import CostInputError

RUNS = {
    "baseline-tiny-n1": {"scheme": "baseline"},
    "dp2-ring-tiny-n2": {"scheme": "dp", "dp": 2, "nodes": 2},
    "dp3-ring-tiny-n3": {"scheme": "dp", "dp": 3, "nodes": 3},
    "dp4-hierarchical-tiny-n2": {"scheme": "dp", "dp": 4, "nodes": 2,
                                 "grad_sync": "hierarchical"},
    "dp2-topk0.01-ring-tiny-n2": {"scheme": "dp", "dp": 2, "nodes": 2, "compressor": "topk",
                                  "topk_ratio": 0.01},
    "tp2pp2-tiny-n2": {"scheme": "mp", "tp": 2, "pp": 2, "nodes": 2},
    "dp4tp2-ring-tiny-n4": {"scheme": "hybrid", "dp": 4, "tp": 2, "nodes": 4},
}


def test_world_size_multiplies_the_degrees():
    assert vr.world_size("b", {"scheme": "baseline"}) == 1
    assert vr.world_size("h", {"scheme": "hybrid", "dp": 3, "tp": 2, "pp": 2, "nodes": 3}) == 12
    with pytest.raises(CostInputError, match="sweep.runs.bad.data_parallel_size must be a "
                                             "positive integer"):
        vr.world_size("bad", {"scheme": "dp", "dp": 0})


def test_only_baseline_and_dp_runs_in_sweep_order():
    assert list(vr.validated_runs(RUNS)) == ["baseline-tiny-n1", "dp2-ring-tiny-n2",
                                             "dp3-ring-tiny-n3", "dp4-hierarchical-tiny-n2",
                                             "dp2-topk0.01-ring-tiny-n2"]
    assert vr.VALIDATED_SCHEMES == ("baseline", "dp")


def test_a_sweep_without_a_baseline_is_refused():
    no_base = {k: v for k, v in RUNS.items() if v["scheme"] != "baseline"}
    for fn in (vr.validated_runs, vr.baseline_run, vr.loaded_ranks, vr.ranks_per_node):
        with pytest.raises(ValueError, match="sweep.runs has no baseline run to calibrate"):
            fn(no_base)


def test_baseline_run_is_the_first_one():
    runs = {"dp2": {"scheme": "dp", "dp": 2}, "base-a": {"scheme": "baseline"},
            "base-b": {"scheme": "baseline"}}
    assert vr.baseline_run(runs) == "base-a"


def test_loaded_ranks_and_ranks_per_node():
    """Rank counts of the baseline and dp runs only (the mp / hybrid ones are left out), and
    the fullest node: dp4 on 2 nodes puts 2 ranks on each; dp3 on 2 nodes would put 2."""
    assert vr.loaded_ranks(RUNS) == [1, 2, 3, 4]
    assert vr.ranks_per_node(RUNS) == 2
    assert vr.ranks_per_node({"b": {"scheme": "baseline"}}) == 1
    assert vr.ranks_per_node({"b": {"scheme": "baseline"},
                              "dp3": {"scheme": "dp", "dp": 3, "nodes": 2}}) == 2


def test_the_emulated_grid():
    """config/emulated.yaml over the default config, as the workflow reads it."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    runs = {**yaml.safe_load((root / "config" / "config.yaml").read_text())["sweep"]["runs"],
            **yaml.safe_load((root / "config" / "emulated.yaml").read_text())["sweep"]["runs"]}
    assert vr.loaded_ranks(runs) == [1, 2, 3, 4] and vr.ranks_per_node(runs) == 2
