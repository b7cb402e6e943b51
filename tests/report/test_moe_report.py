"""recpar.report.moe on hand-made records: rows, the two MoE claims, the figure."""

import copy

from recpar.report.moe import moe_claims, moe_report, moe_rows


def _record(run_id: str, seed: int, experts: int, aux: float, imbalance: float,
            ep: int = 1, experts_per_token: float | None = 2.0) -> dict:
    model = {"d_model": 64, "d_ff": 256}
    plan = {"scheme": "baseline", "dp": 1, "tp": 1, "pp": 1, "world_size": 1}
    if ep > 1:
        plan = {**plan, "scheme": "dp", "dp": ep, "ep": ep, "world_size": ep}
    rec = {"run_id": run_id, "seed": seed, "plan": plan,
           "config": {"model": model}, "dataset": {"source": "movielens-100k"},
           "metrics": {"throughput_samples_per_s": 100.0, "params_count": 1000},
           "quality": {"test": {"full": {"hr_at_10": 0.2}}}}
    if experts:
        model.update(num_moe_experts=experts, moe_router_topk=2, moe_layer_freq=1,
                     moe_aux_loss_coeff=aux, moe_expert_capacity_factor=None)
        layer = {"module": "blocks.0.mlp", "tokens_per_expert": [30, 10, 10, 10],
                 "imbalance_max_over_mean": imbalance, "dropped_tokens_count": 0,
                 "dropped_share": 0.0, "aux_loss_mean": aux, "forwards_count": 5}
        if ep > 1:
            layer.update(all_to_all_bytes_per_forward=5e3,
                         all_to_all_bytes_per_forward_uniform_formula=6e3,
                         all_to_all_ms_per_forward=1.5)
        rec["moe"] = {"num_experts": experts, "router_topk": 2, "layers": [layer],
                      "params_total_count": 3000, "params_active_count": 1800,
                      "flops_per_token": 1.1e6, "flops_per_token_dense_equal_total_params": 1.9e6,
                      "experts_per_token_measured": experts_per_token}
    return rec


def test_rows_and_claims_from_an_aux_on_off_pair(tmp_path):
    recs = [_record("dense", 0, 0, 0.0, 0.0), _record("moe", 0, 4, 0.01, 1.2),
            _record("moe-aux0", 0, 4, 0.0, 1.9), _record("moe-ep2", 0, 4, 0.01, 1.3, ep=2)]
    df = moe_rows(recs)
    assert list(df["run"]) == ["dense", "moe", "moe-aux0", "moe-ep2"]
    ep_row = df[df["run"] == "moe-ep2"].iloc[0]
    assert ep_row["all-to-all KB/fwd"] == 5.0 and ep_row["formula KB/fwd"] == 6.0
    assert df[df["run"] == "dense"]["MFLOP/token"].isna().all()  # no MoE section: absent
    claims = {c["claim"]: c for c in moe_claims(recs)}
    flops = claims["MoE computes only k experts per input"]
    assert flops["verdict"] == "holds"
    assert "moe (seed 0): 2.000 experts per token measured (k = 2 of 4); 0.58 of a dense " \
        "model's FLOPs per token" in flops["evidence"]
    assert ep_row["experts/token (measured)"] == 2.0
    balance = claims["load balancing (the auxiliary loss) evens the experts' load"]
    assert balance["verdict"] == "holds" and "1.20 with the loss (moe) vs 1.90 without" \
        in balance["evidence"]
    text = moe_report(recs, tmp_path)
    assert (tmp_path / "expert_load.png").stat().st_size > 0 and "## Claims" in text
    assert (tmp_path / "moe.csv").read_text().startswith("run,seed,model")


def test_balance_claim_fails_when_the_aux_loss_does_not_even_the_load_and_needs_a_pair():
    worse = [_record("moe", 0, 4, 0.01, 2.5), _record("moe-aux0", 0, 4, 0.0, 1.9)]
    verdicts = {c["claim"]: c["verdict"] for c in moe_claims(worse)}
    assert verdicts["load balancing (the auxiliary loss) evens the experts' load"] \
        == "does not hold"
    other_seed = copy.deepcopy(worse)
    other_seed[1]["seed"] = 1  # not a pair: another seed
    verdicts = {c["claim"]: c["verdict"] for c in moe_claims(other_seed)}
    assert verdicts["load balancing (the auxiliary loss) evens the experts' load"] == "not run"
    assert {c["verdict"] for c in moe_claims([_record("dense", 0, 0, 0.0, 0.0)])} == {"not run"}


def test_expert_claim_is_measured_or_says_it_is_not():
    claim = "MoE computes only k experts per input"
    too_many = [_record("moe", 0, 4, 0.01, 1.2, experts_per_token=2.5)]
    assert {c["claim"]: c for c in moe_claims(too_many)}[claim]["verdict"] == "does not hold"
    all_of_them = [_record("moe", 0, 2, 0.01, 1.2, experts_per_token=2.0)]  # k = E = 2
    assert {c["claim"]: c for c in moe_claims(all_of_them)}[claim]["verdict"] == "does not hold"
    old = _record("moe-old", 0, 4, 0.01, 1.2, experts_per_token=None)
    seeds = [_record("moe", 0, 4, 0.01, 1.2), _record("moe", 1, 4, 0.01, 1.2,
                                                       experts_per_token=1.9)]
    c = {c["claim"]: c for c in moe_claims(seeds)}[claim]
    assert c["evidence"].startswith("moe (seed 0,1): 1.900–2.000 experts per token")
    c = {c["claim"]: c for c in moe_claims([_record("moe", 0, 4, 0.01, 1.2), old])}[claim]
    assert c["verdict"] == "holds" and "not measured (records from before the count, or " \
        "resumed runs): moe-old" in c["evidence"]
    c = {c["claim"]: c for c in moe_claims([old])}[claim]
    assert c["verdict"] == "not measured" and "moe-old" in c["evidence"]
