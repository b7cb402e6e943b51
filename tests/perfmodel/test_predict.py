"""Run-record predictions and the labelled paper projections (the validation table:
test_validation.py)."""

import pytest

from recpar.perfmodel.hardware import load_profile
from recpar.perfmodel.predict import (KIND, PAPER_TABLE2, ProjectionSettings, predict_record,
                                      project_paper_tables, scenario_from_record)
from recpar.perfmodel.shapes import CostInputError


def record(**over):
    r = {
        "run_id": "dp2-ring", "scheme": "dp",
        "plan": {"dp": 2, "tp": 1, "pp": 1, "world_size": 2, "num_microbatches": 1},
        "topology": {"kind": "emulated", "nodes": 2, "ranks_per_node": 1},
        "config": {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 20,
                             "text_dim": 0},
                   "train": {"global_batch_size": 16, "device": "cpu"},
                   "grad_sync": {"algorithm": "ring", "compression": "none"}},
        "dataset": {"stats": {"n_items": 99}},
        "metrics": {"iter_ms": 10.0, "comm_ms_per_iter": 2.0},
    }
    r.update(over)
    return r


def test_scenario_from_record_reads_plan_topology_and_vocab():
    sc = scenario_from_record(record())
    assert sc.shape.vocab_size == 100  # n_items + padding id
    assert sc.plan.data_parallel_size == 2 and sc.topology.nodes == 2
    assert sc.precision.activation_bytes == 4  # CPU run: fp32 activations
    with pytest.raises(CostInputError, match="r.json: missing config.train.global_batch_size"):
        bad = record()
        del bad["config"]["train"]["global_batch_size"]
        scenario_from_record(bad, "r.json")


def test_an_moe_record_is_refused_not_priced_as_dense():
    moe = record()
    moe["config"]["model"] = {**moe["config"]["model"], "num_moe_experts": 4}
    with pytest.raises(CostInputError, match="r.json: config.model.num_moe_experts = 4: the "
                                             "iteration model prices dense models only"):
        scenario_from_record(moe, "r.json")
    dense = record()
    dense["config"]["model"]["num_moe_experts"] = 0  # an explicit 0 is a dense model
    assert scenario_from_record(dense).shape.d_model == 32


def test_predict_record_is_labelled_projected(toy_hw):
    out = predict_record(record(), toy_hw)
    assert out["kind"] == KIND == "projected"
    assert out["iter_ms"] > 0 and 0 <= out["comm_share"] < 1


def test_paper_projection_rows_are_labelled_and_consistent():
    hw = load_profile("paper-a100")
    res = project_paper_tables(hw, ProjectionSettings(shape_name="small", nodes=(1, 2)))
    t2, t3 = res["table2"], res["table3"]
    assert [r["scheme"] for r in t2] == ["baseline", "dp", "mp", "hybrid"]
    assert all(r["kind"] == "projected" for r in t2 + t3)
    assert res["assumptions"]["kind"] == "projected"
    assert t2[0]["speedup"] == 1.0
    mp = next(r for r in t2 if r["scheme"] == "mp")
    assert (mp["tp"], mp["pp"], mp["gpus"]) == (4, 2, 8)
    for r in t2:
        assert r["paper_throughput_samples_per_s"] == PAPER_TABLE2[r["scheme"]]["throughput"]
        assert r["speedup"] == pytest.approx(r["throughput_samples_per_s"]
                                             / t2[0]["throughput_samples_per_s"])
        assert r["dp"] * r["tp"] * r["pp"] == r["gpus"]
    assert {(r["nodes"], r["scheme"]) for r in t3} >= {(2, "dp"), (2, "mp"), (2, "hybrid")}
    assert all(r["source"] for r in res["sources"])


def test_projection_rejects_unknown_size_and_too_many_nodes():
    hw = load_profile("paper-a100")
    with pytest.raises(CostInputError, match="unknown model size 'huge'"):
        project_paper_tables(hw, ProjectionSettings(shape_name="huge"))
    with pytest.raises(CostInputError, match="exceed the profile's max_nodes 8"):
        project_paper_tables(hw, ProjectionSettings(nodes=(1, 9)))


def test_vocab_from_the_stats_key_prepare_writes():
    """Real records carry dataset.stats.items (recpar data prepare), not n_items."""
    sc = scenario_from_record(record(dataset={"stats": {"items": 1349}}))
    assert sc.shape.vocab_size == 1350


def test_topk_bytes_follow_recpars_wire_format():
    """The cost model's top-k payload equals the bytes recpar's codec actually sends."""
    from recpar.comm import byte_formulas
    from recpar.perfmodel import collectives as C
    from recpar.perfmodel.shapes import GradSync

    for numel, ratio in ((857_344, 0.01), (12_345, 0.1)):
        k = byte_formulas.topk_k(numel, ratio)
        assert (C.topk_payload_bytes(k, 4, GradSync().index_bytes)
                == byte_formulas.topk_payload_bytes(numel, ratio))
