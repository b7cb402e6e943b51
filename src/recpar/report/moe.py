"""The Mixture-of-Experts report (paper §III.A.c, Fig. 3 right): dense and MoE runs side by
side, the experts' load with and without the load-balancing loss, and the paper's two MoE
statements judged from the records.

Per record: test HR@10 (full ranking), throughput, total and active parameters, model FLOPs
per token against a dense model of the same total size (recpar.model.config; the count is
checked exactly against torch's FlopCounterMode in tests/model/test_moe.py), and per MoE layer
the router's load over the training steps (tokens per expert, imbalance = max / mean), dropped
assignments, the load-balancing loss, and under expert parallelism the all-to-all bytes and
time per forward beside the uniform-routing byte formula (recpar.model.moe.moe_record).

Claims:
- "computes only k experts per input": measured, the experts a token ran through per MoE
  layer (`experts_per_token_measured`: the expert MLPs' forward FLOPs of the run's first step
  counted by FlopCounterMode, over one expert's FLOPs per token; recpar.model.moe) is at most
  k and below the number of experts, in every MoE record (a count: no band beyond float
  rounding, 1e-6 relative). Beside it, the model FLOPs per token against a dense model with
  the same total parameters, from the formula. Records without the measurement (older ones,
  resumed runs) are named in the evidence; with none measured the claim is "not measured";
- "load balancing evens the load": every pair of runs that differ only in the aux loss
  coefficient (same seed, same plan) has a lower mean imbalance with it than without it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from recpar.report.render import to_markdown

AUX_COEFF_KEY = "moe_aux_loss_coeff"


def _model(rec: dict) -> dict:
    return rec["config"]["model"]


def _label(rec: dict) -> str:
    m = _model(rec)
    if not m.get("num_moe_experts"):
        return f"dense d_ff {m['d_ff']}"
    return (f"MoE {m['num_moe_experts']}e top-{m['moe_router_topk']}, aux "
            f"{m['moe_aux_loss_coeff']:g}")


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def moe_rows(records: list[dict]) -> pd.DataFrame:
    """One row per record (see the module docstring)."""
    rows = []
    for rec in sorted(records, key=lambda r: (r["run_id"], r["seed"])):
        moe = rec.get("moe") or {}
        layers = moe.get("layers", [])
        m = rec["metrics"]
        ep = rec["plan"].get("ep", 1)
        rows.append({
            "run": rec["run_id"], "seed": rec["seed"], "model": _label(rec), "ep": ep,
            "test HR@10": rec["quality"]["test"]["full"]["hr_at_10"],
            "samples/s": m.get("throughput_samples_per_s"),
            "params": moe.get("params_total_count", m.get("params_count")),
            "active params": moe.get("params_active_count", m.get("params_count")),
            "experts/token (measured)": moe.get("experts_per_token_measured"),
            "MFLOP/token": (moe["flops_per_token"] / 1e6) if moe else None,
            "dense-equal MFLOP/token": (moe["flops_per_token_dense_equal_total_params"] / 1e6
                                        if moe else None),
            "imbalance (max/mean)": _mean([x["imbalance_max_over_mean"] for x in layers]),
            "dropped share": _mean([x["dropped_share"] for x in layers]),
            "aux loss": _mean([x["aux_loss_mean"] for x in layers]),
            "all-to-all KB/fwd": _mean([x.get("all_to_all_bytes_per_forward") for x in layers
                                        if "all_to_all_bytes_per_forward" in x]),
            "formula KB/fwd": _mean([x.get("all_to_all_bytes_per_forward_uniform_formula")
                                     for x in layers
                                     if "all_to_all_bytes_per_forward" in x]),
            "all-to-all ms/fwd": _mean([x.get("all_to_all_ms_per_forward") for x in layers
                                        if "all_to_all_ms_per_forward" in x]),
        })
    df = pd.DataFrame(rows)
    for col in ("all-to-all KB/fwd", "formula KB/fwd"):
        if col in df:
            df[col] = df[col].map(lambda v: None if v is None or pd.isna(v) else v / 1e3)
    return df


def _without_aux(rec: dict) -> tuple:
    """What a record's run was, but its aux loss coefficient: the key of an aux on/off pair."""
    model = {k: v for k, v in _model(rec).items() if k != AUX_COEFF_KEY}
    return (repr(sorted(model.items())), repr(sorted(rec["plan"].items())), rec["seed"],
            rec["dataset"]["source"] if isinstance(rec.get("dataset"), dict) else None)


def moe_claims(records: list[dict]) -> list[dict]:
    """The two statements of the module docstring, each with its evidence and verdict."""
    claims = []
    moe = [r for r in records if r.get("moe")]
    claim = "MoE computes only k experts per input"
    measured = [(r["run_id"], r["seed"], m.get("experts_per_token_measured"), m["router_topk"],
                 m["num_experts"],
                 m["flops_per_token"] / m["flops_per_token_dense_equal_total_params"])
                for r in moe for m in [r["moe"]]]
    counted = [m for m in measured if m[2] is not None]
    missing = sorted({run for run, _, x, *_ in measured if x is None})
    if not measured:
        claims.append({"claim": claim, "evidence": "no MoE record", "verdict": "not run"})
    elif not counted:
        claims.append({"claim": claim,
                       "evidence": f"no measured experts per token in {', '.join(missing)} "
                                   "(records from before the count, or resumed runs)",
                       "verdict": "not measured"})
    else:
        holds = all(x <= k * (1 + 1e-6) and x < e for _, _, x, k, e, _ in counted)
        by_run: dict[str, list] = {}
        for run, seed, x, k, e, ratio in counted:
            by_run.setdefault(run, []).append((seed, x, k, e, ratio))
        parts = []
        for run, rows in by_run.items():
            xs = [x for _, x, *_ in rows]
            _, _, k, e, ratio = rows[0]
            seeds = ",".join(str(seed) for seed, *_ in rows)
            span = f"{min(xs):.3f}" if max(xs) == min(xs) else f"{min(xs):.3f}–{max(xs):.3f}"
            parts.append(f"{run} (seed {seeds}): {span} experts per token measured (k = {k} "
                         f"of {e}); {ratio:.2f} of a dense model's FLOPs per token at equal "
                         "total parameters (formula)")
        evidence = "; ".join(parts)
        if missing:
            evidence += (f"; not measured (records from before the count, or resumed runs): "
                         f"{', '.join(missing)}")
        claims.append({"claim": claim, "evidence": evidence,
                       "verdict": "holds" if holds else "does not hold"})
    pairs: dict[tuple, dict[bool, dict]] = {}
    for r in moe:
        pairs.setdefault(_without_aux(r), {})[_model(r)[AUX_COEFF_KEY] > 0] = r
    judged = []
    for both in pairs.values():
        if True in both and False in both:
            on, off = (_mean([x["imbalance_max_over_mean"] for x in both[k]["moe"]["layers"]])
                       for k in (True, False))
            judged.append((both[True]["run_id"], both[False]["run_id"], both[True]["seed"],
                           on, off))
    if judged:
        claims.append({
            "claim": "load balancing (the auxiliary loss) evens the experts' load",
            "evidence": "; ".join(f"seed {s}: imbalance {on:.2f} with the loss ({a}) vs "
                                  f"{off:.2f} without ({b})" for a, b, s, on, off in judged),
            "verdict": "holds" if all(on < off for *_, on, off in judged) else
                       "does not hold"})
    else:
        claims.append({"claim": "load balancing (the auxiliary loss) evens the experts' load",
                       "evidence": "no pair of runs differing only in the aux loss coefficient",
                       "verdict": "not run"})
    return claims


def expert_load_figure(records: list[dict], out: Path) -> Path | None:
    """Bars of each expert's share of the routed tokens, per MoE layer, one panel per run
    (first seed): with and without the load-balancing loss side by side; None without MoE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = {}
    for r in sorted(records, key=lambda r: (r["run_id"], r["seed"])):
        if r.get("moe") and r["run_id"] not in first:
            first[r["run_id"]] = r
    if not first:
        return None
    fig, axes = plt.subplots(1, len(first), figsize=(4.2 * len(first), 3.2), squeeze=False,
                             sharey=True)
    for ax, (run, rec) in zip(axes[0], first.items()):
        layers = rec["moe"]["layers"]
        width = 0.8 / len(layers)
        for i, layer in enumerate(layers):
            counts = layer["tokens_per_expert"]
            total = sum(counts) or 1
            xs = [e + i * width for e in range(len(counts))]
            imbalance = layer["imbalance_max_over_mean"]
            ax.bar(xs, [c / total for c in counts], width=width,
                   label=f"{layer['module']} (max/mean "
                         f"{'-' if imbalance is None else f'{imbalance:.2f}'})")
        ax.axhline(1 / len(layers[0]["tokens_per_expert"]), color="k", lw=0.8, ls="--")
        ax.set_title(f"{run}\n{_label(rec)}, seed {rec['seed']}", fontsize=8)
        n_experts = len(layers[0]["tokens_per_expert"])
        # one tick per expert, under the middle of its group of bars
        ax.set_xticks([e + 0.4 - width / 2 for e in range(n_experts)], range(n_experts))
        ax.set_xlabel("expert")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("share of routed tokens (training)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def moe_report(records: list[dict], out_dir: Path) -> str:
    """Write moe.md, moe.csv and expert_load.png into `out_dir`; return the markdown."""
    from recpar.atomic_write import write_text

    df = moe_rows(records)
    claims = moe_claims(records)
    fig = expert_load_figure(records, out_dir / "expert_load.png")
    notes = ["imbalance, dropped share and aux loss: means over the MoE layers, over the "
             "training steps, on rank 0's share of each batch",
             "MFLOP/token: model FLOPs (forward + backward) per position, active parameters; "
             "dense-equal: a dense model with the MoE's total parameters",
             "all-to-all: token bytes rank 0 sent to other ranks in a forward (dispatch + "
             "combine; the backward sends as much again), beside the formula for uniform "
             "routing 2 x assignments x (ep-1)/ep x d x 4 B"]
    text = to_markdown(df, "Mixture of Experts: dense vs MoE, and the experts' load", notes)
    text += "\n## Claims\n\n" + pd.DataFrame(claims).to_markdown(index=False) + "\n"
    if fig is None:
        text += "\nexpert_load.png: not drawn (no MoE record)\n"
    write_text(out_dir / "moe.md", text)
    write_text(out_dir / "moe.csv", df.to_csv(index=False))
    return text
