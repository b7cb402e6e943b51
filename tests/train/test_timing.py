import time

from recpar.train.timing import StepWindow


def _run(window, n_steps, dt=0.002):
    for _ in range(n_steps):
        window.before_step()
        time.sleep(dt)
        window.after_step(samples=4, tokens=10, components={"compute": 1.0})


def test_window_excludes_warmup_and_counts_only_timed_steps():
    w = StepWindow(warmup_steps=3, timed_steps=5)
    _run(w, 20)
    assert w.closed and w.steps_in_window == 5
    m = w.metrics()
    # 5 steps x 4 samples inside the window; throughput = samples / window seconds
    assert m["throughput_samples_per_s"] * w.to_record()["window_s"] == 20
    assert m["compute_ms_per_iter"] == 1.0
    assert m["iter_ms"] >= 2.0  # each step slept 2 ms
    rec = w.to_record()
    assert rec["warmup_steps"] == 3 and rec["timed_steps"] == 5
    assert rec["window_start_utc"] < rec["window_end_utc"]


def test_short_run_closes_early_and_says_so():
    w = StepWindow(warmup_steps=2, timed_steps=50)
    _run(w, 6)
    assert not w.closed
    w.close()
    assert w.steps_in_window == 4
    assert w.to_record()["timed_steps"] == 4
    assert w.to_record()["requested_timed_steps"] == 50


def test_no_window_when_training_shorter_than_warmup():
    w = StepWindow(warmup_steps=10, timed_steps=5)
    _run(w, 3)
    w.close()
    assert w.metrics()["throughput_samples_per_s"] is None
    assert w.to_record()["window_s"] is None


def test_paused_time_between_epochs_is_excluded():
    w = StepWindow(warmup_steps=1, timed_steps=4)
    _run(w, 3, dt=0.002)  # warm-up + 2 timed steps
    w.pause()
    time.sleep(0.3)  # "validation": must not count
    _run(w, 2, dt=0.002)  # resumes on the next step, closes after 4 timed steps
    rec = w.to_record()
    assert w.closed and rec["timed_steps"] == 4 and rec["window_segments"] == 2
    assert 0.008 <= rec["window_s"] < 0.2, rec["window_s"]
