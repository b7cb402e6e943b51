"""pytest-benchmark settings of the suite: what a saved run says about the machine."""

from __future__ import annotations

import pytest

from .regression import add_machine_facts


def pytest_benchmark_update_machine_info(config, machine_info):
    add_machine_facts(machine_info)


@pytest.fixture(scope="session")
def timed_run(request) -> bool:
    """False under --benchmark-disable (`make test` runs every benchmark once, to catch a
    broken one): the long measurements then run their smallest workload, and no timed target
    is judged."""
    opt = request.config.getoption  # pytest-benchmark's own rule (BenchmarkSession.disabled)
    return not (opt("benchmark_disable") and not opt("benchmark_enable"))
