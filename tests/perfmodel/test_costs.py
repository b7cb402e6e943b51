"""Per-iteration costs against hand-computed cases on the toy profile (conftest)."""

import pytest

from recpar.perfmodel import collectives as C
from recpar.perfmodel.iteration import iteration_cost
from recpar.perfmodel.memory import memory_per_rank_bytes
from recpar.perfmodel.placement import group_span
from recpar.perfmodel.shapes import (CostInputError, GradSync, ModelShape, PlanShape, Precision,
                                     Topology)
from recpar.perfmodel.stages import stage_fwd_flops_per_token

TINY = dict(d_model=8, n_layers=2, n_heads=2, d_ff=32, seq_len=4, vocab_size=10)
NO_OVERLAP_ONE_BUCKET = GradSync(overlap=False, bucket_size_mb=1024)


def test_param_and_flop_counts_by_hand():
    s = ModelShape.from_mapping({**TINY, "n_layers": 1})
    # block: 4·64 + 4·8 (attn) + 2·8·32 + 32 + 8 (mlp) + 4·8 (2 LN) = 872
    assert s.layer_params == 872
    assert s.input_params == 10 * 8 + 4 * 8  # item table + positions
    assert s.head_params == 16  # final LN (tied head)
    assert s.trainable_params == 1000
    # per token: 2·(4·64 + 2·8·32) + 4·4·8 = 1664 per layer; head 2·10·8 = 160
    assert s.layer_fwd_flops_per_token == 1664
    assert s.train_flops_per_sequence == 3 * (1664 + 160) * 4
    untied = ModelShape.from_mapping({**TINY, "tied_output": False, "text_dim": 6})
    assert untied.head_params == 16 + 80
    assert untied.input_params == 80 + 32 + 6 * 8 + 8
    assert untied.frozen_params == 60


def test_model_shape_aliases_and_errors():
    s = ModelShape.from_mapping({"hidden_size": 8, "num_layers": 2, "num_attention_heads": 2,
                                 "max_seq_len": 4, "vocab_size": 10})
    assert s.d_ff == 32 and s.seq_len == 4
    with pytest.raises(CostInputError, match="model: missing 'vocab_size'"):
        ModelShape.from_mapping({k: v for k, v in TINY.items() if k != "vocab_size"})
    with pytest.raises(CostInputError, match="model.n_layers must be a positive integer"):
        ModelShape.from_mapping({**TINY, "n_layers": 0})
    with pytest.raises(CostInputError, match="not divisible by n_heads"):
        ModelShape.from_mapping({**TINY, "n_heads": 3})


def test_group_span():
    assert group_span(8, 1, 8) == (1, 8)
    assert group_span(16, 1, 8) == (2, 8)
    assert group_span(4, 2, 8) == (1, 4)
    assert group_span(4, 4, 8) == (2, 2)
    assert group_span(2, 8, 8) == (2, 1)


def test_baseline_is_pure_compute(toy_hw):
    s = ModelShape.from_mapping(TINY)
    c = iteration_cost(s, PlanShape(), 16, toy_hw)
    want_s = s.train_flops_per_sequence * 16 / (1e12 * 0.5)
    assert c.iter_ms == pytest.approx(1e3 * want_s)
    assert c.comm_ms_per_iter == 0 and c.comm_share == 0
    assert c.throughput_samples_per_s == pytest.approx(16 / want_s)


def test_dp_ring_one_node_no_overlap(toy_hw):
    s = ModelShape.from_mapping(TINY)
    c = iteration_cost(s, PlanShape(data_parallel_size=4), 16, toy_hw,
                       sync=NO_OVERLAP_ONE_BUCKET)
    comp = s.train_flops_per_sequence * 4 / 5e11
    comm = C.ring_all_reduce(s.trainable_params * 4, 4, toy_hw.intra_link())
    assert c.compute_ms == pytest.approx(1e3 * comp)
    assert c.dp_comm_ms == pytest.approx(1e3 * comm)
    assert c.iter_ms == pytest.approx(1e3 * (comp + comm))
    assert c.comm_share == pytest.approx(comm / (comp + comm))
    assert c.dp_bytes_per_rank_per_iter == pytest.approx(2 * 3 / 4 * s.trainable_params * 4)


def test_overlap_hides_all_but_the_last_bucket(toy_hw):
    s = ModelShape.from_mapping({**TINY, "d_model": 64, "d_ff": 256, "vocab_size": 1000})
    grad = s.trainable_params * 4
    bucket_mb = grad / 2**20 / 3.5  # 3 full buckets + a half one
    plan = PlanShape(data_parallel_size=4)
    link = toy_hw.intra_link()
    full = C.ring_all_reduce(bucket_mb * 2**20, 4, link)
    last = C.ring_all_reduce(grad - 3 * bucket_mb * 2**20, 4, link)
    total = 3 * full + last
    for gbs in (4, 4000):  # backward much shorter / much longer than the all-reduce
        c = iteration_cost(s, plan, gbs, toy_hw, sync=GradSync(bucket_size_mb=bucket_mb))
        backward = c.compute_ms / 1e3 * 2 / 3
        assert c.dp_comm_ms == pytest.approx(1e3 * total)
        assert c.detail["dp_buckets"] == 4
        assert c.dp_comm_exposed_ms == pytest.approx(1e3 * max(last, total - backward))


def test_dp_across_nodes_flat_ring_and_hierarchical(toy_hw):
    s = ModelShape.from_mapping(TINY)
    plan = PlanShape(data_parallel_size=8)
    topo = Topology(nodes=2, ranks_per_node=4)
    n = s.trainable_params * 4
    flat = iteration_cost(s, plan, 8, toy_hw, topo, NO_OVERLAP_ONE_BUCKET)
    # one ring leaves each node once: bottleneck = inter link (slower α and β)
    assert flat.dp_comm_ms == pytest.approx(1e3 * C.ring_all_reduce(
        n, 8, C.LinkCost(1e-5, 1e-9)))
    hier = iteration_cost(s, plan, 8, toy_hw, topo,
                          GradSync(algorithm="hierarchical", overlap=False, bucket_size_mb=1024))
    # 4 local ranks per node each run an inter-node ring through the single NIC
    want = C.hierarchical_all_reduce(n, 2, 4, toy_hw.intra_link(), C.LinkCost(1e-5, 4e-9))
    assert hier.dp_comm_ms == pytest.approx(1e3 * want)
    # on one node hierarchical is the ring
    one = Topology(1, 4)
    p4 = PlanShape(data_parallel_size=4)
    a = iteration_cost(s, p4, 8, toy_hw, one, GradSync(algorithm="hierarchical"))
    b = iteration_cost(s, p4, 8, toy_hw, one, GradSync(algorithm="ring"))
    assert a.iter_ms == pytest.approx(b.iter_ms)


def test_compressed_dp_sends_fewer_bytes(toy_hw):
    s = ModelShape.from_mapping({**TINY, "d_model": 64, "d_ff": 256, "vocab_size": 1000})
    plan = PlanShape(data_parallel_size=4)
    elems = s.trainable_params
    sign = iteration_cost(s, plan, 8, toy_hw,
                          sync=GradSync(compression="sign", overlap=False, bucket_size_mb=1024))
    assert sign.dp_bytes_per_rank_per_iter == 3 * C.sign_payload_bytes(elems)
    want = C.compressed_all_gather(C.sign_payload_bytes(elems), 4, toy_hw.intra_link(),
                                   decoded_bytes=elems * 4)
    assert sign.dp_comm_ms == pytest.approx(1e3 * want)
    topk = iteration_cost(s, plan, 8, toy_hw, sync=GradSync(compression="topk", topk_ratio=0.01,
                                                             overlap=False, bucket_size_mb=1024))
    k = -(-elems // 100)
    assert topk.dp_bytes_per_rank_per_iter == 3 * k * 8  # fp32 value + int32 index (recpar codec)
    dense = iteration_cost(s, plan, 8, toy_hw, sync=NO_OVERLAP_ONE_BUCKET)
    # all-gather of n/8 bytes to 3 peers vs ring 2·(3/4)·4n bytes: ~16× fewer
    assert sign.dp_bytes_per_rank_per_iter < dense.dp_bytes_per_rank_per_iter / 15


def test_tensor_parallel_all_reduces(toy_hw):
    s = ModelShape.from_mapping(TINY)
    m, gbs = 2, 8
    c = iteration_cost(s, PlanShape(tensor_model_parallel_size=2, num_microbatches=m), gbs,
                       toy_hw)
    b = gbs // m
    link = toy_hw.intra_link()
    act = C.ring_all_reduce(b * 4 * 8 * 2, 2, link)  # [b, L, h] bf16
    ce = C.ring_all_reduce(b * 4 * 4, 2, link)
    per_mb = 4 * 2 * act + act + act + 3 * ce  # 4 per layer + embedding + head + CE
    assert c.tp_comm_ms == pytest.approx(1e3 * m * per_mb)
    assert c.compute_ms == pytest.approx(
        1e3 * s.train_flops_per_sequence * gbs / 2 / 5e11)


def test_pipeline_time_bubble_and_p2p(toy_hw):
    s = ModelShape.from_mapping({**TINY, "n_layers": 4, "tied_output": False})
    m, gbs = 4, 8
    c = iteration_cost(s, PlanShape(pipeline_model_parallel_size=2, num_microbatches=m), gbs,
                       toy_hw)
    b, tokens = gbs // m, gbs // m * 4
    stages = stage_fwd_flops_per_token(s, PlanShape(pipeline_model_parallel_size=2))
    assert stages == [2 * 1664, 2 * 1664 + 160]  # last stage carries the item head
    t_stage = 3 * stages[1] * tokens / 5e11
    p2p = C.point_to_point(b * 4 * 8 * 2, toy_hw.intra_link())
    assert c.bubble_ratio == pytest.approx(1 / 4)
    assert c.bubble_ms == pytest.approx(1e3 * t_stage)
    assert c.pp_comm_ms == pytest.approx(1e3 * (m + 1) * 2 * p2p)
    assert c.iter_ms == pytest.approx(1e3 * (m + 1) * (t_stage + 2 * p2p))


def test_tied_head_across_stages_adds_embedding_all_reduce(toy_hw):
    s = ModelShape.from_mapping({**TINY, "n_layers": 4})
    c = iteration_cost(s, PlanShape(pipeline_model_parallel_size=2, num_microbatches=2), 4,
                       toy_hw)
    want = C.ring_all_reduce(10 * 8 * 4, 2, toy_hw.intra_link())
    assert c.detail["tied_embedding_allreduce_ms"] == pytest.approx(1e3 * want)


def test_zero_stages_shrink_memory():
    s = ModelShape.from_mapping({**TINY, "d_model": 256, "d_ff": 1024, "vocab_size": 5000})
    plan = PlanShape(data_parallel_size=8)
    mems = [memory_per_rank_bytes(s, plan, 4, Precision(), z) for z in range(4)]
    assert mems[0] > mems[1] > mems[2] > mems[3]
    # stage 0 model states: 4 + 4 + 8 bytes per parameter (fp32 weights, grads, Adam m and v)
    act_free = memory_per_rank_bytes(s, plan, 0, Precision(), 0)
    assert act_free == pytest.approx(16 * s.trainable_params)


def test_bad_inputs_name_the_problem(toy_hw):
    s = ModelShape.from_mapping(TINY)
    with pytest.raises(CostInputError, match="does not equal dp×tp×pp = 4"):
        iteration_cost(s, PlanShape(data_parallel_size=4), 8, toy_hw, Topology(1, 2))
    with pytest.raises(CostInputError, match="global_batch_size 6 is not divisible"):
        iteration_cost(s, PlanShape(data_parallel_size=4), 6, toy_hw)
    with pytest.raises(CostInputError, match="exceeds the profile's devices_per_node 4"):
        iteration_cost(s, PlanShape(data_parallel_size=8), 8, toy_hw, Topology(1, 8))
    with pytest.raises(CostInputError, match="plan.pipeline_schedule"):
        PlanShape.from_mapping({"pp": 2, "pipeline_schedule": "zigzag"})
    with pytest.raises(CostInputError, match="grad_sync.algorithm must be one of"):
        GradSync.from_mapping({"algorithm": "butterfly"})


def test_shapes_from_the_real_config_and_plan_count_the_real_model():
    """ModelShape.from_config / PlanShape.from_plan read recpar's own dataclasses, and the
    cost model's parameter count equals the Recommender's, so memory/FLOP terms describe the
    model that is trained."""
    import torch

    from recpar.model.config import ModelConfig
    from recpar.model.recommender import Recommender
    from recpar.parallel.plan import ParallelPlan
    from recpar.perfmodel.shapes import ModelShape, PlanShape

    for text_dim in (0, 8):
        cfg = ModelConfig.named("tiny", max_seq_len=20, text_dim=text_dim)
        text = torch.randn(51, text_dim) if text_dim else None
        model = Recommender(cfg, 50, text)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert ModelShape.from_config(cfg, 50).trainable_params == trainable
    plan = ParallelPlan(scheme="hybrid", dp=2, tp=2, pp=2, num_microbatches=4,
                        pipeline_schedule="gpipe", partition_method="balanced")
    ps = PlanShape.from_plan(plan)
    assert (ps.data_parallel_size, ps.tensor_model_parallel_size,
            ps.pipeline_model_parallel_size, ps.num_microbatches) == (2, 2, 2, 4)
    assert ps.world_size == plan.world_size and ps.pipeline_schedule == "gpipe"
