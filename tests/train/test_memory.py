import torch

from recpar.train.memory import model_state_gib


def test_counts_params_grads_and_adamw_state_once():
    lin = torch.nn.Linear(100, 10)  # 1,010 fp32 parameters
    opt = torch.optim.AdamW(lin.parameters())
    before = model_state_gib(lin.parameters(), opt) * 2**30
    assert before == 2 * 1010 * 4  # parameters and (not yet allocated) gradients
    lin(torch.randn(3, 100)).sum().backward()
    opt.step()
    after = model_state_gib(list(lin.parameters()) * 2, opt) * 2**30  # duplicates count once
    step_bytes = sum(s["step"].numel() * s["step"].element_size() for s in opt.state.values())
    # parameters, gradients, exp_avg, exp_avg_sq: 4 copies of 1,010 fp32 values
    assert after == 4 * 1010 * 4 + step_bytes
    assert model_state_gib(lin.parameters(), None) * 2**30 == 2 * 1010 * 4
    lin.bias.requires_grad_(False)  # a frozen parameter has no gradient
    assert model_state_gib(lin.parameters(), None) * 2**30 == 2 * 1000 * 4 + 10 * 4
