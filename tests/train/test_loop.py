"""Single-device training end to end on a small prepared dataset: record, determinism, resume."""

import dataclasses
import json

import pytest
import torch

from recpar.data.prepared import PreparedDataset
from recpar.model.config import ModelConfig
from recpar.train import checkpoint_generations, loop, record
from recpar.train.checkpoint import CheckpointError
from recpar.train.config import TrainConfig
from recpar.train.loop import DataMissingError, train
from recpar.train.spec import RunSpec

MODEL = ModelConfig.named("tiny", max_seq_len=20, dropout=0.1)
TRAIN = TrainConfig(max_epochs=3, patience=5, warmup_steps=2, timed_steps=4,
                    global_batch_size=64)


def _spec(data, out, **kw):
    return RunSpec(data_dir=data, out_dir=out, run_id="baseline-tiny-n1",
                   model=kw.pop("model", MODEL),
                   train=kw.pop("train", TRAIN), seed=kw.pop("seed", 0), **kw)


def _weights(path):
    return torch.load(path, weights_only=False)["model"]


def test_baseline_writes_a_valid_record_with_both_protocols(small_prepared, tmp_path):
    rec = train(_spec(small_prepared, tmp_path / "run",
                      train=dataclasses.replace(TRAIN, measure_mfu=True)), progress=False)
    again = record.read(tmp_path / "run" / "record.json")  # schema-validated on read
    assert again["run_id"] == rec["run_id"] == "baseline-tiny-n1"
    for split in ("valid", "test"):
        for proto in ("full", "sampled100"):
            q = rec["quality"][split][proto]
            assert q["protocol"] == proto and q["n_examples"] > 0
    m = rec["metrics"]
    assert m["throughput_samples_per_s"] > 0 and m["comm_ms_per_iter"] == 0.0
    assert rec["timing"]["timed_steps"] == 4 and rec["timing"]["warmup_steps"] == 2
    assert rec["config"]["model"]["text_dim"] == 8  # width taken from the embeddings on disk
    assert len(rec["history"]) == 3
    assert (tmp_path / "run" / "best.pt").exists() and (tmp_path / "run" / "last.pt").exists()
    # model FLOP/s over the window, from the one FLOP definition; MFU against the measured peak
    cfg = dataclasses.replace(MODEL, text_dim=8)
    n_items = PreparedDataset.load(small_prepared).n_items
    expect = cfg.model_flops(n_items, samples=m["throughput_samples_per_s"],
                             steps=1e3 / m["iter_ms"]) / 1e12
    assert m["model_tflops_per_s"] == pytest.approx(expect)
    assert m["gemm_peak_tflops_per_s"] > 0
    assert m["mfu_pct"] == pytest.approx(100 * m["model_tflops_per_s"]
                                         / m["gemm_peak_tflops_per_s"])


def test_moe_run_records_its_router_load_and_active_parameters(small_prepared, tmp_path):
    """An MoE baseline run (4 experts, top-2, every block) writes a schema-valid `moe` section;
    a dense run's config carries no moe_* field (its fingerprint is the pre-MoE one)."""
    moe = dataclasses.replace(MODEL, num_moe_experts=4, moe_router_topk=2)
    rec = train(_spec(small_prepared, tmp_path / "moe", model=moe,
                      train=dataclasses.replace(TRAIN, max_epochs=1)), progress=False)
    assert record.read(tmp_path / "moe" / "record.json")["moe"] == rec["moe"]
    m = rec["moe"]
    assert (m["num_experts"], m["router_topk"], len(m["layers"])) == (4, 2, MODEL.n_layers)
    steps = rec["metrics"]["steps_count"]
    for layer in m["layers"]:
        assert layer["forwards_count"] == steps  # one training forward per step
        assert sum(layer["tokens_per_expert"]) % 2 == 0 and min(layer["tokens_per_expert"]) >= 0
        assert layer["imbalance_max_over_mean"] >= 1.0 and layer["dropped_tokens_count"] == 0
        assert layer["aux_loss_mean"] > 0
    assert rec["config"]["model"]["num_moe_experts"] == 4
    assert m["params_active_count"] < m["params_total_count"] == rec["metrics"]["params_count"]
    assert m["flops_per_token"] < m["flops_per_token_dense_equal_total_params"]
    # FlopCounterMode on the first step: each token ran through its k = 2 experts, not all 4
    assert m["experts_per_token_measured"] == pytest.approx(2.0, rel=1e-6)
    dense = train(_spec(small_prepared, tmp_path / "dense",
                        train=dataclasses.replace(TRAIN, max_epochs=1)), progress=False)
    assert "moe" not in dense and not any(k.startswith("moe") or k == "num_moe_experts"
                                          for k in dense["config"]["model"])


def test_same_seed_same_weights_other_seed_differs(small_prepared, tmp_path):
    short = dataclasses.replace(TRAIN, max_epochs=1)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(_spec(small_prepared, tmp_path / name, train=short, seed=seed), progress=False)
    a, b, c = (_weights(tmp_path / n / "last.pt") for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_interrupted_run_resumes_to_the_same_result(small_prepared, tmp_path, monkeypatch):
    train(_spec(small_prepared, tmp_path / "ref"), progress=False)

    real_commit = checkpoint_generations.commit
    commits = {"n": 0}

    def crash_after_first_epoch(gen_dir, state):
        real_commit(gen_dir, state)  # epoch 0's checkpoint generation is complete
        commits["n"] += 1
        if commits["n"] == 1:
            raise KeyboardInterrupt("simulated kill after epoch 0")

    monkeypatch.setattr(checkpoint_generations, "commit", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(_spec(small_prepared, tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "record.json").exists()
    monkeypatch.setattr(checkpoint_generations, "commit", real_commit)
    rec = train(_spec(small_prepared, tmp_path / "run"), progress=False)
    assert rec["notes"][0] == "resumed from last.pt after epoch 0"
    ref = record.read(tmp_path / "ref" / "record.json")
    assert [h["train_loss"] for h in rec["history"]] == [h["train_loss"] for h in ref["history"]]
    # training seconds so far: carried over the resume, growing with every epoch
    train_s = [h["train_s"] for h in rec["history"]]
    assert train_s[0] > 0 and all(b > a for a, b in zip(train_s, train_s[1:])), train_s
    assert rec["quality"] == ref["quality"]
    w_ref, w_run = _weights(tmp_path / "ref" / "last.pt"), _weights(tmp_path / "run" / "last.pt")
    assert all(torch.equal(w_ref[k], w_run[k]) for k in w_ref)


def test_a_cpu_budget_is_joined_after_set_up_before_the_first_step(small_prepared, tmp_path,
                                                                   monkeypatch):
    """The scale model's budget paces training steps: a run joins its group (the launcher's
    RECPAR_CPU_BUDGET_DIR) once set-up is done and before its first epoch, measures its
    device's GEMM peak (train.measure_mfu) inside it, so a budgeted device's MFU is against
    the budgeted peak, and leaves it for the final evaluation. Without the variable nothing is
    joined."""
    from recpar import device
    from recpar.cluster import cpu_budget

    events = []
    real_set_up, real_epoch = loop._set_up, loop._train_epoch
    monkeypatch.setattr(loop, "_set_up", lambda *a: (events.append("set-up"), real_set_up(*a))[1])
    monkeypatch.setattr(loop, "_train_epoch",
                        lambda *a: (events.append("epoch"), real_epoch(*a))[1])
    monkeypatch.setattr(cpu_budget, "join",
                        lambda group_dir, rank: events.append(("join", str(group_dir), rank)))
    monkeypatch.setattr(cpu_budget, "release", lambda: events.append("release") or False)
    monkeypatch.setattr(device, "gemm_flops_per_s",
                        lambda *a, **kw: events.append("gemm peak") or 1e9)
    one_epoch = dataclasses.replace(TRAIN, max_epochs=1, measure_mfu=True)
    monkeypatch.setenv(cpu_budget.ENV_DIR, "/budget/run")
    rec = train(_spec(small_prepared, tmp_path / "run", train=one_epoch), progress=False)
    assert events == ["set-up", ("join", "/budget/run", 0), "epoch", "gemm peak", "release"]
    assert rec["metrics"]["gemm_peak_tflops_per_s"] == 1e-3
    events.clear()
    monkeypatch.delenv(cpu_budget.ENV_DIR)
    train(_spec(small_prepared, tmp_path / "run2", train=one_epoch), progress=False)
    assert events == ["set-up", "epoch", "gemm peak", "release"]


def test_resume_with_another_config_is_refused(small_prepared, tmp_path):
    short = dataclasses.replace(TRAIN, max_epochs=1)
    train(_spec(small_prepared, tmp_path / "run", train=short), progress=False)
    other = dataclasses.replace(short, lr=0.5)
    with pytest.raises(CheckpointError, match="config fingerprint"):
        train(_spec(small_prepared, tmp_path / "run", train=other), progress=False)
    # What the workflow does when a run's settings change: the old run is moved aside (kept),
    # the new one starts fresh; a run of the same configuration is left to resume.
    assert loop.replace_stale_run(_spec(small_prepared, tmp_path / "run", train=short)) is None
    moved = loop.replace_stale_run(_spec(small_prepared, tmp_path / "run", train=other))
    assert moved.name.startswith("run.replaced-") and (moved / "last.pt").exists()
    assert not (tmp_path / "run").exists()
    rec = train(_spec(small_prepared, tmp_path / "run", train=other), progress=False)
    assert rec["config"]["train"]["lr"] == 0.5 and not rec["notes"]
    # The same settings on another cluster (brought up again: calibrated anew) start afresh
    # too; resuming a finished run there would record nothing trained.
    same = _spec(small_prepared, tmp_path / "run", train=other)
    assert loop.replace_stale_run(same) is None
    emulated = {"kind": "emulated", "nodes": 1, "ranks_per_node": 1,
                "inter_node": {"configured": {"rate_bit_per_s": 1e8},
                               "calibrated": {"rate_bit_per_s": 9.4e7}}}
    on_cluster = dataclasses.replace(same, topology=emulated)
    assert loop.run_fingerprint(on_cluster, PreparedDataset.load(small_prepared)) == \
        loop.run_fingerprint(dataclasses.replace(on_cluster, topology={
            **emulated, "world_size": 1}), PreparedDataset.load(small_prepared))  # not identity
    recalibrated = dataclasses.replace(on_cluster, topology={**emulated, "inter_node": {
        **emulated["inter_node"], "calibrated": {"rate_bit_per_s": 9.1e7}}})
    assert loop.run_fingerprint(on_cluster, PreparedDataset.load(small_prepared)) != \
        loop.run_fingerprint(recalibrated, PreparedDataset.load(small_prepared))
    assert loop.replace_stale_run(recalibrated).name.startswith("run.replaced-")


def test_missing_embeddings_name_the_file(small_prepared, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_prepared, data)
    (data / "item_text_emb.npy").unlink()
    with pytest.raises(DataMissingError,
                       match=r"item_text_emb.npy.*recpar data embed --data \S*data\b"):
        train(_spec(data, tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "record.json").exists()


def test_most_popular_record(small_prepared, tmp_path):
    rec = loop.run_most_popular(_spec(small_prepared, tmp_path / "pop"))
    assert rec["scheme"] == "most-popular"
    assert 0 <= rec["quality"]["test"]["full"]["hr_at_10"] <= 1
    json.loads((tmp_path / "pop" / "record.json").read_text())


DETERMINISM = """
import sys
import torch
from recpar.train.config import TrainConfig
from recpar.train.loop import _set_determinism
_set_determinism(TrainConfig(), seed=0)
assert torch.are_deterministic_algorithms_enabled()
assert "torch._inductor" not in sys.modules, "deterministic mode imported inductor"
_set_determinism(TrainConfig(deterministic=False, compile=True), seed=0)
import torch._inductor.config as inductor_config
assert not torch.are_deterministic_algorithms_enabled() and not inductor_config.deterministic
_set_determinism(TrainConfig(compile=True), seed=0)
assert torch.are_deterministic_algorithms_enabled() and inductor_config.deterministic
print("ok")
"""


def test_determinism_is_set_without_importing_inductor_unless_the_run_compiles():
    """A fresh interpreter, as a rank starts: train.deterministic reaches ATen without
    torch._inductor being imported (about 2 s of CPU per rank); a compiled run sets
    inductor's flag too, both ways."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-W", "ignore", "-c", DETERMINISM], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
