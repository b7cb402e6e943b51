import numpy as np
import pandas as pd
import pytest
import torch

from recpar.model.sequences import (
    TrainBatches,
    TrainSequences,
    build_training_sequences,
    user_sequences,
    windows_from_sequences,
)


def test_windows_hand_case():
    out = windows_from_sequences([np.arange(1, 9)], max_seq_len=3)
    assert out.inputs.tolist() == [[5, 6, 7], [2, 3, 4], [0, 0, 1]]
    assert out.targets.tolist() == [[6, 7, 8], [3, 4, 5], [0, 0, 2]]
    assert out.inputs.dtype == torch.int64 and out.targets.dtype == torch.int64
    out = windows_from_sequences([np.array([4, 5, 6, 7, 8, 9, 10]), np.array([3]),
                                  np.array([2, 1])], max_seq_len=3)
    # 7 items -> two windows exactly; a single item -> none; 2 items -> one padded window
    assert out.inputs.tolist() == [[7, 8, 9], [4, 5, 6], [0, 0, 2]]
    assert out.targets.tolist() == [[8, 9, 10], [5, 6, 7], [0, 0, 1]]
    empty = windows_from_sequences([np.array([5])], max_seq_len=4)
    assert empty.inputs.shape == (0, 4)


def test_every_transition_exactly_once():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 100, size=n) for n in rng.integers(1, 40, size=50)]
    for l in (1, 4, 7, 50):
        out = windows_from_sequences(seqs, max_seq_len=l)
        valid = out.targets != 0
        got = sorted(zip(out.inputs[valid].tolist(), out.targets[valid].tolist()))
        want = sorted((int(a), int(b)) for s in seqs for a, b in zip(s[:-1], s[1:]))
        assert got == want
        # the most recent item of every sequence is a target of some window
        assert out.inputs.shape[1] == l


def test_build_from_split_frame_uses_order_not_row_order():
    train = pd.DataFrame({"user": [1, 0, 1, 0, 1], "item": [9, 3, 8, 4, 7],
                          "ts": [5, 1, 4, 2, 3], "order": [4, 0, 3, 1, 2]})
    assert [s.tolist() for s in user_sequences(train)] == [[3, 4], [7, 8, 9]]
    inputs, targets = build_training_sequences(train, max_seq_len=3)
    assert inputs.tolist() == [[0, 0, 3], [0, 7, 8]]
    assert targets.tolist() == [[0, 0, 4], [0, 8, 9]]
    with pytest.raises(ValueError, match="lacks column"):
        user_sequences(train.drop(columns="order"))


def _data(n):
    x = torch.arange(n)[:, None].repeat(1, 3)
    return TrainSequences(inputs=x, targets=x + 1)


def test_batches_seeded_and_reshuffled():
    data = _data(23)
    a = TrainBatches(data, 5, seed=7)
    first = [xb[:, 0].tolist() for xb, _ in a]
    assert len(first) == len(a) == 5 and sorted(sum(first, [])) == list(range(23))
    assert [xb[:, 0].tolist() for xb, _ in TrainBatches(data, 5, seed=7)] == first
    a.set_epoch(1)
    assert [xb[:, 0].tolist() for xb, _ in a] != first
    assert [xb[:, 0].tolist() for xb, _ in TrainBatches(data, 5, seed=8)] != first


def test_shards_see_the_single_process_global_batches():
    data = _data(40)
    single = TrainBatches(data, 8, seed=3)  # global batch 8
    single.set_epoch(2)
    per_rank = TrainBatches(data, 4, seed=3)  # 2 ranks x 4
    per_rank.set_epoch(2)
    shards = [per_rank.shard(r, 2) for r in range(2)]
    assert all(s.epoch == 2 for s in shards)
    for (g, _), (b0, _), (b1, _) in zip(single, *shards):
        assert sorted(g[:, 0].tolist()) == sorted(b0[:, 0].tolist() + b1[:, 0].tolist())
    with pytest.raises(ValueError, match="rank=2"):
        per_rank.shard(2, 2)
