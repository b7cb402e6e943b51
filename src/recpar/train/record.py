"""Run records: one schema-validated JSON document per run (DESIGN.md, Measurement protocol).

A record is validated when it is written and again whenever it is read, so a report never
silently consumes a malformed or hand-edited record. The environment facts (versions, git
commit, hardware) are collected here once; they never include the host name.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import jsonschema

from recpar.atomic_write import write_text

SCHEMA_PATH = Path(__file__).with_name("run_record.schema.json")
# Packages whose versions every record carries (absent ones are recorded as null).
VERSIONED_PACKAGES = ("torch", "numpy", "pandas", "megatron-core", "deepspeed",
                      "sentence-transformers", "snakemake")


class RecordError(ValueError):
    """A run record that does not match the schema; the message names the file and the field."""


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def validate(record: dict, where: str = "<record>") -> None:
    errors = sorted(_validator().iter_errors(record), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        field = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise RecordError(f"{where}: invalid run record at {field}: {e.message}{more}")


def write(record: dict, path: str | Path) -> Path:
    """Validate, then write atomically (temp file + rename): a reader never sees half a record."""
    path = Path(path)
    validate(record, str(path))
    return write_text(path, json.dumps(record, indent=2, sort_keys=False) + "\n")


def read(path: str | Path) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{path}: run record not found") from None
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    validate(record, str(path))
    return record


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_from_unix(t: float) -> str:
    return (datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"))


def versions() -> dict:
    import recpar

    out = {"python": platform.python_version(), "recpar": recpar.__version__}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_state(start: Path | None = None) -> dict:
    """Commit and dirtiness of the checkout recpar runs from (null outside a git checkout)."""
    start = start or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=start, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=start, capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 2)  # kB -> GiB
    except OSError:
        pass
    return None


def hardware(device: str = "cpu") -> dict:
    import torch

    accelerators = []
    if device == "cuda" and torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            accelerators.append({"name": p.name, "mem_gib": round(p.total_memory / 2**30, 2)})
    return {
        "device": device,
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "logical_cpus": os.cpu_count() or 1,
        "mem_gib": mem_gib(),
        "torch_threads": torch.get_num_threads(),
        "accelerators": accelerators,
    }

