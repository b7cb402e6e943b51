"""`launch` on the local topology: torchrun --standalone, exit codes propagated.
World size 2 (one node, two ranks); runs without root."""

import shutil

import pytest

from recpar.cluster.launch import launch
from recpar.cluster.topology import Topology

pytestmark = pytest.mark.multiprocess


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs /bin/sh for the worker command")
def test_local_launch_exit_codes(tmp_path):
    topo = Topology("local", 1, 2)
    marker = tmp_path / "ran"
    assert launch(topo, ["--no-python", "sh", "-c", f'touch "{marker}.$LOCAL_RANK"']) == 0
    assert (tmp_path / "ran.0").exists() and (tmp_path / "ran.1").exists()
    assert launch(topo, ["--no-python", "sh", "-c", 'exit "$LOCAL_RANK"']) != 0
