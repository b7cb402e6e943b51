"""recpar.report.quality_band: the band a quality delta is judged with."""

import math

import pytest

from recpar.report.paper import Tolerance
from recpar.report.quality_band import CONSTANT, SEED_SPREAD, quality_band, t975

FALLBACK = Tolerance("absolute", 0.01, "test constant")


@pytest.mark.parametrize("df, table", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)])
def test_t975_is_the_two_sided_95_pct_quantile(df, table):
    """Against printed t tables (NIST/SEMATECH e-Handbook, Table 1.3.6.7.2, 4 decimals)."""
    assert t975(df) == pytest.approx(table, abs=5e-5)


def test_one_seed_each_falls_back_to_the_constant():
    b = quality_band([0.25], [0.26], FALLBACK)
    assert b.basis == CONSTANT and b.tolerance is FALLBACK
    assert b.describe() == "±0.01 (absolute); paper.yaml constant, 1 + 1 seeds"


def test_three_seeds_each_give_the_pooled_t_bound():
    base, scheme = [0.250, 0.251, 0.252], [0.260, 0.262, 0.264]
    b = quality_band(base, scheme, FALLBACK)
    sp = math.sqrt((0.001 ** 2 * 2 + 0.002 ** 2 * 2) / 4)  # pooled, df 4
    t_975_df4 = 2.7764451
    assert b.basis == SEED_SPREAD and b.width == pytest.approx(t_975_df4 * sp * math.sqrt(2 / 3))
    assert b.tolerance.kind == "absolute" and "df 4" in b.tolerance.reason
    assert b.describe() == f"±{b.width:.4f}; 95 % pooled t from seed spread, 3 + 3 seeds"


def test_more_seeds_with_the_same_spread_narrow_the_band():
    two = quality_band([0.25, 0.26], [0.25, 0.26], FALLBACK).width
    five = quality_band([0.25, 0.26] * 3, [0.25, 0.26] * 3, FALLBACK).width
    assert five < two


def test_seeds_that_agree_exactly_accept_only_no_change():
    b = quality_band([0.25, 0.25], [0.25], FALLBACK)
    assert b.basis == SEED_SPREAD and b.width == 0.0
    assert b.tolerance.met(0.25, 0.25) and not b.tolerance.met(0.2501, 0.25)
