"""Checkpoint generations: the last two epochs' checkpoints, each verified by checksums.

Layout of a run directory `out`:

    out/checkpoints/epoch-000003/  one generation: everything a resume after epoch 3 needs
        engine-rank<r>.pt, deepspeed/  every rank's training state (`Engine.save` writes here)
        last.pt                        full weights, progress and RNG state (rank 0)
        manifest.json                  size and sha256 of every file above: the commit marker
    out/checkpoints/epoch-000002/  the previous generation
    out/last.pt                    a relative link to the newest committed generation's last.pt

Saving (`generation_dir`, every rank's `Engine.save` into it, a barrier, then rank 0's
`commit`): a generation counts once its manifest exists, and the manifest is written last,
atomically. Only then are older generations beyond `KEEP` removed, so a run killed at any point
leaves at least one whole generation. The engine state lives inside the generation because it
must match the weights it goes with: overwriting it in place before the commit would pair the
next epoch's optimiser state with the previous epoch's weights.

Resuming (`resume_point`, rank 0 decides for every rank): the newest committed generation whose
files all match the manifest (present, same size, same sha256). A damaged generation (a file
truncated, corrupted, missing or unreadable) is reported by name on stderr and in the notes
that go into the run record, moved aside to `<name>.damaged` (kept for inspection, never read
again) and the previous generation is used. When no generation is usable the run stops with a
`CheckpointError` naming every damaged file. Generations without a manifest (the run stopped
while saving them) are incomplete, not damaged: they are removed. Assumes, like a multi-rank
resume already does, that every rank sees the same run directory (a shared file system).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

from recpar.atomic_write import write_text
from recpar.train import checkpoint
from recpar.train.checkpoint import CheckpointError

CHECKPOINTS_DIR = "checkpoints"
MANIFEST = "manifest.json"
LAST = "last.pt"
KEEP = 2
"""Committed generations kept: the newest and the one to fall back to."""
MANIFEST_FORMAT = 1
_NAME = re.compile(r"epoch-(\d+)")
_READ_CHUNK = 1 << 20  # bytes hashed per read: large checkpoints never sit in memory twice


@dataclass
class Resumable:
    """The generation a run resumes from, and what was wrong with newer ones."""

    path: Path
    """The generation's directory (what `Engine.load` reads)."""
    epoch: int
    notes: list[str] = field(default_factory=list)
    """One line per damaged newer generation, for the run record's notes."""

    @property
    def last_path(self) -> Path:
        return self.path / LAST


def generation_dir(out: str | Path, epoch: int) -> Path:
    """Where the checkpoint after `epoch` is saved (6 digits: sorts by name as by epoch)."""
    return Path(out) / CHECKPOINTS_DIR / f"epoch-{epoch:06d}"


def commit(gen_dir: str | Path, state: dict) -> None:
    """Rank 0, after every rank's engine state is in `gen_dir`: write last.pt (`state`: the
    loop's progress, with `epoch` and `fingerprint`), then the manifest (the commit), point
    `out/last.pt` at it and remove generations older than the newest `KEEP`."""
    gen_dir = Path(gen_dir)
    checkpoint.save(gen_dir / LAST, state)
    files = {p.relative_to(gen_dir).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(gen_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}
    write_text(gen_dir / MANIFEST, json.dumps({
        "format": MANIFEST_FORMAT, "epoch": state["epoch"], "fingerprint": state["fingerprint"],
        "files": files}, indent=1) + "\n")
    out = gen_dir.parent.parent
    _point_last_at(out, gen_dir)
    for old in _committed(out)[KEEP:]:
        shutil.rmtree(old)


def resume_point(out: str | Path, fingerprint: str, rank: int, world: int) -> Resumable | None:
    """Every rank: the generation to resume from (rank 0 checks and tidies, the others get its
    answer), None to start fresh; the same CheckpointError on every rank when checkpoints
    exist but none is usable or they belong to another configuration."""
    found: Resumable | CheckpointError | None = None
    if rank == 0:
        try:
            found = find_resumable(out, fingerprint)
        except CheckpointError as e:
            found = e
    if world > 1:
        box = [found]
        dist.broadcast_object_list(box, src=0)
        found = box[0]
    if isinstance(found, CheckpointError):
        raise found
    return found


def find_resumable(out: str | Path, fingerprint: str) -> Resumable | None:
    """Rank 0: the newest usable generation of `out` (see the module docstring), or None when
    nothing was committed; removes incomplete generations, moves damaged ones aside once an
    older one is found usable."""
    out = Path(out)
    for gen in _generations(out):
        if not (gen / MANIFEST).exists():
            print(f"recpar train: {gen} was never committed (the run stopped while saving "
                  "it); removed", file=sys.stderr)
            shutil.rmtree(gen)
    committed = _committed(out)
    if not committed:
        if (out / LAST).is_file() and not (out / LAST).is_symlink():
            raise CheckpointError(f"{out / LAST}: a checkpoint of the layout before "
                                  f"{CHECKPOINTS_DIR}/ generations, which cannot be resumed; "
                                  "move the directory aside (recpar train --replace-stale)")
        return None
    damaged: list[tuple[Path, list[str]]] = []
    for gen in committed:
        problems = _problems(gen, fingerprint)
        if not problems:
            notes = [_damage_note(out, bad, found, gen) for bad, found in damaged]
            for bad, _ in damaged:
                _move_aside(bad)
            if damaged:
                _point_last_at(out, gen)
            return Resumable(path=gen, epoch=_epoch(gen), notes=notes)
        damaged.append((gen, problems))
        print(f"recpar train: checkpoint {gen} is damaged: {'; '.join(problems)}",
              file=sys.stderr)
    raise CheckpointError(
        f"{out}: no usable checkpoint: "
        + "; ".join(f"{gen.name}/{p}" for gen, problems in damaged for p in problems)
        + "; move the directory aside (recpar train --replace-stale) or delete it")


def stored_fingerprint(out: str | Path) -> str | None:
    """The configuration fingerprint of the checkpoints in `out` (from the newest readable
    manifest); None when nothing was committed; "" when checkpoints exist but none says
    (unreadable manifests, or the layout before generations): not a run this code resumes."""
    out = Path(out)
    committed = _committed(out)
    for gen in committed:
        manifest = _read_manifest(gen)
        if isinstance(manifest, dict) and isinstance(manifest.get("fingerprint"), str):
            return manifest["fingerprint"]
    if committed or (out / LAST).is_file():
        return ""
    return None


def _problems(gen: Path, fingerprint: str) -> list[str]:
    """What is wrong with committed generation `gen` (empty: usable); another configuration's
    generation is not damaged but refused (CheckpointError)."""
    manifest = _read_manifest(gen)
    if isinstance(manifest, str):
        return [f"{MANIFEST}: {manifest}"]
    got = manifest.get("fingerprint")
    if got != fingerprint:
        raise CheckpointError(f"{gen / MANIFEST}: written by a run with config fingerprint "
                              f"{got}, this run is {fingerprint}; delete the directory or use "
                              "another --out")
    problems = []
    for rel, want in manifest.get("files", {}).items():
        path = gen / rel
        try:
            size = path.stat().st_size
            if size != want["bytes"]:
                what = "truncated" if size < want["bytes"] else "longer than written"
                problems.append(f"{rel}: {what} ({size} bytes, manifest says {want['bytes']})")
                continue
            digest = _sha256(path)
        except FileNotFoundError:
            problems.append(f"{rel}: missing")
            continue
        except OSError as e:
            problems.append(f"{rel}: unreadable ({e.strerror or e})")
            continue
        if digest != want["sha256"]:
            problems.append(f"{rel}: checksum mismatch (sha256 {digest[:12]}..., manifest says "
                            f"{want['sha256'][:12]}...)")
    if LAST not in manifest.get("files", {}):
        problems.append(f"{LAST}: not in the manifest")
    return problems


def _read_manifest(gen: Path) -> dict | str:
    """The manifest of `gen`, or what makes it unreadable."""
    try:
        manifest = json.loads((gen / MANIFEST).read_text())
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"unreadable (not JSON: {e})"
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return f"unreadable (not a format-{MANIFEST_FORMAT} manifest)"
    return manifest


def _damage_note(out: Path, bad: Path, problems: list[str], used: Path) -> str:
    rel = bad.relative_to(out).as_posix()
    return (f"checkpoint {rel} damaged ({'; '.join(problems)}); moved aside to {rel}.damaged "
            f"and resumed from the previous generation {used.relative_to(out).as_posix()}")


def _generations(out: Path) -> list[Path]:
    """Every generation directory of `out`, committed or not, newest first."""
    root = out / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    gens = [p for p in root.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
    return sorted(gens, key=_epoch, reverse=True)


def _committed(out: Path) -> list[Path]:
    """The generations with a manifest, newest first."""
    return [g for g in _generations(out) if (g / MANIFEST).exists()]


def _epoch(gen: Path) -> int:
    return int(_NAME.fullmatch(gen.name).group(1))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _point_last_at(out: Path, gen: Path) -> None:
    """Replace `out/last.pt` atomically by a relative link to `gen`'s last.pt (relative: the
    run directory can be moved or copied whole)."""
    tmp = out / f".{LAST}.{os.getpid()}.link"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(gen / LAST, out), tmp)
    os.replace(tmp, out / LAST)


def _move_aside(gen: Path) -> None:
    """`gen` -> `<gen>.damaged` (an earlier damaged copy of the same epoch is replaced)."""
    dest = gen.with_name(f"{gen.name}.damaged")
    if dest.exists():
        shutil.rmtree(dest)
    gen.rename(dest)
