"""Tables II and III and the communication share (Fig. 4), built from grouped run records.

Rows, sweeps and speedups are recpar.report.records's; each derived metric is
recpar.report.metrics's. The paper's number sits next to each measured one
(paper_tables/paper.yaml), and a **projected** one from recpar.perfmodel for the paper's
cluster (recpar.report.projection) — labelled projected, never mixed with measured.
"""

from __future__ import annotations

import pandas as pd

from recpar.report.paper import Paper
from recpar.report.projection import Projection
from recpar.report.records import PAPER_SCHEMES, SCHEME_ORDER, RecordSet

NOT_RUN = "not run"


# --- Table II --------------------------------------------------------------------------------

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
            "global_batch": k.global_batch_size or None,  # 0 in the key: not in the record
            "seeds": len(r.seeds),
            "throughput_samples_per_s": r.mean("throughput_samples_per_s"),
            "throughput_samples_per_s_std": r.std("throughput_samples_per_s"),
            "throughput_samples_per_s_per_device": r.mean("throughput_samples_per_s_per_device"),
            "speedup": rs.speedup(r),
            "model_tflops_per_s": r.mean("model_tflops_per_s"), "mfu_pct": r.mean("mfu_pct"),
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
            "paper_throughput_samples_per_s":
                paper.table2_number(k.scheme, "throughput_samples_per_s"),
            "paper_speedup": paper.table2_number(k.scheme, "speedup"),
            "paper_gpu_util_pct": paper.table2_number(k.scheme, "gpu_util_pct"),
            "paper_comm_ms_per_iter": paper.table2_number(k.scheme, "comm_ms_per_iter"),
            "paper_hr_at_10": paper.table2_number(k.scheme, "hr_at_10"),
            "paper_ndcg_at_10": paper.table2_number(k.scheme, "ndcg_at_10"),
            "projected_throughput_samples_per_s": p2.get("throughput_samples_per_s"),
            "projected_speedup": p2.get("speedup"),
            "projected_comm_ms_per_iter": p2.get("comm_ms_per_iter"),
        })
    return pd.DataFrame(out)


# --- Table III -------------------------------------------------------------------------------

def table3(rs: RecordSet, paper: Paper, proj: Projection) -> pd.DataFrame:
    """Speedup vs nodes: every (nodes, scheme) of the paper's grid and every measured one.

    A cell with no record says "not run"; several configurations at one (nodes, scheme) give
    one line each, told apart by plan, topology, gradient sync (all-reduce algorithm) and
    compressor ('-' without data parallelism, '?' where the record does not say).
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
                        "topology": NOT_RUN, "grad_sync": NOT_RUN, "compressor": NOT_RUN,
                        "throughput_samples_per_s": NOT_RUN,
                        "throughput_samples_per_s_std": NOT_RUN, "speedup": NOT_RUN,
                        "mfu_pct": NOT_RUN,
                        **common})
            continue
        for r in rows:
            out.append({"sweep": r.key.sweep, "plan": r.key.plan_label,
                        "devices": r.key.world_size, "topology": r.key.topology_label,
                        "grad_sync": r.key.sync_algorithm, "compressor": r.key.compressor,
                        "throughput_samples_per_s": r.mean("throughput_samples_per_s"),
                        "throughput_samples_per_s_std": r.std("throughput_samples_per_s"),
                        "speedup": rs.speedup(r), "mfu_pct": r.mean("mfu_pct"), **common})
    cols = ["nodes", "scheme", "sweep", "plan", "devices", "topology", "grad_sync", "compressor",
            "throughput_samples_per_s", "throughput_samples_per_s_std", "speedup", "mfu_pct",
            "paper_throughput_samples_per_s", "paper_speedup", "projected_throughput_samples_per_s",
            "projected_speedup"]
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


