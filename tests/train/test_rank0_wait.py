"""The other ranks wait for rank 0's validation up to train.rank0_phase_timeout_s, however short
the collective timeout: gloo's monitored barrier sends only to a posted receive and waits for
it under its group's timeout, so the loop waits on a group made with the long one.

World size: 2 (gloo, file store); collective timeout 1 s, rank 0 busy 3 s.
"""

from __future__ import annotations

import json

import pytest

from ..comm.mp_launch import skip_unless_ranks, start_ranks
from .mp_workers import wait_for_slow_rank0

WORLD = 2


@pytest.mark.multiprocess
def test_a_validation_longer_than_the_collective_timeout_is_waited_for(tmp_path):
    skip_unless_ranks(WORLD)
    start_ranks(wait_for_slow_rank0, (WORLD, str(tmp_path)), WORLD)
    outcome = json.loads((tmp_path / "wait1.json").read_text())
    assert outcome["own"] == "passed"  # the group the loop makes
    # the default group, as the loop waited before: rank 1's send gave up after 1 s
    assert outcome["default"].startswith("failed"), outcome
