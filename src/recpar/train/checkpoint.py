"""Checkpoints: `last.pt` (resume an interrupted run) and `best.pt` (early-stopping winner).

Both are written atomically (temp file + rename), so a run killed while saving leaves the
previous checkpoint intact. A checkpoint carries a fingerprint of the run's configuration; a
resume with a different configuration is refused with both fingerprints in the message.
`last.pt` is one file of a checkpoint generation (`recpar.train.checkpoint_generations`: the
last two kept, checksummed, a damaged one falls back to the previous).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from recpar.atomic_write import atomic_open


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed (other config, unreadable file)."""


def fingerprint(config: dict) -> str:
    """sha256 of the canonical JSON of everything that must match for a resume."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save(path: str | Path, state: dict) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def load(path: str | Path, expect_fingerprint: str | None = None) -> dict:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for truncated/corrupt files
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e
    got = state.get("fingerprint")
    if expect_fingerprint is not None and got != expect_fingerprint:
        raise CheckpointError(
            f"{path}: written by a run with config fingerprint {got}, this run is "
            f"{expect_fingerprint}; delete the directory or use another --out"
        )
    return state


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_deepspeed(engine, where: str | Path, fingerprint: str) -> None:
    """DeepSpeed's own checkpoint (tag `last`) of `engine`, carrying the run's fingerprint in
    its client state; a collective (every rank writes its partition)."""
    engine.save_checkpoint(str(where), tag="last", client_state={"fingerprint": fingerprint})


def load_deepspeed(engine, where: str | Path, fingerprint: str) -> None:
    """Load what `save_deepspeed` wrote; a missing checkpoint or another fingerprint is a
    CheckpointError naming the directory and both fingerprints."""
    path, client = engine.load_checkpoint(str(where), tag="last")
    if path is None:
        raise CheckpointError(f"{where}: no DeepSpeed checkpoint 'last' although last.pt "
                              "exists; delete the directory")
    got = (client or {}).get("fingerprint")
    if got != fingerprint:
        raise CheckpointError(f"{path}: written by a run with config fingerprint {got}, this "
                              f"run is {fingerprint}")
