"""GroupCollectiveTimer on 2 gloo ranks (WORLD_SIZE = 2): counts only its group's collectives,
sync and async, and restores torch.distributed when it exits."""

from __future__ import annotations


import pytest
import torch

from .mp_launch import skip_unless_ranks, spawn_ranks

WORLD_SIZE = 2


def timer_worker(rank: int, world: int, out_dir: str) -> None:
    import torch.distributed as dist

    from recpar.comm.group_timer import GroupCollectiveTimer

    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank,
                            world_size=world)
    timed, other = dist.new_group([0, 1]), dist.new_group([0, 1])
    original = dist.all_reduce
    x = torch.ones(1000)  # 4,000 bytes
    with GroupCollectiveTimer(timed, torch.device("cpu")) as timer:
        patched = dist.all_reduce is not original
        dist.all_reduce(x, group=timed)                     # counted
        dist.all_reduce(x, group=other)                     # another group: not counted
        dist.all_reduce(torch.ones(10), group=timed, async_op=True).wait()  # counted, 40 B
        out = torch.empty(2 * 1000)
        dist.all_gather_into_tensor(out, torch.ones(1000), group=timed)  # counted, 4,000 B
        stats = timer.snapshot_and_reset(steps=2)
    restored = dist.all_reduce is original
    dist.destroy_process_group()
    torch.save({"stats": stats, "patched": patched, "restored": restored, "x": x[0].item()},
               f"{out_dir}/rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    skip_unless_ranks(WORLD_SIZE)
    return spawn_ranks(timer_worker, WORLD_SIZE, tmp_path_factory.mktemp("gtimer"))


def test_counts_only_the_timed_group_and_restores(ranks):
    for r in ranks:
        assert r["patched"] and r["restored"]
        assert r["x"] == 4.0  # both all-reduces really ran (1 -> 2 -> 4)
        s = r["stats"]
        assert s["calls_per_iter"] == 3 / 2
        assert s["payload_bytes_per_iter"] == (4000 + 40 + 4000) / 2
        assert s["blocked_ms_per_iter"] > 0


def test_cuda_device_counts_but_does_not_time():
    from recpar.comm.group_timer import GroupCollectiveTimer

    t = GroupCollectiveTimer(None, "cuda")
    t.calls, t.payload_bytes, t.seconds = 4, 400, 1.0
    assert t.snapshot_and_reset(2) == {"calls_per_iter": 2.0, "payload_bytes_per_iter": 200.0,
                                       "blocked_ms_per_iter": None}
