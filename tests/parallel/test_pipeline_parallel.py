"""Pipeline parallelism: stage modules, loss split, bubble formulas (single process), and
pp=2 training on 2 spawned gloo ranks against single-device training.

Tolerances (fp32; pipelining changes only summation order: the cross-entropy is summed per
micro-batch and the gradients accumulate over micro-batches, the tied table's two gradient
halves are added by an all-reduce, the text projection runs on looked-up rows instead of the
whole table):
- per-step loss: rtol 1e-5 (a few ulps of float32 are ~1e-7);
- weights after 5 AdamW steps: atol 1e-4, i.e. 1/30 of one step's largest update lr=3e-3
  (Adam normalises the gradient, so summation-order noise in a tiny gradient component can
  move its weight by a sizeable fraction of lr);
- scores from the trained weights: atol 1e-4.
"""

import pytest
import torch

from recpar.model.config import ModelConfig
from recpar.model.loss import cross_entropy_sum, mask_targets, mean_divisor
from recpar.model.recommender import Recommender
from recpar.parallel.partition import cut
from recpar.parallel.pipeline_parallel import apply_pp
from recpar.parallel.pipeline_theory import bubble_fraction_theory, bubble_ratio_theory
from recpar.parallel.plan import ParallelPlan, PlanError
from recpar.parallel.stage_module import StageModule

from . import pp_workers as w

WORLD_SIZE = 2


def _tiny(n_layers=2, text_dim=16):
    torch.manual_seed(0)
    cfg = ModelConfig.named("tiny", n_layers=n_layers, max_seq_len=w.SEQ_LEN, dropout=0.0,
                            text_dim=text_dim)
    text = torch.randn(w.N_ITEMS + 1, text_dim) if text_dim else None
    return Recommender(cfg, w.N_ITEMS, text).eval()


# --- single process --------------------------------------------------------------------------


def test_bubble_formulas():
    assert bubble_ratio_theory(2, 4) == 0.25  # (p-1)/m
    assert bubble_fraction_theory(2, 4) == 0.2  # (p-1)/(m+p-1)
    assert bubble_ratio_theory(4, 8, virtual_stages=2) == 3 / 16  # (p-1)/(v m)
    assert bubble_fraction_theory(4, 8, virtual_stages=2) == 3 / 19
    assert bubble_ratio_theory(1, 3) == 0.0
    for m in (1, 2, 8, 64):  # the two forms describe the same bubble
        r, f = bubble_ratio_theory(4, m), bubble_fraction_theory(4, m)
        assert f == pytest.approx(r / (1 + r))
    with pytest.raises(ValueError, match="num_microbatches must be a positive integer, got 0"):
        bubble_ratio_theory(2, 0)


@pytest.mark.parametrize("n_layers, pp", [(2, 2), (3, 3), (2, 4)])
def test_stages_compose_to_the_single_device_model(n_layers, pp):
    model = _tiny(n_layers)
    x, y = w.make_batches()[0]
    method = "uniform" if pp <= n_layers else "balanced"
    part = cut([1.0] * (n_layers + 2), pp, method)
    stages = [StageModule(model, a, b).eval() for a, b in part.boundaries]
    with torch.no_grad():
        h = x
        for st in stages:
            h = st(h, input_ids=x)
        ref = model.logits(model(x))
        torch.testing.assert_close(h, ref, rtol=1e-5, atol=1e-5)
        last = x
        for st in stages:
            last = st(last, input_ids=x, last_only=st is stages[-1])
        torch.testing.assert_close(last, model.score_last(x), rtol=1e-5, atol=1e-5)
    # names are the single-device ones; the union is the whole model
    names = set()
    for st in stages:
        names |= set(st.state_dict())
    assert names == set(model.state_dict())
    # the tied table exists on the first and the last stage only
    assert [bool(st.tied_parameters()) for st in stages] == [True] + [False] * (pp - 2) + [True]


def test_stage_copies_weights():
    model = _tiny()
    st = StageModule(model, 0, 2)
    with torch.no_grad():
        model.item_id_emb.weight.add_(1.0)
    assert not torch.equal(st.item_id_emb.weight, model.item_id_emb.weight)


def prepare_targets(x, y):  # what the pipeline runner divides each micro-batch's CE by
    masked, count = mask_targets(x, y)
    return masked, mean_divisor(count)


def microbatch_loss(logits, masked, count):  # the runner's loss_fn (no tensor parallelism)
    return cross_entropy_sum(logits, masked) / count


def test_microbatch_losses_sum_to_the_mean_loss():
    model = _tiny()
    x, y = w.make_batches()[0]
    masked, count = prepare_targets(x, y)
    with torch.no_grad():
        logits = model.logits(model(x))
        parts = [microbatch_loss(lg, t, count)
                 for lg, t in zip(logits.chunk(4), masked.chunk(4))]
        torch.testing.assert_close(torch.stack(parts).sum(), model.loss(x, y),
                                   rtol=1e-6, atol=0)
    # an all-padding batch: count clamps to 1, loss 0 (as Recommender.loss)
    zeros = torch.zeros_like(x)
    m0, c0 = prepare_targets(zeros, zeros)
    assert float(c0) == 1.0 and float(microbatch_loss(logits, m0, c0)) == 0.0


@pytest.mark.parametrize("kwargs, msg", [
    (dict(pp=1), "pipeline parallelism needs pp >= 2"),
    (dict(pp=3, num_microbatches=3, partition_method="balanced"),
     None),  # 4 units, 3 stages: allowed by the units; fails later only for want of ranks
    (dict(pp=5, num_microbatches=5, partition_method="balanced"),
     r"pp = 5 x 1 virtual stage\(s\) = 5 stages but the model has only 4 layer units"),
    (dict(pp=2, pipeline_schedule="interleaved-1f1b", num_microbatches=4),
     r"pp = 4 > 2 blocks; use partition_method='balanced'"),  # 2 ranks x 2 virtual stages
    (dict(pp=3, num_microbatches=3), r"pp = 3 > 2 blocks; use partition_method='balanced'"),
])
def test_apply_pp_rejects_bad_plans_before_communicating(kwargs, msg):
    model = _tiny()
    x, y = w.make_batches()[0]
    plan = ParallelPlan(scheme="mp", **kwargs)
    if msg is None:  # passes the plan checks, then needs torch.distributed
        msg = "torch.distributed is not initialised"
    with pytest.raises(PlanError, match=msg):
        apply_pp(model, plan, 0, (x[:4], y[:4]))


def test_apply_pp_rejects_bad_example_microbatch():
    model = _tiny()
    x, _ = w.make_batches()[0]
    with pytest.raises(PlanError, match=r"two \[mb, L\] tensors"):
        apply_pp(model, ParallelPlan(scheme="mp", pp=2, num_microbatches=2), 0,
                 (x[:4], x[:4, :3]))


# --- two ranks -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip(f"needs torch.distributed with gloo for {WORLD_SIZE} ranks")
    return w.spawn(WORLD_SIZE, tmp_path_factory.mktemp("pp2"))


@pytest.fixture(scope="module")
def reference():
    return w.reference_run()


CASES = list(w.CASES)


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", CASES)
def test_pp2_losses_match_single_device(ranks, reference, case):
    for r in range(WORLD_SIZE):
        got = ranks[r][case]["losses"]
        assert len(got) == w.STEPS
        torch.testing.assert_close(torch.tensor(got), torch.tensor(reference["losses"]),
                                   rtol=1e-5, atol=0)
    assert ranks[0][case]["losses"] == ranks[1][case]["losses"]  # broadcast from last stage


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", CASES)
def test_pp2_weights_and_scores_match_single_device(ranks, reference, case):
    for r in range(WORLD_SIZE):
        state = ranks[r][case]["state"]
        assert set(state) == set(reference["state"])
        for k, v in reference["state"].items():
            torch.testing.assert_close(state[k], v, rtol=0, atol=1e-4, msg=k)
        # the gathered weights load into the single-device model
        m = _tiny()
        m.load_state_dict(state, strict=True)
        scores, ref = ranks[r][case]["scores"], reference["scores"]
        assert scores.shape == ref.shape == (w.GLOBAL_BATCH, w.N_ITEMS + 1)
        assert torch.isinf(scores[:, 0]).all()
        torch.testing.assert_close(scores[:, 1:], ref[:, 1:], rtol=0, atol=1e-4)


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", CASES)
def test_pp2_activation_bytes_and_tied_payload(ranks, case):
    cfg = w.model_config()
    interleaved = "interleaved" in case
    for step in range(w.STEPS):
        b = w.LAST_BATCH if step == w.STEPS - 1 else w.GLOBAL_BATCH
        one_boundary = b * w.SEQ_LEN * cfg.d_model * 4  # all micro-batches' [mb, L, d] fp32
        r0, r1 = ranks[0][case]["results"][step], ranks[1][case]["results"][step]
        if interleaved:  # stages 0,2 on rank 0 and 1,3 on rank 1: boundaries 0>1, 1>2, 2>3
            assert (r0["activation_bytes_sent"], r1["activation_bytes_sent"]) == \
                (2 * one_boundary, one_boundary)
            assert (r0["activation_grad_bytes_sent"], r1["activation_grad_bytes_sent"]) == \
                (one_boundary, 2 * one_boundary)
        else:
            assert (r0["activation_bytes_sent"], r1["activation_bytes_sent"]) == (one_boundary, 0)
            assert (r0["activation_grad_bytes_sent"], r1["activation_grad_bytes_sent"]) == \
                (0, one_boundary)
        tied = 4 * ((w.N_ITEMS + 1) * cfg.d_model + cfg.text_dim * cfg.d_model + cfg.d_model)
        assert r0["tied_grad_payload_bytes"] == r1["tied_grad_payload_bytes"] == tied


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", CASES)
def test_pp2_timing_is_consistent(ranks, case):
    for r in range(WORLD_SIZE):
        for res in ranks[r][case]["results"]:
            assert res["forward_ms"] > 0 and res["backward_ms"] > 0
            assert res["compute_ms"] == pytest.approx(
                res["forward_ms"] + res["backward_ms"] + res["loss_ms"])
            assert res["compute_ms"] <= res["schedule_ms"]
            assert res["idle_ms"] == pytest.approx(res["schedule_ms"] - res["compute_ms"])
            assert 0.0 <= res["bubble_fraction_measured"] < 1.0
            assert res["bubble_ratio_measured"] == pytest.approx(
                res["idle_ms"] / res["compute_ms"])
            assert (res["loss_ms"] > 0) == (r == 1)  # the loss runs on the last stage only


@pytest.mark.multiprocess
def test_pp2_records_layout_and_theory(ranks):
    rec = ranks[0]["1f1b-uniform"]["record"]
    assert rec["partition"]["stage_units"] == [["embedding", "block.0"], ["block.1", "head"]]
    assert rec["profile"] is None and rec["stage_to_rank"] == [0, 1]
    assert rec["bubble_ratio_theory"] == 0.25 and rec["bubble_fraction_theory"] == 0.2
    bal = ranks[0]["1f1b-balanced"]["record"]
    assert bal["partition"]["method"] == "balanced"
    assert len(bal["profile"]["units"]) == 4 and bal["partition"]["imbalance"] >= 1.0
    # both ranks cut alike: the profile is measured on rank 0 and broadcast
    assert bal == ranks[1]["1f1b-balanced"]["record"]
    inter = ranks[1]["interleaved-balanced"]["record"]
    assert inter["stage_to_rank"] == [0, 1, 0, 1]
    assert inter["virtual_pipeline_model_parallel_size"] == 2
    assert inter["bubble_ratio_theory"] == 1 / 8
    assert ranks[1]["interleaved-balanced"]["results"][0]["stage_indices"] == [1, 3]


@pytest.mark.multiprocess
def test_pp2_parameters_are_split_with_the_tied_copy_on_the_last_stage(ranks):
    r0, r1 = (ranks[r]["1f1b-uniform"]["param_names"] for r in range(2))
    assert "0.item_id_emb.weight" in r0 and "0.item_id_emb.weight" in r1  # tied copy
    assert "0.pos_emb.weight" in r0 and "0.pos_emb.weight" not in r1
    assert any(n.startswith("0.blocks.0.") for n in r0)
    assert not any(n.startswith("0.blocks.0.") for n in r1)
    assert "0.ln_f.weight" in r1 and "0.ln_f.weight" not in r0


@pytest.mark.multiprocess
def test_pp2_batch_not_divisible_by_microbatches(ranks):
    for r in range(WORLD_SIZE):
        assert ranks[r]["gpipe-uniform"]["bad_batch_error"] == (
            f"global batch of {w.GLOBAL_BATCH - 2} sequences is not divisible by "
            f"num_microbatches = {w.MICROBATCHES}")
