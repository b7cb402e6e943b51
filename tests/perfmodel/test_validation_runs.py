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


def test_every_run_and_scheme_in_sweep_order():
    """mp and hybrid runs are validated too (a run the model cannot price gets a row saying
    why, recpar.perfmodel.validation)."""
    assert list(vr.validated_runs(RUNS)) == list(RUNS)
    assert vr.sweep_schemes(RUNS) == ["baseline", "dp", "mp", "hybrid"]


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
    """Rank counts of every run (dp4tp2 on 4 nodes: 8), and the fullest node: dp4 on 2 nodes
    puts 2 ranks on each; dp3 on 2 nodes would put 2."""
    assert vr.loaded_ranks(RUNS) == [1, 2, 3, 4, 8]
    assert vr.ranks_per_node(RUNS) == 2
    assert vr.ranks_per_node({"b": {"scheme": "baseline"}}) == 1
    assert vr.ranks_per_node({"b": {"scheme": "baseline"},
                              "dp3": {"scheme": "dp", "dp": 3, "nodes": 2}}) == 2


def _grid(name):
    """config/<name> over the default config, as the workflow reads it."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    default = yaml.safe_load((root / "config" / "config.yaml").read_text())
    over = yaml.safe_load((root / "config" / name).read_text())
    return default, over, {**default["sweep"]["runs"], **over["sweep"]["runs"]}


def test_the_emulated_grid():
    """The development grid: the default sweep (dp2tp2 on one node: 4 ranks per node) plus
    Table III's cells up to dp4tp2 on 4 nodes (8 ranks)."""
    _, over, runs = _grid("emulated.yaml")
    assert vr.loaded_ranks(runs) == [1, 2, 3, 4, 6, 8] and vr.ranks_per_node(runs) == 4
    assert vr.sweep_schemes(runs) == ["baseline", "dp", "mp", "hybrid", "deepspeed"]
    assert over["perfmodel_grid_role"] == "development"


def test_the_held_out_grid_differs_from_the_development_grid():
    """config/emulated_heldout.yaml: another sweep name, link rate, global batch, model shape
    and rank layout (a cluster of 2 nodes × 2 ranks, and a layout the development grid never
    ran), all five schemes, few runs (it must finish in about 10-12 minutes on 2 cores)."""
    default, dev, dev_runs = _grid("emulated.yaml")
    _, held, runs = _grid("emulated_heldout.yaml")
    assert held["perfmodel_grid_role"] == "held-out" and held["perfmodel_validation"] is True
    assert held["sweep"]["name"] != dev["sweep"]["name"]
    assert held["cluster"]["inter_bw"] != dev["cluster"]["inter_bw"]
    assert (held["cluster"]["nodes"], held["cluster"]["ranks_per_node"]) != \
        (dev["cluster"]["nodes"], dev["cluster"]["ranks_per_node"])
    assert held["sweep"]["train"]["global_batch_size"] != dev["sweep"]["train"]["global_batch_size"]
    assert held["model"]["overrides"] and not default["model"]["overrides"]

    def layout(o):
        return (o["scheme"], o.get("dp", 1), o.get("tp", 1), o.get("pp", 1), o.get("nodes", 1),
                o.get("grad_sync", "ring"))
    assert {layout(o) for o in runs.values()} - {layout(o) for o in dev_runs.values()}
    assert set(vr.sweep_schemes(runs)) == {"baseline", "dp", "mp", "hybrid", "deepspeed"}
    assert len(runs) <= 9
