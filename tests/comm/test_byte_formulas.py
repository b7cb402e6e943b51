"""Byte formulas, checked against numbers worked out by hand."""

import pytest

from recpar.comm import byte_formulas as bf


def test_collective_wire_formulas():
    assert bf.ring_all_reduce_wire_bytes(1000, 4) == pytest.approx(1500)  # 2*3/4*1000
    assert bf.all_gather_wire_bytes(100, 4) == 300  # (4-1)*100
    assert bf.reduce_scatter_wire_bytes(1000, 4) == pytest.approx(750)
    assert bf.ring_all_reduce_wire_bytes(1000, 1) == 0


def test_topk_k_rounds_up_and_is_bounded():
    assert bf.topk_k(1001, 0.07) == 71  # 70.07 -> 71
    assert bf.topk_k(100, 0.07) == 7  # 7.000000000000001 in binary floating point -> still 7
    assert bf.topk_k(10, 1e-6) == 1
    assert bf.topk_k(10, 1.0) == 10
    with pytest.raises(ValueError):
        bf.topk_k(10, 0.0)


def test_expected_payload_bytes_by_hand():
    assert bf.expected_payload_bytes("none", 1000, 4) == 4000
    assert bf.expected_payload_bytes("sign", 1001, 4) == 126 + 4
    assert bf.expected_payload_bytes("topk", 1001, 4, 0.07) == 71 * 8
    assert bf.expected_payload_bytes("fp16", 1001, 4) == 2002
    assert bf.expected_payload_bytes("bf16", 1001, 4) == 2002
    # 1001 padded to 1002 for 2 ranks per node: 1002 + 2 * 501 elements
    assert bf.expected_payload_bytes("none", 1001, 4, algorithm="hierarchical", ranks_per_node=2) == 2004 * 4
    # (32,16) rank 2 -> P 64 + Q 32; (16,) and (8,4) not worth compressing (torch's rule)
    shapes = [(32, 16), (16,), (8, 4)]
    assert bf.expected_payload_bytes("powersgd", 560, 4, grad_shapes=shapes, powersgd_rank=2) == 144 * 4
    with pytest.raises(ValueError, match="unknown compressor"):
        bf.expected_payload_bytes("qsgd", 10, 2)


def test_expected_wire_bytes_hierarchical_by_hand():
    # 1002 padded elems * 4 B = 4008 B; L=2, N=2: RS 2004 + AR 2*(1/2)*2004 + AG 2004
    assert bf.expected_wire_bytes("none", 1001, 4, algorithm="hierarchical", ranks_per_node=2) \
        == pytest.approx(2004 + 2004 + 2004)
    assert bf.expected_wire_bytes("sign", 1001, 4) == pytest.approx(3 * 130)
