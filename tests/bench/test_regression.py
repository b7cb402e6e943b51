"""The benchmark regression check (bench/regression.py) can fail, and passes when nothing
changed: pytest-benchmark's compare, per-group thresholds, the machine check, thresholds
from spread.

The pass/fail pair runs a synthetic group whose benchmark sleeps 50 ms (steady even on a busy
machine). One test runs a real group (`dp`) against the committed baseline made 2x faster: that
must fail whatever the load, since load only makes the run slower.
"""

from __future__ import annotations

import copy
import json
import subprocess

import pytest
import yaml

from bench import regression

SLEEP_GROUP = '''
import time

import pytest

pytestmark = pytest.mark.benchmark(group="sleep")


def test_sleep(benchmark):
    benchmark.pedantic(time.sleep, args=(0.05,), rounds=5, iterations=1)
'''


def _halved(run: dict) -> dict:
    """The run's figures made 2x faster (a doctored baseline)."""
    out = copy.deepcopy(run)
    for b in out["benchmarks"]:
        for k in ("min", "max", "mean", "median", "stddev", "iqr", "q1", "q3", "total"):
            if isinstance(b["stats"].get(k), (int, float)):
                b["stats"][k] /= 2
    return out


@pytest.fixture(scope="module")
def sleep_suite(tmp_path_factory):
    """A one-group suite, a saved run of it as its baseline, and a threshold file."""
    d = tmp_path_factory.mktemp("suite")
    (d / "test_bench_sleep.py").write_text(SLEEP_GROUP)
    # The suite's machine_info hook, as bench/ has it.
    (d / "conftest.py").write_text("from bench.conftest import "
                                   "pytest_benchmark_update_machine_info  # noqa: F401\n")
    run = d / "run.json"
    subprocess.run([*regression.PYTEST, str(d / "test_bench_sleep.py"),
                    f"--benchmark-json={run}"], check=True, cwd=regression.ROOT,
                   capture_output=True)
    saved = json.loads(run.read_text())
    assert "node" not in saved["machine_info"]  # no host names in saved runs
    assert saved["machine_info"]["torch_version"]
    (d / "thresholds.yaml").write_text(yaml.safe_dump(
        {"groups": {"sleep": {"median_threshold_pct": 25}}}))
    return d, saved


def test_unchanged_baseline_passes(sleep_suite, tmp_path, capsys):
    d, saved = sleep_suite
    base = tmp_path / "baseline.json"
    base.write_text(json.dumps(saved))
    rc = regression.check(base, d / "thresholds.yaml", bench_dir=d)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "sleep" in out and ": ok" in out


def test_doctored_baseline_fails(sleep_suite, tmp_path, capsys):
    d, saved = sleep_suite
    base = tmp_path / "baseline.json"
    base.write_text(json.dumps(_halved(saved)))
    rc = regression.check(base, d / "thresholds.yaml", bench_dir=d)
    out = capsys.readouterr().out
    assert rc == regression.REGRESSED, out
    assert "regressed" in out and "Performance has regressed" in out


def test_committed_baseline_made_2x_faster_fails(tmp_path, capsys):
    """A real group against the committed baseline with halved figures: `dp` (recpar's DP step
    vs bare DDP, 2 ranks), whose threshold (60 % from its measured spread) a 2x slow-down
    exceeds; groups with a wider spread here (the codecs') would not flag 2x."""
    saved = json.loads(regression.BASELINE.read_text())
    doctored = _halved(saved)
    doctored["machine_info"] = regression.current_machine_info()  # compare, whatever machine
    base = tmp_path / "baseline.json"
    base.write_text(json.dumps(doctored))
    assert regression.load_thresholds()["dp"] < 100  # else 2x is within the noise
    rc = regression.check(base, regression.THRESHOLDS, groups=["dp"])
    out = capsys.readouterr().out
    assert rc == regression.REGRESSED, out


def test_other_machine_is_reported_not_compared(sleep_suite, tmp_path, capsys):
    d, saved = sleep_suite
    other = copy.deepcopy(saved)
    other["machine_info"]["cpu"]["brand_raw"] = "Some Other CPU"
    other["machine_info"]["torch_version"] = "0.0.1"
    base = tmp_path / "baseline.json"
    base.write_text(json.dumps(other))
    rc = regression.check(base, d / "thresholds.yaml", bench_dir=d)
    err = capsys.readouterr().err
    assert rc == regression.MACHINE_DIFFERS
    assert "cpu.brand_raw: 'Some Other CPU' (baseline)" in err
    assert "torch_version: '0.0.1' (baseline)" in err


def test_thresholds_from_spread():
    runs = [{"benchmarks": [{"group": "g", "fullname": "a", "stats": {"median": m}},
                            {"group": "g", "fullname": "b", "stats": {"median": 1.0}},
                            {"group": "h", "fullname": "c", "stats": {"median": 1.0}}]}
            for m in (1.0, 1.08, 1.02, 1.05, 1.01)]
    per_group = regression.spread(runs)
    assert per_group["g"]["a"] == pytest.approx(8.0)
    # 1.5 x 8 % = 12 % -> 15 %; a steady group gets the floor.
    assert regression.thresholds_from_spread(per_group) == {"g": 15, "h": regression.MIN_THRESHOLD_PCT}


def test_bad_threshold_file_names_the_key(tmp_path):
    (tmp_path / "test_bench_g.py").write_text("")
    bad = tmp_path / "thresholds.yaml"
    bad.write_text(yaml.safe_dump({"groups": {"g": {"median_threshold_pct": "fast"}}}))
    with pytest.raises(SystemExit, match=r"thresholds.yaml: groups.g.median_threshold_pct must "
                                         r"be a positive integer, got 'fast'"):
        regression.load_thresholds(bad, tmp_path)
    bad.write_text(yaml.safe_dump({"groups": {"nope": {"median_threshold_pct": 10}}}))
    with pytest.raises(SystemExit, match="group 'nope' has no file"):
        regression.load_thresholds(bad, tmp_path)


def test_every_benchmark_file_is_one_group():
    """check runs one session per file with the file's group threshold: a file's benchmarks
    must all carry its group name, and the thresholds must cover every group."""
    for group in regression.benchmark_groups():
        text = regression.group_file(group).read_text()
        assert f'pytest.mark.benchmark(group="{group}")' in text, group
    if regression.THRESHOLDS.exists():
        assert set(regression.load_thresholds()) == set(regression.benchmark_groups())
