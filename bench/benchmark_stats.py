"""Reading a benchmark's result the same way in every suite, enabled or not.

`make test` runs every benchmark once with `--benchmark-disable`: the code runs, but
pytest-benchmark records no statistics. Derived figures (rates, ratios) and timed targets are
therefore taken only when the benchmark was timed; correctness checks run either way.
"""

from __future__ import annotations


def median_s(benchmark) -> float | None:
    """Median seconds of the timed rounds, or None when benchmarks are disabled."""
    if benchmark.disabled or benchmark.stats is None:
        return None
    return benchmark.stats.stats.median


def timed(benchmark) -> bool:
    """True when this run times the benchmark (its timed targets apply)."""
    return not benchmark.disabled
