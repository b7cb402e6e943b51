"""The straggler ablation's configuration, commands and analysis (recpar.perfmodel.
straggler_ablation) on hand-made records; the runs themselves need root and the emulated
cluster (`recpar perfmodel straggler-ablation`)."""

from __future__ import annotations

import json

import pytest

from recpar.cli import main as recpar_main
from recpar.perfmodel import straggler_ablation as S


def test_the_config_is_checked():
    with pytest.raises(ValueError, match="schemes must be among"):
        S.StragglerAblation(schemes=("sync", "hogwild"))
    with pytest.raises(ValueError, match="slowdowns must be >= 1"):
        S.StragglerAblation(slowdowns=(0.5, 2.0))
    with pytest.raises(ValueError, match="cpu_budget must be in"):
        S.StragglerAblation(cpu_budget=1.5)


def test_train_command_places_the_straggler_on_a_gradient_worker(tmp_path):
    cfg = S.StragglerAblation()
    out = S.run_dir(tmp_path, "async-dynamic", 4.0)
    cmd = S.train_command(cfg, "async-dynamic", 4.0, "data", out, "state")
    assert out == tmp_path / "slow4" / "async-dynamic"
    joined = " ".join(cmd)
    assert "--scheme async --dp 3 --nodes 3 --async-work dynamic" in joined
    assert "--cpu-budget 0.5" in joined and "--set early_stopping_metric=hr_at_10" in joined
    schedule = json.loads((tmp_path / "slow4" / "async-dynamic.faults.yaml").read_text())
    assert schedule[0]["action"] == "straggler"
    assert schedule[0]["args"]["node"] == S.STRAGGLER_NODE and schedule[0]["args"]["slowdown"] == 4
    # no straggler: no schedule
    sync = S.train_command(cfg, "sync", 1.0, "data", S.run_dir(tmp_path, "sync", 1.0), "state")
    assert "--fault-schedule" not in sync and "--scheme dp --dp 2 --nodes 2" in " ".join(sync)


def _rec(run_id, curve, s_per_epoch, hr, staleness=None, shares=None):
    m = {}
    for tau, n in (staleness or {}).items():
        m[f"staleness_{tau}_updates_count"] = n
    for r, (n, st) in (shares or {}).items():
        m[f"updates_rank{r}_count"], m[f"mean_staleness_rank{r}"] = n, st
    if staleness:
        m["mean_staleness"] = sum(t * n for t, n in staleness.items()) / sum(staleness.values())
    return {"run_id": run_id, "metrics": m,
            "quality": {"test": {"full": {"hr_at_10": hr, "ndcg_at_10": hr / 2}}},
            "history": [{"epoch": e, "step": 16 * (e + 1), "train_s": s_per_epoch * (e + 1),
                         "valid_hr_at_10": v} for e, v in enumerate(curve)]}


def _write(tmp_path, f, scheme, rec, seed=0):
    p = S.run_dir(tmp_path, scheme, f, seed) / "record.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(rec))
    return str(p)


def test_time_to_quality_against_sync_under_each_slowdown(tmp_path):
    """Sync reaches 0.20 - 0.01 at epoch 2; x4 makes its epochs 4x longer. Async-dynamic needs
    one epoch more but its epochs barely slow down: it wins at x4, not at x1."""
    cfg = S.StragglerAblation(slowdowns=(1.0, 4.0), schemes=("sync", "async-dynamic"))
    sync_curve, async_curve = [0.15, 0.195, 0.20], [0.10, 0.15, 0.195, 0.2]
    runs = {"1": {"sync": _write(tmp_path, 1.0, "sync", _rec("s1", sync_curve, 10, 0.2)),
                  "async-dynamic": _write(tmp_path, 1.0, "async-dynamic", _rec(
                      "a1", async_curve, 10, 0.19, {0: 30, 1: 30}, {1: (30, 0.5), 2: (30, 0.5)}))},
            "4": {"sync": _write(tmp_path, 4.0, "sync", _rec("s4", sync_curve, 40, 0.2)),
                  "async-dynamic": _write(tmp_path, 4.0, "async-dynamic", _rec(
                      "a4", async_curve, 14, 0.185, {0: 40, 3: 20},
                      {1: (12, 2.5), 2: (48, 0.2)}))}}
    res = S.analyse(cfg, runs, 0.01)
    assert res["target"]["valid_hr_at_10"] == pytest.approx(0.19)
    rows = {(r["slowdown"], r["scheme"]): r for r in res["rows"]}
    assert rows[(1.0, "sync")]["time_to_quality_s"] == 20  # epoch 2 x 10 s
    assert rows[(1.0, "async-dynamic")]["time_to_quality_s"] == 30
    assert rows[(1.0, "async-dynamic")]["speedup_vs_sync"] == pytest.approx(20 / 30)
    assert rows[(4.0, "sync")]["time_to_quality_s"] == 80
    assert rows[(4.0, "async-dynamic")]["speedup_vs_sync"] == pytest.approx(80 / 42)
    # the lower target, 90 % of sync's best (0.18): the same epochs here
    assert res["target"]["early_valid_hr_at_10"] == pytest.approx(0.18)
    assert rows[(4.0, "sync")]["time_to_early_target_s"] == 80
    assert rows[(4.0, "async-dynamic")]["early_speedup_vs_sync"] == pytest.approx(80 / 42)
    assert rows[(4.0, "async-dynamic")]["straggler_update_share"] == pytest.approx(0.2)
    assert rows[(4.0, "async-dynamic")]["test_hr_at_10_delta"] == pytest.approx(-0.015)
    paths = S.write_outputs(res, tmp_path / "out")
    md = paths[2].read_text()
    assert "straggler ×4: fastest to quality async-dynamic (42 s, 1.90× sync)" in md
    assert "straggler ×1: fastest to quality sync (20 s)" in md
    assert "×4 async-dynamic: 0: 40, 3: 20" in md


def test_several_seeds_each_against_its_own_sync_then_mean_and_std(tmp_path):
    """Two seeds: each seed's runs are judged against that seed's sync DP (seed 1's sync peaks
    lower, so its target is lower), then averaged per (slowdown, scheme); a scheme that misses
    the target on one seed is counted as such and is not named the fastest."""
    cfg = S.StragglerAblation(slowdowns=(1.0,), schemes=("sync", "async-dynamic"), seeds=(0, 1))
    runs = {}
    for seed, sync_curve, async_curve, async_hr in (
            (0, [0.15, 0.195, 0.20], [0.10, 0.2], 0.19),   # async reaches 0.19 at epoch 2
            (1, [0.15, 0.17, 0.19], [0.10, 0.12], 0.17)):  # target 0.18: async never
        runs[seed] = {"1": {
            "sync": _write(tmp_path, 1.0, "sync", _rec(f"s{seed}", sync_curve, 10, 0.2), seed),
            "async-dynamic": _write(tmp_path, 1.0, "async-dynamic",
                                    _rec(f"a{seed}", async_curve, 5, async_hr), seed)}}
    assert S.run_dir(tmp_path, "sync", 1.0, 1) == tmp_path / "seed1" / "slow1" / "sync"
    res = S.analyse_seeds(cfg, runs, 0.01)
    assert res["targets_by_seed"]["1"]["valid_hr_at_10"] == pytest.approx(0.18)
    assert [r["seed"] for r in res["rows"]] == [0, 0, 1, 1]
    summary = {r["scheme"]: r for r in res["summary"]}
    assert summary["sync"]["reached"] == 2 and summary["async-dynamic"]["reached"] == 1
    assert summary["sync"]["time_to_quality_s_mean"] == pytest.approx(25)  # 20 and 30 s
    assert summary["sync"]["time_to_quality_s_std"] == pytest.approx(7.0711, rel=1e-4)
    assert summary["async-dynamic"]["time_to_quality_s_mean"] == 10  # seed 0 only
    assert summary["async-dynamic"]["test_hr_at_10_delta_mean"] == pytest.approx(-0.02)
    md = S.markdown(res)
    assert "Mean ± std over the 2 seeds" in md and "**Answer (measured, 2 seeds).**" in md
    assert ("straggler ×1: fastest to quality on average sync (25 ± 7 s); not on every seed: "
            "async-dynamic (1/2).") in md
    assert "| ×1 | async-dynamic | 1 | 2 | not reached |" in md
    paths = S.write_outputs(res, tmp_path / "out")
    assert paths[1].read_text().splitlines()[0].startswith("slowdown,scheme,seed,run_id")
    with pytest.raises(ValueError, match="seeds must be distinct"):
        S.StragglerAblation(seeds=(0, 0))


def test_a_run_that_never_reaches_the_target_is_said_so(tmp_path):
    rec = _rec("x", [0.1, 0.12], 5, 0.1)
    assert S.time_to_quality(rec, 0.2) is None
    assert S.time_to_quality(rec, 0.11) == (2, 10)


def test_target_band_comes_from_the_quality_ablation(tmp_path):
    q = tmp_path / "q.json"
    q.write_text(json.dumps({"target": {"band": 0.023}}))
    assert S.target_band(q) == 0.023 and S.target_band(None) == S.TARGET_FLOOR
    q.write_text("{}")
    with pytest.raises(ValueError, match="no target band"):
        S.target_band(q)


@pytest.mark.parametrize("args, message", [
    (["--slowdowns", "1,x"], "--slowdowns"),
    (["--slowdowns", "0.5"], "slowdowns must be >= 1"),
    (["--schemes", "sync,nope"], "schemes must be among"),
    (["--seeds", "0,a"], "--seeds '0,a' is not a comma-separated list"),
])
def test_cli_names_what_is_wrong_before_anything_runs(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        recpar_main(["perfmodel", "straggler-ablation", "--data", str(tmp_path),
                     "--out", str(tmp_path / "out"), *args])
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_without_cpu_budgets_it_stops_before_any_run(tmp_path, monkeypatch):
    """Not root (or no cgroup cpu controller): one line with the reason before any cluster or
    run is started."""
    from recpar.cluster import cpu_budget

    (tmp_path / "stats.json").write_text("{}")
    monkeypatch.setattr(cpu_budget, "unavailable_reason",
                        lambda: "a CPU budget needs root (it writes cgroup files)")
    monkeypatch.setattr(S, "run", lambda *a, **k: pytest.fail("the ablation was started"))
    with pytest.raises(SystemExit) as e:
        recpar_main(["perfmodel", "straggler-ablation", "--data", str(tmp_path),
                     "--out", str(tmp_path / "out")])
    assert "--cpu-budget 0.5: a CPU budget needs root" in str(e.value)
    assert not (tmp_path / "out").exists()
