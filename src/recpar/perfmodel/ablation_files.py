"""An ablation's files: the log of each run it starts (`run_logged`), and what it publishes
(`write_ablation_files`): `<stem>.json` (the whole result), `<stem>.csv` (its rows), `<stem>.md`
(question, table, measured answer) and `<stem>.png` (its figure), in one directory, each
written atomically (recpar.atomic_write)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def run_logged(cmd: Sequence[str], log: Path, what: str) -> None:
    """Run `cmd` with its output in `log`; raise RuntimeError naming `what` and the log when it
    fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        rc = subprocess.run(list(cmd), stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"{what} exited with {rc} (log: {log})")


def write_ablation_files(out_dir: str | os.PathLike, stem: str, result: Any,
                         csv_lines: Sequence[str], markdown: str,
                         figure: Callable[[Path], None]) -> list[Path]:
    """Write the four files; returns their paths in the order json, csv, md, png."""
    from recpar.atomic_write import write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.{ext}" for ext in ("json", "csv", "md", "png")]
    write_text(paths[0], json.dumps(result, indent=2, sort_keys=True))
    write_text(paths[1], "\n".join(csv_lines) + "\n")
    write_text(paths[2], markdown)
    figure(paths[3])
    return paths
