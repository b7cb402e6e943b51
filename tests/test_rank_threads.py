"""recpar.rank_threads: the one rule for a rank's intra-op threads on a shared host."""

import pytest

from recpar.rank_threads import host_cores, threads_per_rank


@pytest.mark.parametrize("ranks, cores, threads", [(1, 2, 2), (2, 2, 1), (3, 2, 1), (8, 2, 1),
                                                   (2, 16, 8), (3, 16, 5)])
def test_equal_whole_share_at_least_one(ranks, cores, threads):
    assert threads_per_rank(ranks, cores) == threads


def test_defaults_to_this_hosts_cores_and_refuses_bad_rank_counts():
    assert threads_per_rank(1) == host_cores() >= 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="ranks_on_host must be a positive integer"):
            threads_per_rank(bad, 2)
