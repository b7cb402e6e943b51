"""recpar.comm.collective_trace: the last collective entered, named in a failure's one line.

World size: 1 (a gloo group on an in-memory store, in this process)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from recpar.comm.collective_trace import CollectiveTrace, describe_failure


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_the_last_collective_and_its_group_are_named(one_rank_group):
    original = dist.all_reduce
    trace = CollectiveTrace().install()
    try:
        assert trace.last_call() == "no collective issued from Python yet"
        dist.all_reduce(torch.ones(2))
        assert trace.last_call() == "all_reduce on the default group [0]"
        g = dist.new_group([0])
        dist.broadcast(torch.ones(2), 0, g)  # the group passed by position
        assert trace.last_call() == "broadcast on group [0]"
        line = describe_failure(RuntimeError("[gloo] Timed out waiting 10000ms for recv"),
                                trace, rank=0, world=1, timeout_s=10)
        assert line.startswith("recpar: rank 0 of 1: a peer stopped answering (collective "
                               "timeout 10 s) in broadcast on group [0], the last collective")
        assert describe_failure(RuntimeError("CUDA out of memory"), trace, 0, 1, 10) is None
    finally:
        trace.uninstall()
    assert dist.all_reduce is original  # uninstall restores torch's functions


def test_p2p_ops_stay_usable_by_p2pop(one_rank_group):
    """torch's P2POp accepts only dist.isend / dist.irecv themselves (pipelining passes the
    module attributes): the trace must leave them alone."""
    trace = CollectiveTrace().install()
    try:
        dist.P2POp(dist.isend, torch.zeros(1), 0)
        dist.P2POp(dist.irecv, torch.zeros(1), 0)
        assert dist.all_reduce is not trace._originals["all_reduce"]  # the others are traced
    finally:
        trace.uninstall()
