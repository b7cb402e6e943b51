"""Regression checks of the benchmark suite against a committed baseline.

    python -m bench.regression check      (make bench-check)
    python -m bench.regression baseline   (make bench-baseline: N quiet runs -> thresholds)
    python -m bench.regression spread RUN.json RUN.json ...

The comparison itself is pytest-benchmark's: `--benchmark-compare=<baseline.json>` with
`--benchmark-compare-fail=median:<T>%`. pytest-benchmark applies one threshold to a whole
session, so `check` runs one session per benchmark group (one file per group,
`bench/test_bench_<group>.py`), each with its group's threshold from `bench/thresholds.yaml`.

Thresholds come from measured spread, never from a guess: `baseline` runs the whole suite
`--runs` times (5 or more, on a quiet machine), keeps the last run as the baseline, and sets
each group's threshold to

    T(group) = ceil_to_5(MARGIN × max over the group's benchmarks of (max median / min median − 1))

over the runs: the largest slow-down that run-to-run noise alone produced between any two of
the runs, with a margin for runs noisier than the ones seen, rounded up to 5 %, and never below
MIN_THRESHOLD_PCT. bench/README.md has the method and the numbers.

A baseline taken on another machine (CPU model, core count, Python or torch version) is not
compared: `check` says which of these differ and exits with MACHINE_DIFFERS.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BASELINE = BENCH / "baselines" / "baseline.json"
THRESHOLDS = BENCH / "thresholds.yaml"

MARGIN = 1.5
"""Safety factor on the largest spread seen: 5 runs show only part of the noise's range."""
MIN_THRESHOLD_PCT = 10
"""No group is checked tighter than this, however steady its runs were."""
MACHINE_DIFFERS = 3
"""Exit status of `check` when the baseline comes from another machine (not a regression)."""
REGRESSED = 1
"""Exit status of `check` when a group is slower than its threshold allows."""

IDENTITY_KEYS = ("cpu.brand_raw", "cpu.count", "python_version", "torch_version")
"""What makes two machines comparable; anything else (kernel, clock reading) may differ."""


def _dig(info: dict, dotted: str):
    for part in dotted.split("."):
        info = info.get(part) if isinstance(info, dict) else None
    return info


def add_machine_facts(machine_info: dict) -> None:
    """What bench/conftest.py adds to pytest-benchmark's machine_info: the torch version and
    thread count; the host name is removed (records carry no host names)."""
    import torch

    machine_info.pop("node", None)
    machine_info["torch_version"] = torch.__version__
    machine_info["torch_num_threads"] = torch.get_num_threads()


def current_machine_info() -> dict:
    """pytest-benchmark's machine_info of this machine, as a run here would save it."""
    from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info

    info = pytest_benchmark_generate_machine_info()
    add_machine_facts(info)
    return info


def machine_differences(baseline: dict, current: dict) -> list[str]:
    """`key: baseline value -> this machine's value` for every identity key that differs."""
    return [f"{k}: {_dig(baseline, k)!r} (baseline) vs {_dig(current, k)!r} (here)"
            for k in IDENTITY_KEYS if _dig(baseline, k) != _dig(current, k)]


def group_file(group: str, bench_dir: Path = BENCH) -> Path:
    return bench_dir / f"test_bench_{group}.py"


def benchmark_groups(bench_dir: Path = BENCH) -> list[str]:
    """Every group of the suite: bench/test_bench_<group>.py."""
    return sorted(p.stem.removeprefix("test_bench_") for p in bench_dir.glob("test_bench_*.py"))


def load_thresholds(path: Path = THRESHOLDS, bench_dir: Path = BENCH) -> dict[str, int]:
    """group -> median slow-down threshold in %, from thresholds.yaml; errors name the file,
    the group and the value."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SystemExit(f"{path}: cannot read thresholds ({e})") from None
    groups = (data or {}).get("groups")
    if not isinstance(groups, dict) or not groups:
        raise SystemExit(f"{path}: no 'groups' mapping")
    out = {}
    for group, entry in groups.items():
        pct = entry.get("median_threshold_pct") if isinstance(entry, dict) else None
        if not isinstance(pct, int) or pct <= 0:
            raise SystemExit(f"{path}: groups.{group}.median_threshold_pct must be a positive "
                             f"integer, got {pct!r}")
        if not group_file(group, bench_dir).exists():
            raise SystemExit(f"{path}: group {group!r} has no file "
                             f"{group_file(group, bench_dir)}")
        out[group] = pct
    return out


@dataclass
class GroupResult:
    group: str
    status: str
    """ok | regressed | failed (a benchmark broke) | not run (every benchmark skipped)"""
    output: str


PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-enable",
          "--benchmark-only"]
"""A timed session: pyproject's addopts disable benchmarks (make test runs each once)."""


def check_group(group: str, threshold_pct: int, baseline: Path, pytest_args=(),
                bench_dir: Path = BENCH) -> GroupResult:
    """One pytest session of the group, compared with the baseline at its threshold."""
    cmd = [*PYTEST, str(group_file(group, bench_dir)), f"--benchmark-compare={baseline}",
           f"--benchmark-compare-fail=median:{threshold_pct}%",
           "--benchmark-columns=median,iqr,rounds", "-W", "ignore::pytest_benchmark.logger."
           "PytestBenchmarkWarning", *pytest_args]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    out = p.stdout + p.stderr
    if "Performance has regressed" in out:
        status = "regressed"
    elif p.returncode == 5 or (p.returncode == 0 and " passed" not in out):
        status = "not run"  # pytest 5: nothing collected/selected; all skipped: no " passed"
    elif p.returncode == 0:
        status = "ok"
    else:
        status = "failed"
    return GroupResult(group, status, out)


def _without_regression_traceback(output: str) -> str:
    """pytest-benchmark ends a regressed session by raising PerformanceRegression from its
    terminal summary; the traceback says nothing the table and the listed failures do not."""
    lines, skipping = [], False
    for line in output.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            skipping = True
        elif skipping and line.startswith("pytest_benchmark.session.PerformanceRegression"):
            skipping = False
            continue
        if not skipping:
            lines.append(line)
    return "\n".join(lines)


def check(baseline: Path = BASELINE, thresholds: Path = THRESHOLDS,
          groups: list[str] | None = None, pytest_args=(), bench_dir: Path = BENCH) -> int:
    """Compare every group (or `groups`) with the baseline; the process exit status."""
    try:
        saved = json.loads(baseline.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"{baseline}: cannot read the baseline ({e})", file=sys.stderr)
        return 2
    diffs = machine_differences(saved.get("machine_info", {}), current_machine_info())
    if diffs:
        print(f"{baseline}: the baseline was taken on another machine, so no comparison is "
              "made (a difference here would not be a regression):\n  " + "\n  ".join(diffs)
              + "\nTake a baseline on this machine: make bench-baseline", file=sys.stderr)
        return MACHINE_DIFFERS
    limits = load_thresholds(thresholds, bench_dir)
    unknown = sorted(set(groups or ()) - set(limits))
    if unknown:
        print(f"{thresholds}: no threshold for group(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    results = []
    for group in groups or sorted(limits):
        t0 = time.monotonic()
        r = check_group(group, limits[group], baseline, pytest_args, bench_dir)
        print(f"[bench-check] {group:<12} threshold median +{limits[group]}%: {r.status} "
              f"({time.monotonic() - t0:.0f} s)", flush=True)
        if r.status in ("regressed", "failed"):
            print(_without_regression_traceback(r.output), flush=True)
        results.append(r)
    bad = [r.group for r in results if r.status in ("regressed", "failed")]
    print(f"[bench-check] {len(results) - len(bad)} of {len(results)} groups without "
          f"regression" + (f"; regressed or failed: {', '.join(bad)}" if bad else ""))
    return REGRESSED if bad else 0


def spread(runs: list[dict]) -> dict[str, dict]:
    """group -> {benchmark fullname -> (max median / min median − 1) in %} over the runs."""
    medians: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        for b in run["benchmarks"]:
            medians.setdefault((b["group"] or "", b["fullname"]), []).append(b["stats"]["median"])
    out: dict[str, dict] = {}
    for (group, name), ms in sorted(medians.items()):
        if len(ms) == len(runs):  # a benchmark skipped in some run has no spread to speak of
            out.setdefault(group, {})[name] = (max(ms) / min(ms) - 1) * 100
    return out


def thresholds_from_spread(per_group: dict[str, dict]) -> dict[str, int]:
    """T(group) of the module docstring, in whole %."""
    return {g: max(MIN_THRESHOLD_PCT, 5 * math.ceil(MARGIN * max(s.values()) / 5))
            for g, s in per_group.items()}


def write_thresholds(path: Path, per_group: dict[str, dict], n_runs: int, baseline: dict) -> None:
    limits = thresholds_from_spread(per_group)
    doc = {"method": f"bench/regression.py: {n_runs} runs of the suite; threshold = "
                     f"ceil to 5 % of {MARGIN} x the group's largest (max/min - 1) of a "
                     f"benchmark's median over the runs, at least {MIN_THRESHOLD_PCT} %",
           "machine": {k: _dig(baseline["machine_info"], k) for k in IDENTITY_KEYS},
           "taken_utc": baseline.get("datetime"),
           "groups": {g: {"median_threshold_pct": limits[g],
                          "largest_spread_pct": round(max(s.values()), 1),
                          "spread_pct": {n.split("::", 1)[-1]: round(v, 1)
                                         for n, v in s.items()}}
                      for g, s in per_group.items()}}
    path.write_text("# Written by `make bench-baseline` (bench/regression.py); see "
                    "bench/README.md.\n" + yaml.safe_dump(doc, sort_keys=False, width=100))


def without_round_data(run: dict) -> dict:
    """The run as `--benchmark-save` stores it without --benchmark-save-data: statistics
    only, not every round's time (the compare reads the statistics)."""
    for b in run["benchmarks"]:
        b["stats"].pop("data", None)
    return run


def run_suite(json_out: Path, pytest_args=(), paths: list[Path] | None = None) -> None:
    cmd = [*PYTEST, *map(str, paths or [BENCH]), f"--benchmark-json={json_out}", *pytest_args]
    subprocess.run(cmd, cwd=ROOT, check=True)


def rebaseline_groups(groups: list[str], n_runs: int, work: Path, pytest_args=()) -> None:
    """Take `groups` again (n_runs runs of their files alone) after a change meant to change
    their figures, or a regrouping: their entries in baseline.json are replaced by the last
    run's, their thresholds by the new runs' spread; every other group keeps its baseline.
    Refused on another machine than the baseline's."""
    if n_runs < 5:
        raise SystemExit(f"--runs {n_runs}: thresholds need at least 5 runs")
    unknown = [g for g in groups if not group_file(g).exists()]
    if unknown:
        raise SystemExit(f"--group: no file {', '.join(str(group_file(g)) for g in unknown)}")
    saved = json.loads(BASELINE.read_text())
    diffs = machine_differences(saved["machine_info"], current_machine_info())
    if diffs:
        raise SystemExit(f"{BASELINE}: taken on another machine ({'; '.join(diffs)}); take a "
                         "whole new baseline here instead")
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for i in range(n_runs):
        print(f"[bench-baseline] groups {', '.join(groups)}: run {i + 1} of {n_runs}",
              flush=True)
        out = work / f"groups-run{i + 1}.json"
        run_suite(out, pytest_args, [group_file(g) for g in groups])
        runs.append(json.loads(out.read_text()))
    saved["benchmarks"] = [b for b in saved["benchmarks"] if b["group"] not in groups] + [
        b for b in runs[-1]["benchmarks"] if b["group"] in groups]
    BASELINE.write_text(json.dumps(without_round_data(saved), indent=2) + "\n")
    doc = yaml.safe_load(THRESHOLDS.read_text())
    new = {g: s for g, s in spread(runs).items() if g in groups}
    limits = thresholds_from_spread(new)
    doc["groups"] = {g: v for g, v in doc["groups"].items() if g not in groups}
    for g, sp in new.items():
        doc["groups"][g] = {"median_threshold_pct": limits[g],
                            "largest_spread_pct": round(max(sp.values()), 1),
                            "spread_pct": {n.split("::", 1)[-1]: round(v, 1)
                                           for n, v in sp.items()},
                            "taken_utc": runs[-1].get("datetime")}
    doc["groups"] = dict(sorted(doc["groups"].items()))
    THRESHOLDS.write_text("# Written by `make bench-baseline` (bench/regression.py); see "
                          "bench/README.md.\n" + yaml.safe_dump(doc, sort_keys=False, width=100))
    print(f"[bench-baseline] groups {', '.join(groups)} re-taken from {n_runs} runs of their "
          "files; the other groups keep their baseline")


def baseline_runs(n_runs: int, work: Path, pytest_args=(), saved: list[Path] | None = None,
                  ) -> None:
    """Run the suite n_runs times (or take the saved runs `saved`, e.g. to leave out a run
    that something else disturbed); the last run becomes bench/baselines/baseline.json and the
    spread of all of them bench/thresholds.yaml."""
    n = len(saved) if saved else n_runs
    if n < 5:
        raise SystemExit(f"{n} run(s): thresholds need at least 5 runs of the suite")
    runs = []
    if saved:
        runs = [json.loads(p.read_text()) for p in saved]
        if any(machine_differences(runs[0]["machine_info"], r["machine_info"]) for r in runs):
            raise SystemExit("--from-runs: the runs come from different machines")
    else:
        work.mkdir(parents=True, exist_ok=True)
    for i in range(0 if saved else n_runs):
        print(f"[bench-baseline] run {i + 1} of {n_runs}", flush=True)
        out = work / f"run{i + 1}.json"
        run_suite(out, pytest_args)
        runs.append(json.loads(out.read_text()))
    BASELINE.parent.mkdir(parents=True, exist_ok=True)
    BASELINE.write_text(json.dumps(without_round_data(runs[-1]), indent=2) + "\n")
    write_thresholds(THRESHOLDS, spread(runs), len(runs), runs[-1])
    print(f"[bench-baseline] wrote {BASELINE.relative_to(ROOT)} and "
          f"{THRESHOLDS.relative_to(ROOT)} from {len(runs)} runs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.regression", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="compare each group with the committed baseline")
    c.add_argument("--baseline", type=Path, default=BASELINE)
    c.add_argument("--thresholds", type=Path, default=THRESHOLDS)
    c.add_argument("--group", action="append", help="only this group (repeatable)")
    b = sub.add_parser("baseline", help="N runs -> baseline.json + thresholds.yaml")
    b.add_argument("--runs", type=int, default=5)
    b.add_argument("--work", type=Path, default=ROOT / "results" / "bench" / "baseline-runs")
    b.add_argument("--group", action="append",
                   help="take only this group again (repeatable): its baseline entries and "
                        "threshold are replaced, every other group's kept")
    b.add_argument("--from-runs", nargs="+", type=Path, metavar="RUN.json",
                   help="take these saved runs (pytest --benchmark-json files, in order) instead "
                        "of running the suite")
    s = sub.add_parser("spread", help="per-benchmark spread of saved runs (JSON files)")
    s.add_argument("runs", nargs="+", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "check":
        return check(a.baseline, a.thresholds, a.group)
    if a.cmd == "baseline":
        if a.group:
            rebaseline_groups(a.group, a.runs, a.work)
        else:
            baseline_runs(a.runs, a.work, saved=a.from_runs)
        return 0
    per_group = spread([json.loads(p.read_text()) for p in a.runs])
    limits = thresholds_from_spread(per_group)
    for g, s in per_group.items():
        print(f"{g}: largest spread {max(s.values()):.1f} % -> threshold {limits[g]} %")
        for name, v in s.items():
            print(f"    {v:6.1f} %  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
