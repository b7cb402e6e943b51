"""The all-reduce ablation's arithmetic and outputs, on synthetic measurements (the measuring
itself needs root and vde2: bench/test_bench_cluster.py runs it)."""

from dataclasses import asdict

import pytest

from recpar.perfmodel import allreduce_ablation as A
from recpar.perfmodel.cli import parse_latency_settings
from recpar.perfmodel.collectives import LIBRARIES, LinkCost

INTRA = LinkCost(0.005, 8 / 1e8)  # 5 ms, 100 Mbit/s
INTER = LinkCost(0.010, 8 / 2e7)  # 10 ms, 20 Mbit/s


def _probe_row(n, ms):
    return {"bytes": n, "time_ms": ms, "busbw_bytes_per_s": n / ms * 1e3}


def test_compare_size_sets_both_projections_beside_the_measurement():
    n = 2**20
    row = A.compare_size(_probe_row(n, 1000.0), _probe_row(n, 800.0), 4, 2, INTRA, INTER)
    gloo_flat = LIBRARIES["gloo"].all_reduce(n, 8, INTER) * 1e3
    assert row["projected_flat_time_ms"] == pytest.approx(gloo_flat)
    assert row["projected_flat_error_pct"] == pytest.approx(100 * (gloo_flat - 1000) / 1000)
    assert row["textbook_flat_time_ms"] < row["projected_flat_time_ms"]  # half the latency
    assert row["measured_winner"] == "hierarchical"


def test_projected_crossover_where_the_intra_node_link_becomes_the_bottleneck():
    slow_intra = LinkCost(0.001, 8 / 3e7)  # a node's inside slower than its uplink's share
    n = A.projected_crossover_bytes(4, 2, slow_intra, INTER, 1e3, 1e9)
    assert n is not None
    flat, hier = A._times(n, 4, 2, slow_intra, INTER, LIBRARIES["gloo"])
    assert flat <= hier
    flat, hier = A._times(n / 1.1, 4, 2, slow_intra, INTER, LIBRARIES["gloo"])
    assert hier < flat  # just below it hierarchical still wins
    # with a fast inside, hierarchical wins over the whole range: no crossover
    assert A.projected_crossover_bytes(4, 2, LinkCost(1e-4, 1e-9), INTER, 1e3, 1e8) is None


def test_measured_crossover_lies_between_two_measured_sizes():
    rows = [{"bytes": b, "measured_winner": w} for b, w in
            [(1, "hierarchical"), (2, "hierarchical"), (4, "flat")]]
    assert A.measured_crossover(rows) == {"above_bytes": 2, "at_most_bytes": 4}
    assert A.measured_crossover(rows[:2])["winner_throughout"] == "hierarchical"


def _settings():
    sizes = []
    for n, flat_ms, hier_ms in [(65536, 400.0, 250.0), (2**20, 1200.0, 1100.0),
                                (4 * 2**20, 3400.0, 3900.0)]:
        sizes.append(A.compare_size(_probe_row(n, flat_ms), _probe_row(n, hier_ms), 4, 2,
                                    INTRA, INTER))
    return [{"intra_latency_s": 0.005, "inter_latency_s": 0.01,
             "calibrated_intra_latency_s": 0.0054, "calibrated_inter_latency_s": 0.0105,
             "calibrated_intra_rate_bit_per_s": 9.6e7, "calibrated_inter_rate_bit_per_s": 1.9e7,
             "sizes": sizes, "measured_crossover": A.measured_crossover(sizes),
             "projected_crossover_bytes": None, "textbook_crossover_bytes": None,
             "crossover_search_bytes": [16384, 16 * 2**20]}]


def test_outputs_state_question_table_and_answer(tmp_path):
    res = A.AblationResult(config=asdict(A.AllreduceAblation()), settings=_settings())
    assert res.summary["judged"] == 6
    paths = A.write_outputs(res, tmp_path)
    assert [p.name for p in paths] == [f"allreduce_latency.{e}" for e in
                                       ("json", "csv", "md", "png")]
    assert all(p.stat().st_size > 0 for p in paths)
    md = paths[2].read_text()
    assert "**Question.**" in md and "**Answer (measured).**" in md
    assert "catches up between 1 MiB and 4 MiB" in md  # the measured crossover
    assert len(paths[1].read_text().splitlines()) == 1 + 3


def test_bad_configuration_is_refused_naming_the_value():
    with pytest.raises(ValueError, match="nodes=1"):
        A.AllreduceAblation(nodes=1)
    with pytest.raises(ValueError, match="INTRA/INTER"):
        parse_latency_settings("5ms")
    with pytest.raises(ValueError, match="inter-node"):
        parse_latency_settings("5ms/fast")
    assert parse_latency_settings("5ms/10ms, 20ms/40ms") == (
        A.LatencySetting(0.005, 0.01), A.LatencySetting(0.02, 0.04))
