"""Property-based tests (hypothesis): each codec's byte formula (recpar.comm.byte_formulas)
equals the size of the payload it actually hands to the all-gather, for any bucket size and
ratio, and a one-rank decode gives back the encoder's own decoded value."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recpar.comm import byte_formulas as bf
from recpar.comm.codecs import sign_decode_mean, sign_encode, topk_decode_mean, topk_encode

EXAMPLES = 300
"""Examples per property."""

numel = st.integers(min_value=1, max_value=5000)
ratio = st.floats(min_value=1e-4, max_value=1.0, exclude_min=False)


def _bucket(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g)


@settings(max_examples=EXAMPLES, deadline=None)
@given(numel, st.integers(0, 2**31 - 1))
def test_sign_payload_is_its_formula_and_decodes_to_its_local_value(n, seed):
    p = _bucket(n, seed)
    payload, g_hat = sign_encode(p)
    assert payload.numel() * payload.element_size() == bf.sign_payload_bytes(n)
    torch.testing.assert_close(sign_decode_mean(payload.unsqueeze(0), n), g_hat)


@settings(max_examples=EXAMPLES, deadline=None)
@given(numel, ratio, st.integers(0, 2**31 - 1))
def test_topk_payload_is_its_formula_and_decodes_to_its_local_value(n, r, seed):
    p = _bucket(n, seed)
    payload, g_hat = topk_encode(p, r)
    assert payload.numel() * payload.element_size() == bf.topk_payload_bytes(n, r)
    assert int((g_hat != 0).sum()) <= bf.topk_k(n, r)
    torch.testing.assert_close(topk_decode_mean(payload.unsqueeze(0), n), g_hat)
