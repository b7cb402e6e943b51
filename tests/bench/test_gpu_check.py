"""bench/gpu_check.sh (the prepared GPU check of issue 19): on a machine without CUDA it stops
at once with the reason, before measuring anything (its measuring code is
recpar.perfmodel.step_check, tested in tests/perfmodel/test_step_check.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the check would run")
def test_without_cuda_it_stops_with_the_reason(tmp_path):
    r = subprocess.run([str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True,
                       env=dict(os.environ, PYTHON=sys.executable), timeout=120)
    assert r.returncode == 1
    assert "gpu_check: torch sees no CUDA device" in r.stderr
    assert not list((tmp_path / "out").glob("*.json"))
