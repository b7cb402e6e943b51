"""The pipeline ablation's cases, commands and outputs on synthetic records (the runs need root
for their CPU budgets: `recpar perfmodel pipeline-ablation`)."""

import json

import pytest

from recpar.parallel.pipeline_theory import bubble_fraction_theory, bubble_ratio_theory
from recpar.perfmodel import pipeline_ablation as A

from .test_cli import run

CFG = A.PipelineAblation(schedules=("gpipe", "1f1b"), microbatches=(2, 4))


def test_cases_cover_the_grid_and_the_uniform_cut_once():
    labels = [c.label for c in CFG.cases()]
    assert labels == ["gpipe-m2-balanced", "gpipe-m4-balanced", "1f1b-m2-balanced",
                      "1f1b-m4-balanced", "1f1b-m4-uniform"]
    # a partition case outside the grid brings its balanced twin along
    extra = A.PipelineAblation(schedules=("gpipe",), microbatches=(2,),
                               partition_case=("1f1b", 8)).cases()
    assert [c.label for c in extra] == ["gpipe-m2-balanced", "1f1b-m8-balanced",
                                        "1f1b-m8-uniform"]


def test_the_config_is_checked():
    with pytest.raises(ValueError, match="unknown schedule 'zb'"):
        A.PipelineAblation(schedules=("zb",))
    with pytest.raises(ValueError, match="micro-batches 1 must be >= pp = 2"):
        A.PipelineAblation(microbatches=(1, 2))
    with pytest.raises(ValueError, match="divide the global batch 100"):
        A.PipelineAblation(global_batch_size=100, microbatches=(8,))
    with pytest.raises(ValueError, match="unknown partition 'random'"):
        A.PipelineCase("1f1b", 4, "random")


def test_train_command_runs_each_stage_on_its_budget(tmp_path):
    cmd = A.train_command(CFG, A.PipelineCase("interleaved-1f1b", 4, "uniform"), "d", tmp_path)
    for flag, want in [("--pp", "2"), ("--microbatches", "4"),
                       ("--pipeline-schedule", "interleaved-1f1b"), ("--partition", "uniform"),
                       ("--cpu-budget", "0.2"), ("--model-override", "n_layers=4"),
                       ("--topology", "local")]:
        assert cmd[cmd.index(flag) + 1] == want
    assert "max_steps=11" in cmd


def _record(case, idle0, idle1, compute0=1000.0, compute1=1200.0, v=1):
    m, p = case.num_microbatches, 2
    sched = max(compute0 + idle0, compute1 + idle1)
    b0, b1 = idle0 / sched, idle1 / sched
    return {"status": "completed",
            "plan": {"pipeline_schedule": case.schedule, "num_microbatches": m,
                     "partition_method": case.partition},
            "metrics": {"iter_ms": sched + 50, "pp_schedule_ms_per_iter": sched,
                        "pp_rank0_compute_ms_per_iter": compute0,
                        "pp_rank0_idle_ms_per_iter": idle0,
                        "pp_rank0_bubble_fraction_measured": b0,
                        "pp_rank1_compute_ms_per_iter": compute1,
                        "pp_rank1_idle_ms_per_iter": idle1,
                        "pp_rank1_bubble_fraction_measured": b1,
                        "pp_bubble_fraction_measured_mean_over_ranks": (b0 + b1) / 2,
                        "pp_bubble_fraction_theory": bubble_fraction_theory(p, m, v),
                        "pp_bubble_ratio_theory": bubble_ratio_theory(p, m, v),
                        "peak_rss_gib": 0.5, "peak_rss_gib_max_over_ranks": 0.6}}


def test_analyse_compares_measured_bubble_with_theory_and_publishes(tmp_path):
    records = {}
    for c in CFG.cases():
        idle = 800.0 / c.num_microbatches
        slow = 1.3 if c.partition == "uniform" else 1.0
        records[c.label] = _record(c, idle * slow, idle * slow + 100,
                                   compute1=1200.0 * slow if c.schedule == "gpipe" else 1100.0)
    res = A.analyse(CFG, records)
    row = res.rows[0]
    assert row["bubble_fraction_theory"] == pytest.approx(1 / 3)  # p = 2, m = 2
    assert row["excess_pct_points"] == pytest.approx(
        100 * (row["bubble_fraction_mean"] - 1 / 3))
    assert row["stage_compute_imbalance"] == pytest.approx(1.2)
    gpipe = res.summary["by_schedule"]["gpipe"]
    assert gpipe["m"] == [2, 4]
    assert gpipe["bubble_fraction_theory"] == pytest.approx([1 / 3, 1 / 5])
    assert res.summary["uniform_over_balanced_iter"] > 1
    assert res.summary["stage_compute_imbalance"]["uniform"] > 1
    paths = A.write_outputs(res, tmp_path)
    md = paths[2].read_text()
    assert "**Question.**" in md and "**Answer (measured).**" in md
    assert "- gpipe: bubble" in md and "(theory 0.33, 0.20)" in md
    assert json.loads(paths[0].read_text())["summary"] == res.summary
    assert len(paths[1].read_text().splitlines()) == 1 + len(CFG.cases())


def test_a_finished_case_is_kept_only_for_itself(tmp_path):
    case = A.PipelineCase("1f1b", 4)
    path = tmp_path / "record.json"
    path.write_text(json.dumps(_record(case, 1.0, 1.0)))
    assert A._kept(path, case)
    assert not A._kept(path, A.PipelineCase("1f1b", 4, "uniform"))
    assert not A._kept(path, A.PipelineCase("gpipe", 4))


def test_cli_names_what_is_wrong(tmp_path):
    base = ["perfmodel", "pipeline-ablation", "--data", str(tmp_path), "--out", str(tmp_path)]
    for extra, want in [(["--partition-case", "1f1b"], "expected SCHEDULE:M"),
                        (["--microbatches", "2,x"], "--microbatches"),
                        (["--schedules", "zb"], "unknown schedule 'zb'"),
                        ([], "no stats.json")]:
        with pytest.raises(SystemExit, match=want):
            run(base + extra)


def test_a_failed_run_is_named_with_its_log(tmp_path):
    import sys

    from recpar.perfmodel.ablation_files import run_logged

    log = tmp_path / "sub" / "case.log"
    run_logged([sys.executable, "-c", "print('ok')"], log, "pipeline ablation: fine")
    assert log.read_text().strip() == "ok"
    with pytest.raises(RuntimeError, match=r"pipeline ablation: bad exited with 3 \(log: .*bad"):
        run_logged([sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path / "bad.log",
                   "pipeline ablation: bad")


def test_without_cpu_budgets_it_stops_before_any_run(tmp_path, monkeypatch):
    """Not root (or no cgroup cpu controller): one line with the reason, and no case started
    (as `recpar perfmodel scale-model`), not a failed first run."""
    from recpar.cluster import cpu_budget

    (tmp_path / "stats.json").write_text("{}")
    monkeypatch.setattr(cpu_budget, "unavailable_reason",
                        lambda: "a CPU budget needs root (it writes cgroup files)")
    monkeypatch.setattr(A, "run", lambda *a, **k: pytest.fail("a case was started"))
    with pytest.raises(SystemExit, match=r"--cpu-budget 0.2: a CPU budget needs root"):
        run(["perfmodel", "pipeline-ablation", "--data", str(tmp_path),
             "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
