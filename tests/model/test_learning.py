"""The tiny model learns a toy sequential pattern (item i is followed by item i + 1)."""

import numpy as np
import torch

from recpar.eval.popularity import popularity_scorer
from recpar.eval.protocols import build_eval_examples, evaluate
from recpar.model.config import ModelConfig
from recpar.model.recommender import Recommender
from recpar.model.sequences import TrainBatches, build_training_sequences

N_ITEMS, N_USERS, LENGTH = 40, 60, 12


def toy_dataset(make_prepared):
    # user u walks the cycle 1 -> 2 -> ... -> 40 -> 1 from a random start, one step per tick;
    # the global order puts steps 0..9 in train, step 10 in valid, step 11 in test.
    rng = np.random.default_rng(0)
    rows = []
    for u in range(N_USERS):
        start = int(rng.integers(0, N_ITEMS))
        rows += [(u, (start + t) % N_ITEMS + 1, t) for t in range(LENGTH)]
    return make_prepared(rows, N_USERS, N_ITEMS, n_train=10 * N_USERS, n_valid=N_USERS)


def test_tiny_model_learns_next_item(make_prepared):
    ds = toy_dataset(make_prepared)
    cfg = ModelConfig.named("tiny", max_seq_len=LENGTH, dropout=0.0)
    torch.manual_seed(0)
    model = Recommender(cfg, N_ITEMS)
    data = build_training_sequences(ds.train, cfg.max_seq_len)
    batches = TrainBatches(data, batch_size=32, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for epoch in range(15):  # 30 steps; HR@10 reaches 1.0 after about 20
        batches.set_epoch(epoch)
        for x, y in batches:
            loss = model.loss(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    test = build_eval_examples(ds, "test", cfg.max_seq_len)
    with torch.no_grad():
        learned = evaluate(model.score_last, test, "full", k=10)
    popular = evaluate(popularity_scorer(ds), test, "full", k=10)
    assert learned["n_examples"] == N_USERS
    assert learned["hr_at_10"] >= 0.95, learned
    assert learned["ndcg_at_10"] >= 0.9, learned
    assert learned["ndcg_at_10"] > popular["ndcg_at_10"] + 0.5, (learned, popular)
