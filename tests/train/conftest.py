"""Fixtures shared by the multi-rank scheme tests of tests/train (test_model_parallel.py
defines its own baseline for its own settings)."""

import pytest

from .test_data_parallel import COMMON, _run


@pytest.fixture(scope="module")
def baseline_run(small_prepared, tmp_path_factory):
    """The single-device run every scheme is compared with (test_data_parallel's settings)."""
    out = tmp_path_factory.mktemp("base") / "run"
    base = _run(["train", "--scheme", "baseline", "--data", str(small_prepared), "--out",
                 str(out), *COMMON])
    assert base.returncode == 0, base.stderr[-3000:]
    return out
