"""Sign and top-k wire formats: round trips and the error-feedback identity (one process)."""

import numpy as np
import pytest
import torch

from recpar.comm import codecs
from recpar.comm.byte_formulas import sign_payload_bytes, topk_payload_bytes


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1001])
def test_sign_bits_match_numpy_packbits_and_zero_is_positive(n):
    p = torch.randn(n, generator=torch.Generator().manual_seed(n))
    p[0] = 0.0
    packed = codecs.pack_signs(p)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert np.array_equal(packed.numpy(), np.packbits((p.numpy() >= 0).astype(np.uint8)))
    signs = codecs.unpack_signs(packed, n)
    assert torch.equal(signs, torch.where(p >= 0, 1.0, -1.0))
    assert signs[0] == 1.0  # sign(0) = +1 (Formula 10)


def test_sign_round_trip_and_payload_size():
    p = torch.randn(1001, generator=torch.Generator().manual_seed(0))
    payload, g_hat = codecs.sign_encode(p)
    assert payload.numel() == sign_payload_bytes(1001)
    expected = p.abs().mean() * torch.where(p >= 0, 1.0, -1.0)
    torch.testing.assert_close(g_hat, expected, rtol=1e-6, atol=0)
    # one rank's payload decodes to exactly its own g_hat
    assert torch.equal(codecs.sign_decode_mean(payload.unsqueeze(0), 1001), g_hat)


def test_sign_decode_averages_ranks():
    gen = torch.Generator().manual_seed(1)
    ps = [torch.randn(50, generator=gen) for _ in range(3)]
    enc = [codecs.sign_encode(p) for p in ps]
    mean = codecs.sign_decode_mean(torch.stack([e[0] for e in enc]), 50)
    torch.testing.assert_close(mean, sum(e[1] for e in enc) / 3, rtol=1e-6, atol=1e-7)


def test_topk_round_trip_keeps_exactly_k_largest():
    p = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    payload, g_hat = codecs.topk_encode(p, 0.05)
    assert payload.dtype == torch.int32 and payload.numel() * 4 == topk_payload_bytes(1000, 0.05)
    kept = g_hat != 0
    assert int(kept.sum()) == 50
    assert p[kept].abs().min() >= p[~kept].abs().max()
    assert torch.equal(g_hat[kept], p[kept])
    assert torch.equal(codecs.topk_decode_mean(payload.view(1, -1), 1000), g_hat)


def test_error_feedback_identity():
    """r_new + g_hat == r + g: exact for top-k; for sign within 2 eps (|p| + |g_hat|).

    Top-k is exact because g_hat copies p where it keeps it and is 0 elsewhere, so
    r_new = p - g_hat has no rounding. Sign's g_hat = scale * ±1 is not a value of p, so
    r_new = fl(p - g_hat) and fl(r_new + g_hat) each round once (<= eps/2 relative each).
    """
    gen = torch.Generator().manual_seed(3)
    r = torch.randn(777, generator=gen) * 0.1
    g = torch.randn(777, generator=gen)
    p = g + r
    _, ghat_k = codecs.topk_encode(p, 0.1)
    assert torch.equal((p - ghat_k) + ghat_k, r + g)
    _, ghat_s = codecs.sign_encode(p)
    eps = torch.finfo(torch.float32).eps
    err = ((p - ghat_s) + ghat_s - (r + g)).abs()
    assert bool((err <= 2 * eps * (p.abs() + ghat_s.abs())).all())
