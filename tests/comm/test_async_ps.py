"""Asynchronous parameter server (rank 0) with 2 workers on 3 gloo ranks (WORLD_SIZE = 3).

All distributed work runs once (async_ps_workers.async_ps_worker: scheduled damped and
undamped rounds, a timing-based slow worker, multi-round training, and last silent workers
that must make the server time out instead of hanging). The tests assert on what each rank
recorded.
"""

import pytest
import torch

from .async_ps_workers import (DYN_EXPECTED, DYN_PIECES, DYN_SLOW_PIECES, EXPECTED_STALENESS,
                               LR, PUSHES, SLOW_PUSHES, TIMEOUT_S, TRAIN_PUSHES, TRAIN_ROUNDS,
                               WORLD_SIZE, async_ps_worker, batch, make_model)
from .mp_launch import skip_unless_ranks, spawn_ranks
from recpar.comm.async_ps import CONTROL_LEN, AsyncPSConfig, AsyncPSError, AsyncPSStats

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    skip_unless_ranks(WORLD_SIZE)
    return spawn_ranks(async_ps_worker, WORLD_SIZE, tmp_path_factory.mktemp("async_ps"))


def _replay(log, damping: bool) -> torch.Tensor:
    """Formula 12 by hand in float64: theta_{v+1} = theta_v - LR * g(theta_read) / (1 + tau),
    each worker's k-th gradient computed at the parameters of the version it read."""
    model = make_model()
    versions = [torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()]
    k_of = {w: 0 for w in PUSHES}
    for u in log:
        torch.nn.utils.vector_to_parameters(versions[u.version_read], model.parameters())
        model.zero_grad()
        x, y = batch(u.worker, k_of[u.worker])
        k_of[u.worker] += 1
        torch.nn.functional.mse_loss(model(x), y).backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        scale = 1 + u.staleness if damping else 1
        versions.append(versions[-1] - LR * g / scale)
    return versions[-1]


@pytest.mark.parametrize("phase", ["damped", "undamped"])
def test_staleness_on_hand_schedule(ranks, phase):
    log = ranks[0][phase]["stats"].log
    assert [(u.worker, u.staleness) for u in log] == EXPECTED_STALENESS
    assert [u.version for u in log] == list(range(1, len(EXPECTED_STALENESS) + 1))
    assert ranks[0][phase]["stats"].staleness_histogram == {0: 3, 1: 1, 3: 1}


@pytest.mark.parametrize("phase", ["damped", "undamped"])
def test_workers_read_the_versions_the_server_logged(ranks, phase):
    """Each worker's recorded version_read per push matches the server's log, and the
    parameters it computed on are the server's parameters at that version (replayed)."""
    log = ranks[0][phase]["stats"].log
    for w in PUSHES:
        seen = ranks[w][phase]["seen"]
        assert [v for v, _ in seen] == [u.version_read for u in log if u.worker == w]
        assert ranks[w][phase]["pushes"] == PUSHES[w] and ranks[w][phase]["rounds"] == 1


@pytest.mark.parametrize("phase,damping", [("damped", True), ("undamped", False)])
def test_update_equals_formula_12(ranks, phase, damping):
    """Server parameters after the round equal the hand replay (float64; atol 1e-12 allows
    only rounding: the optimizer computes p + (-lr) * g', the replay p - lr * g')."""
    res = ranks[0][phase]
    final = res["final"]
    torch.testing.assert_close(final, _replay(res["stats"].log, damping), rtol=0, atol=1e-12)
    # The other formula is far off: damping is really on (or off), and the parameters moved.
    other = _replay(res["stats"].log, not damping)
    assert (final - other).abs().max() > 1e-4
    assert (final - res["init"]).abs().max() > 1e-2


def test_histogram_and_byte_counts(ranks):
    for phase in ("damped", "undamped", "slow"):
        s: AsyncPSStats = ranks[0][phase]["stats"]
        assert sum(s.staleness_histogram.values()) == s.updates == len(s.log)
        assert sum(s.updates_per_worker.values()) == s.updates
        numel = sum(p.numel() for p in make_model().parameters())
        assert s.push_bytes_per_update == 4 * 8 + numel * 8  # float64 header + float64 grads
        assert s.pull_bytes_per_update == CONTROL_LEN * 8 + numel * 8  # int64 control + params
        assert s.bytes_pushed == s.updates * s.push_bytes_per_update
        # pulls: one per worker at round start + one reply per non-last push
        replies = s.updates - (1 if phase != "slow" else 0)  # worker 1's last push had no reply
        assert s.bytes_pulled == (2 + replies) * s.pull_bytes_per_update
    rec = ranks[0]["damped"]["stats"].to_record()
    assert rec["staleness_histogram"] == {"0": 3, "1": 1, "3": 1} and rec["mean_staleness"] == 0.8


def test_slow_worker_sees_stale_parameters(ranks):
    """Any-source arrival: worker 1 sleeps before its first push while worker 2 runs on."""
    s = ranks[0]["slow"]["stats"]
    assert s.updates_per_worker == {1: SLOW_PUSHES, 2: SLOW_PUSHES}
    first_slow = next(u for u in s.log if u.worker == 1)
    assert first_slow.version_read == 0 and first_slow.staleness >= 1
    assert max(u.staleness for u in s.log if u.worker == 1) > \
        max(u.staleness for u in s.log if u.worker == 2)


def test_dynamic_assignment_hands_out_every_piece_once_in_the_servers_order(ranks):
    s = ranks[0]["dynamic"]["stats"]
    assert {w: ranks[w]["dynamic"]["pieces"] for w in (1, 2)} == DYN_EXPECTED
    assert s.updates == DYN_PIECES and s.updates_per_worker == {1: 1, 2: 4}
    assert [(u.worker, u.staleness) for u in s.log] == [(2, 0), (2, 0), (2, 0), (2, 0), (1, 4)]
    # round start: weights to both; replies with weights for pieces 2-4; END (control) twice
    assert s.bytes_pulled == (2 + 3) * s.pull_bytes_per_update + 2 * CONTROL_LEN * 8


def test_dynamic_assignment_gives_a_straggler_fewer_pieces(ranks):
    """Worker 1 sleeps before each piece: worker 2 takes the pieces meanwhile, and the round
    does not wait for worker 1 to work through an equal share."""
    s = ranks[0]["dynamic_slow"]["stats"]
    got = {w: ranks[w]["dynamic_slow"]["pieces"] for w in (1, 2)}
    assert sorted(got[1] + got[2]) == list(range(DYN_SLOW_PIECES))
    assert s.updates_per_worker[1] < s.updates_per_worker[2]
    assert ranks[0]["dynamic_slow"]["round_s"] < (DYN_SLOW_PIECES // 2) * 1.0


def test_training_reduces_loss(ranks):
    res = ranks[0]["train"]
    evals = res["evals"]  # on the server's parameters, before and after each round
    assert evals[-1] < 0.05 * evals[0]
    assert res["round_train_losses"][-1] < res["round_train_losses"][0]
    s = res["stats"]
    assert s.rounds == TRAIN_ROUNDS and s.updates == TRAIN_ROUNDS * TRAIN_PUSHES * 2
    assert s.train_token_count > 0
    for w in (1, 2):  # clean shutdown: both workers saw every round and then STOP
        assert ranks[w]["train"]["rounds"] == TRAIN_ROUNDS


def test_silent_workers_time_out_instead_of_hanging(ranks):
    server = ranks[0]["timeout"]
    assert ranks[1]["timeout"]["began"] is True and ranks[2]["timeout"]["began"] is True
    assert server["error"] is not None and "exceeded timeout_s=1" in server["error"]
    assert TIMEOUT_S <= server["waited_s"] < 10 * TIMEOUT_S


@pytest.mark.parametrize("cfg,world,match", [
    (AsyncPSConfig(), 1, "needs >= 2 ranks"),
    (AsyncPSConfig(timeout_s=0), 3, "timeout_s"),
    (AsyncPSConfig(clip_grad=-1.0), 3, "clip_grad"),
    (AsyncPSConfig(push_order=(1, 3)), 3, r"push_order: 3 is not a worker rank \(1..2\)"),
    (AsyncPSConfig(push_order=(0,)), 3, "push_order: 0 is not a worker rank"),
    (AsyncPSConfig(staleness_damping="yes"), 3, "staleness_damping"),
    (AsyncPSConfig(work_assignment="greedy"), 3, "work_assignment: must be one of"),
])
def test_config_validation(cfg, world, match):
    with pytest.raises(AsyncPSError, match=match):
        cfg.validate(world)
