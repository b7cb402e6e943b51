"""DDP + each hook on 2 gloo ranks (WORLD_SIZE = 2) trains the tiny MLP of comm_mp_workers.

Sync-DP with the ring hook (and hierarchical, 2 nodes x 1) must equal single-process training
on the same global batch: params within atol = rtol = 1e-6 after DDP_STEPS SGD steps (only
the fp32 summation order differs). Compressed hooks must train (eval loss falls) and keep the
ranks in exact agreement.
"""

import pytest
import torch

from .comm_mp_workers import DDP_CASES, ddp_worker, make_model, train_reference
from .mp_launch import skip_unless_ranks, spawn_ranks

WORLD_SIZE = 2
pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    skip_unless_ranks(WORLD_SIZE)
    return spawn_ranks(ddp_worker, WORLD_SIZE, tmp_path_factory.mktemp("ddp2"))


@pytest.fixture(scope="module")
def reference():
    return train_reference()


@pytest.mark.parametrize("label", ["ring", "ring_no_overlap", "hierarchical"])
def test_sync_dp_equals_single_process(ranks, reference, label):
    ref_params, _, _ = reference
    for res in ranks:
        for p, q in zip(res[label]["params"], ref_params):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("label", list(DDP_CASES))
def test_every_hook_trains_and_ranks_agree(ranks, label):
    r0, r1 = ranks[0][label], ranks[1][label]
    assert all(torch.equal(p, q) for p, q in zip(r0["params"], r1["params"]))
    assert r0["after"] < 0.75 * r0["before"], (r0["before"], r0["after"])


def test_accounting_in_ddp(ranks):
    n_params = sum(p.numel() for p in make_model().parameters())
    res = ranks[0]
    for step_stats in res["ring"]["stats"]:
        assert step_stats["payload_bytes_per_rank_per_iter"] == 4 * n_params
        assert step_stats["dense_bytes_per_rank_per_iter"] == 4 * n_params
        assert step_stats["comm_ms_per_iter"] > 0
    assert res["ring"]["stats"][-1]["buckets_per_iter"] > 1  # DDP rebuilt into several buckets
    for step_stats in res["fp16"]["stats"]:
        assert step_stats["payload_bytes_per_rank_per_iter"] == 2 * n_params
    sign_last = res["sign"]["stats"][-1]
    # 1 bit per element + (ceil to a byte + 4-byte scale) per bucket
    assert n_params / 8 < sign_last["payload_bytes_per_rank_per_iter"] < n_params / 8 + 5 * sign_last[
        "buckets_per_iter"]
    psgd = res["powersgd"]["stats"]
    assert psgd[0]["payload_bytes_per_rank_per_iter"] == 4 * n_params  # dense before start iter
    assert psgd[-1]["payload_bytes_per_rank_per_iter"] < 4 * n_params / 10


@pytest.mark.parametrize("label", ["sign", "topk"])
def test_residuals_checkpoint_by_parameter_name(ranks, label):
    names = sorted(n for n, _ in make_model().named_parameters())
    assert ranks[0][label]["residual_keys"] == names
