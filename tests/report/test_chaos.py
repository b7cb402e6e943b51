"""The chaos table (recpar report chaos): faults applied, survival, restarts, slow windows."""

import pytest

from recpar.report.chaos import chaos_report
from recpar.train import record

from .record_factory import make_run, write_runs


def _chaos_run(run_id, faults=None, windows=(), **metrics):
    rec = make_run("dp", dp=2, nodes=2, run_id=run_id, metrics=metrics)
    rec["timing"]["total_train_s"] = 42.0
    rec["slow_windows"] = list(windows)
    if faults is not None:
        rec["faults"] = faults
    record.validate(rec)  # the record schema takes both sections
    return rec


STRAGGLER = {"schedule": [{"at_s": 25.0, "action": "straggler",
                           "args": {"node": 1, "slowdown": 4.0, "duration_s": 10.0}}],
             "injected": [{"action": "straggler",
                           "args": {"node": 1, "slowdown": 4.0, "duration_s": 10.0},
                           "at_s": 25.0, "applied_s": 11.5, "ok": True}]}
KILL = {"schedule": [{"at_s": 30.0, "action": "kill-rank", "args": {"node": 1}}],
        "injected": [{"action": "kill-rank", "args": {"node": 1}, "at_s": 30.0,
                      "applied_s": -2.0, "ok": True}]}
WINDOW = {"from_s": 11.6, "to_s": 21.4, "first_step": 40, "last_step": 61, "slow_steps": 20,
          "slowdown": 3.7}


def test_rows_say_what_was_injected_and_what_it_cost():
    recs = [_chaos_run("dp2-straggler", STRAGGLER, [WINDOW]),
            _chaos_run("dp2-killed", KILL, restarts_count=1, restart_lost_steps_count=4,
                       restart_lost_s=9.25),
            _chaos_run("dp2-clean")]
    text = chaos_report(recs, expected=["dp2-clean", "dp2-killed", "dp2-straggler"])
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| dp2")}
    assert "straggler(duration_s=10, node=1, slowdown=4) +11.5 s" in rows["dp2-straggler"]
    assert "11.6-21.4 s x3.7 (steps 40-61)" in rows["dp2-straggler"]
    killed = [c.strip() for c in rows["dp2-killed"].split("|")]
    assert "kill-rank(node=1) -2.0 s" in killed and "1" in killed and "4" in killed
    assert "9.2" in killed or "9.3" in killed  # restart_lost_s, one decimal
    assert "none" in rows["dp2-clean"]  # no faults, no slow windows
    assert "Lost runs: none" in text


def test_failed_injection_and_lost_runs_are_said():
    bad = {"schedule": KILL["schedule"],
           "injected": [{**KILL["injected"][0], "ok": False, "error": "no rank running"}]}
    text = chaos_report([_chaos_run("dp2-killed", bad)], expected=["dp2-killed", "dp2-gone"])
    assert "FAILED (no rank running)" in text
    assert "Lost runs: dp2-gone (no record)" in text


def test_cli_writes_the_table(tmp_path):
    from recpar.cli import main

    paths = write_runs(tmp_path, [_chaos_run("dp2-straggler", STRAGGLER, [WINDOW])])
    out = tmp_path / "chaos.md"
    assert main(["report", "chaos", "--records", *map(str, paths), "--out", str(out)]) == 0
    assert "straggler(" in out.read_text()


def test_a_record_with_a_bad_faults_section_is_refused():
    rec = _chaos_run("dp2-x", STRAGGLER)
    rec["faults"]["injected"][0]["action"] = "explode"
    with pytest.raises(Exception, match="explode"):
        record.validate(rec)
