"""Run records -> rows: reading, sweeps, one row per configuration (seeds averaged), and the
speedup against each sweep's baseline.

How records become rows
-----------------------
* A record's **sweep** is what must be equal for two throughputs to be compared: dataset
  source, model config, use of item text, device kind, CPU model and accelerator names
  (`sweep_key`). The global batch size and the topology are *not* part of it: a parallel run
  may use more devices and a larger global batch than its baseline (columns show both).
* A **row** is one configuration inside a sweep: scheme, plan degrees (dp, tp, pp,
  micro-batches), topology (kind, nodes, ranks per node), gradient sync (algorithm,
  compressor) and global batch size (`RowKey`). Records differing only in seed are averaged
  (arithmetic mean of each metric; `seeds` counts them). Failed records and the non-learned
  `most-popular` reference are left out, and listed in the notes.
* **Speedup** = mean job throughput (`metrics.throughput_samples_per_s`) of the row / mean job
  throughput of the `baseline` records (scheme baseline, one device) of the same sweep. This
  is the paper's definition (§IV.B: each method's throughput against the single-machine
  baseline). A sweep without a baseline record is an error (`BaselineError`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from recpar.report.metrics import MEASURES, comm_share, utilisation
from recpar.train import record as run_record

PAPER_SCHEMES = ("dp", "mp", "hybrid")
"""The parallel schemes of the paper's Tables II-III, in its column order."""
SCHEME_ORDER = ("baseline", "dp", "zero", "mp", "hybrid", "deepspeed")


class RecordsError(ValueError):
    """A record that cannot be used (file name + reason)."""


class BaselineError(ValueError):
    """A sweep without a baseline record; the message says which table needs it."""


def load_records(paths: Iterable[str | Path], skipped: list[str] | None = None
                 ) -> list[tuple[str, dict]]:
    """(path, record) for each file, every one schema-validated. A corrupt, partial or
    older-schema record is an error naming the file; when `skipped` is given (`--skip-invalid`)
    it is left out and its "<file>: <reason>" appended there instead, for the output to list."""
    out = []
    for p in paths:
        try:
            out.append((str(p), run_record.read(p)))
        except run_record.RecordError as e:
            if skipped is None:
                raise RecordsError(str(e)) from None
            skipped.append(str(e))
    if not out:
        raise RecordsError("no run records given" if not skipped else
                           f"no valid run records ({len(skipped)} skipped: {skipped[0]} ...)")
    return out


def skipped_note(skipped: list[str]) -> list[str]:
    """The note every output built with --skip-invalid carries (empty when nothing was)."""
    if not skipped:
        return []
    return [f"{len(skipped)} record(s) failed validation and were left out (--skip-invalid): "
            + "; ".join(skipped)]


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def sweep_fields(rec: dict) -> dict:
    """The fields two records must share for their throughputs to be compared."""
    cfg = rec.get("config", {})
    hw = rec.get("hardware", {})
    return {
        "dataset": rec["dataset"]["source"],
        "model": cfg.get("model"),
        "use_text": cfg.get("use_text"),
        "device": hw.get("device"),
        "cpu_model": hw.get("cpu_model"),
        "accelerators": sorted(a.get("name", "?") for a in hw.get("accelerators", [])),
    }


def sweep_key(rec: dict) -> str:
    """Short stable id of the record's sweep (hash of `sweep_fields`)."""
    return hashlib.sha1(_canon(sweep_fields(rec)).encode()).hexdigest()[:8]


def _grad_sync_label(rec: dict) -> str:
    """algorithm/compressor of DP gradient sync; '-' without DP; '?' for a part the record does
    not state (never assumed 'none': an unstated compressor is not known to be lossless)."""
    gs = (rec.get("config") or {}).get("grad_sync")
    if not gs or rec["plan"].get("dp", 1) == 1:
        return "-"
    comp = gs.get("compressor") or gs.get("compression") or "?"
    return f"{gs.get('algorithm') or '?'}/{comp}"


@dataclass(frozen=True, order=True)
class RowKey:
    """One configuration inside a sweep; records that differ only in seed share it."""

    sweep: str
    """sweep_key of its records."""
    scheme_rank: int
    """Position of the scheme in SCHEME_ORDER (for sorting)."""
    scheme: str
    """Run record `scheme`."""
    nodes: int
    """topology.nodes."""
    world_size: int
    """plan.world_size (devices or ranks)."""
    dp: int
    """plan.dp."""
    tp: int
    """plan.tp."""
    pp: int
    """plan.pp."""
    microbatches: int
    """plan.num_microbatches (1 when absent)."""
    ranks_per_node: int
    """topology.ranks_per_node."""
    topology: str
    """topology.kind."""
    grad_sync: str
    """algorithm/compressor of DP gradient sync, '-' without DP."""
    global_batch_size: int
    """config.train.global_batch_size (0 when absent)."""
    run_id: str
    """The run id, which spells out everything else that ran (top-k ratio, overlap, bucket
    size, schedule, ...): records of one configuration differ only in seed, so two settings
    the fields above do not tell apart are never averaged as if they were seeds."""
    ep: int = 1
    """plan.ep: expert-parallel degree of an MoE run (1 when absent)."""

    @property
    def sync_algorithm(self) -> str:
        """The all-reduce algorithm of grad_sync (ring, hierarchical; '-' without DP)."""
        return self.grad_sync.split("/", 1)[0]

    @property
    def compressor(self) -> str:
        """The gradient compressor of grad_sync (none, sign, topk, ...; '-' without DP)."""
        return self.grad_sync.split("/", 1)[-1]

    @property
    def plan_label(self) -> str:
        mb = f"·mb{self.microbatches}" if self.pp > 1 else ""
        ep = f"·ep{self.ep}" if self.ep > 1 else ""
        return f"dp{self.dp}{ep}·tp{self.tp}·pp{self.pp}{mb}"

    @property
    def topology_label(self) -> str:
        return f"{self.nodes}×{self.ranks_per_node} {self.topology}"


def row_key(rec: dict) -> RowKey:
    plan, topo = rec["plan"], rec["topology"]
    scheme = rec["scheme"]
    return RowKey(
        sweep=sweep_key(rec),
        scheme_rank=SCHEME_ORDER.index(scheme) if scheme in SCHEME_ORDER else len(SCHEME_ORDER),
        scheme=scheme, nodes=int(topo["nodes"]), world_size=int(plan["world_size"]),
        dp=int(plan["dp"]), tp=int(plan["tp"]), pp=int(plan["pp"]),
        microbatches=int(plan.get("num_microbatches", 1) or 1),
        ranks_per_node=int(topo["ranks_per_node"]), topology=str(topo["kind"]),
        grad_sync=_grad_sync_label(rec),
        global_batch_size=int((rec["config"].get("train") or {}).get("global_batch_size", 0)),
        run_id=str(rec["run_id"]), ep=int(plan.get("ep", 1) or 1))


@dataclass
class Row:
    """One configuration of one sweep, seeds averaged."""

    key: RowKey
    """Its identity."""
    records: list[dict] = field(default_factory=list)
    """The records (one per seed)."""
    paths: list[str] = field(default_factory=list)
    """Their files."""

    def values(self, measure: str) -> list[float]:
        """The measure of each seed's record that has it (records lacking it are left out)."""
        return [v for v in (MEASURES[measure](r) for r in self.records) if v is not None]

    def mean(self, measure: str) -> float | None:
        vals = self.values(measure)
        return sum(vals) / len(vals) if vals else None

    def std(self, measure: str) -> float | None:
        """Sample standard deviation over the seeds (n − 1); None with fewer than 2 seeds."""
        vals = self.values(measure)
        if len(vals) < 2:
            return None
        mu = sum(vals) / len(vals)
        return math.sqrt(sum((v - mu) ** 2 for v in vals) / (len(vals) - 1))

    def basis(self, which: str) -> str | None:
        fn = utilisation if which == "util" else comm_share
        bases = sorted({b for b in (fn(r)[1] for r in self.records) if b})
        return "/".join(bases) if bases else None

    @property
    def seeds(self) -> list[int]:
        return sorted({r["seed"] for r in self.records})

    @property
    def hardware(self) -> dict:
        return self.records[0]["hardware"]


@dataclass
class RecordSet:
    """Records grouped into rows, with each sweep's baseline."""

    rows: list[Row]
    """Every configuration, sorted by sweep, scheme, nodes, devices."""
    sweeps: dict[str, dict]
    """sweep id -> sweep_fields of its records."""
    skipped: list[str]
    """Records left out, with why."""

    def baseline(self, sweep: str) -> Row | None:
        rows = [r for r in self.rows if r.key.sweep == sweep and r.key.scheme == "baseline"
                and r.key.world_size == 1]
        if not rows:
            return None
        merged = Row(key=rows[0].key)
        for r in rows:
            merged.records += r.records
            merged.paths += r.paths
        return merged

    def speedup(self, row: Row) -> float | None:
        """Row throughput / same-sweep baseline throughput (None when either is missing)."""
        base = self.baseline(row.key.sweep)
        t, b = row.mean("throughput_samples_per_s"), (
            base.mean("throughput_samples_per_s") if base else None)
        return t / b if t is not None and b else None

    def require_baselines(self, table: str) -> None:
        """BaselineError naming the sweep, its records and the table that needs a baseline."""
        for sweep, fields in self.sweeps.items():
            if self.baseline(sweep) is None:
                files = sorted({p for r in self.rows if r.key.sweep == sweep for p in r.paths})
                raise BaselineError(
                    f"{table} needs a baseline record (scheme baseline, 1 device) in every "
                    f"sweep; sweep {sweep} ({describe_sweep(fields)}) has none. Its records: "
                    f"{', '.join(files)}")

    def matching(self, scheme: str, *, world_size: int | None = None, nodes: int | None = None,
                 plan: dict | None = None) -> list[Row]:
        out = []
        for r in self.rows:
            k = r.key
            if k.scheme != scheme or (world_size is not None and k.world_size != world_size):
                continue
            if nodes is not None and k.nodes != nodes:
                continue
            if plan and any(getattr(k, d) != v for d, v in plan.items()):
                continue
            out.append(r)
        return out


def describe_sweep(fields: dict) -> str:
    model = fields.get("model") or {}
    size = "×".join(str(model.get(k, "?")) for k in ("d_model", "n_layers"))
    acc = ",".join(fields.get("accelerators") or []) or fields.get("cpu_model") or "?"
    moe = ""
    if model.get("num_moe_experts"):
        cap = model.get("moe_expert_capacity_factor")
        moe = (f", MoE {model['num_moe_experts']} experts top-{model.get('moe_router_topk')} "
               f"every {model.get('moe_layer_freq')} block(s), aux loss "
               f"{model.get('moe_aux_loss_coeff')}, "
               + ("dropless" if cap is None else f"capacity {cap}"))
    return (f"{fields['dataset']}, model d_model×layers {size}{moe}, {fields.get('device')} "
            f"({acc})")


def group(records: list[tuple[str, dict]]) -> RecordSet:
    rows: dict[RowKey, Row] = {}
    sweeps: dict[str, dict] = {}
    skipped = []
    for path, rec in records:
        if rec["status"] != "completed":
            skipped.append(f"{path}: status {rec['status']}")
            continue
        if rec["scheme"] == "most-popular":
            skipped.append(f"{path}: most-popular is a non-learned reference, not a scheme")
            continue
        k = row_key(rec)
        sweeps.setdefault(k.sweep, sweep_fields(rec))
        row = rows.setdefault(k, Row(key=k))
        row.records.append(rec)
        row.paths.append(path)
    return RecordSet(rows=[rows[k] for k in sorted(rows)], sweeps=sweeps, skipped=skipped)


def _provenance(rs: RecordSet, sweep: str) -> str:
    """Commits and topologies the sweep's records came from (what a reader needs to trust
    committed tables without rerunning them)."""
    recs = [rec for row in rs.rows if row.key.sweep == sweep for rec in row.records]
    commits = sorted({f"{(r.get('git') or {}).get('commit') or 'unknown'}"[:12]
                      + ("+dirty" if (r.get("git") or {}).get("dirty") else "") for r in recs})
    topos = sorted({str((r.get("topology") or {}).get("kind")) for r in recs})
    text = f"git {', '.join(commits)}; topology {', '.join(topos)}"
    budget_of = [(r.get("topology") or {}).get("cpu_budget") or {} for r in recs]
    budgets = sorted({b.get("cores_per_device") for b in budget_of} - {None})
    if budgets:
        text += f"; each device on a CPU budget of {', '.join(f'{b:g}' for b in budgets)} core(s)"
    scales = {json.dumps(r["topology"]["scale_model"], sort_keys=True): r["topology"]
              for r in recs if (r.get("topology") or {}).get("scale_model")}
    text += "".join(f"; {describe_scale_model(t)}" for t in scales.values())
    return text


def _mbit(v) -> str:
    return "?" if v is None else f"{v / 1e6:.3g} Mbit/s"


def _ms(v) -> str:
    return "?" if v is None else f"{v * 1e3:.3g} ms"


def describe_scale_model(topo: dict) -> str:
    """One line on a scale-model topology: profile, dilation, and each link as configured
    (scaled) and calibrated (recpar.perfmodel.dilation, recpar.cluster.device_links)."""
    sm = topo["scale_model"]
    links = []
    for key, what in (("inter_node", "inter-node"), ("intra_node", "intra-node")):
        conf = (topo.get(key) or {}).get("configured") or {}
        cal = (topo.get(key) or {}).get("calibrated") or {}
        prof = sm.get(key) or {}
        links.append(f"{what} {_mbit(conf.get('rate_bit_per_s'))} + {_ms(conf.get('latency_s'))}"
                     f" (profile {_mbit(prof.get('profile_rate_bit_per_s'))} + "
                     f"{_ms(prof.get('profile_latency_s'))}; calibrated "
                     f"{_mbit(cal.get('rate_bit_per_s'))} + {_ms(cal.get('latency_s'))})")
    return (f"scale model of `{sm['profile']}`: dilation D = {sm['dilation']:.3g} (one device "
            f"measured at {sm['device_flops_per_s'] / 1e9:.3g} GFLOP/s on "
            f"{sm.get('cpu_budget_cores_per_device', '?')} core(s)); links scaled by D: "
            + "; ".join(links))


def sweep_notes(rs: RecordSet) -> list[str]:
    notes = [f"sweep `{s}`: {describe_sweep(f)}; {_provenance(rs, s)}"
             for s, f in rs.sweeps.items()]
    notes += [f"skipped {s}" for s in rs.skipped]
    return notes
