"""Fixtures shared across test packages."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recpar.data.prepared import PreparedDataset

# shared assertion helpers (not test modules): pytest explains their failed asserts too
pytest.register_assert_rewrite("tests.parallel.ds_reference_checks")

TEXT_DIM = 8  # small stand-in width for item-text embeddings (the real encoder is tested in data/)


@pytest.fixture(scope="session")
def small_prepared(tmp_path_factory) -> Path:
    """A prepared synthetic-amazon dataset (~580 users x 190 items) with random text embeddings.

    Big enough for both evaluation protocols (every user has > 100 never-seen items), small
    enough that a tiny model trains an epoch in about a second.
    """
    from recpar.data.prepare import prepare
    from recpar.data.prepared import PreparedDataset

    out = tmp_path_factory.mktemp("data") / "synthetic"
    prepare("synthetic-amazon", out, scale=0.003, seed=0, progress=False, echo=None)
    n_items = PreparedDataset.load(out).n_items
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((n_items + 1, TEXT_DIM)).astype(np.float32)
    emb[0] = 0.0
    np.save(out / "item_text_emb.npy", emb)
    return out


@pytest.fixture(scope="session")
def uninterrupted_dp2_run(small_prepared, tmp_path_factory) -> Path:
    """The elastic-restart tests' reference (tests/train/restart_checks.RUN without a fault,
    on loopback), run once for the session: the loopback and the emulated-cluster restart
    tests compare their recovered runs with the same run."""
    from tests.train.restart_checks import run_uninterrupted

    return run_uninterrupted(small_prepared, tmp_path_factory.mktemp("elastic") / "reference")


def build_prepared(rows, n_users: int, n_items: int, n_train: int,
                   n_valid: int) -> PreparedDataset:
    """rows: (user, item, ts) triples. Global order = sort by (ts, user, item); the first
    n_train rows are train, the next n_valid valid, the rest test (the contract's rule with
    explicit sizes)."""
    df = pd.DataFrame(rows, columns=["user", "item", "ts"]).astype("int64")
    df = df.sort_values(["ts", "user", "item"], kind="stable").reset_index(drop=True)
    df["order"] = np.arange(len(df), dtype=np.int64)
    train = df.iloc[:n_train].reset_index(drop=True)
    valid = df.iloc[n_train:n_train + n_valid].reset_index(drop=True)
    test = df.iloc[n_train + n_valid:].reset_index(drop=True)
    items = pd.DataFrame({"item": np.arange(1, n_items + 1, dtype=np.int64),
                          "raw_id": [f"i{i}" for i in range(1, n_items + 1)],
                          "title": "", "text": ""})
    stats = {"users": n_users, "items": n_items, "interactions": len(df)}
    return PreparedDataset(Path("in-memory"), items, train, valid, test, stats, n_users, n_items)


@pytest.fixture
def make_prepared():
    return build_prepared
