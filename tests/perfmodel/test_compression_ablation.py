"""The compression ablation's arithmetic and outputs on synthetic records (the measuring itself
needs root and the emulated cluster: `recpar perfmodel compression-ablation`)."""

import json

import pytest

from recpar.perfmodel import compression_ablation as A

from .test_cli import run

SCALE = {"scale_model": {"profile": "paper-a100", "device_flops_per_s": 4.5e9,
                         "profile_flops_per_s": 1.248e14, "dilation": 3.6e-5,
                         "intra_node": {"profile_rate_bit_per_s": 2.4e12,
                                        "profile_latency_s": 1e-6, "rate_bit_per_s": 8.6e7,
                                        "latency_s": 0.0277},
                         "inter_node": {"profile_rate_bit_per_s": 1e11,
                                        "profile_latency_s": 1e-6, "rate_bit_per_s": 3.6e6,
                                        "latency_s": 0.0277}},
         "cpu_budget": {"cores_per_device": 0.2},
         "device_measurement": {"model_size": "tiny", "n_items": 1349, "batch": 32}}
CFG = A.CompressionAblation(link_factors=(1.0, 16.0),
                            compressors=(A.COMPRESSORS[0], A.COMPRESSORS[3]))


def _record(comp, iter_ms, rate):
    return {"status": "completed", "run_id": f"dp2-{comp}", "scheme": "dp",
            "config": {"model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 256,
                                 "max_seq_len": 50, "text_dim": 384},
                       "train": {"global_batch_size": 128, "device": "cpu"},
                       "grad_sync": {"algorithm": "ring", "compressor": comp,
                                     "topk_ratio": 0.01}},
            "plan": {"dp": 2, "tp": 1, "pp": 1, "num_microbatches": 1},
            "topology": {"kind": "emulated", "nodes": 2, "ranks_per_node": 1,
                         "inter_node": {"configured": {"rate_bit_per_s": rate},
                                        "calibrated": {"rate_bit_per_s": rate * 0.96,
                                                       "latency_s": 0.0285}}},
            "dataset": {"stats": {"items": 1349}},
            "metrics": {"iter_ms": iter_ms, "wire_bytes_per_rank_per_iter": 1000.0,
                        "compress_ms_per_iter": 1.0, "exposed_comm_ms_per_iter": 10.0}}


def _settings():
    # measured, two repeats: top-k 2.7x faster at the slow link, slower at the fast one
    times = {1.0: ((3400.0, 3420.0), (1260.0, 1250.0)), 16.0: ((700.0, 690.0), (760.0, 770.0))}
    settings, records = [], {}
    for f, (none_ms, topk_ms) in times.items():
        rate = 3.6e6 * f
        runs = {"none": [f"r{f}/none{k}.json" for k in (1, 2)],
                "topk0.01": [f"r{f}/topk{k}.json" for k in (1, 2)]}
        for k in range(2):
            records[runs["none"][k]] = _record("none", none_ms[k], rate)
            records[runs["topk0.01"][k]] = _record("topk", topk_ms[k], rate)
        settings.append({"link_factor": f, "rate_bit_per_s": rate, "latency_s": 0.028,
                         "calibrated_rate_bit_per_s": rate * 0.96,
                         "calibrated_latency_s": 0.0285, "records": runs})
    return settings, records


RATES = {"topk0.01": {"value": 2.2e7, "source": "measured: test", "provenance": "host"}}


def test_the_ablation_config_is_checked():
    with pytest.raises(ValueError, match="first compressor must be `none`"):
        A.CompressionAblation(compressors=A.COMPRESSORS[1:])
    with pytest.raises(ValueError, match="labels repeat"):
        A.CompressionAblation(compressors=(A.COMPRESSORS[0], A.COMPRESSORS[1],
                                           A.COMPRESSORS[1]))
    with pytest.raises(ValueError, match="link_factors must be > 0"):
        A.CompressionAblation(link_factors=(0.0, 1.0))
    with pytest.raises(ValueError, match="not divisible by 2 devices"):
        A.CompressionAblation(global_batch_size=127)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        A.CompressionAblation(repeats=0)


def test_repeats_after_the_first_go_to_their_own_directories(tmp_path):
    comp = A.COMPRESSORS[3]
    assert A.run_dir(tmp_path, 4.0, comp, 1) == tmp_path / "rate4" / "topk0.01"
    assert A.run_dir(tmp_path, 0.25, comp, 2) == tmp_path / "rate0.25" / "topk0.01-r2"


def test_train_command_spells_out_each_compressor(tmp_path):
    cmd = A.train_command(CFG, A.CompressorSetting("topk0.001", "topk", 0.001, False),
                          "data", tmp_path, 0.2, "state")
    assert cmd[cmd.index("--compressor") + 1] == "topk"
    assert cmd[cmd.index("--topk-ratio") + 1] == "0.001"
    assert "--no-error-feedback" in cmd
    assert cmd[cmd.index("--cpu-budget") + 1] == "0.2"
    assert "max_steps=11" in cmd and "timed_steps=8" in cmd
    assert "--topk-ratio" not in A.train_command(CFG, A.COMPRESSORS[0], "d", tmp_path, 0.2, "s")


def test_a_speedup_counts_only_beyond_the_spread():
    assert A.verdict(1.10, 5.0) == A.PAYS
    assert A.verdict(1.04, 5.0) == A.WITHIN
    assert A.verdict(0.90, 5.0) == A.COSTS
    assert A.verdict(1.04, None) == A.ONE_RUN_FASTER  # one run: no band, and it says so


def test_measured_crossover_lies_between_two_measured_rates():
    rows = [{"rate_bit_per_s": r, "calibrated_rate_bit_per_s": 0.9 * r, "verdict": v}
            for r, v in [(1, A.PAYS), (2, A.PAYS), (4, A.WITHIN), (8, A.COSTS)]]
    assert A.measured_crossover(rows) == {"above_bit_per_s": 1.8, "at_most_bit_per_s": 3.6,
                                          "profile_nic_bit_per_s": [2, 4]}
    assert A.measured_crossover(rows[:2])["pays_off"] == "throughout"
    assert A.measured_crossover(rows[2:])["pays_off"] == "nowhere"


def test_a_finished_run_is_kept_only_at_its_own_rate(tmp_path):
    path = tmp_path / "record.json"
    assert not A._kept(path, 1e6)
    path.write_text(json.dumps(_record("none", 1.0, 1e6)))
    assert A._kept(path, 1e6) and not A._kept(path, 4e6)
    path.write_text(json.dumps({**_record("none", 1.0, 1e6), "status": "failed"}))
    assert not A._kept(path, 1e6)


def test_analyse_sets_projection_beside_measurement_and_publishes(tmp_path):
    settings, records = _settings()
    comps = A.analyse(CFG, SCALE, settings, records, RATES)
    (topk,) = comps
    slow, fast = topk["rows"]
    assert slow["speedup"] == pytest.approx(3410 / 1255)
    assert slow["band_pct"] == pytest.approx(100 * 10 / 1255)  # the larger of the two spreads
    assert (slow["verdict"], fast["verdict"]) == (A.PAYS, A.COSTS)
    assert slow["projected_speedup"] > 1  # the model, too, has top-k win on the slow link
    assert slow["error_pct"] == pytest.approx(
        100 * (slow["projected_iter_ms"] - 1255) / 1255)
    assert topk["measured_crossover"] == {"above_bit_per_s": 3.6e6 * 0.96,
                                          "at_most_bit_per_s": 3.6e6 * 16 * 0.96,
                                          "profile_nic_bit_per_s": [3.6e6, 3.6e6 * 16]}
    cross = topk["projected_crossover_bit_per_s"]
    lo, hi = topk["crossover_search_bit_per_s"]
    if cross is not None:  # searched on the calibrated latency: at it, no longer faster
        assert lo < cross <= hi
        assert (A.project(SCALE, records["r16.0/none1.json"], A.COMPRESSORS[0], RATES, cross,
                          0.0285)
                <= A.project(SCALE, records["r16.0/topk1.json"], A.COMPRESSORS[3], RATES,
                             cross, 0.0285))
    res = A.AblationResult(config={**A.asdict(CFG)}, scale_model=A._scale_summary(SCALE),
                           settings=settings, compressors=comps, compress_rates=RATES)
    assert res.summary["judged"] == 3 and res.summary["winner_judged"] == 2
    paths = A.write_outputs(res, tmp_path)
    assert [p.name for p in paths] == [f"compression_link_rate.{e}"
                                       for e in ("json", "csv", "md", "png")]
    md = paths[2].read_text()
    assert "**Question.**" in md and "**Answer (measured).**" in md
    assert "pays off up to 3.46 Mbit/s, not from 55.3 Mbit/s on (a NIC of 100 Gbit/s" in md
    assert len(paths[1].read_text().splitlines()) == 1 + 2


def test_compress_rates_scale_cpu_seconds_by_the_budget():
    seen = []

    def fake(n, codec, ratio, world, grad_shapes):
        seen.append((codec, ratio, world, sum(1 for _ in grad_shapes)))
        return {"elements_per_s": 1e8, "cpu_s": n / 1e8}

    rates = A.compress_rates(CFG, _record("none", 1.0, 1e6), 0.2, fake)
    assert rates["topk0.01"]["value"] == pytest.approx(2e7)
    assert seen[0][:3] == ("topk", 0.01, 2)


def test_cli_names_what_is_wrong(tmp_path):
    scale = tmp_path / "scale.json"
    scale.write_text(json.dumps(SCALE))
    base = ["perfmodel", "compression-ablation", "--scale-model", str(scale),
            "--data", str(tmp_path), "--out", str(tmp_path / "out")]
    for extra, want in [(["--compressors", "none,int8"], "unknown int8"),
                        (["--link-factors", "1,x"], "--link-factors: expected numbers"),
                        (["--compressors", "sign,none"], "first compressor must be `none`"),
                        ([], "no stats.json")]:
        with pytest.raises(SystemExit, match=want):
            run(base + extra)
    scale.write_text(json.dumps({"scale_model": {}}))
    with pytest.raises(SystemExit, match="not a `recpar perfmodel scale-model` output"):
        run(base)
