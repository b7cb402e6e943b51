"""Slow windows of rank 0's step times (recpar.train.step_timeline)."""

import pytest

from recpar.train.step_timeline import MIN_SLOW_STEPS, SLOW_FACTOR, StepTimeline


def _timeline(durations, t0=1000.0):
    tl = StepTimeline(t0_unix_s=t0)
    t = t0
    for i, d in enumerate(durations, start=1):
        tl.add(i, t, t + d)
        t += d + 0.01  # a little gap between steps (data, logging)
    return tl


def test_a_straggler_window_is_found_with_its_slowdown():
    # 20 steps at 0.1 s, then 6 at ~0.4 s with one normal step among them, then 10 normal.
    d = [0.1] * 20 + [0.4, 0.4, 0.1, 0.45, 0.4, 0.35] + [0.1] * 10
    tl = _timeline(d)
    (w,) = tl.slow_windows()
    assert (w["first_step"], w["last_step"], w["slow_steps"]) == (21, 26, 5)
    assert w["slowdown"] == pytest.approx((0.4 + 0.4 + 0.1 + 0.45 + 0.4 + 0.35) / 6 / 0.1)
    assert w["from_s"] == pytest.approx(tl.start_s[20]) and w["to_s"] == pytest.approx(
        tl.end_s[25])
    assert 2.0 < w["from_s"] < w["to_s"]
    m = tl.metrics()
    assert m["step_median_s"] == pytest.approx(0.1) and m["step_max_s"] == pytest.approx(0.45)
    assert m["slow_steps_count"] == 5


def test_steady_steps_and_lone_spikes_make_no_window():
    assert _timeline([0.1, 0.12, 0.09] * 10).slow_windows() == []
    spikes = [0.1] * 10 + [SLOW_FACTOR * 0.1 * 1.5] * (MIN_SLOW_STEPS - 1) + [0.1] * 10
    assert _timeline(spikes).slow_windows() == []


def test_two_windows_apart_stay_apart():
    d = [0.1] * 10 + [0.5] * 3 + [0.1] * 10 + [0.5] * 3 + [0.1] * 5
    assert [(w["first_step"], w["last_step"]) for w in _timeline(d).slow_windows()] == [
        (11, 13), (24, 26)]


def test_no_steps_no_metrics():
    assert StepTimeline().metrics() == {} and StepTimeline().slow_windows() == []
