"""CommStats: units in keys, union of overlapping intervals, per-iteration averages, reset."""

import pytest

from recpar.comm.stats import CommStats


def test_snapshot_averages_and_resets():
    s = CommStats()
    s.add_bucket(4000)
    s.add_collective(130, 390.0)
    s.add_collective(100, 150.0, scope="inter_node")
    s.add_compress_time(0.002)
    s.add_comm_interval(10.0, 10.004)
    s.add_comm_interval(10.002, 10.006)  # overlaps the first: union is 6 ms, not 8
    s.add_comm_interval(11.0, 11.001)
    snap = s.snapshot_and_reset(iterations=2)
    assert snap["payload_bytes_per_rank_per_iter"] == 115
    assert snap["wire_bytes_per_rank_per_iter"] == 270
    assert snap["wire_bytes_inter_node_per_rank_per_iter"] == 75
    assert snap["compress_ms_per_iter"] == pytest.approx(1.0)
    assert snap["comm_ms_per_iter"] == pytest.approx(3.5)
    assert snap["collectives_per_iter"] == 1
    assert all(k.endswith(("_per_iter", "_ratio")) for k in snap)
    assert s.snapshot_and_reset()["payload_bytes_per_rank_per_iter"] == 0


def test_bad_scope_and_iterations():
    s = CommStats()
    with pytest.raises(ValueError, match="scope"):
        s.add_collective(1, 1.0, scope="rack")
    with pytest.raises(ValueError, match="iterations"):
        s.snapshot_and_reset(0)
