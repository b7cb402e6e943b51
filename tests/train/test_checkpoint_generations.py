"""Checkpoint generations: two kept, checksummed; a damaged newest one falls back to the
previous one, named in the run's notes (recpar.train.checkpoint_generations).

The first tests build generations by hand (no training); the last two damage the newest
checkpoint of a finished run, single-device and 2-rank dp, run it again and compare the final
weights with the undamaged run's.
"""

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from recpar.train import checkpoint_generations as gens
from recpar.train import record
from recpar.train.checkpoint import CheckpointError

FP = "0123456789abcdef"


def _save(out: Path, epoch: int, fp: str = FP) -> Path:
    """One generation as a 1-rank engine with a nested library checkpoint would leave it."""
    gen = gens.generation_dir(out, epoch)
    gen.mkdir(parents=True)
    torch.save({"state": torch.full((64,), float(epoch))}, gen / "engine-rank0.pt")
    (gen / "deepspeed" / "last").mkdir(parents=True)
    torch.save({"shard": torch.arange(32) + epoch}, gen / "deepspeed" / "last" / "optim.pt")
    gens.commit(gen, {"epoch": epoch, "fingerprint": fp, "model": {"w": torch.ones(128) * epoch}})
    return gen


def _flip(path: Path) -> None:
    """Invert 8 bytes in the middle of the file, in place (same size)."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        chunk = f.read(8)
        f.seek(-len(chunk), os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in chunk))


def _truncate(path: Path) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def test_commit_keeps_the_last_two_generations_with_checksums(tmp_path):
    for epoch in range(3):
        _save(tmp_path, epoch)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["epoch-000001", "epoch-000002"]
    newest = tmp_path / "checkpoints" / "epoch-000002"
    assert (tmp_path / "last.pt").is_symlink()
    assert (tmp_path / "last.pt").resolve() == (newest / "last.pt").resolve()
    manifest = json.loads((newest / "manifest.json").read_text())
    assert manifest["epoch"] == 2 and manifest["fingerprint"] == FP
    assert sorted(manifest["files"]) == ["deepspeed/last/optim.pt", "engine-rank0.pt", "last.pt"]
    for rel, want in manifest["files"].items():
        data = (newest / rel).read_bytes()
        assert want == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    found = gens.find_resumable(tmp_path, FP)
    assert found.path == newest and found.epoch == 2 and found.notes == []


def test_a_generation_never_committed_is_removed_not_resumed(tmp_path):
    _save(tmp_path, 0)
    partial = gens.generation_dir(tmp_path, 1)  # killed while the engines were saving
    partial.mkdir()
    (partial / "engine-rank0.pt").write_bytes(b"half")
    found = gens.find_resumable(tmp_path, FP)
    assert found.epoch == 0 and found.notes == []
    assert not partial.exists()


@pytest.mark.parametrize("damage, rel, message", [
    (_flip, "last.pt", "last.pt: checksum mismatch"),
    (_truncate, "last.pt", "last.pt: truncated"),
    (_flip, "engine-rank0.pt", "engine-rank0.pt: checksum mismatch"),
    (_truncate, "deepspeed/last/optim.pt", "deepspeed/last/optim.pt: truncated"),
    (Path.unlink, "engine-rank0.pt", "engine-rank0.pt: missing"),
    (lambda p: p.write_text("{"), "manifest.json", "manifest.json: unreadable"),
])
def test_a_damaged_newest_generation_falls_back_to_the_previous(tmp_path, damage, rel, message):
    _save(tmp_path, 0)
    bad = _save(tmp_path, 1)
    damage(bad / rel)
    found = gens.find_resumable(tmp_path, FP)
    assert found.epoch == 0 and found.path == gens.generation_dir(tmp_path, 0)
    assert len(found.notes) == 1
    note = found.notes[0]
    assert note.startswith("checkpoint checkpoints/epoch-000001 damaged (") and message in note
    assert note.endswith("resumed from the previous generation checkpoints/epoch-000000")
    # kept for inspection, out of the way of the epoch that is trained again
    assert not bad.exists() and bad.with_name("epoch-000001.damaged").is_dir()
    assert (tmp_path / "last.pt").resolve() == (found.last_path).resolve()
    assert gens.find_resumable(tmp_path, FP).notes == []  # reported once


def test_no_usable_generation_fails_naming_every_damaged_file(tmp_path):
    _truncate(_save(tmp_path, 0) / "engine-rank0.pt")
    _flip(_save(tmp_path, 1) / "last.pt")
    with pytest.raises(CheckpointError) as e:
        gens.find_resumable(tmp_path, FP)
    assert "no usable checkpoint" in str(e.value)
    assert "epoch-000001/last.pt: checksum mismatch" in str(e.value)
    assert "epoch-000000/engine-rank0.pt: truncated" in str(e.value)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == \
        ["epoch-000000", "epoch-000001"]  # nothing moved when nothing can be resumed


def test_another_configuration_is_refused_not_taken_for_damage(tmp_path):
    _save(tmp_path, 0, fp="ffffffffffffffff")
    with pytest.raises(CheckpointError, match="config fingerprint ffffffffffffffff"):
        gens.resume_point(tmp_path, FP, rank=0, world=1)


def test_stored_fingerprint_tells_what_replace_stale_run_needs(tmp_path):
    assert gens.stored_fingerprint(tmp_path) is None  # nothing saved: nothing to move aside
    _save(tmp_path / "run", 0)
    _save(tmp_path / "run", 1)
    assert gens.stored_fingerprint(tmp_path / "run") == FP
    (tmp_path / "run" / "checkpoints" / "epoch-000001" / "manifest.json").write_text("{")
    assert gens.stored_fingerprint(tmp_path / "run") == FP  # the previous manifest still says
    (tmp_path / "run" / "checkpoints" / "epoch-000000" / "manifest.json").write_text("")
    assert gens.stored_fingerprint(tmp_path / "run") == ""
    old = tmp_path / "old"  # the layout before generations: last.pt alone
    old.mkdir()
    torch.save({"epoch": 0, "fingerprint": FP}, old / "last.pt")
    assert gens.stored_fingerprint(old) == ""
    with pytest.raises(CheckpointError, match="layout before checkpoints/ generations"):
        gens.find_resumable(old, FP)


# --- a real run's newest checkpoint damaged, run again ---------------------------------------

def _final_weights(out: Path) -> dict:
    return torch.load(out / "last.pt", weights_only=False)["model"]


@pytest.mark.parametrize("damage, rel, message", [
    (_flip, "last.pt", "last.pt: checksum mismatch"),
    (_truncate, "engine-rank0.pt", "engine-rank0.pt: truncated"),
])
def test_single_device_run_resumes_from_the_previous_generation(small_prepared, tmp_path,
                                                                 damage, rel, message):
    """Epoch 1's checkpoint damaged after the run finished: the rerun trains epoch 1 again from
    epoch 0's generation (weights, optimiser and RNG state) and ends with the same weights."""
    from recpar.train.loop import replace_stale_run, train

    from .test_loop import TRAIN, _spec

    spec = _spec(small_prepared, tmp_path / "run", train=dataclasses.replace(TRAIN, max_epochs=2))
    first = train(spec, progress=False)
    want = _final_weights(tmp_path / "run")
    damage(tmp_path / "run" / "checkpoints" / "epoch-000001" / rel)
    assert replace_stale_run(spec) is None  # same configuration: stays, to resume
    rec = train(spec, progress=False)
    assert rec["notes"][0] == "resumed from last.pt after epoch 0"
    assert rec["notes"][1].startswith("checkpoint checkpoints/epoch-000001 damaged (")
    assert message in rec["notes"][1]
    assert record.read(tmp_path / "run" / "record.json")["notes"] == rec["notes"]
    assert rec["metrics"]["steps_count"] == first["metrics"]["steps_count"]
    assert [h["train_loss"] for h in rec["history"]] == \
        [h["train_loss"] for h in first["history"]]
    got = _final_weights(tmp_path / "run")
    assert all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.multiprocess
def test_dp_run_with_a_truncated_engine_shard_resumes_from_the_previous_generation(
        small_prepared, tmp_path):
    """2-rank dp through `recpar train` (torchrun): rank 1's optimiser state of epoch 1
    truncated; rank 0 finds it by the manifest, both ranks resume from epoch 0's generation and
    the rerun ends with the uninterrupted run's weights, bit for bit (2-rank sums are exact)."""
    from .test_data_parallel import COMMON, _need_ranks, _run

    _need_ranks()
    out = tmp_path / "dp"
    args = ["train", "--scheme", "dp", "--dp", "2", "--data", str(small_prepared), "--out",
            str(out), "--replace-stale",
            *[("max_epochs=2" if c == "max_epochs=1" else c) for c in COMMON]]
    first = _run(args)
    assert first.returncode == 0, first.stderr[-3000:]
    want = _final_weights(out)
    _truncate(out / "checkpoints" / "epoch-000001" / "engine-rank1.pt")
    again = _run(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "epoch-000001 is damaged: engine-rank1.pt: truncated" in again.stderr
    assert "moved it to" not in again.stderr  # --replace-stale kept the same configuration
    rec = record.read(out / "record.json")
    assert rec["notes"][0] == "resumed from last.pt after epoch 0"
    assert "engine-rank1.pt: truncated" in rec["notes"][1]
    got = _final_weights(out)
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        ["epoch-000000", "epoch-000001", "epoch-000001.damaged"]
