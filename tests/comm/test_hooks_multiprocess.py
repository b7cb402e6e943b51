"""Hooks on 4 gloo ranks as 2 nodes x 2 (WORLD_SIZE = 4): numerics and bytes.

All distributed work runs once (comm_mp_workers.collectives_worker); the tests below assert
on what each rank recorded.
"""

import pytest
import torch

from .comm_mp_workers import collectives_worker
from .mp_launch import skip_unless_ranks, spawn_ranks
from recpar.comm.byte_formulas import expected_payload_bytes, expected_wire_bytes

WORLD_SIZE = 4
pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    skip_unless_ranks(WORLD_SIZE)
    return spawn_ranks(collectives_worker, WORLD_SIZE, tmp_path_factory.mktemp("comm4"))


SIZES = (1000, 1001, 7)


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("n", SIZES)
def test_hierarchical_equals_ring(ranks, n, overlap):
    """fp32 sums of 4 values in a different order: agree within atol = rtol = 1e-6."""
    for res in ranks:
        ring, hier = res[f"ring/{overlap}/{n}"], res[f"hier/{overlap}/{n}"]
        dense = res[f"dense_mean/{overlap}/{n}"].float()
        torch.testing.assert_close(hier, ring, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ring, dense, rtol=1e-6, atol=1e-6)
        assert torch.equal(hier, ranks[0][f"hier/{overlap}/{n}"])  # identical on every rank


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("n", SIZES)
def test_dense_bytes_equal_formula(ranks, n, overlap):
    for res in ranks:
        ring, hier = res[f"ring_stats/{overlap}/{n}"], res[f"hier_stats/{overlap}/{n}"]
        assert ring["payload_bytes_per_rank_per_iter"] == expected_payload_bytes("none", n, WORLD_SIZE)
        assert ring["wire_bytes_per_rank_per_iter"] == pytest.approx(expected_wire_bytes("none", n, WORLD_SIZE))
        kw = dict(algorithm="hierarchical", ranks_per_node=2)
        assert hier["payload_bytes_per_rank_per_iter"] == expected_payload_bytes("none", n, WORLD_SIZE, **kw)
        assert hier["wire_bytes_per_rank_per_iter"] == pytest.approx(
            expected_wire_bytes("none", n, WORLD_SIZE, **kw))
        assert hier["wire_bytes_inter_node_per_rank_per_iter"] > 0
        assert hier["collectives_per_iter"] == 3 and hier["comm_ms_per_iter"] > 0


def _sign_reference(p_all):
    return torch.stack([p.abs().mean() * torch.where(p >= 0, 1.0, -1.0) for p in p_all]).mean(0)


def _topk_reference(p_all, k):
    out = torch.zeros_like(p_all[0])
    for p in p_all:
        idx = torch.topk(p.abs(), k).indices
        out[idx] += p[idx]
    return out / len(p_all)


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("name", ["sign", "topk", "fp16", "bf16"])
def test_compressor_result_and_bytes(ranks, name, overlap):
    """Decoded mean vs a dense re-computation from every rank's p = g + r (error feedback).

    Tolerances: sign/topk decode the same fp32 values (rtol 1e-5 for the sum order);
    fp16 rounds each g/4 to 11 significant bits (atol 5e-3), bf16 to 8 (atol 3e-2).
    """
    n, ratio = 1001, 0.07
    tol = {"sign": (1e-5, 1e-6), "topk": (1e-5, 1e-6), "fp16": (0, 5e-3), "bf16": (0, 3e-2)}[name]
    for step in range(3):
        p_all = ranks[0][f"{name}/{overlap}/p_all/{step}"]
        if name == "sign":
            expected = _sign_reference(p_all)
        elif name == "topk":
            expected = _topk_reference(p_all, 71)
        else:
            expected = p_all.mean(0)
        for res in ranks:
            out = res[f"{name}/{overlap}/out/{step}"]
            torch.testing.assert_close(out, expected, rtol=tol[0], atol=tol[1])
            assert torch.equal(out, ranks[0][f"{name}/{overlap}/out/{step}"])
            stats = res[f"{name}/{overlap}/stats/{step}"]
            assert stats["payload_bytes_per_rank_per_iter"] == expected_payload_bytes(name, n, WORLD_SIZE, ratio)
            assert stats["wire_bytes_per_rank_per_iter"] == pytest.approx(
                expected_wire_bytes(name, n, WORLD_SIZE, ratio))
            assert stats["dense_bytes_per_rank_per_iter"] == 4 * n


def test_error_feedback_residual_carries_over(ranks):
    """Step >= 1 residuals are non-zero for sign/topk (they feed the next step's p)."""
    for name in ("sign", "topk"):
        p1 = ranks[0][f"{name}/False/p_all/1"]
        assert p1.abs().sum() > 0


def test_powersgd_dense_then_compressed_bytes_and_resume(ranks):
    shapes = [(32, 16), (16,), (8, 4)]
    n = 560
    for res in ranks:
        for step in (0, 1):  # before start_powerSGD_iter: torch's plain all-reduce
            assert res[f"powersgd/stats/{step}"]["payload_bytes_per_rank_per_iter"] == 4 * n
            torch.testing.assert_close(res[f"powersgd/out/{step}"], res[f"powersgd/dense_mean/{step}"],
                                       rtol=1e-6, atol=1e-6)
        for step in (2, 3):
            stats = res[f"powersgd/stats/{step}"]
            assert stats["payload_bytes_per_rank_per_iter"] == expected_payload_bytes(
                "powersgd", n, WORLD_SIZE, grad_shapes=shapes, powersgd_rank=2)
            assert stats["collectives_per_iter"] == 3
        assert torch.equal(res["powersgd/resume_a"], res["powersgd/resume_b"])


@pytest.mark.parametrize("name", ["sign", "topk"])
def test_error_feedback_identity_in_hook(ranks, name):
    """1-rank groups: the hook's output is this rank's g_hat, so r_new + g_hat vs r + g.

    top-k: exact. sign: within 2 eps (|p| + |g_hat|) (two fp32 roundings, see test_codecs).
    """
    eps = torch.finfo(torch.float32).eps
    for res in ranks:
        for step in range(3):
            g, r, g_hat, r_new = res[f"ef/{name}/{step}"]
            if name == "topk":
                assert torch.equal(r_new + g_hat, r + g)
            else:
                p = r + g
                assert bool(((r_new + g_hat - p).abs() <= 2 * eps * (p.abs() + g_hat.abs())).all())
            if step > 0:
                assert r.abs().sum() > 0


def test_checkpoint_round_trip(ranks):
    for res in ranks:
        assert res["ckpt/residual_saved"].abs().sum() > 0
        assert torch.equal(res["ckpt/a"], res["ckpt/b"])
        assert torch.equal(res["ckpt/residual_a"], res["ckpt/residual_b"])
