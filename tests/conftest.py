"""Fixtures shared across test packages."""

from pathlib import Path

import numpy as np
import pytest

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
