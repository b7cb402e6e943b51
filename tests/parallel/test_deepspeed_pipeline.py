"""DeepSpeed PipelineModule + ZeRO-1 (scheme `deepspeed`) on 2 gloo ranks (WORLD_SIZE = 2,
pp = 2) against single-process AdamW.

One spawn (dsp_workers.dsp_worker) runs every case; the tests assert on what each rank
recorded. Same model (text fusion on), global batch of 8 sequences with unequal padding,
5 steps, AdamW with weight-decay groups and active clipping. Cases: 2 blocks cut `uniform`
(DeepSpeed `type:PipeBlock`) with 2 micro-batches; 3 blocks cut `balanced` (DeepSpeed
`parameters`) with 4 micro-batches and a 3-sequence tail batch as the last step; and
save -> load -> continue through `DeepSpeedPipelineEngine`. Tensor parallelism (tp2 × pp2,
4 ranks) is tests/parallel/test_deepspeed_pipeline_tp.py; here only its plan checks.

Tolerances (fp32): losses and final parameters within atol 1e-5 (measured <= 5e-7 for the
losses and <= 1.6e-6 for the parameters: micro-batches sum the cross-entropy in another order
than the single process and AdamW divides by sqrt(v)); first-step gradients within 1e-6
(measured <= 2e-7). Resume is bit-exact.
"""

import dataclasses

import pytest
import torch

from ..comm.mp_launch import skip_unless_ranks, spawn_ranks
from .ds_reference_checks import (assert_final_state_equals_reference, assert_reference_clips,
                                  assert_series_equal_reference)
from .dsp_workers import (CASES, GLOBAL_BATCH, N_ITEMS, STEPS, TRAIN_CFG, WORLD_SIZE,
                          dsp_worker, make_batches, make_model)
from recpar.parallel.deepspeed_layers import (TIED_KEY, FinalNorm, GlobalMeanLoss, ItemTable,
                                              PipeBlock, PositionEmbedding, recommender_key)
from recpar.parallel.deepspeed_pipeline import (deepspeed_pipeline_config, deepspeed_topology,
                                                topology_mismatches, validate_deepspeed_plan)
from recpar.parallel.plan import ParallelPlan, PlanError
from recpar.parallel.zero import DS_REDUCE_BUCKET_SIZE

ATOL = 1e-5
GRAD_ATOL = 1e-6
TIED = ("item_id_emb.weight", "text_proj.weight", "text_proj.bias")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    pytest.importorskip("deepspeed", reason="the deepspeed scheme needs deepspeed")
    skip_unless_ranks(WORLD_SIZE)
    return spawn_ranks(dsp_worker, WORLD_SIZE, tmp_path_factory.mktemp("dsp"))


# --- without ranks ---------------------------------------------------------------------------


def test_layers_in_sequence_compute_the_single_device_loss():
    """The pipeline's layer list run on one process gives Recommender.loss (scale 1)."""
    model = make_model(2)
    x, y = make_batches()
    x, y = x[0], y[0]
    layers = [ItemTable(model), PositionEmbedding(model), PipeBlock(model, 0),
              PipeBlock(model, 1), FinalNorm(model)]
    h = x
    for layer in layers:
        h = layer(h)
    logits = layers[0](h)  # the tied table's output end
    valid = (x != 0) & (y != 0)
    loss = GlobalMeanLoss(1)(logits, (y.masked_fill(~valid, -100), valid.sum().float()))
    torch.testing.assert_close(loss, model.loss(x, y), rtol=0, atol=1e-6)


def test_pipeline_keys_map_onto_the_recommender_state_dict():
    model = make_model(3)
    n = model.cfg.n_layers
    keys = [f"tied_modules.{TIED_KEY}.{k}" for k in ItemTable(model).state_dict()]
    keys += [f"1.{k}" for k in PositionEmbedding(model).state_dict()]
    for i in range(n):
        keys += [f"{2 + i}.{k}" for k in PipeBlock(model, i).state_dict()]
    keys += [f"{n + 2}.{k}" for k in FinalNorm(model).state_dict()]
    assert sorted(recommender_key(k, n) for k in keys) == sorted(model.state_dict())
    with pytest.raises(KeyError, match="'9.x'"):
        recommender_key("9.x", n)


def test_config_mirrors_plan_and_train_config():
    plan = ParallelPlan(scheme="deepspeed", dp=2, pp=2, num_microbatches=2)
    cfg = deepspeed_pipeline_config(TRAIN_CFG, plan, n_params=1234)
    assert cfg["train_batch_size"] == TRAIN_CFG.global_batch_size == \
        cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * plan.dp
    assert cfg["gradient_accumulation_steps"] == plan.num_microbatches
    assert cfg["zero_optimization"] == {"stage": 1, "reduce_bucket_size": 1234}
    opt = cfg["optimizer"]["params"]
    assert cfg["optimizer"]["type"] == "AdamW" and opt["torch_adam"] is True
    assert (opt["lr"], tuple(opt["betas"]), opt["weight_decay"]) == \
        (TRAIN_CFG.lr, TRAIN_CFG.betas, TRAIN_CFG.weight_decay)
    assert cfg["gradient_clipping"] == TRAIN_CFG.clip_grad
    big = deepspeed_pipeline_config(TRAIN_CFG, plan, n_params=10**10)
    assert big["zero_optimization"]["reduce_bucket_size"] == DS_REDUCE_BUCKET_SIZE


@pytest.mark.parametrize("plan, message", [
    (ParallelPlan(scheme="deepspeed", pp=2, num_microbatches=2, pipeline_schedule="gpipe"),
     "pipeline_schedule = 'gpipe'"),
    (ParallelPlan(scheme="deepspeed", dp=2, pp=2, num_microbatches=3),
     "global_batch_size = 8 is not divisible by dp × num_microbatches = 2 × 3 = 6"),
])
def test_unsupported_plans_are_refused(plan, message):
    with pytest.raises(PlanError, match=message.replace("(", r"\(")):
        validate_deepspeed_plan(plan, TRAIN_CFG)


def test_tensor_parallel_plans_are_checked_against_the_model():
    """tp > 1 runs (tests/parallel/test_deepspeed_pipeline_tp.py) when heads and d_ff split
    into whole shards; otherwise the plan is refused naming the numbers."""
    plan = ParallelPlan(scheme="deepspeed", tp=2, pp=2, num_microbatches=2)
    cfg = make_model(2).cfg  # 2 heads, d_ff 32
    assert validate_deepspeed_plan(plan, TRAIN_CFG, cfg) == GLOBAL_BATCH // 2
    with pytest.raises(PlanError, match="n_heads = 2 is not divisible by tp = 4"):
        validate_deepspeed_plan(ParallelPlan(scheme="deepspeed", tp=4, pp=2,
                                             num_microbatches=2), TRAIN_CFG, cfg)
    odd = dataclasses.replace(cfg, d_ff=33)
    with pytest.raises(PlanError, match="d_ff = 33 is not divisible by tp = 2"):
        validate_deepspeed_plan(plan, TRAIN_CFG, odd)


def test_topology_mismatches_name_the_differing_groups():
    """The check apply_deepspeed_pipeline runs at init: megatron's default layout (tp
    fastest, then dp, then pp) agrees with DeepSpeed's [pipe, data, model] topology; a
    layout with tp outermost is reported group by group."""
    pytest.importorskip("deepspeed", reason="the topology is DeepSpeed's")
    topo = deepspeed_topology(ParallelPlan(scheme="deepspeed", tp=2, pp=2, dp=2))
    # rank 5 = stage 1, dp rank 0, tp rank 1 in rank = (stage × dp + dp_rank) × tp + tp_rank
    assert topology_mismatches(topo, {"tp": [4, 5], "pp": [1, 5], "dp": [5, 7]}, 5) == []
    # tp outermost (rank = tp_rank × 4 + stage × 2 + dp_rank): rank 5 = tp 1, stage 0, dp 1
    bad = topology_mismatches(topo, {"tp": [1, 5], "pp": [5, 7], "dp": [4, 5]}, 5)
    assert bad == ["tp group of rank 5: megatron [1, 5], DeepSpeed 'model' axis [4, 5]",
                   "pp group of rank 5: megatron [5, 7], DeepSpeed 'pipe' axis [1, 5]",
                   "dp group of rank 5: megatron [4, 5], DeepSpeed 'data' axis [5, 7]"]
    # tp = 1 keeps DeepSpeed's pipe x data topology: the tp "group" is the rank itself
    flat = deepspeed_topology(ParallelPlan(scheme="deepspeed", pp=2, dp=2))
    assert topology_mismatches(flat, {"tp": [3], "pp": [1, 3], "dp": [2, 3]}, 3) == []


# --- 2 ranks ---------------------------------------------------------------------------------


def test_microbatches_hold_unequal_token_counts():
    """Averaging micro-batch means would differ from the global mean on these data."""
    x, y = make_batches()
    valid = ((x != 0) & (y != 0)).sum(-1)  # [STEPS, GLOBAL_BATCH]
    halves = valid.view(STEPS, 2, GLOBAL_BATCH // 2).sum(-1)
    assert (halves[:, 0] != halves[:, 1]).all()


@pytest.mark.multiprocess
def test_reference_clips(ranks):
    assert_reference_clips(ranks, CASES, TRAIN_CFG.clip_grad)


@pytest.mark.multiprocess
@pytest.mark.parametrize("label", list(CASES))
def test_losses_equal_single_process(ranks, label):
    # train_batch's loss is broadcast to every stage
    assert_series_equal_reference(ranks, label, "losses", ATOL, steps=STEPS)


@pytest.mark.multiprocess
@pytest.mark.parametrize("label", list(CASES))
def test_final_parameters_equal_single_process(ranks, label):
    assert_final_state_equals_reference(ranks, label, ATOL)


@pytest.mark.multiprocess
@pytest.mark.parametrize("label", list(CASES))
def test_first_step_gradients_equal_single_process(ranks, label):
    """After DeepSpeed's tied-gradient all-reduce, each stage's gradients (both copies of the
    tied item table included) equal the single-device gradient of the global mean loss."""
    ref = ranks[0][label]["reference"]["first_grads"]
    seen = set()
    for res in ranks:
        grads = res[label]["first_grads"]
        for name, g in grads.items():
            torch.testing.assert_close(g, ref[name], rtol=0, atol=GRAD_ATOL, msg=name)
        seen |= set(grads)
        assert set(TIED) <= set(grads)  # both stages hold the tied table
    assert seen == set(ref)
    assert float(ref["item_id_emb.weight"].abs().max()) > 100 * GRAD_ATOL


@pytest.mark.multiprocess
@pytest.mark.parametrize("label", list(CASES))
def test_tied_copies_stay_identical(ranks, label):
    a, b = ranks[0][label]["tied_params"], ranks[1][label]["tied_params"]
    assert set(a) == set(b) == set(TIED)
    for name in TIED:
        assert torch.equal(a[name], b[name]), name
    assert a["item_id_emb.weight"].shape == (N_ITEMS + 1, 16)


@pytest.mark.multiprocess
@pytest.mark.parametrize("label", list(CASES))
def test_engine_is_the_configured_pipeline(ranks, label):
    n_layers, partition, m, _ = CASES[label]
    for stage, res in enumerate(ranks):
        rec = res[label]["record"]
        assert (rec["stage_id"], rec["num_stages"], rec["dp"]) == (stage, WORLD_SIZE, 1)
        assert rec["zero_stage"] == 1 and res[label]["basic_optimizer_class"] == "AdamW"
        assert (rec["micro_batches"], rec["micro_batch_size"]) == (m, GLOBAL_BATCH // m)
        parts = rec["parts"]
        assert parts[0] == 0 and parts[-1] == n_layers + 4  # 4 = item table x2, positions, ln_f
        blocks = [sum(1 for i in range(a, b) if 2 <= i < 2 + n_layers)
                  for a, b in zip(parts, parts[1:])]
        assert min(blocks) >= 1
        if partition == "uniform":  # type:PipeBlock: equal block counts
            assert max(blocks) - min(blocks) <= 1


@pytest.mark.multiprocess
def test_resume_restores_weights_and_optimizer_exactly(ranks):
    res = ranks[0]["resume"]
    assert res["saved"].keys() == res["restored"].keys()
    for k in res["saved"]:
        assert torch.equal(res["saved"][k], res["restored"][k]), k
    assert res["losses_first"] == res["losses_second"]
    for k in res["final_first"]:
        assert torch.equal(res["final_first"][k], res["final_second"][k]), k
    for r in ranks:
        assert "written by a run with config fingerprint fp-A, this run is fp-B" in \
            r["resume"]["refused"]
