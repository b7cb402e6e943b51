"""The cost model's 16-bit and PowerSGD gradient syncs, against hand-computed cases on the toy
profile (conftest), and the model shape's parameter list against the real recommender."""

import math

import numpy as np
import pytest

from recpar.comm.byte_formulas import powersgd_payload_elements, powersgd_split_elements
from recpar.perfmodel import collectives as C
from recpar.perfmodel.calibrate import measure_compress_elements_per_s
from recpar.perfmodel.dp_sync import _ddp_buckets, dp_sync_cost
from recpar.perfmodel.hardware import profile_from_mapping
from recpar.perfmodel.iteration import iteration_cost
from recpar.perfmodel.shapes import (CostInputError, GradSync, ModelShape, PlanShape, Precision,
                                     Topology)

from .conftest import fig, toy_mapping

TINY = dict(d_model=8, n_layers=2, n_heads=2, d_ff=32, seq_len=4, vocab_size=10, text_dim=6)
TWO_NODES = Topology(nodes=2, ranks_per_node=1)


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_param_shapes_are_the_recommenders_trainable_parameters(size):
    from recpar.model.config import ModelConfig
    from recpar.model.recommender import Recommender

    cfg = ModelConfig.named(size, text_dim=384)
    model = Recommender(cfg, 40, text_emb=np.zeros((41, 384), dtype=np.float32))
    real = [tuple(p.shape) for p in model.parameters() if p.requires_grad]
    shape = ModelShape.from_config(cfg, 40)
    assert shape.param_shapes() == real
    assert sum(math.prod(s) for s in real) == shape.trainable_params


def test_fp16_all_reduces_half_the_bytes(toy_hw):
    n = 4e6
    got = dp_sync_cost(n, 2, GradSync(compression="fp16", bucket_size_mb=1024), toy_hw,
                       TWO_NODES, 1, 1, Precision())
    link = toy_hw.inter_link()
    assert got["total_s"] == pytest.approx(C.ring_all_reduce(n / 2, 2, link))
    assert got["bytes_sent"] == pytest.approx(n / 2)  # 2 (p - 1) / p of the 16-bit payload
    dense = dp_sync_cost(n, 2, GradSync(bucket_size_mb=1024), toy_hw, TWO_NODES, 1, 1,
                         Precision())
    assert got["bytes_sent"] == pytest.approx(dense["bytes_sent"] / 2)
    # no measured rate: two memory passes at γ (cast down and back)
    assert got["compress_s"] == pytest.approx(2 * n * toy_hw.gamma_s_per_byte)
    bf16 = dp_sync_cost(n, 2, GradSync(compression="bf16", bucket_size_mb=1024), toy_hw,
                        TWO_NODES, 1, 1, Precision())
    assert bf16 == got


def test_powersgd_sends_the_factors_torch_sends():
    shapes = [(10, 8), (8,), (6, 8), (32, 8), (8, 32), (4, 8)]
    dense, p, q = powersgd_split_elements(shapes, 1)
    # (10,8): (10+8)*2 = 36 < 80 compressed; (6,8): 28 < 48; (32,8) and (8,32): 80 < 256;
    # (4,8): 24 < 32; the vector is sent whole
    assert (dense, p, q) == (8, 10 + 6 + 32 + 8 + 4, 8 + 8 + 8 + 32 + 8)
    assert dense + p + q == powersgd_payload_elements(shapes, 1)
    assert powersgd_split_elements([(4, 8)], 2) == (32, 0, 0)  # (4+8)*2*2 = 48 >= 32: whole


def test_powersgd_prices_three_all_reduces_per_bucket(toy_hw):
    shape = ModelShape.from_mapping(TINY)
    shapes = shape.param_shapes()
    n = shape.trainable_params * 4
    sync = GradSync(compression="powersgd", bucket_size_mb=1024)
    got = dp_sync_cost(n, 2, sync, toy_hw, TWO_NODES, 1, 1, Precision(), shapes)
    dense, p, q = powersgd_split_elements(shapes, 1)
    link = toy_hw.inter_link()
    want = sum(C.ring_all_reduce(4 * e, 2, link) for e in (dense, p, q))
    assert got["buckets"] == 1 and got["total_s"] == pytest.approx(want)
    assert got["bytes_sent"] == pytest.approx(4 * (dense + p + q))
    assert got["compress_s"] == pytest.approx(4 * n * toy_hw.gamma_s_per_byte)
    with pytest.raises(ValueError, match="shapes"):
        dp_sync_cost(n, 2, sync, toy_hw, TWO_NODES, 1, 1, Precision())


def test_ddp_buckets_close_at_the_cap_in_reverse_order():
    shapes = [(10,), (20,), (30,), (5,)]
    assert _ddp_buckets(shapes, 30) == [[(5,), (30,)], [(20,), (10,)]]
    assert _ddp_buckets(shapes, 1e9) == [[(5,), (30,), (20,), (10,)]]


def test_measured_compress_rate_prices_the_local_work():
    m = toy_mapping()
    m["device"]["powersgd_compress_elements_per_s"] = fig(1e6)
    m["device"]["fp16_compress_elements_per_s"] = fig(4e6)
    hw = profile_from_mapping(m, "toy.yaml")
    assert hw.compress_elements_per_s("bf16") == 4e6  # the same casts
    shape = ModelShape.from_mapping(TINY)
    cost = iteration_cost(shape, PlanShape(data_parallel_size=2), 8, hw, TWO_NODES,
                          GradSync(compression="powersgd"))
    assert cost.compress_ms == pytest.approx(1e3 * shape.trainable_params / 1e6)


def test_powersgd_cost_needs_data_parallelism_alone(toy_hw):
    with pytest.raises(CostInputError, match="tp = pp = 1"):
        iteration_cost(ModelShape.from_mapping(TINY),
                       PlanShape(data_parallel_size=2, tensor_model_parallel_size=2), 8,
                       toy_hw, Topology(nodes=1, ranks_per_node=4),
                       GradSync(compression="powersgd"))


def test_grad_sync_reads_every_compressor_and_rejects_others():
    assert GradSync.from_mapping({"compressor": "powersgd", "powersgd_rank": 2}).powersgd_rank == 2
    for c in ("fp16", "bf16"):
        assert GradSync.from_mapping({"compressor": c}).compression == c
    with pytest.raises(CostInputError, match="compression must be one of"):
        GradSync.from_mapping({"compressor": "int8"})
    with pytest.raises(CostInputError, match="powersgd_rank must be an integer >= 1"):
        GradSync.from_mapping({"compressor": "powersgd", "powersgd_rank": 0})


@pytest.mark.parametrize("codec", ["fp16", "powersgd"])
def test_compress_rate_measures_the_new_codecs(codec):
    shape = ModelShape.from_mapping(TINY)
    r = measure_compress_elements_per_s(shape.trainable_params, codec, repeats=2,
                                        grad_shapes=shape.param_shapes())
    assert r["elements_per_s"] > 0 and r["codec"] == codec
    if codec == "powersgd":
        with pytest.raises(ValueError, match="add up"):
            measure_compress_elements_per_s(10, codec, grad_shapes=[(3, 3)])
