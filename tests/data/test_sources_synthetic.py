"""synthetic-amazon: exact shape, 5-core by construction, determinism (small scales)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from recpar.data.errors import DataError
from recpar.data.filtering import first_occurrences, kcore
from recpar.data.sources import SourceOptions, get_source
from recpar.data.sources.synthetic import (
    AMAZON_5CORE_INTERACTIONS, AMAZON_5CORE_ITEMS, AMAZON_5CORE_USERS, SyntheticShape,
)

SCALE = 0.02  # 3,848 users x 1,260 items, 33,784 interactions


def _src(scale=SCALE, seed=0):
    return get_source("synthetic-amazon")(SourceOptions(scale=scale, seed=seed, progress=False))


@pytest.fixture(scope="module")
def generated():
    src = _src()
    return src, src.interactions()


def test_shape_is_exact_at_the_scale(generated):
    _, raw = generated
    assert len(raw.user_ids) == round(AMAZON_5CORE_USERS * SCALE) == 3848
    assert len(raw.item_ids) == round(AMAZON_5CORE_ITEMS * SCALE) == 1260
    assert len(raw) == round(AMAZON_5CORE_INTERACTIONS * SCALE) == 33784
    assert SyntheticShape.from_scale(1.0) == SyntheticShape(192_403, 63_001, 1_689_188)


def test_five_core_and_distinct_pairs_by_construction(generated):
    _, raw = generated
    u, i = raw.user_codes, raw.item_codes
    assert np.bincount(u).min() >= 5 and np.bincount(i).min() >= 5
    assert len(first_occurrences(u, i, raw.ts)) == len(raw)
    assert kcore(u, i, 5).dropped == 0


def test_popularity_is_heavy_tailed(generated):
    _, raw = generated
    deg = np.sort(np.bincount(raw.item_codes))[::-1]
    top1pct = deg[: len(deg) // 100].sum() / deg.sum()
    assert deg[0] > 10 * np.median(deg)
    assert top1pct > 0.05  # top 1 % of items hold > 5 % of interactions (uniform: ~1.5 %)


def test_timestamps_are_whole_days_in_range(generated):
    _, raw = generated
    assert (raw.ts % 86_400 == 0).all()
    lo = dt.datetime(1999, 1, 1, tzinfo=dt.timezone.utc).timestamp()
    hi = dt.datetime(2014, 7, 31, tzinfo=dt.timezone.utc).timestamp()
    assert lo <= raw.ts.min() and raw.ts.max() <= hi
    years = np.array([dt.datetime.fromtimestamp(t, dt.timezone.utc).year for t in raw.ts[:2000]])
    assert (years >= 2010).mean() > (years < 2010).mean()  # activity grows over time


def test_titles_follow_the_pattern(generated):
    src, raw = generated
    meta = src.item_metadata(raw.item_ids[:50].tolist())
    assert len(meta) == 50
    for title, text in zip(meta.title, meta.text):
        words = title.split()
        assert len(words) >= 4 and words[-1][2] == "-"  # "<brand> <adj> <noun> <AB-123>"
        assert text.startswith(title + ". Brand: ") and "Categories: Electronics > " in text


def test_deterministic_per_seed():
    a, b, c = _src(0.005, 7).interactions(), _src(0.005, 7).interactions(), \
        _src(0.005, 8).interactions()
    for f in ("user_codes", "item_codes", "ts"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.item_codes, c.item_codes)
    assert (_src(0.005, 7).item_metadata(["SI000"]).title.tolist()
            == _src(0.005, 7).item_metadata(["SI000"]).title.tolist())


def test_too_small_scale_is_rejected():
    with pytest.raises(DataError, match=r"scale=1e-05 is too small"):
        _src(1e-5)
    with pytest.raises(DataError, match="scale=0: must be a finite number > 0"):
        _src(0)
