"""The Mixture-of-Experts MLP (recpar.model.moe) on one device: routing, its weighting, the
load-balancing loss, capacity dropping, padding, counts and FLOPs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from recpar.constants import PAD_ITEM
from recpar.model.config import ModelConfig
from recpar.model.mlp import MLP
from recpar.model.moe import MoEMLP
from recpar.model.recommender import Recommender


def _cfg(**kw) -> ModelConfig:
    return ModelConfig.named("tiny", dropout=0.0, **{"num_moe_experts": 4, **kw})


def _reference(moe: MoEMLP, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Token by token: softmax over the k largest router logits, the chosen experts' outputs
    weighted by it; padding tokens give 0."""
    d = x.shape[-1]
    out = torch.zeros_like(x).reshape(-1, d)
    for t, (xt, is_pad) in enumerate(zip(x.reshape(-1, d), pad.reshape(-1))):
        if is_pad:
            continue
        top = torch.topk(moe.router(xt), moe.topk)
        for p, e in zip(torch.softmax(top.values, dim=-1), top.indices.tolist()):
            out[t] += p * moe.experts[e](xt[None])[0]
    return out.reshape(x.shape)


@pytest.mark.parametrize("k", [1, 2])
def test_output_is_the_softmax_weighted_sum_of_the_top_k_experts(k):
    torch.manual_seed(0)
    moe = MoEMLP(_cfg(moe_router_topk=k))
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.3)  # distinct experts, decisive routing
    x = torch.randn(3, 5, moe.router.in_features)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, :2] = pad[2, :4] = True  # left padding
    y = moe(x, pad)
    # fp32 defaults of assert_close: the batched expert matmuls round differently from the
    # one-row ones (3.9e-6 at most here, on outputs of order 1)
    torch.testing.assert_close(y, _reference(moe, x, pad))
    assert y[pad].abs().max() == 0


def test_experts_with_the_dense_weights_give_the_dense_output():
    """Top-2 of 2 experts, both copies of one MLP: the routing weights sum to 1, so the mixture
    is that MLP whatever the router says."""
    torch.manual_seed(0)
    cfg = _cfg(num_moe_experts=2, moe_router_topk=2)
    dense, moe = MLP(cfg), MoEMLP(cfg)
    for expert in moe.experts:
        expert.load_state_dict(dense.state_dict())
    x = torch.randn(4, 6, cfg.d_model)
    torch.testing.assert_close(moe(x), dense(x), rtol=1e-5, atol=1e-6)


def test_aux_loss_is_the_switch_formula_over_the_real_tokens_and_reaches_the_router():
    """coeff * E * sum_e f_e P_e (Fedus et al. 2022, Eq. 4) with f_e the share of the k T
    routed slots that expert e got and P_e its mean router probability, over real tokens."""
    torch.manual_seed(0)
    cfg = _cfg(moe_router_topk=2, moe_aux_loss_coeff=0.1)
    moe = MoEMLP(cfg)
    x = torch.randn(2, 7, cfg.d_model)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, :3] = True
    moe.train()
    moe(x, pad).sum().backward()
    with torch.no_grad():
        real = x[~pad]  # [T_real, d]
        probs = torch.softmax(moe.router(real), dim=-1)  # [T_real, E]
        chosen = torch.zeros_like(probs).scatter(1, probs.topk(2).indices, 1.0)
        f = chosen.sum(0) / (2 * len(real))
        expected = 0.1 * cfg.num_moe_experts * (f * probs.mean(0)).sum()
    torch.testing.assert_close(moe.stats.aux_loss_sum, expected)
    assert moe.stats.tokens_per_expert.tolist() == chosen.sum(0).long().tolist()
    assert moe.stats.forwards == 1 and int(moe.stats.dropped) == 0
    # the aux loss alone moves the router: its gradient differs from the run without it
    with_aux = moe.router.weight.grad.clone()
    moe.zero_grad()
    moe.aux_loss_coeff = 0.0
    moe(x, pad).sum().backward()
    assert not torch.allclose(with_aux, moe.router.weight.grad)


def test_capacity_drops_the_least_confident_tokens_over_it_and_counts_them():
    """12 real tokens, k = 2, every one choosing experts 0 and 1 (logits x0 > 0.5 and 0.5), so
    p0 = sigmoid(x0 - 0.5) grows with x0 and p1 = 1 - p0. Capacity = ceil(12 x 2 / 4 x 1.0)
    = 6: expert 0 keeps the 6 tokens of largest x0, expert 1 the 6 of smallest, 12 of the 24
    assignments are dropped, and each token keeps one expert, weighted by its own p."""
    torch.manual_seed(0)
    cfg = _cfg(moe_router_topk=2, moe_expert_capacity_factor=1.0)
    moe = MoEMLP(cfg)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 1.0  # expert 0's logit = x0
        moe.router.weight[1, 1] = 0.5  # expert 1's logit = 0.5 x1 = 0.5
    x = torch.randn(2, 8, cfg.d_model)
    x[..., 0] = torch.linspace(1.0, 3.0, 16).reshape(2, 8)
    x[..., 1] = 1.0
    pad = torch.zeros(2, 8, dtype=torch.bool)
    pad[:, :2] = True  # 12 real tokens; padding neither counts nor takes capacity
    moe.train()
    y = moe(x, pad)
    assert moe.stats.tokens_per_expert.tolist() == [6, 6, 0, 0]
    assert int(moe.stats.dropped) == 12
    real = x[~pad]  # [12, d], in increasing x0
    p0 = torch.sigmoid(real[:, 0] - 0.5)
    with torch.no_grad():
        expected = torch.cat([(1 - p0[:6, None]) * moe.experts[1](real[:6]),
                              p0[6:, None] * moe.experts[0](real[6:])])
    torch.testing.assert_close(y[~pad], expected)
    assert y[pad].abs().max() == 0


def test_stats_count_training_forwards_only_and_reset():
    moe = MoEMLP(_cfg())
    x = torch.randn(2, 3, moe.router.in_features)
    moe.eval()
    with torch.no_grad():
        moe(x)
    assert moe.stats.forwards == 0 and int(moe.stats.tokens_per_expert.sum()) == 0
    moe.train()
    moe(x)
    assert int(moe.stats.tokens_per_expert.sum()) == 2 * 3 * moe.topk
    assert moe.stats.imbalance >= 1.0
    moe.reset_stats()
    assert moe.stats.forwards == 0


def test_recommender_moe_blocks_follow_moe_layer_freq_and_counts_match_the_module():
    cfg = ModelConfig.named("tiny", n_layers=3, num_moe_experts=4, moe_router_topk=2,
                            moe_layer_freq=2)
    model = Recommender(cfg, 40)
    assert [isinstance(b.mlp, MoEMLP) for b in model.blocks] == [True, False, True]
    assert cfg.param_count(40) == sum(p.numel() for p in model.parameters())
    one_expert = sum(p.numel() for p in model.blocks[0].mlp.experts[0].parameters())
    assert cfg.param_count(40) - cfg.active_param_counts(40).total == 2 * (4 - 2) * one_expert
    dense = ModelConfig.named("tiny", n_layers=3)
    assert dense.active_param_counts(40) == dense.param_counts(40)


def test_moe_flops_per_token_count_the_router_and_k_experts_exactly():
    """torch's FlopCounterMode on one training step without padding: matmul FLOPs equal
    6 x (active matmul weights) x tokens, the k chosen experts' and the router's included,
    however the tokens spread over the experts."""
    cfg = ModelConfig.named("tiny", n_layers=2, max_seq_len=12, dropout=0.0,
                            num_moe_experts=4, moe_router_topk=2)
    n_items, b, t = 90, 3, 12
    torch.manual_seed(0)
    model = Recommender(cfg, n_items)
    x = torch.randint(1, n_items + 1, (b, t))  # no padding: every position is routed
    with FlopCounterMode(display=False) as counter:
        model.loss(x, x).backward()
    matmul = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "mm" in str(k))
    d, f, k = cfg.d_model, cfg.d_ff, cfg.moe_router_topk
    non_matmul = cfg.n_layers * (3 * d + d + 4 * d + k * (f + d)) + 2 * d  # biases, norms
    attention = 12 * cfg.n_layers * d * t
    predicted = cfg.flops_per_token(n_items) * b * t
    assert matmul == predicted - (attention + 6 * non_matmul) * b * t


def test_moe_config_validation_names_the_value():
    with pytest.raises(ValueError, match="num_moe_experts=1 must be 0"):
        ModelConfig(num_moe_experts=1)
    with pytest.raises(ValueError, match=r"moe_router_topk=5 must be .*\[1, num_moe_experts=4\]"):
        ModelConfig(num_moe_experts=4, moe_router_topk=5)
    with pytest.raises(ValueError, match="moe_layer_freq=0"):
        ModelConfig(num_moe_experts=4, moe_layer_freq=0)
    with pytest.raises(ValueError, match="moe_expert_capacity_factor=0.0"):
        ModelConfig(num_moe_experts=4, moe_expert_capacity_factor=0.0)
    with pytest.raises(ValueError, match="moe_aux_loss_coeff=-1"):
        ModelConfig(num_moe_experts=4, moe_aux_loss_coeff=-1)


def test_moe_recommender_learns_a_fixed_batch():
    """A few AdamW steps on one batch lower the loss: gradients reach the experts and the
    router through the permutation."""
    torch.manual_seed(0)
    cfg = _cfg(max_seq_len=10)
    model = Recommender(cfg, 30)
    ids = torch.randint(1, 31, (16, 10))
    ids[:, :3] = PAD_ITEM
    targets = torch.randint(1, 31, (16, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = model.loss(ids, targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    for block in model.blocks:
        assert all(e.fc.weight.grad is not None for e in block.mlp.experts)


def test_routing_stays_fp32_under_bf16_autocast_and_the_step_runs():
    """bf16 autocast (train.precision bf16): the experts' matmuls run in bf16, the router's
    logits stay fp32 (megatron-core routes in fp32), and the gradients reach every part."""
    torch.manual_seed(0)
    model = Recommender(_cfg(max_seq_len=8), 20)
    seen = {}

    def dtype_of(name):
        def hook(module, inputs, output) -> None:  # returns None: the output is unchanged
            seen[name] = output.dtype
        return hook

    model.blocks[0].mlp.router.register_forward_hook(dtype_of("router"))
    model.blocks[0].mlp.experts[0].fc.register_forward_hook(dtype_of("expert"))
    ids = torch.randint(1, 21, (4, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(ids, ids)
    loss.backward()
    assert seen == {"router": torch.float32, "expert": torch.bfloat16}
    assert model.blocks[0].mlp.router.weight.grad.abs().sum() > 0


def test_measured_experts_per_token_is_k_dropless_and_fewer_when_capacity_drops():
    """recpar.model.moe.expert_forward_flops around a training step: the expert MLPs' forward
    FLOPs per routed (token, layer) pair are k experts' worth; with a capacity that drops
    assignments, fewer (the dropped ones are routed but not computed)."""
    from recpar.model.moe import (expert_forward_flops, measured_experts_per_token,
                                  routed_assignments)

    for capacity, check in ((None, lambda x: x == pytest.approx(2.0, rel=1e-9)),
                            (0.5, lambda x: 0 < x < 2.0)):
        cfg = ModelConfig.named("tiny", n_layers=2, max_seq_len=12, dropout=0.0,
                                num_moe_experts=4, moe_router_topk=2,
                                moe_expert_capacity_factor=capacity)
        torch.manual_seed(0)
        model = Recommender(cfg, 90)
        x = torch.randint(1, 91, (3, 12))
        x[0, :5] = PAD_ITEM  # padding routes nowhere and computes nothing
        with expert_forward_flops(model) as flops:
            model.loss(x, x).backward()
        routed = routed_assignments(model)
        assert routed == 2 * 2 * int((x != PAD_ITEM).sum())  # k x layers x real tokens
        assert check(measured_experts_per_token(cfg, flops[0], routed)), capacity
    assert not any(m._forward_hooks for m in model.modules())  # the hooks are removed
