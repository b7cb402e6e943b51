"""Published outputs ship with the inputs they were rendered from (DESIGN.md: "Published tables
ship with the records they were rendered from").

A command that renders a committed table (`recpar report tables`, `recpar report quality`,
`recpar data table1`) copies its input files into a folder beside the table with `publish`:
each file under the last `keep_parts` parts of its path (a run record
`results/<dataset>/<sweep>/<run>/seed<k>/record.json` keeps `<run>/seed<k>/record.json`), plus
`index.json`, the inputs in the order they were rendered (row order follows it). Files of an
earlier publication that are not among the inputs are removed, so the folder holds exactly
what the table was made from. `expand_inputs` turns such a folder back into the ordered list of
files, so `recpar report tables --records paper_tables/<sweep>/records` re-renders a published
table (tests/report/test_published_tables.py does this for every committed table).

Written by hand because it is a copy and a list; no library does this particular bookkeeping.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from recpar.atomic_write import write_text

INDEX = "index.json"
"""The ordered list of a publication's files, relative to its folder."""


class PublishError(ValueError):
    """Inputs that cannot be published (two inputs with the same relative path)."""


def publish(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
            keep_parts: int) -> list[Path]:
    """Copy `paths` into `out_dir` (each under its last `keep_parts` path parts), write the
    index, remove files of an earlier publication that are not among them; returns the copies.
    Copying a folder's own files onto themselves (re-rendering from it) changes nothing."""
    out = Path(out_dir)
    rels = [Path(*Path(p).parts[-keep_parts:]) for p in paths]
    seen: dict[Path, str] = {}
    for p, rel in zip(paths, rels):
        if rel in seen:
            raise PublishError(f"{p} and {seen[rel]} would both be published as {out / rel}")
        seen[rel] = str(p)
    texts = [Path(p).read_text() for p in paths]  # read all before writing (same folder)
    for old in _listed(out):
        if old not in seen:
            (out / old).unlink(missing_ok=True)
            for parent in (out / old).parents:  # drop folders the removal left empty
                if parent == out or any(parent.iterdir()):
                    break
                parent.rmdir()
    written = [write_text(out / rel, text) for rel, text in zip(rels, texts)]
    write_text(out / INDEX, json.dumps({"files": [r.as_posix() for r in rels]}, indent=1) + "\n")
    return written


def _listed(folder: Path) -> list[Path]:
    index = folder / INDEX
    if not index.is_file():
        return []
    return [Path(r) for r in json.loads(index.read_text())["files"]]


def expand_inputs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, with each published folder replaced by its files in index order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            if not (p / INDEX).is_file():
                raise FileNotFoundError(f"{p}: a folder without {INDEX} is no published set of "
                                        "inputs; pass the files themselves")
            out += [p / rel for rel in _listed(p)]
        else:
            out.append(p)
    return out


def restore(published: str | os.PathLike, dest: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """Copy the files of the publication `published` back under `dest`, each at its published
    relative path (a run record: `<run>/seed<k>/record.json`), so a sweep resumes from them.
    A file already at its destination is kept, never overwritten. Copies get the current time
    as their mtime, so Snakemake (`--rerun-triggers mtime`) takes them as newer than inputs made
    before the restore. Returns (restored, kept)."""
    import shutil

    src = Path(published)
    restored, kept = [], []
    for path in expand_inputs([src]):
        target = Path(dest) / path.relative_to(src)
        if target.exists():
            kept.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)  # copyfile: the new file's mtime is now
        restored.append(target)
    return restored, kept
