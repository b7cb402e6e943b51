"""The all-to-all term of expert parallelism (recpar.perfmodel.expert_dispatch) and the
all-to-all formulas it uses (recpar.perfmodel.collectives)."""

import json

import pytest

from recpar.perfmodel import collectives as C
from recpar.perfmodel import expert_dispatch as X


def test_all_to_all_formulas():
    lk = C.LinkCost(1e-3, 1e-6)  # 1 ms, 1 MB/s
    # 4 MB send buffer over 4 ranks: 3 MB leave the rank
    assert C.all_to_all(4e6, 4, lk) == pytest.approx(1e-3 + 3.0)
    assert C.gloo_all_to_all(4e6, 4, lk) == pytest.approx(2e-3 + 3.0)
    assert C.all_to_all(4e6, 1, lk) == C.gloo_all_to_all(4e6, 1, lk) == 0.0
    assert C.LIBRARIES["gloo"].all_to_all is C.gloo_all_to_all
    assert C.LIBRARIES["nccl"].all_to_all is C.all_to_all


def test_ep_link_inside_a_node_is_the_intra_link():
    intra, inter = C.LinkCost(1e-4, 1e-8), C.LinkCost(1e-2, 1e-6)
    assert X.ep_link(intra, inter, ep=2, ranks_per_node=4) == intra
    assert X.ep_link(intra, None, ep=4, ranks_per_node=4) == intra


def test_ep_link_across_nodes_takes_the_slower_of_intra_link_and_shared_uplink():
    intra, shared = C.LinkCost(1e-4, 1e-8), C.LinkCost(1e-2, 2e-6)  # uplink, 2 streams
    # ep 4 on 2 nodes x 2 ranks: 2 of the 3 chunks cross the uplink, 1 the intra link
    link = X.ep_link(intra, shared, ep=4, ranks_per_node=2)
    assert link.alpha_s == 1e-2
    assert link.beta_s_per_byte == pytest.approx(2 / 3 * 2e-6)
    # the time of a 4 MB buffer: the node's 2 ranks put 2 x 2 MB on an uplink of 1 MB/s
    assert C.all_to_all(4e6, 4, link) - link.alpha_s == pytest.approx(4.0)
    # a slow intra-node link sets the time instead: 1 MB at 0.1 MB/s
    slow = C.LinkCost(1e-1, 1e-5)
    link = X.ep_link(slow, shared, ep=4, ranks_per_node=2)
    assert link.alpha_s == 1e-1
    assert C.all_to_all(4e6, 4, link) - link.alpha_s == pytest.approx(10.0)
    # one rank per node: the uplink alone
    assert X.ep_link(None, shared, ep=2, ranks_per_node=1) == C.LinkCost(1e-2, 2e-6)
    with pytest.raises(ValueError, match="spans 2 nodes"):
        X.ep_link(intra, None, ep=4, ranks_per_node=2)
    with pytest.raises(ValueError, match="2 on one node"):
        X.ep_link(None, shared, ep=4, ranks_per_node=2)


def test_forward_and_step_count_the_exchanges():
    lk = C.LinkCost(0.0, 1e-6)
    fwd = X.forward_all_to_all_s(2e6, num_experts=4, ep=2, link=lk)
    # counts: 32 B, half leaves; dispatch + combine: 1 MB leaves each
    assert fwd == pytest.approx(16e-6 + 2 * 1.0)
    assert X.step_all_to_all_s(2e6, 4, 2, lk) == pytest.approx(fwd + 2.0)
    assert X.forward_all_to_all_s(2e6, 4, 1, lk) == X.step_all_to_all_s(2e6, 4, 1, lk) == 0.0


def _record(kind="emulated", ep=2, nodes=2, rpn=1, measured=30.0, sent=2e5):
    return {
        "run_id": f"dp2ep{ep}-ring-moe4top2-tiny-n{nodes}", "seed": 0,
        "plan": {"scheme": "dp", "dp": ep, "ep": ep},
        "topology": {"kind": kind, "nodes": nodes, "ranks_per_node": rpn,
                     "inter_node": {"calibrated": {"rate_bit_per_s": 8e7, "latency_s": 1e-3}}},
        "config": {"model": {"d_model": 64}},
        "moe": {"num_experts": 4, "layers": [
            {"module": "blocks.1.mlp", "all_to_all_ms_per_forward": measured,
             "all_to_all_bytes_per_forward": sent, "all_to_all_counts_ms_per_forward": 3.0}]},
    }


def test_record_rows_price_the_bytes_the_record_counted():
    (row,) = X.record_rows(_record(), "r.json")
    # 1e5 B to the other rank per exchange = half a 2e5 B buffer; uplink 10 MB/s, 1 ms
    expected = 1e3 * (2 * 1e-3 + 16 / 1e7 + 2 * (2e-3 + 1e5 / 1e7))
    assert row["predicted_ms"] == pytest.approx(expected)
    assert row["textbook_ms"] < row["predicted_ms"]
    assert row["error_pct"] == pytest.approx(100 * (expected - 30.0) / 30.0)
    assert row["verdict"] == ("within" if abs(row["error_pct"]) <= X.TARGET_PCT else "missed")
    far = X.record_rows(_record(measured=100.0), "r.json")[0]
    assert far["verdict"] == "missed"
    assert row["counts_ms"] == 3.0 and row["token_bytes"] == pytest.approx(2e5)


def test_record_rows_do_not_judge_what_they_cannot_price():
    (local,) = X.record_rows(_record(kind="local"), "r.json")
    assert local["verdict"] == "not judged" and "local" in local["note"]
    with_tp = _record()
    with_tp["plan"]["tp"] = 2
    (tp,) = X.record_rows(with_tp, "r.json")
    assert tp["verdict"] == "not judged" and "ep with tp > 1" in tp["note"]
    (loop,) = X.record_rows(_record(ep=2, nodes=1, rpn=2), "r.json")
    assert loop["verdict"] == "not judged" and "loopback" in loop["note"]
    assert X.record_rows(dict(_record(), moe=None), "r.json") == []
    dense = _record()
    dense["plan"]["ep"] = 1
    assert X.record_rows(dense, "r.json") == []


def test_validate_and_outputs(tmp_path):
    d = tmp_path / "records" / "run" / "seed0"
    d.mkdir(parents=True)
    (d / "record.json").write_text(json.dumps(_record()))
    rows = X.validate([tmp_path / "records"])
    assert len(rows) == 1
    md, js = X.write_outputs(rows, tmp_path / "out")
    text = md.read_text()
    assert "0 of 1 within the band" in text or "1 of 1 within the band" in text
    assert json.loads(js.read_text())["target_pct"] == X.TARGET_PCT
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        X.validate([bad])
    with pytest.raises(FileNotFoundError, match="no record.json"):
        X.validate([tmp_path / "out"])


def test_cli_writes_the_table_and_refuses_records_without_ep(tmp_path, capsys):
    from .test_cli import run

    good, dense = tmp_path / "good.json", tmp_path / "dense.json"
    good.write_text(json.dumps(_record()))
    rec = _record()
    rec["plan"]["ep"] = 1
    dense.write_text(json.dumps(rec))
    out = str(tmp_path / "o")
    assert run(["perfmodel", "moe-all-to-all", "--records", str(good), "--out", out]) == 0
    assert (tmp_path / "o" / "moe_all_to_all.md").exists()
    with pytest.raises(SystemExit, match="no expert-parallel MoE record"):
        run(["perfmodel", "moe-all-to-all", "--records", str(dense), "--out", str(tmp_path / "p")])


def test_probe_shapes_and_rows_set_the_term_against_the_exchange_alone():
    rows = (X.record_rows(_record(measured=30.0, sent=2e5), "a.json")
            + X.record_rows(dict(_record(measured=40.0, sent=2.2e5), seed=1), "b.json")
            + X.record_rows(_record(kind="local"), "c.json"))  # not judged: not probed
    (shape,) = X.probe_shapes(rows)
    assert shape == {"run_id": "dp2ep2-ring-moe4top2-tiny-n2", "nodes": 2, "ranks_per_node": 1,
                     "ep": 2, "num_experts": 4, "d_model": 64, "token_bytes": 210000,
                     "measured_in_training_ms": 35.0}
    topo = _record()["topology"]
    probe = {"iters": 10, "topology": topo,
             "sizes": [{"buffer_bytes": 209920, "time_ms": 25.0, "counts_ms": 2.0,
                        "correct": True}]}
    (row,) = X.probe_rows([shape], [probe])
    # priced on the probe's own buffer and links, as record_rows prices a record's
    assert row["predicted_ms"] == pytest.approx(
        X.price(topo, 2, 4, 209920)["predicted_ms"])
    assert row["error_pct"] == pytest.approx(100 * (row["predicted_ms"] - 25.0) / 25.0)
    assert row["training_minus_probe_ms"] == pytest.approx(10.0)


def test_outputs_carry_the_probe_table(tmp_path):
    rows = X.record_rows(_record(), "a.json")
    (shape,) = X.probe_shapes(rows)
    probe = {"iters": 10, "topology": _record()["topology"],
             "sizes": [{"buffer_bytes": 200192, "time_ms": 24.0, "counts_ms": 2.0,
                        "correct": True}]}
    probes = X.probe_rows([shape], [probe])
    md, js = X.write_outputs(rows, tmp_path, probes)
    text = md.read_text()
    assert "## The same exchange alone" in text and "| dp2ep2-ring-moe4top2-tiny-n2 | 2 |" in text
    assert json.loads(js.read_text())["probes"][0]["probe_ms"] == 24.0
    md, js = X.write_outputs(rows, tmp_path / "plain")
    assert "## The same exchange alone" not in md.read_text()
    assert "probes" not in json.loads(js.read_text())


def test_cli_probe_refuses_when_nothing_was_judged(tmp_path):
    from .test_cli import run

    local = tmp_path / "local.json"
    local.write_text(json.dumps(_record(kind="local")))
    with pytest.raises(SystemExit, match="no layout to probe"):
        run(["perfmodel", "moe-all-to-all", "--records", str(local), "--out",
             str(tmp_path / "o"), "--probe"])


def test_the_concurrent_streams_rate_prices_the_exchange_where_the_record_has_it():
    rec = _record()
    (one,) = X.record_rows(rec, "a.json")
    assert one["link_rate_measured_as"] == "one stream"
    assert one["link_rate_mbit_per_s"] == pytest.approx(80.0)
    rec["topology"]["inter_node"]["calibrated"]["concurrent_rate_bit_per_s"] = 4e7
    (both,) = X.record_rows(rec, "a.json")
    assert both["link_rate_measured_as"] == "concurrent streams"
    assert both["link_rate_mbit_per_s"] == pytest.approx(40.0)
    # 1e5 B each way per exchange now at 5 MB/s: 10 ms more for each of the two, and the
    # counts' 16 B that leave: 1.6 us more
    assert both["predicted_ms"] - one["predicted_ms"] == pytest.approx(
        2 * (20.0 - 10.0) + 1e3 * (16 / 5e6 - 16 / 1e7))
