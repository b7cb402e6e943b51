"""Restart bookkeeping (recpar.train.restarts): what a restarted attempt charges, from files a
dead attempt left behind. No ranks; times are passed in."""

from __future__ import annotations

import json

import pytest

from recpar.train.restarts import ASYNC_NOTE, HISTORY_FILE, PROGRESS_FILE, Progress, RestartTracker


def _env(attempt: int, launch: str = "job-1", max_restarts: int = 2) -> dict:
    return {"TORCHELASTIC_RUN_ID": launch, "TORCHELASTIC_MAX_RESTARTS": str(max_restarts),
            "TORCHELASTIC_RESTART_COUNT": str(attempt)}


def _first_attempt_dies(out, *, steps=13, commit_step=10):
    """Attempt 0: ready at t=100, a checkpoint after `commit_step` steps committed at t=150,
    its last step `steps` completed at t=170, then killed."""
    t = RestartTracker.begin(out, 0, 0, _env(0), now=100.0)
    for s in range(1, steps + 1):
        t.step_done(s, now=100.0 + 5 * s if s <= commit_step else 150.0 + 20 * (s - 10) / 3)
        if s == commit_step:
            t.committed(s, now=150.0)
    return t


def test_a_restart_charges_the_redone_steps_and_the_time_since_the_commit(tmp_path):
    _first_attempt_dies(tmp_path)
    assert Progress.read(tmp_path / PROGRESS_FILE) == Progress("job-1", 0, 13, 170.0)
    t = RestartTracker.begin(tmp_path, 0, 10, _env(1), now=185.0)  # resumed from the commit
    m = t.metrics()
    assert m == {"restarts_count": 1, "restart_lost_steps_count": 3, "restart_lost_s": 35.0}
    [note] = t.notes("dp")
    assert "after step 13 and resumed from step 10" in note and "lost 3 step(s) and 35.0 s" in note
    t.step_done(11, now=186.0)  # the new attempt's progress replaces the old line
    assert Progress.read(tmp_path / PROGRESS_FILE) == Progress("job-1", 1, 11, 186.0)


def test_a_second_restart_without_a_new_commit_charges_from_the_previous_start(tmp_path):
    _first_attempt_dies(tmp_path)
    second = RestartTracker.begin(tmp_path, 0, 10, _env(1), now=185.0)
    second.step_done(12, now=190.0)
    # killed again before a new checkpoint: the state of step 10 was reached at 185 this time
    third = RestartTracker.begin(tmp_path, 0, 10, _env(2), now=200.0)
    m = third.metrics()
    assert m["restarts_count"] == 2
    assert m["restart_lost_steps_count"] == 3 + 2
    assert m["restart_lost_s"] == pytest.approx(35.0 + 15.0)


def test_a_restart_from_scratch_charges_from_the_first_start(tmp_path):
    first = RestartTracker.begin(tmp_path, 0, 0, _env(0), now=100.0)
    first.step_done(7, now=120.0)
    t = RestartTracker.begin(tmp_path, 0, 0, _env(1), now=130.0)
    assert t.metrics() == {"restarts_count": 1, "restart_lost_steps_count": 7,
                           "restart_lost_s": 30.0}


def test_an_attempt_that_died_before_training_is_counted_by_torchrun(tmp_path):
    _first_attempt_dies(tmp_path)
    # attempt 1 died in its set-up (nothing recorded); attempt 2 is the agent's second restart
    t = RestartTracker.begin(tmp_path, 0, 10, _env(2), now=200.0)
    m = t.metrics()
    assert m["restarts_count"] == 2 and m["restart_lost_steps_count"] == 3
    assert m["restart_lost_s"] == 50.0  # attempt 1's life is in this restart's lost time
    assert any("1 more restart(s)" in n for n in t.notes("dp"))


def test_a_new_launch_in_the_same_directory_counts_no_restart(tmp_path):
    _first_attempt_dies(tmp_path)
    t = RestartTracker.begin(tmp_path, 0, 10, _env(0, launch="job-2"), now=500.0)
    assert t.metrics() == {"restarts_count": 0, "restart_lost_steps_count": 0,
                           "restart_lost_s": 0.0}
    assert t.notes("dp") == []
    assert json.loads((tmp_path / HISTORY_FILE).read_text())["launch_id"] == "job-2"


@pytest.mark.parametrize("env, rank", [
    ({}, 0),  # not under torchrun (scheme baseline)
    (_env(0, max_restarts=0), 0),  # torchrun without restarts
    (_env(0), 1),  # other ranks keep nothing
])
def test_no_files_where_no_restart_can_happen(tmp_path, env, rank):
    t = RestartTracker.begin(tmp_path, rank, 0, env, now=1.0)
    t.step_done(1)
    t.committed(1)
    assert not t.active and list(tmp_path.iterdir()) == []
    assert t.metrics() == {"restarts_count": 0, "restart_lost_steps_count": 0,
                           "restart_lost_s": 0.0}


def test_damaged_files_count_as_unknown_progress(tmp_path):
    _first_attempt_dies(tmp_path)
    (tmp_path / PROGRESS_FILE).write_bytes(b"\0garbage")
    t = RestartTracker.begin(tmp_path, 0, 10, _env(1), now=185.0)
    assert t.metrics()["restart_lost_steps_count"] == 0  # no step known after the resume point
    (tmp_path / HISTORY_FILE).write_text("{not json")
    t = RestartTracker.begin(tmp_path, 0, 10, _env(2), now=190.0)
    assert t.metrics()["restarts_count"] == 2  # torchrun's count still says so


def test_async_restarts_say_what_differs(tmp_path):
    _first_attempt_dies(tmp_path)
    t = RestartTracker.begin(tmp_path, 0, 10, _env(1), now=185.0)
    assert t.notes("async")[-1] == ASYNC_NOTE
    assert ASYNC_NOTE not in t.notes("dp")
