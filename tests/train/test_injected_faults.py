"""The record's `faults` from the launcher's log (recpar.train.injected_faults)."""

import json

from recpar.train.injected_faults import for_record

SCHEDULE = [{"at_s": 5.0, "action": "straggler",
             "args": {"node": 1, "slowdown": 4.0, "duration_s": 10.0}},
            {"at_s": 30.0, "action": "kill-rank", "args": {"node": 1}}]


def test_applied_times_are_on_the_training_time_line(tmp_path):
    log = [{"at_s": 5.0, "action": "straggler", "args": SCHEDULE[0]["args"], "started_s": 5.01,
            "unix_s": 1005.0, "ok": True},
           {"at_s": 30.0, "action": "kill-rank", "args": {"node": 1}, "started_s": 30.0,
            "unix_s": 1030.0, "ok": False, "error": "no rank with local_rank 0 is running"}]
    (tmp_path / "faults.json").write_text(json.dumps(log))
    out = for_record(SCHEDULE, tmp_path / "faults.json", t0_unix_s=1010.0)
    assert out["schedule"] == SCHEDULE
    assert [(e["action"], e["applied_s"], e["ok"]) for e in out["injected"]] == [
        ("straggler", -5.0, True), ("kill-rank", 20.0, False)]
    assert out["injected"][1]["error"].startswith("no rank")
    assert "error" not in out["injected"][0]


def test_no_log_means_nothing_applied_and_a_bad_log_is_said(tmp_path):
    assert for_record(SCHEDULE, tmp_path / "faults.json", 0.0) == {"schedule": SCHEDULE,
                                                                   "injected": []}
    (tmp_path / "faults.json").write_text("[{")
    out = for_record(SCHEDULE, tmp_path / "faults.json", 0.0)
    assert out["injected"] == [] and "faults.json" in out["log_error"]
