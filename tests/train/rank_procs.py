"""Find the process of one rank of a `recpar train` run (for tests that stop or kill it)."""

from __future__ import annotations

import os
from pathlib import Path


def rank_pid(spec: Path, rank: int) -> int | None:
    """pid of the live `recpar.train.worker` of `spec` whose RANK is `rank`, or None."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"recpar.train.worker" not in cmdline or str(spec).encode() not in cmdline:
                continue
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(pid)
    return None


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
