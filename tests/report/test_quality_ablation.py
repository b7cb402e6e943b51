"""The quality ablation's analysis (recpar.report.quality_ablation) and the ablation claims
(recpar.report.ablation_claims), on hand-made records whose answers are known."""

from __future__ import annotations

import json

import pytest

from recpar.report import ablation_claims
from recpar.report.claims import MET, MISSED, NOT_RUN
from recpar.report.quality_ablation import (QualityAblationError, analyse, label,
                                            steps_to_quality, write_outputs)

REF = "dp2-ring-tiny-n1"
STEPS_PER_EPOCH = 10


def _record(run_id, seed, hr, curve, scheme="dp", compressor="none", topk_ratio=0.01,
            error_feedback=True, damping=True):
    """A record with test quality `hr` (every cell hr, NDCG half of it) and a validation
    HR@10 curve, one value per epoch."""
    cell = {"hr_at_10": hr, "ndcg_at_10": hr / 2}
    cfg = {"grad_sync": {"compressor": compressor, "topk_ratio": topk_ratio,
                         "error_feedback": error_feedback}}
    if scheme == "async":
        cfg = {"async_ps": {"staleness_damping": damping}}
    return {"run_id": run_id, "scheme": scheme, "seed": seed, "config": cfg,
            "quality": {"test": {"full": dict(cell), "sampled100": dict(cell)}},
            "timing": {"total_train_s": 1.0},
            "history": [{"epoch": e, "step": (e + 1) * STEPS_PER_EPOCH, "train_loss": 1.0,
                         "valid_hr_at_10": v} for e, v in enumerate(curve)]}


def _grid():
    """Reference best valid HR@10 0.20/0.21/0.22 (spread 0.02 -> targets 0.18/0.19/0.20),
    reached after 2 epochs; sign: same quality, reached after 3; top-k without EF: clearly
    worse, never at the target; async damped better than undamped."""
    recs = []
    for s, best in enumerate((0.20, 0.21, 0.22)):
        recs.append(_record(REF, s, 0.20 + 0.001 * s, [best - 0.05, best - 0.01, best]))
        recs.append(_record("dp2-sign-ring-tiny-n1", s, 0.2005 + 0.001 * s,
                            [best - 0.06, best - 0.04, best - 0.01, best], compressor="sign"))
        recs.append(_record("dp2-topk0.01-ring-tiny-n1", s, 0.199 + 0.001 * s,
                            [best - 0.05, best - 0.01, best], compressor="topk"))
        recs.append(_record("dp2-topk0.01-noef-ring-tiny-n1", s, 0.15 + 0.001 * s,
                            [0.10, 0.12, 0.13], compressor="topk", error_feedback=False))
        recs.append(_record("async3-damped-tiny-n1", s, 0.19 + 0.001 * s,
                            [best - 0.05, best - 0.015], scheme="async"))
        recs.append(_record("async3-undamped-tiny-n1", s, 0.17 + 0.001 * s,
                            [0.1, 0.15, 0.16], scheme="async", damping=False))
    return recs


def _compression():
    """A compression ablation result for sign and top-k 0.01 at two link rates."""
    def comp(lab, iters):
        return {"compressor": {"label": lab}, "measured_crossover": {},
                "rows": [{"link_factor": f, "calibrated_rate_bit_per_s": r, "iter_ms": it,
                          "none_iter_ms": n, "wire_bytes_per_rank_per_iter": 100.0,
                          "none_wire_bytes_per_rank_per_iter": 1000.0}
                         for f, r, it, n in iters]}
    return {"model": "test", "compressors": [
        comp("sign", [(1.0, 1e6, 500.0, 2000.0), (16.0, 16e6, 500.0, 400.0)]),
        comp("topk0.01", [(1.0, 1e6, 1000.0, 2000.0), (16.0, 16e6, 600.0, 400.0)])]}


def test_labels_follow_the_compression_ablation():
    assert label(_record("x", 0, 0.1, [0.1], compressor="topk", topk_ratio=0.001)) == "topk0.001"
    assert label(_record("x", 0, 0.1, [0.1], compressor="sign", error_feedback=False)) \
        == "sign-noef"
    assert label(_record("x", 0, 0.1, [0.1], compressor="powersgd")) == "powersgd"
    assert label(_record("x", 0, 0.1, [0.1], scheme="async", damping=False)) == "async-undamped"
    dyn = _record("x", 0, 0.1, [0.1], scheme="async")
    dyn["config"]["async_ps"]["work_assignment"] = "dynamic"
    assert label(dyn) == "async-damped-dynamic"


def test_steps_to_quality_is_the_first_validated_epoch_at_the_target():
    rec = _record("x", 0, 0.1, [0.1, 0.25, 0.3])
    assert steps_to_quality(rec, 0.2) == (1, 2 * STEPS_PER_EPOCH)
    assert steps_to_quality(rec, 0.31) is None


def test_final_quality_pairs_and_steps():
    res = analyse(_grid(), REF)
    runs = {r["label"]: r for r in res["runs"]}
    assert res["runs"][0]["run_id"] == REF and res["runs"][0]["reference"]
    assert res["target"]["band"] == pytest.approx(0.02)
    assert res["target"]["per_seed"]["0"] == pytest.approx(0.18)
    # sign ends where sync DP ends, one epoch later on every seed
    assert runs["sign"]["all_within"]
    assert runs["sign"]["steps_to_quality"] == {"0": 30, "1": 30, "2": 30}
    assert runs["none"]["steps_to_quality"] == {"0": 20, "1": 20, "2": 20}
    # top-k without EF: 0.05 below, far outside a band from a 0.002 spread
    d = runs["topk0.01-noef"]["vs_reference"]["full/hr_at_10"]
    assert d["delta"] == pytest.approx(-0.05) and not d["within"] and d["band"] < 0.01
    assert runs["topk0.01-noef"]["steps_to_quality"] == {"0": None, "1": None, "2": None}
    pairs = {p["question"].split(",")[0] + p["on"]: p for p in res["pairs"]}
    ef = pairs["error feedbackdp2-topk0.01-ring-tiny-n1"]["difference"]["full/hr_at_10"]
    assert ef["delta"] == pytest.approx(0.049) and not ef["within"]
    damp = pairs["staleness dampingasync3-damped-tiny-n1"]["difference"]["full/hr_at_10"]
    assert damp["delta"] == pytest.approx(0.02) and not damp["within"]


def test_time_to_quality_is_steps_times_the_measured_iteration():
    res = analyse(_grid(), REF, _compression())
    ttq = {t["label"]: t for t in res["time_to_quality"]}
    slow, fast = ttq["sign"]["rows"]
    # sign: 30 steps x 0.5 s; none: 20 steps x 2 s (slow link) or x 0.4 s (fast link)
    assert slow["time_to_quality_s"] == pytest.approx(15.0)
    assert slow["none_time_to_quality_s"] == pytest.approx(40.0)
    assert slow["speedup"] == pytest.approx(40.0 / 15.0)
    assert fast["speedup"] == pytest.approx(8.0 / 15.0)  # more steps, slower step: loses
    assert ttq["topk0.01"]["rows"][0]["speedup"] == pytest.approx(2.0)


def test_a_run_without_validation_history_is_named():
    recs = _grid()
    recs[1]["history"] = [{"epoch": 0, "step": 10, "valid_ndcg_at_10": 0.1}]
    with pytest.raises(QualityAblationError, match="dp2-sign-ring-tiny-n1.*valid_hr_at_10"):
        analyse(recs, REF)


def test_a_missing_reference_is_named():
    with pytest.raises(QualityAblationError, match="reference run 'nope'"):
        analyse(_grid(), "nope")


def test_outputs_and_answers(tmp_path):
    res = analyse(_grid(), REF, _compression())
    paths = write_outputs(res, tmp_path)
    assert [p.name for p in paths] == [f"quality_ablation.{e}" for e in ("json", "csv", "md",
                                                                          "png")]
    md = paths[2].read_text()
    assert "dp2-topk0.01-noef-ring-tiny-n1 differs" in md
    assert "error feedback, top-k 0.01 (Formula 11): HR@10 full +0.0490" in md
    assert "sign: time to quality 0.53–2.67× that of uncompressed; faster at 1 of 2" in md
    assert json.loads(paths[0].read_text())["reference"] == REF


def _sources(tmp_path, quality=True, compression=True, allreduce=None):
    out = {"compression": None, "quality": None, "allreduce": allreduce}
    if compression:
        c = _compression()
        for comp in c["compressors"]:
            for row in comp["rows"]:
                row.update(verdict="pays off" if row["iter_ms"] < row["none_iter_ms"]
                           else "costs", band_pct=5.0, speedup=row["none_iter_ms"] / row["iter_ms"],
                           projected_speedup=row["none_iter_ms"] / row["iter_ms"])
        out["compression"] = c
    if quality:
        out["quality"] = json.loads(json.dumps(analyse(_grid(), REF)))
    return out


def _allreduce(winners):
    sizes = [{"bytes": 2**20 * (k + 1), "measured_winner": w, "projected_winner": "hierarchical"}
             for k, w in enumerate(winners)]
    return {"config": {"nodes": 4, "ranks_per_node": 2, "inter_rate_bit_per_s": 2e7},
            "settings": [{"calibrated_intra_latency_s": 0.005, "calibrated_inter_latency_s": 0.01,
                          "sizes": sizes, "measured_crossover": {"above_bytes": None,
                                                                 "winner_throughout": "x"}}]}


def test_ablation_claims_judge_the_sources(tmp_path):
    got = {c.id: c for c in ablation_claims.check_ablation_claims(
        _sources(tmp_path, allreduce=_allreduce(["hierarchical", "flat"])))}
    assert got["F10-bytes"].status == MET and "0.1×" in got["F10-bytes"].measured
    assert got["compression-eases-comm"].status == MET  # both pay off at factor 1
    # top-k without EF is out of the band, but it is not a compressor run "with the residual"
    assert got["compression-keeps-quality"].status == MET
    assert got["F11-residual"].status == MET
    assert got["F12-staleness-hurts"].status == MET  # 0.03 worse, never at the target
    assert got["F12-damping-helps"].status == MET
    assert got["hierarchical-allreduce"].status == MISSED
    assert "1 of 2" in got["hierarchical-allreduce"].measured


def test_ablation_claims_without_sources_are_not_run_and_say_what_makes_them(tmp_path):
    got = {c.id: c for c in ablation_claims.check_ablation_claims(
        {"compression": None, "quality": None, "allreduce": None})}
    assert {c.status for c in got.values()} == {NOT_RUN}
    assert "recpar perfmodel compression-ablation" in got["F10-bytes"].detail
    assert "config/quality_ablation.yaml" in got["F12-damping-helps"].detail
    text = ablation_claims.markdown(list(got.values()))
    assert "0 met, 0 missed, 8 not run" in text


def test_ablation_claims_name_an_unreadable_source(tmp_path):
    (tmp_path / "quality").mkdir()
    (tmp_path / "quality" / "quality_ablation.json").write_text("{not json")
    with pytest.raises(ValueError, match="quality_ablation.json: not valid JSON"):
        ablation_claims.load_sources(tmp_path)
