"""Fixtures for the emulated-cluster tests: root detection and a cluster that always goes down."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

TEST_PREFIX = "rpt"  # not "rp": never disturbs a cluster a user brought up


def _root_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc)"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` does not work here"
    return None


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
