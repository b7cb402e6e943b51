"""α–β–γ formulas against hand-computed values."""

import math

import pytest

from recpar.perfmodel import collectives as C

L = C.LinkCost(alpha_s=1e-5, beta_s_per_byte=1e-9, gamma_s_per_byte=1e-10)


def test_ring_all_reduce_hand_case():
    # 2·3·1e-5 + 2·(3/4)·1e6·1e-9 + (3/4)·1e6·1e-10
    assert C.ring_all_reduce(1e6, 4, L) == pytest.approx(6e-5 + 1.5e-3 + 7.5e-5)


def test_single_rank_costs_nothing():
    for fn in C.ALL_REDUCE_ALGORITHMS.values():
        assert fn(1e6, 1, L) == 0.0
    assert C.ring_all_gather(1e6, 1, L) == 0.0
    assert C.compressed_all_gather(100, 1, L, 1e6) == 0.0


def test_reduce_scatter_plus_all_gather_is_ring_all_reduce():
    n, p = 3.3e6, 6
    assert C.ring_reduce_scatter(n, p, L) + C.ring_all_gather(n, p, L) == pytest.approx(
        C.ring_all_reduce(n, p, L))


def test_all_gather_and_reduce_scatter_hand_cases():
    assert C.ring_all_gather(8e6, 8, L) == pytest.approx(7e-5 + 7e-3)
    assert C.ring_reduce_scatter(8e6, 8, L) == pytest.approx(7e-5 + 7e-3 + 7e-4)


def test_tree_recursive_doubling_rabenseifner_hand_cases():
    lk = C.LinkCost(1e-5, 1e-9)
    assert C.tree_all_reduce(1e6, 8, lk) == pytest.approx(2 * 3 * (1e-5 + 1e-3))
    assert C.recursive_doubling_all_reduce(1e6, 8, lk) == pytest.approx(3 * (1e-5 + 1e-3))
    # non power of two: ⌈log2 5⌉ = 3 rounds
    assert C.recursive_doubling_all_reduce(1e6, 5, lk) == pytest.approx(3 * (1e-5 + 1e-3))
    assert C.rabenseifner_all_reduce(1e6, 8, lk) == pytest.approx(6e-5 + 2 * 7 / 8 * 1e-3)


def test_point_to_point():
    assert C.point_to_point(2e6, L) == pytest.approx(1e-5 + 2e-3)


def test_hierarchical_hand_case():
    intra = C.LinkCost(1e-6, 1e-11)
    inter = C.LinkCost(1e-5, 1e-9)
    # RS in node: 3·1e-6 + 3/4·8e6·1e-11; inter AR of 2e6 over 2 nodes: 2·1e-5 + 2e6·1e-9; AG = RS
    rs = 3e-6 + 6e-5
    want = rs + (2e-5 + 2e-3) + rs
    assert C.hierarchical_all_reduce(8e6, 2, 4, intra, inter) == pytest.approx(want)


def test_hierarchical_reduces_to_ring():
    intra = C.LinkCost(1e-6, 1e-11, 1e-12)
    inter = C.LinkCost(1e-5, 1e-9, 1e-12)
    assert C.hierarchical_all_reduce(5e6, 1, 8, intra, inter) == pytest.approx(
        C.ring_all_reduce(5e6, 8, intra))
    assert C.hierarchical_all_reduce(5e6, 4, 1, intra, inter) == pytest.approx(
        C.ring_all_reduce(5e6, 4, inter))


def test_hierarchical_beats_flat_ring_over_slow_inter_link():
    intra, inter = C.LinkCost(1e-6, 1e-11), C.LinkCost(1e-5, 1e-9)
    flat = C.ring_all_reduce(1e8, 16, inter)  # ring bottlenecked by the slow link
    assert C.hierarchical_all_reduce(1e8, 2, 8, intra, inter.shared_by(8)) < flat


def test_compressed_payloads_and_all_gather():
    assert C.sign_payload_bytes(1000) == 125 + 4
    assert C.sign_payload_bytes(1001) == 126 + 4
    assert C.topk_payload_bytes(10) == 10 * (4 + 8)
    assert C.topk_payload_bytes(10, index_bytes=4) == 80
    t = C.compressed_all_gather(129, 4, L, decoded_bytes=4000)
    assert t == pytest.approx(3e-5 + 3 * 129 * 1e-9 + 3 * 4000 * 1e-10)


def test_link_cost_validation_and_sharing():
    with pytest.raises(ValueError, match="alpha_s"):
        C.LinkCost(-1.0, 1e-9)
    with pytest.raises(ValueError, match="beta_s_per_byte"):
        C.LinkCost(0.0, math.nan)
    with pytest.raises(ValueError, match="p must be"):
        C.ring_all_reduce(1.0, 0, L)
    assert C.LinkCost.from_bandwidth(1e-6, 1e9).beta_s_per_byte == pytest.approx(1e-9)
    assert L.shared_by(4).beta_s_per_byte == pytest.approx(4e-9)


# --- gloo over TCP (collectives.gloo_*) -------------------------------------------------------

def test_gloo_segments_follow_gloo_allreduce_cc():
    MiB = 2**20
    assert C.gloo_segments(1e6, 4) == 8  # small: s = ⌈n / 2p⌉, S = 2p
    assert C.gloo_segments(16 * MiB, 8) == 16  # s = 1 MiB exactly: 16 segments
    assert C.gloo_segments(9 * MiB, 3) == 9  # s capped at 1 MiB: 9 segments, a multiple of 3
    assert C.gloo_segments(10 * MiB, 3) == 12  # 10 rounded up to a multiple of p = 3
    assert C.gloo_segments(0, 2) == 4


def test_gloo_ring_all_reduce_hand_cases():
    lk = C.LinkCost(1e-2, 1e-6)  # 10 ms, 1 MB/s
    # S = 2p = 8 (p = 4, 1 MB): 3 rounds per phase, 2 phases, 2α a round; 2·3/4·1e6 bytes
    assert C.gloo_ring_all_reduce(1e6, 4, lk) == pytest.approx(12 * 1e-2 + 1.5)
    # 9 MiB over 3: S = 9, ⌈7/2⌉ = 4 rounds per phase
    n = 9 * 2**20
    assert C.gloo_ring_all_reduce(n, 3, lk) == pytest.approx(16 * 1e-2 + 2 * 2 / 3 * n * 1e-6)
    assert C.gloo_ring_all_reduce(1e6, 1, lk) == 0.0


def test_gloo_latency_term_is_twice_the_textbook_ring_below_2p_mib():
    latency_only = C.LinkCost(1e-3, 0.0)
    for p in (2, 3, 4, 8):
        assert C.gloo_ring_all_reduce(2**20, p, latency_only) == pytest.approx(
            2 * C.ring_all_reduce(2**20, p, latency_only))
    bandwidth_only = C.LinkCost(0.0, 1e-9, 1e-10)
    assert C.gloo_ring_all_reduce(3e7, 8, bandwidth_only) == pytest.approx(
        C.ring_all_reduce(3e7, 8, bandwidth_only))


def test_gloo_reduce_scatter_is_an_all_reduce_and_all_gather_pays_2_alpha_a_step():
    lk = C.LinkCost(1e-2, 1e-6)
    assert C.gloo_reduce_scatter(1e6, 2, lk) == C.gloo_ring_all_reduce(1e6, 2, lk)
    # 3 steps of 2α + (n/p)β
    assert C.gloo_all_gather(4e6, 4, lk) == pytest.approx(3 * (2e-2 + 1.0))


def test_hierarchical_with_gloo_composes_gloo_pieces():
    intra, inter = C.LinkCost(1e-3, 1e-8), C.LinkCost(1e-2, 1e-6)
    gloo = C.LIBRARIES["gloo"]
    want = (C.gloo_ring_all_reduce(8e6, 2, intra) + C.gloo_ring_all_reduce(4e6, 4, inter)
            + C.gloo_all_gather(8e6, 2, intra))
    assert C.hierarchical_all_reduce(8e6, 4, 2, intra, inter, gloo) == pytest.approx(want)
    # the textbook default is unchanged
    assert C.hierarchical_all_reduce(8e6, 4, 2, intra, inter) == pytest.approx(
        C.ring_reduce_scatter(8e6, 2, intra) + C.ring_all_reduce(4e6, 4, inter)
        + C.ring_all_gather(8e6, 2, intra))
    assert C.compressed_all_gather(100, 4, inter, 0.0, gloo) == pytest.approx(
        C.gloo_all_gather(400, 4, inter))
