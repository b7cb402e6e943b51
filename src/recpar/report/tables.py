"""Tables II and III and the communication share (Fig. 4) from run records.

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
* The paper's number sits next to each measured one (paper_tables/paper.yaml), and a
  **projected** one from recpar.perfmodel for the paper's cluster (profile `paper-a100`, the
  perfmodel's default projection settings) — labelled projected, never mixed with measured.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from recpar.report.paper import Paper
from recpar.train import record as run_record

NOT_RUN = "not run"
PAPER_SCHEMES = ("dp", "mp", "hybrid")
"""The parallel schemes of the paper's Tables II-III, in its column order."""
SCHEME_ORDER = ("baseline", "dp", "zero", "mp", "hybrid", "deepspeed")
QUALITY_SPLIT = "test"
PROTOCOLS = ("full", "sampled100")


class RecordsError(ValueError):
    """A record that cannot be used (file name + reason)."""


class BaselineError(ValueError):
    """A sweep without a baseline record; the message says which table needs it."""


# --- reading ---------------------------------------------------------------------------------

def load_records(paths: Iterable[str | Path]) -> list[tuple[str, dict]]:
    """(path, record) for each file, every one schema-validated; errors name the file."""
    out = []
    for p in paths:
        try:
            out.append((str(p), run_record.read(p)))
        except run_record.RecordError as e:
            raise RecordsError(str(e)) from None
    if not out:
        raise RecordsError("no run records given")
    return out


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
    gs = (rec.get("config") or {}).get("grad_sync")
    if not gs or rec["plan"].get("dp", 1) == 1:
        return "-"
    comp = gs.get("compressor") or gs.get("compression") or "none"
    return f"{gs.get('algorithm', '?')}/{comp}"


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

    @property
    def plan_label(self) -> str:
        mb = f"·mb{self.microbatches}" if self.pp > 1 else ""
        return f"dp{self.dp}·tp{self.tp}·pp{self.pp}{mb}"

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
        global_batch_size=int((rec["config"].get("train") or {}).get("global_batch_size", 0)))


# --- per-record measurements -----------------------------------------------------------------

def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def utilisation(rec: dict) -> tuple[float | None, str | None]:
    """(percent, basis): NVML GPU utilisation when the record has it, else process CPU share."""
    m = rec["metrics"]
    if _num(m.get("gpu_util_pct")) is not None:
        return float(m["gpu_util_pct"]), "gpu"
    if _num(m.get("cpu_util_pct")) is not None:
        return float(m["cpu_util_pct"]), "cpu"
    return None, None


def _model_parallel_comm(rec: dict) -> tuple[float | None, str | None]:
    """(ms per iteration rank 0 spends in communication it cannot compute through, basis) of
    a tp > 1 or pp > 1 record: TP collectives (time blocked, recpar.comm.group_timer), the
    pipeline's waits (idle: P2P and bubble, which torch's schedules do not separate; plus the
    tied-table all-reduce and the loss broadcast) and DP gradient sync (exposed where the
    engine measured it, pp = 1; else hook time, which also counts what backward hid)."""
    m, plan = rec["metrics"], rec["plan"]
    parts, basis = [], []
    if plan.get("tp", 1) > 1:
        tp = _num(m.get("tp_comm_ms_per_iter"))
        if tp is None:
            return None, None
        parts.append(tp)
        basis.append("TP blocked")
    if plan.get("pp", 1) > 1:
        idle = _num(m.get("pp_idle_ms_per_iter"))
        if idle is None:
            return None, None
        parts += [idle, _num(m.get("pp_tied_grad_allreduce_ms_per_iter")) or 0.0,
                  _num(m.get("pp_loss_broadcast_ms_per_iter")) or 0.0]
        basis.append("PP wait (P2P + bubble)")
    if plan.get("dp", 1) > 1:
        exposed = _num(m.get("exposed_comm_ms_per_iter"))
        hook = _num(m.get("dp_grad_sync_ms_per_iter"))
        if exposed is not None:
            parts.append(exposed)
            basis.append("DP exposed")
        elif hook is not None:
            parts.append(hook)
            basis.append("DP hook time (incl. overlapped)")
        else:
            return None, None
    return sum(parts), " + ".join(basis)


def comm_share(rec: dict) -> tuple[float | None, str | None]:
    """(percent of an iteration spent communicating, basis).

    Schemes mp and hybrid (tp > 1 or pp > 1, recpar's own engine): the sum of their parts
    (_model_parallel_comm) / iter_ms. Otherwise, preference: exposed_comm_ms_per_iter (fwd+bwd
    with sync − without) / iter_ms, then hook time comm_ms_per_iter / iter_ms (counts time
    hidden by overlap too). A single-device run communicates nothing: 0.
    """
    m = rec["metrics"]
    if rec["plan"]["world_size"] == 1:
        return 0.0, "single device"
    it = _num(m.get("iter_ms"))
    if rec.get("scheme") in ("mp", "hybrid") and (rec["plan"].get("tp", 1) > 1
                                                  or rec["plan"].get("pp", 1) > 1):
        ms, basis = _model_parallel_comm(rec)
        return (100.0 * ms / it, basis) if ms is not None and it else (None, None)
    if it and _num(m.get("exposed_comm_ms_per_iter")) is not None:
        return 100.0 * m["exposed_comm_ms_per_iter"] / it, "exposed"
    if it and _num(m.get("comm_ms_per_iter")) is not None:
        return 100.0 * m["comm_ms_per_iter"] / it, "hook time (incl. overlapped)"
    return None, None


def device_mem_pct(rec: dict) -> float | None:
    """Peak device memory as % of the accelerator's memory (None on CPU)."""
    peak = _num(rec["metrics"].get("peak_device_mem_gib"))
    acc = rec["hardware"].get("accelerators") or []
    total = _num(acc[0].get("mem_gib")) if acc else None
    return 100.0 * peak / total if peak is not None and total else None


def quality(rec: dict, protocol: str, metric: str) -> float | None:
    try:
        return _num(rec["quality"][QUALITY_SPLIT][protocol][metric])
    except KeyError:
        return None


def _mib(gib: Any) -> float | None:
    v = _num(gib)
    return None if v is None else v * 1024


MEASURES = {
    "throughput_samples_per_s": lambda r: _num(r["metrics"].get("throughput_samples_per_s")),
    "throughput_samples_per_s_per_device":
        lambda r: _num(r["metrics"].get("throughput_samples_per_s_per_device")),
    "iter_ms": lambda r: _num(r["metrics"].get("iter_ms")),
    "util_pct": lambda r: utilisation(r)[0],
    "comm_ms_per_iter": lambda r: _num(r["metrics"].get("comm_ms_per_iter")),
    "exposed_comm_ms_per_iter": lambda r: (0.0 if r["plan"]["world_size"] == 1 else
                                           _num(r["metrics"].get("exposed_comm_ms_per_iter"))),
    "comm_share_pct": lambda r: comm_share(r)[0],
    # model parallelism: the slowest rank's blocked time in megatron's TP collectives, the
    # pipeline's idle time (P2P waits and bubble; rank 0's stage), per-rank state and memory
    "tp_comm_ms_per_iter": lambda r: _num(r["metrics"].get("tp_comm_ms_per_iter_max_over_ranks")),
    "pp_idle_ms_per_iter": lambda r: _num(r["metrics"].get("pp_idle_ms_per_iter")),
    "model_state_mib": lambda r: _mib(r["metrics"].get("model_state_gib_max_over_ranks",
                                                        r["metrics"].get("model_state_gib"))),
    "peak_rss_gib": lambda r: _num(r["metrics"].get("peak_rss_gib_max_over_ranks",
                                                     r["metrics"].get("peak_rss_gib"))),
    "device_mem_pct": device_mem_pct,
    "gpu_util_min_over_ranks_pct": lambda r: _num(r["metrics"].get("gpu_util_pct_min_over_ranks")),
    **{f"{m}_{p}": (lambda r, m=m, p=p: quality(r, p, m))
       for p in PROTOCOLS for m in ("hr_at_10", "ndcg_at_10")},
}
"""Row measure -> how to read it from one record (None when the record lacks it)."""


@dataclass
class Row:
    """One configuration of one sweep, seeds averaged."""

    key: RowKey
    """Its identity."""
    records: list[dict] = field(default_factory=list)
    """The records (one per seed)."""
    paths: list[str] = field(default_factory=list)
    """Their files."""

    def _values(self, measure: str) -> list[float]:
        return [v for v in (MEASURES[measure](r) for r in self.records) if v is not None]

    def mean(self, measure: str) -> float | None:
        vals = self._values(measure)
        return sum(vals) / len(vals) if vals else None

    def std(self, measure: str) -> float | None:
        """Sample standard deviation over the seeds (n − 1); None with fewer than 2 seeds."""
        vals = self._values(measure)
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
    return f"{fields['dataset']}, model d_model×layers {size}, {fields.get('device')} ({acc})"


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


# --- projections (recpar.perfmodel) ----------------------------------------------------------

@dataclass
class Projection:
    """perfmodel's projection of Tables II-III on the paper's cluster (kind: projected)."""

    table2: dict[str, dict]
    """scheme -> projected row (one node)."""
    table3: dict[tuple[int, str], dict]
    """(nodes, scheme) -> projected row."""
    caption: str
    """What it was projected for (hardware, model size, batch)."""
    error: str | None = None
    """Why there is no projection, when there is none."""


def project(paper: Paper) -> Projection:
    """Project on the paper's hardware profile; a failure leaves an empty, explained projection."""
    from recpar.perfmodel.costs import CostInputError
    from recpar.perfmodel.hardware import ProfileError, load_profile
    from recpar.perfmodel.predict import ProjectionSettings, project_paper_tables

    try:
        hw = load_profile(paper.profile)
        settings = ProjectionSettings(nodes=tuple(paper.table3_nodes()))
        res = project_paper_tables(hw, settings)
    except (CostInputError, ProfileError) as e:
        return Projection({}, {}, "", error=f"no projection: {e}")
    a = res["assumptions"]
    caption = (f"projected by recpar.perfmodel on `{a['hardware']}` for model size "
               f"`{a['model_size']}` ({a['trainable_params'] / 1e6:.0f} M parameters), "
               f"{a['batch_per_gpu']} sequences per GPU per step, {a['num_microbatches']} "
               "micro-batches; conditional on these choices (the paper states none)")
    return Projection(table2={r["scheme"]: r for r in res["table2"]},
                      table3={(r["nodes"], r["scheme"]): r for r in res["table3"]},
                      caption=caption)


# --- Table II --------------------------------------------------------------------------------

def _paper(paper: Paper, scheme: str, metric: str) -> float | None:
    q = paper.table2_value(scheme, metric)
    return q.value if q else None


def table2(rs: RecordSet, paper: Paper, proj: Projection) -> pd.DataFrame:
    """One row per configuration: measured, paper (Table II, same scheme) and projected."""
    rs.require_baselines("Table II (speedup column)")
    out = []
    for r in rs.rows:
        k = r.key
        p2 = proj.table2.get(k.scheme, {})
        out.append({
            "sweep": k.sweep, "scheme": k.scheme, "plan": k.plan_label,
            "devices": k.world_size, "topology": k.topology_label, "grad_sync": k.grad_sync,
            "global_batch": k.global_batch_size, "seeds": len(r.seeds),
            "throughput_samples_per_s": r.mean("throughput_samples_per_s"),
            "throughput_samples_per_s_std": r.std("throughput_samples_per_s"),
            "throughput_samples_per_s_per_device": r.mean("throughput_samples_per_s_per_device"),
            "speedup": rs.speedup(r),
            "util_pct": r.mean("util_pct"), "util_basis": r.basis("util"),
            "comm_ms_per_iter_hook": r.mean("comm_ms_per_iter"),
            "comm_ms_per_iter_exposed": r.mean("exposed_comm_ms_per_iter"),
            "tp_comm_ms_per_iter": r.mean("tp_comm_ms_per_iter"),
            "pp_idle_ms_per_iter": r.mean("pp_idle_ms_per_iter"),
            "model_state_mib_max_rank": r.mean("model_state_mib"),
            "peak_rss_gib_max_rank": r.mean("peak_rss_gib"),
            "hr_at_10_full": r.mean("hr_at_10_full"),
            "hr_at_10_full_std": r.std("hr_at_10_full"),
            "ndcg_at_10_full": r.mean("ndcg_at_10_full"),
            "hr_at_10_sampled100": r.mean("hr_at_10_sampled100"),
            "ndcg_at_10_sampled100": r.mean("ndcg_at_10_sampled100"),
            "paper_devices": (paper.table2_row(k.scheme) or {}).get("devices"),
            "paper_throughput_samples_per_s": _paper(paper, k.scheme, "throughput_samples_per_s"),
            "paper_speedup": _paper(paper, k.scheme, "speedup"),
            "paper_gpu_util_pct": _paper(paper, k.scheme, "gpu_util_pct"),
            "paper_comm_ms_per_iter": _paper(paper, k.scheme, "comm_ms_per_iter"),
            "paper_hr_at_10": _paper(paper, k.scheme, "hr_at_10"),
            "paper_ndcg_at_10": _paper(paper, k.scheme, "ndcg_at_10"),
            "projected_throughput_samples_per_s": p2.get("throughput_samples_per_s"),
            "projected_speedup": p2.get("speedup"),
            "projected_comm_ms_per_iter": p2.get("comm_ms_per_iter"),
        })
    return pd.DataFrame(out)


# --- Table III -------------------------------------------------------------------------------

def table3(rs: RecordSet, paper: Paper, proj: Projection) -> pd.DataFrame:
    """Speedup vs nodes: every (nodes, scheme) of the paper's grid and every measured one.

    A cell with no record says "not run"; several configurations at one (nodes, scheme) give
    one line each.
    """
    rs.require_baselines("Table III (speedup vs the 1-device baseline)")
    nodes = sorted(set(paper.table3_nodes()) | {r.key.nodes for r in rs.rows})
    schemes = list(PAPER_SCHEMES) + sorted(
        {r.key.scheme for r in rs.rows} - set(PAPER_SCHEMES) - {"baseline"},
        key=lambda s: SCHEME_ORDER.index(s) if s in SCHEME_ORDER else 99)
    grid = [(1, "baseline")] + [(n, s) for n in nodes for s in schemes]
    out = []
    for n, s in grid:
        pq = paper.table3(n, s)
        pr = proj.table3.get((n, s), {})
        common = {
            "nodes": n, "scheme": s,
            "paper_throughput_samples_per_s": pq["throughput_samples_per_s"].value if pq else None,
            "paper_speedup": pq["speedup"].value if pq else None,
            "projected_throughput_samples_per_s": pr.get("throughput_samples_per_s"),
            "projected_speedup": pr.get("speedup"),
        }
        rows = [r for r in rs.rows if r.key.nodes == n and r.key.scheme == s]
        if not rows:
            out.append({"sweep": NOT_RUN, "plan": NOT_RUN, "devices": NOT_RUN,
                        "topology": NOT_RUN, "throughput_samples_per_s": NOT_RUN,
                        "throughput_samples_per_s_std": NOT_RUN, "speedup": NOT_RUN, **common})
            continue
        for r in rows:
            out.append({"sweep": r.key.sweep, "plan": r.key.plan_label,
                        "devices": r.key.world_size, "topology": r.key.topology_label,
                        "throughput_samples_per_s": r.mean("throughput_samples_per_s"),
                        "throughput_samples_per_s_std": r.std("throughput_samples_per_s"),
                        "speedup": rs.speedup(r), **common})
    cols = ["nodes", "scheme", "sweep", "plan", "devices", "topology",
            "throughput_samples_per_s", "throughput_samples_per_s_std", "speedup", "paper_throughput_samples_per_s",
            "paper_speedup", "projected_throughput_samples_per_s", "projected_speedup"]
    return pd.DataFrame(out, columns=cols)


# --- communication share (Fig. 4) ------------------------------------------------------------

def comm_share_table(rs: RecordSet, paper: Paper, proj: Projection) -> pd.DataFrame:
    out = []
    for r in rs.rows:
        k = r.key
        q = paper.q(f"fig4.comm_share_pct.{k.scheme}")
        share = r.mean("comm_share_pct")
        out.append({
            "sweep": k.sweep, "scheme": k.scheme, "plan": k.plan_label, "devices": k.world_size,
            "topology": k.topology_label, "grad_sync": k.grad_sync, "iter_ms": r.mean("iter_ms"),
            "comm_share_pct": share,
            "compute_share_pct": None if share is None else 100.0 - share,
            "basis": r.basis("comm"),
            "paper_comm_share_pct": q.value if q else None,
            "projected_comm_share_pct": proj.table2.get(k.scheme, {}).get("comm_share_pct"),
        })
    return pd.DataFrame(out)


# --- output ----------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        a = abs(v)
        if a >= 100:
            return f"{v:,.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    return str(v)


def display(df: pd.DataFrame) -> pd.DataFrame:
    """The same table with every cell a short string (— for absent)."""
    return df.apply(lambda col: col.map(_fmt)) if len(df) else df.astype(str)


def to_markdown(df: pd.DataFrame, title: str, notes: list[str]) -> str:
    body = display(df).to_markdown(index=False) if len(df) else "(no rows)"
    return f"# {title}\n\n{body}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def to_latex(df: pd.DataFrame, caption: str) -> str:
    d = display(df)
    d.columns = [c.replace("_", " ") for c in d.columns]
    return d.to_latex(index=False, caption=caption, escape=True, longtable=False)


def _provenance(rs: RecordSet, sweep: str) -> str:
    """Commits and topologies the sweep's records came from (what a reader needs to trust
    committed tables without rerunning them)."""
    recs = [rec for row in rs.rows if row.key.sweep == sweep for rec in row.records]
    commits = sorted({f"{(r.get('git') or {}).get('commit') or 'unknown'}"[:12]
                      + ("+dirty" if (r.get("git") or {}).get("dirty") else "") for r in recs})
    topos = sorted({str((r.get("topology") or {}).get("kind")) for r in recs})
    return f"git {', '.join(commits)}; topology {', '.join(topos)}"


def sweep_notes(rs: RecordSet) -> list[str]:
    notes = [f"sweep `{s}`: {describe_sweep(f)}; {_provenance(rs, s)}"
             for s, f in rs.sweeps.items()]
    notes += [f"skipped {s}" for s in rs.skipped]
    return notes
