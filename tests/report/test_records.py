"""recpar.report.records: reading records, grouping them into rows, the sweeps' notes."""

import pytest

from recpar.report import records
from recpar.report.records import RecordsError
from tests.report.record_factory import make_run, write_runs


def _rs(runs):
    return records.group([(f"r{i}.json", r) for i, r in enumerate(runs)])


def test_failed_and_most_popular_records_are_left_out_and_listed():
    rs = _rs([make_run("baseline"), make_run("dp", dp=2, status="failed"),
              make_run("most-popular")])
    assert [r.key.scheme for r in rs.rows] == ["baseline"]
    assert len(rs.skipped) == 2 and "status failed" in rs.skipped[0]


def test_invalid_record_is_named(tmp_path):
    good = write_runs(tmp_path, [make_run("baseline")])
    bad = tmp_path / "bad" / "record.json"
    bad.parent.mkdir()
    bad.write_text('{"schema_version": 1}')
    with pytest.raises(RecordsError, match=f"{bad}: invalid run record"):
        records.load_records(good + [bad])
    with pytest.raises(RecordsError, match="missing.json: run record not found"):
        records.load_records([tmp_path / "missing.json"])


def test_sweep_notes_state_the_commit_and_topology_of_the_records():
    dirty = make_run("dp", dp=4, nodes=2, throughput=300)
    dirty["git"] = {"commit": "b" * 40, "dirty": True}
    notes = records.sweep_notes(_rs([make_run("baseline", throughput=100), dirty]))
    assert len(notes) == 1
    assert "git aaaaaaaaaaaa, bbbbbbbbbbbb+dirty" in notes[0]
    assert "topology emulated, local" in notes[0]


def test_runs_that_differ_beyond_plan_and_sync_are_separate_rows_and_seeds_share_one():
    """Top-k at two ratios (same plan, same compressor name) must not be averaged as seeds."""
    runs = [make_run("baseline"), make_run("baseline", seed=1)]
    for ratio in ("0.01", "0.1"):
        for seed in (0, 1):
            rec = make_run("dp", dp=2, seed=seed, run_id=f"dp2-topk{ratio}-ring-n1")
            rec["config"]["grad_sync"]["compressor"] = "topk"
            runs.append(rec)
    rs = records.group([(f"r{i}", r) for i, r in enumerate(runs)])
    assert sorted((r.key.run_id, r.seeds) for r in rs.rows) == [
        ("baseline-dp1tp1pp1-n1", [0, 1]), ("dp2-topk0.01-ring-n1", [0, 1]),
        ("dp2-topk0.1-ring-n1", [0, 1])]


def test_an_moe_run_says_so_in_its_plan_and_its_sweep():
    """Expert parallelism in the plan label, the MoE model in the sweep's description: MoE
    rows of Table II are not mistaken for dense ones."""
    moe = {"num_moe_experts": 4, "moe_router_topk": 2, "moe_layer_freq": 1,
           "moe_aux_loss_coeff": 0.01, "moe_expert_capacity_factor": None}
    runs = []
    for ep in (1, 2):
        rec = make_run("dp", dp=2, run_id=f"dp2ep{ep}-ring-moe4top2-n1")
        rec["config"]["model"].update(moe)
        if ep > 1:
            rec["plan"]["ep"] = ep
        runs.append(rec)
    rs = _rs(runs + [make_run("baseline")])
    labels = sorted(r.key.plan_label for r in rs.rows)
    assert labels == ["dp1·tp1·pp1", "dp2·ep2·tp1·pp1", "dp2·tp1·pp1"]
    notes = " ".join(records.sweep_notes(rs))
    assert "MoE 4 experts top-2 every 1 block(s), aux loss 0.01, dropless" in notes
    assert notes.count("MoE") == 1  # the dense baseline is its own sweep, described without


def test_a_scale_model_topology_is_described_with_d_and_every_link():
    from recpar.report.records import describe_scale_model

    topo = {
        "scale_model": {"profile": "paper-a100", "dilation": 4.43e-5, "device_flops_per_s": 5.53e9,
                        "cpu_budget_cores_per_device": 0.2,
                        "inter_node": {"profile_rate_bit_per_s": 1e11, "profile_latency_s": 1e-6},
                        "intra_node": {"profile_rate_bit_per_s": 2.4e12,
                                       "profile_latency_s": 1e-6}},
        "inter_node": {"configured": {"rate_bit_per_s": 4.43e6, "latency_s": 0.023},
                       "calibrated": {"rate_bit_per_s": 4.23e6, "latency_s": 0.0235}},
        "intra_node": {"configured": {"rate_bit_per_s": 1.06e8, "latency_s": 0.023},
                       "calibrated": {"rate_bit_per_s": None, "latency_s": None}},
    }
    text = describe_scale_model(topo)
    assert "scale model of `paper-a100`: dilation D = 4.43e-05" in text
    assert "5.53 GFLOP/s on 0.2 core(s)" in text
    assert ("inter-node 4.43 Mbit/s + 23 ms (profile 1e+05 Mbit/s + 0.001 ms; calibrated "
            "4.23 Mbit/s + 23.5 ms)") in text
    assert "intra-node 106 Mbit/s + 23 ms" in text and "calibrated ? + ?" in text
