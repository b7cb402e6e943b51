"""The links `recpar cluster up --scale-model` builds: read from a scale model measured by
`recpar perfmodel scale-model` (a JSON file), or measured first for a profile name.

The dilation arithmetic lives in `recpar.perfmodel.dilation`, above the cluster layer; this
module only reads its output (or runs that command in a subprocess), so `cluster` does not
import `perfmodel`. Latencies are rounded to whole milliseconds, the VDE wirefilter's
resolution; the record keeps the exact scaled value next to the applied one.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from recpar.cluster.netns import ClusterError
from recpar.cluster.state import state_path

LINKS = ("inter_node", "intra_node")


@dataclass(frozen=True)
class ScaleLinks:
    """What `up` applies: (rate bit/s, latency s) per link class, and the record."""

    inter: tuple[float, float]
    intra: tuple[float, float]
    record: dict
    """The scale model as run records keep it (profile, D, measured device, links)."""


def applied_latency_s(latency_s: float) -> float:
    """A scaled latency as the VDE path can delay it: whole milliseconds."""
    return round(latency_s * 1e3) / 1e3


def from_measurement(doc: dict, where: str) -> ScaleLinks:
    """The links of a `recpar perfmodel scale-model` output `doc` (read from `where`)."""
    try:
        sm = doc["scale_model"]
        links = {k: (float(sm[k]["rate_bit_per_s"]), float(sm[k]["latency_s"])) for k in LINKS}
        record = {"profile": str(sm["profile"]),
                  "device_flops_per_s": float(sm["device_flops_per_s"]),
                  "profile_flops_per_s": float(sm["profile_flops_per_s"]),
                  "dilation": float(sm["dilation"]),
                  "cpu_budget_cores_per_device": float(doc["cpu_budget"]["cores_per_device"]),
                  "measured_with": {k: doc["device_measurement"][k]
                                    for k in ("model_size", "n_items", "batch")}}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: not a `recpar perfmodel scale-model` output "
                         f"(missing or bad {e})") from None
    for k, (rate, lat) in links.items():
        if not (math.isfinite(rate) and rate > 0 and math.isfinite(lat) and lat >= 0):
            raise ValueError(f"{where}: scale_model.{k}: rate {rate} / latency {lat} out of range")
        record[k] = {**sm[k], "applied_latency_s": applied_latency_s(lat)}
    return ScaleLinks(
        inter=(links["inter_node"][0], applied_latency_s(links["inter_node"][1])),
        intra=(links["intra_node"][0], applied_latency_s(links["intra_node"][1])),
        record=record)


def measure(profile: str, cpu_budget: float, out: Path) -> None:
    """Run `recpar perfmodel scale-model` for `profile` at `cpu_budget`, writing `out`."""
    cmd = [sys.executable, "-m", "recpar.cli", "perfmodel", "scale-model", "--hardware", profile,
           "--cpu-budget", str(cpu_budget), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise ClusterError(f"measuring the scale model (recpar {' '.join(cmd[3:])}) failed: "
                           f"{err[-1] if err else 'exit ' + str(proc.returncode)}")


def load_or_measure(spec: str, cpu_budget: float | None, prefix: str,
                    state_dir: str | os.PathLike | None) -> ScaleLinks:
    """`spec` is a scale-model JSON file, or a profile name to measure at `cpu_budget`."""
    path = Path(spec)
    if path.suffix == ".json" or path.is_file():
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"--scale-model {spec}: no such file") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{spec}: not valid JSON ({e.msg})") from None
        return from_measurement(doc, spec)
    if cpu_budget is None:
        raise ValueError(f"--scale-model {spec}: measuring a device for a profile needs "
                         f"--cpu-budget CORES (or give a `recpar perfmodel scale-model` file)")
    out = state_path(prefix, state_dir).with_suffix(".scale.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    measure(spec, cpu_budget, out)
    return from_measurement(json.loads(out.read_text()), str(out))
