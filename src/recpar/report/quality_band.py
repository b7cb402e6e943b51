"""The band a quality delta (scheme − baseline HR@10 / NDCG@10) is judged with.

Rule (`quality_band`)
---------------------
Where the compared runs have several seeds, the band is the half-width of the 95 % confidence
interval of the difference of the two means under Student's two-sample t-test with pooled
variance (NIST/SEMATECH e-Handbook of Statistical Methods, §7.3.1, "Do two processes have the
same mean?"):

    band = t(0.975, df) · s_p · sqrt(1/n_b + 1/n_s),
    s_p² = Σ (n_i − 1) s_i² / df,   df = Σ (n_i − 1),

over the baseline's (b) and the scheme's (s) seeds, s_i the sample standard deviation (n − 1)
of each side with n_i ≥ 2. |Δ| ≤ band is exactly "the test does not reject equal means at
the 5 % level". Why this rule:

* Δ is a difference of seed means, so the band must shrink with more seeds (1/n terms) and
  widen when the spread itself is estimated from few seeds (t instead of 2): with 3 + 3 seeds
  t(0.975, 4) = 2.78, with 2 + 2 seeds t(0.975, 2) = 4.30. A fixed "2 × std" ignores both.
* Pooling is the null hypothesis itself: if parallelism does not change quality, the scheme's
  seeds and the baseline's are draws from one distribution with one variance. It also works
  when only one side has several seeds (df = n − 1 of that side), where Welch's test cannot.
* When both sides have one seed each (df = 0) no spread is measured: the constant of
  paper.yaml (`table2.quality_vs_baseline`) is used, and the band says so.

A band of 0 (seeds that agree exactly) accepts only Δ = 0: any difference is beyond the noise
that was measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from recpar.report.paper import Tolerance

SEED_SPREAD, CONSTANT = "seed spread", "paper.yaml constant"
"""The two bases a band can have."""

def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with df degrees of freedom (two-sided 95 %)."""
    if df < 1:
        raise ValueError(f"t975: df must be >= 1, got {df}")
    from scipy.stats import t  # pinned in envs/requirements-cpu.txt

    return float(t.ppf(0.975, df))


@dataclass(frozen=True)
class Band:
    """The band one delta was judged with, and where it came from."""

    tolerance: Tolerance
    """What judged it (absolute, around the baseline's mean)."""
    basis: str
    """SEED_SPREAD or CONSTANT."""
    n_baseline: int
    """Baseline seeds with this metric."""
    n_scheme: int
    """Scheme seeds with this metric."""

    @property
    def width(self) -> float:
        return self.tolerance.value

    def describe(self) -> str:
        """E.g. '±0.0023; 95 % pooled t from seed spread, 3 + 3 seeds' or '±0.01 (absolute);
        paper.yaml constant, 1 + 1 seeds'."""
        seeds = f"{self.n_baseline} + {self.n_scheme} seeds"
        if self.basis == SEED_SPREAD:
            return f"±{self.width:.4f}; 95 % pooled t from {SEED_SPREAD}, {seeds}"
        return f"{self.tolerance.describe()}; {CONSTANT}, {seeds}"


def _ss(vals: Sequence[float]) -> float:
    mu = sum(vals) / len(vals)
    return sum((v - mu) ** 2 for v in vals)


def quality_band(baseline: Sequence[float], scheme: Sequence[float],
                 fallback: Tolerance) -> Band:
    """The band for mean(scheme) − mean(baseline) (module docstring); `fallback` when neither
    side has two seeds."""
    nb, ns = len(baseline), len(scheme)
    if nb < 1 or ns < 1:
        raise ValueError("quality_band: each side needs at least one value")
    df = (nb - 1) + (ns - 1)
    if df == 0:
        return Band(fallback, CONSTANT, nb, ns)
    sp = math.sqrt((_ss(baseline) + _ss(scheme)) / df)
    width = t975(df) * sp * math.sqrt(1 / nb + 1 / ns)
    reason = (f"95 % two-sample t bound (pooled variance, df {df}) from the seed-to-seed "
              f"spread of {nb} baseline and {ns} scheme seed(s)")
    return Band(Tolerance("absolute", width, reason), SEED_SPREAD, nb, ns)
