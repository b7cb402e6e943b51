import math

import pytest
import torch

from recpar.eval.metrics import hit_rate_at_k, hits, ndcg_at_k, ndcg_gains


def test_hand_checked_values():
    ranks = torch.tensor([0, 1, 9, 10, 100])
    # HR@10: ranks 0, 1, 9 are inside the top 10 -> 3 / 5
    assert hit_rate_at_k(ranks, 10) == pytest.approx(0.6)
    # NDCG@10: 1/log2(2) = 1, 1/log2(3) = 0.63093, 1/log2(11) = 0.28906, then 0, 0
    expected = (1.0 + 0.6309297535714575 + 0.28906482631788766) / 5
    assert ndcg_at_k(ranks, 10) == pytest.approx(expected, abs=1e-12)
    assert hits(ranks, 1).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert ndcg_gains(ranks, 2).tolist() == pytest.approx([1.0, 1 / math.log2(3), 0, 0, 0])


def test_bad_input():
    with pytest.raises(ValueError, match="k=0"):
        hits(torch.tensor([0]), 0)
    with pytest.raises(ValueError, match="ranks must be >= 0"):
        hits(torch.tensor([-1]), 10)
    with pytest.raises(ValueError, match="integer"):
        ndcg_gains(torch.tensor([0.5]), 10)
    assert math.isnan(hit_rate_at_k(torch.tensor([], dtype=torch.int64), 10))
