"""Fixtures for the emulated-cluster tests: root detection and a cluster that always goes down."""

from __future__ import annotations


import pytest

TEST_PREFIX = "rpt"  # not "rp": never disturbs a cluster a user brought up


def _root_reason() -> str | None:
    from recpar.cluster.netns import unavailable_reason

    return unavailable_reason()


ROOT_REASON = _root_reason()
needs_root = pytest.mark.skipif(ROOT_REASON is not None, reason=ROOT_REASON or "")


@pytest.fixture
def cluster(tmp_path):
    """Factory: cluster(nodes, ranks_per_node, shape) -> ClusterState; torn down afterwards,
    and the test fails if anything with the test prefix survives the teardown."""
    from recpar.cluster import emulated, netns

    state_dir = tmp_path / "state"
    emulated.down(TEST_PREFIX, state_dir)  # leftovers of an earlier crashed run

    def make(nodes, ranks_per_node, shape):
        return emulated.up(nodes, ranks_per_node, shape, TEST_PREFIX, state_dir)

    make.state_dir = state_dir
    yield make
    emulated.down(TEST_PREFIX, state_dir)
    assert not [n for n in netns.list_namespaces() if n.startswith(f"{TEST_PREFIX}-")]
    assert not [l for l in netns.list_links(None) if l.startswith(f"{TEST_PREFIX}-")]
