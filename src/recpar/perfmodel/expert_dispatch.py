"""The all-to-all term of expert parallelism: what one MoE layer's token exchange costs, and that
cost set against the exchange time MoE run records measured.

One training forward of an MoE layer under ep > 1 (recpar.parallel.expert_parallel) runs three
all-to-alls in its EP group: the token counts (an int64 [ep, E/ep] tensor, 8·E bytes per
rank), the dispatch of the routed token rows, and the combine that sends the expert outputs
back (the same rows). Backward runs the reverse of the last two. Each is priced with the
collective library's all-to-all (`collectives.LIBRARIES`: gloo's on CPU) over the EP group's
links:

- inside one node: the intra-node link;
- across nodes: a rank sends (L−1)/p of its buffer to the other L−1 ranks of its node over
  the intra-node link, and (p−L)/p to the other nodes over its node's uplink, which the node's
  L ranks of the group share (the two are separate paths, as NVLink and the NIC are, and as
  the emulated cluster builds them: recpar.cluster.device_links). Both go at once and the
  slower sets the time: over (p−1)/p of the buffer, the stream's β is
  max((L−1)/(p−1)·β_intra, (p−L)/(p−1)·β_inter(L)); α is the larger of the two latencies
  (only the uplink's with one rank per node).

`validate` compares the prediction with the records' `moe.layers[*].all_to_all_ms_per_forward`
(recpar.model.moe.moe_record: the forward's three all-to-alls, waiting for the slowest rank
included) on the links each record's topology section reports as calibrated. Nothing in
this term was fitted to those measurements: α and β come from the cluster's calibration
(ping-pong, and bulk transfer with every node of the run sending at once where the record has
it: on the emulated cluster a link busy both ways carries less than one stream alone,
recpar.cluster.calibrate), and the bytes from the record's own
count of the rows it sent, so every MoE record is held out for it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recpar.atomic_write import write_text
from recpar.perfmodel.collectives import LIBRARIES, CollectiveLibrary, LinkCost
from recpar.perfmodel.placement import group_span

TARGET_PCT = 15.0
"""|predicted − measured| / measured band of the verdict (issue 12's band for the cost model
on the emulated cluster, recpar.perfmodel.validation.TARGET_PCT)."""

COUNT_BYTES_PER_EXPERT = 8
"""The token-count exchange: one int64 per (rank, local expert) pair, E of them per rank."""


def ep_link(intra: LinkCost | None, inter: LinkCost | None, ep: int, ranks_per_node: int
            ) -> LinkCost:
    """The link one rank's all-to-all stream sees in an EP group of `ep` consecutive ranks
    (expert_parallel.expert_groups) on nodes of `ranks_per_node` ranks (module docstring);
    `inter` is the uplink's cost for one stream when the node's L streams share it."""
    nodes, local = group_span(ep, 1, ranks_per_node)
    if ep > 1 and local > 1 and intra is None:
        raise ValueError(f"an EP group of {ep} ranks has {local} on one node: give the "
                         f"intra-node link")
    if nodes == 1:
        return intra
    if inter is None:
        raise ValueError(f"an EP group of {ep} ranks spans {nodes} nodes: give the "
                         f"inter-node link")
    beta = (ep - local) / (ep - 1) * inter.beta_s_per_byte
    alpha = inter.alpha_s
    if local > 1:
        beta = max(beta, (local - 1) / (ep - 1) * intra.beta_s_per_byte)
        alpha = max(alpha, intra.alpha_s)
    return LinkCost(alpha, beta, inter.gamma_s_per_byte)


def forward_all_to_all_s(token_bytes: float, num_experts: int, ep: int, link: LinkCost,
                         lib: CollectiveLibrary = LIBRARIES["gloo"]) -> float:
    """Seconds of one MoE layer's training-forward exchange: the counts, then the dispatch and
    the combine of `token_bytes` (the rows one rank's send buffer holds, its own included)."""
    if ep == 1:
        return 0.0
    return (lib.all_to_all(COUNT_BYTES_PER_EXPERT * num_experts, ep, link)
            + 2 * lib.all_to_all(token_bytes, ep, link))


def step_all_to_all_s(token_bytes: float, num_experts: int, ep: int, link: LinkCost,
                      lib: CollectiveLibrary = LIBRARIES["gloo"]) -> float:
    """Forward and backward of one MoE layer (backward: the reverse dispatch and combine)."""
    if ep == 1:
        return 0.0
    return forward_all_to_all_s(token_bytes, num_experts, ep, link, lib) \
        + 2 * lib.all_to_all(token_bytes, ep, link)


# --- against run records ---------------------------------------------------------------------

def _link(section: Mapping[str, Any] | None) -> LinkCost | None:
    """A topology section's calibrated link (rate in bit/s, one-way latency in s), or None.
    The rate is the concurrent streams' one where the calibration measured it (every node of
    the run sending at once, each link busy both ways, as in an all-to-all:
    recpar.cluster.calibrate.measure_streams), else one stream's alone."""
    cal = (section or {}).get("calibrated") or {}
    rate = cal.get("concurrent_rate_bit_per_s") or cal.get("rate_bit_per_s")
    latency = cal.get("latency_s")
    if not rate or latency is None:
        return None
    return LinkCost.from_bandwidth(latency, rate / 8)


def _unjudged_reason(plan: Mapping[str, Any], topo: Mapping[str, Any], ep: int) -> str | None:
    """Why the term cannot price this layout, or None."""
    rpn = int(topo.get("ranks_per_node") or 1)
    nodes, local = group_span(ep, 1, rpn)
    if int(plan.get("tp", 1)) > 1:
        return ("ep with tp > 1: the EP group's ranks are tp apart and share their node's "
                "links with the TP ranks, which this term does not place yet")
    if topo.get("kind") != "emulated":
        return f"topology {topo.get('kind')!r}: no calibrated links to price it with"
    if nodes > 1 and _link(topo.get("inter_node")) is None:
        return "no calibrated inter-node link in the record"
    if local > 1 and _link(topo.get("intra_node")) is None:
        return "ranks of the EP group share a node's loopback: no calibrated intra-node link"
    return None


def price(topo: Mapping[str, Any], ep: int, num_experts: int, token_bytes: float) -> dict:
    """The forward exchange of one layer priced on a topology section's calibrated links
    (a record's, or a probe's): predicted (gloo) and textbook (NCCL-style) ms, and the link."""
    rpn = int(topo.get("ranks_per_node") or 1)
    _, local = group_span(ep, 1, rpn)
    intra, inter = _link(topo.get("intra_node")), _link(topo.get("inter_node"))
    shared = (None if inter is None  # the uplink shared by this node's `local` streams
              else LinkCost(inter.alpha_s, inter.beta_s_per_byte * local))
    link = ep_link(intra, shared, ep, rpn)
    concurrent = any(((topo.get(k) or {}).get("calibrated") or {}).get(
        "concurrent_rate_bit_per_s") for k in ("inter_node", "intra_node"))
    return {"link_rate_measured_as": "concurrent streams" if concurrent else "one stream",
            "predicted_ms": 1e3 * forward_all_to_all_s(token_bytes, num_experts, ep, link),
            "textbook_ms": 1e3 * forward_all_to_all_s(token_bytes, num_experts, ep, link,
                                                      LIBRARIES["nccl"]),
            "link_alpha_ms": 1e3 * link.alpha_s,
            "link_rate_mbit_per_s": (8e-6 / link.beta_s_per_byte
                                     if link.beta_s_per_byte else None)}


def _verdict(pred: float, measured: float | None) -> dict:
    err = 100 * (pred - measured) / measured if measured else None
    return {"error_pct": err,
            "verdict": "within" if err is not None and abs(err) <= TARGET_PCT else "missed"}


def record_rows(record: Mapping[str, Any], where: str) -> list[dict]:
    """One row per MoE layer of an expert-parallel record: measured against predicted."""
    plan, topo, moe = record.get("plan") or {}, record.get("topology") or {}, record.get("moe")
    ep = int(plan.get("ep", 1))
    if not moe or ep < 2:
        return []
    d_model = ((record.get("config") or {}).get("model") or {}).get("d_model")
    base = {"run_id": record.get("run_id"), "seed": record.get("seed"), "source": where,
            "ep": ep, "nodes": topo.get("nodes"), "ranks_per_node": topo.get("ranks_per_node"),
            "num_experts": moe["num_experts"], "d_model": d_model}
    note = _unjudged_reason(plan, topo, ep)
    rows = []
    for layer in moe.get("layers", []):
        row = dict(base, module=layer.get("module"))
        measured = layer.get("all_to_all_ms_per_forward")
        sent = layer.get("all_to_all_bytes_per_forward")  # to the other ranks, both exchanges
        row.update(measured_ms=measured, bytes_to_others_per_forward=sent,
                   counts_ms=layer.get("all_to_all_counts_ms_per_forward"))
        if note or measured is None or sent is None:
            row.update(predicted_ms=None, textbook_ms=None, error_pct=None,
                       verdict="not judged", note=note or "no all-to-all measured")
            rows.append(row)
            continue
        # a send buffer holds 1/ep for this rank itself: the others' share is (ep-1)/ep of it
        row["token_bytes"] = sent / 2 * ep / (ep - 1)
        row.update(price(topo, ep, moe["num_experts"], row["token_bytes"]))
        row.update(_verdict(row["predicted_ms"], measured), note=None)
        rows.append(row)
    return rows


# --- the same exchange alone (recpar.parallel.all_to_all_probe) ------------------------------

def probe_shapes(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """One probe per expert-parallel run the rows judged: its layout, and the mean send buffer
    of its layers and seeds (the bytes its exchanges carried)."""
    runs: dict[str, list] = {}
    for r in rows:
        if r["verdict"] != "not judged":
            runs.setdefault(r["run_id"], []).append(r)
    shapes = []
    for run_id, rs in sorted(runs.items()):
        r0 = rs[0]
        shapes.append({"run_id": run_id, "nodes": int(r0["nodes"]),
                       "ranks_per_node": int(r0["ranks_per_node"]), "ep": r0["ep"],
                       "num_experts": r0["num_experts"], "d_model": r0["d_model"],
                       "token_bytes": round(sum(r["token_bytes"] for r in rs) / len(rs)),
                       "measured_in_training_ms": sum(r["measured_ms"] for r in rs) / len(rs)})
    return shapes


def run_probes(shapes: Sequence[Mapping[str, Any]], work_dir: str | Path, *, iters: int = 10,
               warmup: int = 2, prefix: str | None = None, state_dir=None,
               progress=print) -> list[dict]:
    """Each shape's exchange alone on the emulated cluster that is up (its first `nodes`
    nodes); the probe's result per shape. Needs root and `recpar cluster up`."""
    from recpar.cluster import netns
    from recpar.cluster.launch import launch
    from recpar.cluster.topology import Topology

    work = Path(work_dir)
    results = []
    for i, sh in enumerate(shapes, 1):
        progress(f"[{i}/{len(shapes)}] {sh['run_id']}: ep {sh['ep']} on {sh['nodes']} x "
                 f"{sh['ranks_per_node']}, {sh['token_bytes']:,} B per rank")
        out = work / f"{sh['run_id']}.json"
        argv = ["-m", "recpar.parallel.all_to_all_probe", "--ep", str(sh["ep"]),
                "--sizes", str(sh["token_bytes"]), "--num-experts", str(sh["num_experts"]),
                "--d-model", str(sh["d_model"]), "--iters", str(iters),
                "--warmup", str(warmup), "--out", str(out)]
        topo = Topology(kind="emulated", nodes=sh["nodes"], ranks_per_node=sh["ranks_per_node"])
        rc = launch(topo, argv, prefix=prefix or netns.DEFAULT_PREFIX, state_dir=state_dir,
                    timeout_s=600, log_dir=work / sh["run_id"])
        if rc != 0:
            raise RuntimeError(f"all-to-all probe for {sh['run_id']} exited with {rc} "
                               f"(logs: {work / sh['run_id']})")
        res = json.loads(out.read_text())
        if not all(r["correct"] for r in res["sizes"]):
            raise RuntimeError(f"all-to-all probe for {sh['run_id']}: rows came back changed "
                               f"({out})")
        results.append(res)
    return results


def probe_rows(shapes: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]]
               ) -> list[dict]:
    """The term against each probe (the exchange alone), beside the same run's exchange in
    training: training − probe is what training adds (waiting for the slowest rank, ranks
    sharing cores)."""
    rows = []
    for sh, res in zip(shapes, results):
        size = res["sizes"][0]
        row = {**sh, "probe_buffer_bytes": size["buffer_bytes"], "probe_ms": size["time_ms"],
               "probe_counts_ms": size["counts_ms"], "probe_iters": res["iters"]}
        row.update(price(res["topology"], sh["ep"], sh["num_experts"], size["buffer_bytes"]))
        row.update(_verdict(row["predicted_ms"], size["time_ms"]))
        row["training_minus_probe_ms"] = sh["measured_in_training_ms"] - size["time_ms"]
        rows.append(row)
    return rows


def validate(paths: Sequence[str | Path]) -> list[dict]:
    """Rows of every record.json under `paths` (files or directories), sorted by run."""
    rows: list[dict] = []
    for p in paths:
        p = Path(p)
        files = sorted(p.rglob("record.json")) if p.is_dir() else [p]
        if not files:
            raise FileNotFoundError(f"{p}: no record.json")
        for f in files:
            try:
                rec = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{f}: not a readable run record ({e})") from e
            rows += record_rows(rec, str(f))
    return sorted(rows, key=lambda r: (str(r["run_id"]), str(r["seed"]), str(r["module"])))


def _fmt(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    judged = [r for r in rows if r["verdict"] != "not judged"]
    within = sum(r["verdict"] == "within" for r in judged)
    lines = [
        "# Expert parallelism: the all-to-all term of the cost model against measurement",
        "",
        "Measured: the forward's three all-to-alls of one MoE layer (token counts, dispatch, "
        "combine), per training forward, rank 0, waiting for the slowest rank included "
        "(recpar.model.moe). Predicted: recpar.perfmodel.expert_dispatch with gloo's "
        "all-to-all (2α + (p−1)/p·nβ) on the links the record's calibration measured, for the "
        "bytes the record counted; textbook: NCCL-style (α + (p−1)/p·nβ). The inter-node rate "
        "is the calibration's concurrent-streams rate for the run's node count where the "
        "record has one (every node sending to the next at once, each link busy both ways as "
        "in the exchange; recpar.cluster.calibrate), else one stream's alone (link column: "
        "which). Nothing was fitted to these runs. Band: "
        f"±{TARGET_PCT:g} %.",
        "",
        f"**{within} of {len(judged)} within the band**"
        + (f"; {len(rows) - len(judged)} not judged" if len(rows) > len(judged) else "") + ".",
        "",
        "| run | seed | layer | ep | nodes × ranks | B to others / fwd | link | measured ms | "
        "predicted ms | textbook ms | error | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        link = ("—" if r.get("link_rate_mbit_per_s") is None else
                f"{r['link_rate_mbit_per_s']:.3g} Mbit/s ({r['link_rate_measured_as']}), "
                f"α {r['link_alpha_ms']:.3g} ms")
        err = _fmt(r["error_pct"], "+.1f") + (" %" if r["error_pct"] is not None else "")
        verdict = r["verdict"] + (f" ({r['note']})" if r.get("note") else "")
        lines.append(
            f"| {r['run_id']} | {r['seed']} | {r['module']} | {r['ep']} | "
            f"{r['nodes']} × {r['ranks_per_node']} | "
            f"{_fmt(r['bytes_to_others_per_forward'], ',.0f')} | {link} | "
            f"{_fmt(r['measured_ms'], '.3g')} | {_fmt(r['predicted_ms'], '.3g')} | "
            f"{_fmt(r['textbook_ms'], '.3g')} | {err} | {verdict} |")
    return "\n".join(lines) + "\n"


def probe_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    within = sum(r["verdict"] == "within" for r in rows)
    lines = [
        "## The same exchange alone",
        "",
        "Each expert-parallel run's exchange again, without the model "
        "(recpar.parallel.all_to_all_probe: the training path's AllToAllDispatch with identity "
        "experts, every call after a barrier, the slowest rank's mean), on the same cluster "
        "layout, at the mean send buffer of the run's layers. The term is judged against it "
        f"(band ±{TARGET_PCT:g} %). In training − alone: what training adds to the exchange "
        "(a rank waiting for the slowest one, ranks sharing the host's cores). Counts: the "
        "token-count exchange, the layer's first collective, where a rank that arrives early "
        "waits.",
        "",
        f"**{within} of {len(rows)} within the band.**",
        "",
        "| run | ep | nodes × ranks | send buffer B | link | alone ms (counts) | "
        "predicted ms | error | verdict | in training ms | in training − alone ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run_id']} | {r['ep']} | {r['nodes']} × {r['ranks_per_node']} | "
            f"{r['probe_buffer_bytes']:,} | {r['link_rate_mbit_per_s']:.3g} Mbit/s "
            f"({r['link_rate_measured_as']}), α {r['link_alpha_ms']:.3g} ms | "
            f"{r['probe_ms']:.3g} ({r['probe_counts_ms']:.2g}) | "
            f"{r['predicted_ms']:.3g} | {r['error_pct']:+.1f} % | {r['verdict']} | "
            f"{r['measured_in_training_ms']:.3g} | {r['training_minus_probe_ms']:+.3g} |")
    return "\n".join(lines) + "\n"


def write_outputs(rows: Sequence[Mapping[str, Any]], out_dir: str | Path,
                  probes: Sequence[Mapping[str, Any]] | None = None) -> list[Path]:
    """moe_all_to_all.{md,json}; `probes`: `probe_rows`, a second table when given."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "moe_all_to_all.md", out / "moe_all_to_all.json"
    write_text(md, markdown(rows) + ("\n" + probe_markdown(probes) if probes else ""))
    write_text(js, json.dumps({"target_pct": TARGET_PCT, "rows": list(rows),
                               **({"probes": list(probes)} if probes else {})}, indent=1)
               + "\n")
    return [md, js]
