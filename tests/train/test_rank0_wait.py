"""The other ranks wait for rank 0's validation up to train.rank0_phase_timeout_s, however short
the collective timeout: gloo's monitored barrier sends only to a posted receive and waits for
it under its group's timeout, so the loop waits on a group made with the long one.

World size: 2 (gloo, file store); collective timeout 2 s, rank 0 busy 5 s.
"""

from __future__ import annotations

import json

import pytest

from ..comm.mp_launch import skip_unless_ranks
from .mp_workers import wait_for_slow_rank0

WORLD = 2


@pytest.mark.multiprocess
@pytest.mark.parametrize("group", ["own", "default"])
def test_a_validation_longer_than_the_collective_timeout_is_waited_for(tmp_path, monkeypatch,
                                                                       group):
    skip_unless_ranks(WORLD)
    import torch.multiprocessing as mp

    monkeypatch.setenv("RECPAR_TEST_WAIT_GROUP", group)
    mp.spawn(wait_for_slow_rank0, args=(WORLD, str(tmp_path)), nprocs=WORLD, join=True)
    outcome = json.loads((tmp_path / "wait1.json").read_text())
    if group == "own":  # what the loop does
        assert outcome == "passed"
    else:  # the default group, as before: rank 1's send gives up after the 2 s timeout
        assert outcome.startswith("failed"), outcome
