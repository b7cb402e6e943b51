"""`recpar train --scheme async`: parameter server (rank 0) + workers inside the common loop.

World size 3 = 1 server + 2 workers (gloo on CPU). Two launches by the real launcher
(torchrun --standalone): the CLI run, and a run with a fixed push order whose server weights
are replayed here by hand (Formula 12 with AdamW and clipping, as the engine does). One
spawned run is killed after epoch 0 and resumed.
"""

import copy
import dataclasses
import json
import os
import re

import pytest
import torch

from recpar.cli import main as recpar_main
from recpar.train import record

from .test_data_parallel import COMMON, _need_ranks, _run

WORLD_SIZE = 3
WORKERS = WORLD_SIZE - 1
ASYNC = ["train", "--scheme", "async"]


def _newest_generation(out):
    """The checkpoint generation out/last.pt links to (engine state beside it)."""
    return (out / "last.pt").resolve().parent


@pytest.mark.parametrize("extra, message", [
    (["--dp", "1"], "scheme async needs dp >= 2 ranks"),
    (["--dp", "2", "--tp", "2"], "scheme async is data-parallel only"),
    (["--dp", "4"], "global_batch_size = 64 is not divisible by the 3 async workers (dp = 4)"),
    (["--dp", "3", "--async-timeout-s", "0"], "async_ps.timeout_s: must be > 0"),
])
def test_bad_async_options_fail_before_any_rank_starts(small_prepared, tmp_path, capsys, extra,
                                                       message):
    code = recpar_main([*ASYNC, "--data", str(small_prepared), "--out", str(tmp_path / "run"),
                        *COMMON, *extra])
    assert code != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "spec.json").exists()


@pytest.mark.parametrize("flag, message", [
    (["--no-staleness-damping"], "--no-staleness-damping applies to --scheme async only, not dp"),
    (["--async-work", "dynamic"], "--async-work dynamic applies to --scheme async only, not dp"),
])
def test_async_flags_are_async_only(small_prepared, tmp_path, capsys, flag, message):
    code = recpar_main(["train", "--scheme", "dp", "--dp", "2", *flag,
                        "--data", str(small_prepared), "--out", str(tmp_path / "run"), *COMMON])
    assert code != 0
    assert message in capsys.readouterr().err


@pytest.mark.multiprocess
def test_async_cli_run_writes_a_valid_record(small_prepared, tmp_path):
    _need_ranks()
    out = tmp_path / "async"
    r = _run([*ASYNC, "--dp", str(WORLD_SIZE), "--data", str(small_prepared), "--out", str(out),
              *[("max_epochs=2" if c == "max_epochs=1" else c) for c in COMMON]])
    assert r.returncode == 0, r.stderr[-3000:]
    rec = record.read(out / "record.json")  # schema-validated
    m = rec["metrics"]
    assert rec["scheme"] == "async" and rec["run_id"] == "async3-damped-tiny-n1"
    assert rec["plan"]["world_size"] == WORLD_SIZE
    assert rec["config"]["async_ps"]["staleness_damping"] is True
    assert rec["config"]["async_ps"]["clip_grad"] == rec["config"]["train"]["clip_grad"]
    assert rec["config"]["grad_sync"] is None
    # Every global batch of every epoch: one update per worker (64 rows / 2 workers).
    steps = m["steps_count"]
    assert m["epochs_count"] == 2 and steps == 2 * (-(-m["train_sequences_count"] // 64))
    assert m["async_updates_count"] == WORKERS * steps and m["async_rounds_count"] == 2
    hist = {int(k.split("_")[1]): v for k, v in m.items()
            if re.fullmatch(r"staleness_\d+_updates_count", k)}
    assert sum(hist.values()) == m["async_updates_count"]
    assert m["mean_staleness"] == pytest.approx(sum(t * n for t, n in hist.items())
                                                / m["async_updates_count"])
    per_worker = {k: v for k, v in m.items() if re.fullmatch(r"updates_rank\d+_count", k)}
    assert per_worker == {"updates_rank1_count": steps, "updates_rank2_count": steps}
    assert m["bytes_pushed_total"] == m["async_updates_count"] * m["push_bytes_per_update"]
    numel = m["params_count"]  # every parameter trains: float32 payload + 4 float64 header
    assert m["push_bytes_per_update"] == 4 * numel + 32
    assert m["server_wait_s"] > 0 and m["server_apply_s"] > 0
    assert m["throughput_samples_per_s"] > 0 and m["comm_ms_per_iter"] > 0
    assert rec["timing"]["timed_steps"] == 4
    # What rank 0 validated and checkpointed is the server's own weights.
    last = torch.load(out / "last.pt", weights_only=False)
    server = torch.load(_newest_generation(out) / "engine-rank0.pt", weights_only=False)["state"]
    assert server["version"] == m["async_updates_count"]
    for k, v in server["model"].items():
        assert torch.equal(last["model"][k], v), k
    assert rec["history"][-1]["train_loss"] < rec["history"][0]["train_loss"]
    assert m["best_valid_metric"] == max(h["valid_ndcg_at_10"] for h in rec["history"])


# --- a fixed push order, replayed by hand -------------------------------------------------

PUSHED_STEPS = 3  # global batches -> 2 x 3 updates, strictly alternating workers 1, 2
ORDER = (1, 2) * PUSHED_STEPS


def _spec(data, out, work_assignment="static"):
    from recpar.comm.async_ps import AsyncPSConfig
    from recpar.model.config import ModelConfig
    from recpar.parallel.plan import ParallelPlan
    from recpar.train.config import TrainConfig
    from recpar.train.spec import RunSpec

    return RunSpec(data_dir=data, out_dir=out, run_id="async3-order", seed=0,
                   model=ModelConfig.named("tiny", max_seq_len=20, dropout=0.0),
                   train=TrainConfig(lr=0.01, global_batch_size=64, max_steps=PUSHED_STEPS,
                                     warmup_steps=0, timed_steps=2),
                   plan=ParallelPlan(scheme="async", dp=WORLD_SIZE),
                   topology={"kind": "local", "nodes": 1, "ranks_per_node": WORLD_SIZE},
                   async_ps=AsyncPSConfig(push_order=ORDER, timeout_s=120,
                                          work_assignment=work_assignment))


def _replay(spec, damping: bool) -> dict:
    """The server's weights after ORDER, computed in one process: update u (1-based) comes
    from worker 1 (odd u) or 2, was computed on version u − 2 (u = 1: version 0), so its
    staleness is 1 except for the first; clip, damp by 1/(1 + tau), AdamW step."""
    from recpar.data.prepared import PreparedDataset
    from recpar.model.recommender import Recommender
    from recpar.model.sequences import build_training_sequences
    from recpar.train.optim import build_adamw

    cfg = spec.train
    torch.manual_seed(spec.seed)
    ds = PreparedDataset.load(spec.data_dir)
    text = torch.from_numpy(ds.item_text_embeddings()).float()
    model_cfg = dataclasses.replace(spec.model, text_dim=int(text.shape[1]))
    server = Recommender(model_cfg, ds.n_items, text)
    worker = copy.deepcopy(server).train()
    inputs, targets = build_training_sequences(ds.train, model_cfg.max_seq_len)
    perm = torch.randperm(inputs.shape[0], generator=torch.Generator().manual_seed(spec.seed * 100_003))
    batches = [perm[b * cfg.global_batch_size:(b + 1) * cfg.global_batch_size]
               for b in range(PUSHED_STEPS)]
    opt = build_adamw(server, cfg)
    params = [p for p in server.parameters() if p.requires_grad]
    wparams = [p for p in worker.parameters() if p.requires_grad]
    versions = [torch.nn.utils.parameters_to_vector(params).detach().clone()]
    for u in range(1, len(ORDER) + 1):
        w, k = ORDER[u - 1], (u - 1) // 2
        read = max(0, u - 2)
        tau = (u - 1) - read
        torch.nn.utils.vector_to_parameters(versions[read], wparams)
        worker.zero_grad(set_to_none=True)
        rows = batches[k][w - 1::WORKERS]
        loss_sum, count = worker.loss_sum(inputs[rows], targets[rows])
        (loss_sum / count.clamp(min=1)).backward()
        for p, wp in zip(params, wparams):
            p.grad = wp.grad.clone() if wp.grad is not None else torch.zeros_like(p)
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        if damping and tau:
            for p in params:
                p.grad.div_(1 + tau)
        opt.step()
        opt.zero_grad(set_to_none=True)
        versions.append(torch.nn.utils.parameters_to_vector(params).detach().clone())
    return {k: v.detach().clone() for k, v in server.state_dict().items()}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.multiprocess
@pytest.mark.parametrize("work_assignment", ["static", "dynamic"])
def test_fixed_push_order_equals_formula_12_replay(small_prepared, tmp_path, work_assignment):
    """dynamic: on ORDER the server hands piece p = (batch p // 2, part p % 2) to the worker
    whose push it takes, so worker 1 computes part 0 and worker 2 part 1 of each batch, on the
    same versions as the static shares: the same replay."""
    _need_ranks()
    from recpar.cluster.launch import launch
    from recpar.cluster.topology import Topology
    from recpar.train.spec import spec_to_dict

    out = tmp_path / "ordered"
    out.mkdir()
    spec = _spec(small_prepared, out, work_assignment)
    (out / "spec.json").write_text(json.dumps(spec_to_dict(spec)))
    code = launch(Topology(kind="local", nodes=1, ranks_per_node=WORLD_SIZE),
                  ["-m", "recpar.train.worker", str(out / "spec.json")],
                  env={"OMP_NUM_THREADS": "1"}, timeout_s=240)
    assert code == 0
    m = record.read(out / "record.json")["metrics"]
    assert m["async_updates_count"] == len(ORDER)
    assert (m["staleness_0_updates_count"], m["staleness_1_updates_count"]) == (1, len(ORDER) - 1)
    got = torch.load(out / "last.pt", weights_only=False)["model"]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    damped, undamped = _replay(spec, damping=True), _replay(spec, damping=False)
    gap = _max_diff(damped, undamped)
    assert gap > 1e-4  # damping visibly changes the weights on this schedule
    # The run matches the damped replay to float32 rounding, far closer than the gap.
    assert _max_diff(got, damped) < 1e-3 * gap


@pytest.mark.multiprocess
def test_async_killed_after_epoch_0_resumes_with_the_servers_state(small_prepared, tmp_path):
    """World size 3 (spawned: 1 server + 2 workers), killed right after epoch 0's checkpoint
    and resumed in the same processes (tests/train/mp_workers.resume_after_kill). The push
    order is not deterministic, so the weights cannot be compared with an uninterrupted run;
    what a resume must keep is the server's state: its AdamW step count, parameter version
    and update statistics continue from epoch 0 instead of restarting at 0."""
    from recpar.cli import build_parser
    from recpar.train.cli import _spec
    from recpar.train.spec import spec_to_dict

    from ..comm.mp_launch import skip_unless_ranks, spawn_ranks
    from . import mp_workers

    skip_unless_ranks(WORLD_SIZE)
    out = tmp_path / "run"
    common = [("max_epochs=2" if c == "max_epochs=1" else c) for c in COMMON]
    args = build_parser().parse_args([*ASYNC, "--dp", str(WORLD_SIZE), "--data",
                                      str(small_prepared), "--out", str(out), *common])
    spec = _spec(args, "async")
    out.mkdir(parents=True)
    (tmp_path / "spec.json").write_text(json.dumps(spec_to_dict(spec)))
    ranks = spawn_ranks(mp_workers.resume_after_kill, WORLD_SIZE, tmp_path)
    assert all(r["killed"] and not r["record_after_kill"] for r in ranks)
    assert "engine-rank0.pt" in ranks[0]["engine_files_after_kill"]  # the server's state
    rec = ranks[0]["record"]
    assert rec["notes"][0] == "resumed from last.pt after epoch 0"
    assert record.read(out / "record.json")["run_id"] == "async3-damped-tiny-n1"
    m = rec["metrics"]
    steps = m["steps_count"]
    assert m["epochs_count"] == 2 and steps == 2 * (-(-m["train_sequences_count"] // 64))
    # both epochs' updates: the epoch-0 statistics came back from engine-rank0.pt
    assert m["async_updates_count"] == WORKERS * steps
    assert {k: v for k, v in m.items() if re.fullmatch(r"updates_rank\d+_count", k)} == \
        {"updates_rank1_count": steps, "updates_rank2_count": steps}
    server = torch.load(_newest_generation(out) / "engine-rank0.pt", weights_only=False)["state"]
    assert server["version"] == WORKERS * steps
    # AdamW's per-parameter step counts every update of both epochs (a fresh optimiser on
    # resume would count epoch 1's only)
    opt_steps = {float(s["step"]) for s in server["optimizer"]["state"].values()}
    assert opt_steps == {float(WORKERS * steps)}
