"""A scale-model run's collectives priced at the link rates its own record measured under load."""

import copy

import pytest

from recpar.perfmodel.calibrate import profile_from_mapping
from recpar.perfmodel.hardware import ProfileError
from recpar.perfmodel.loaded_links import links_for_record
from recpar.perfmodel.placement import group_link
from recpar.perfmodel.scale_profile import scale_profile_mapping
from tests.perfmodel.test_scale_profile import SCALE  # a measured scale model

CALIBRATION = {"rate_bit_per_s": 12e6, "latency_s": 0.008,
               "intra_node": {"rate_bit_per_s": 300e6, "latency_s": 0.008}}


def _record(inter: float | None, intra: float | None) -> dict:
    def cal(rate, loaded):
        c = {"rate_bit_per_s": rate, "latency_s": 0.008}
        return {"calibrated": c if loaded is None else {**c, "concurrent_rate_bit_per_s": loaded}}
    return {"topology": {"kind": "emulated", "nodes": 2, "ranks_per_node": 2,
                         "inter_node": cal(12e6, inter), "intra_node": cal(300e6, intra)}}


@pytest.fixture
def scale_hw():
    return profile_from_mapping(scale_profile_mapping(SCALE, CALIBRATION, 2), "<scale>")


def test_collectives_take_the_records_loaded_rates_and_a_point_to_point_send_one_streams(
        scale_hw):
    hw, basis = links_for_record(scale_hw, _record(inter=8e6, intra=150e6))
    assert basis == "under load: intra_node, inter_node"
    # bytes/s -> s/byte: 150 Mbit/s inside a node, 8 Mbit/s between nodes
    inside, crosses = group_link(hw, 2, 1, 2, 1)
    assert not crosses and inside.beta_s_per_byte == pytest.approx(8 / 150e6)
    across, crosses = group_link(hw, 2, 2, 2, 1)
    assert crosses and across.beta_s_per_byte == pytest.approx(8 / 8e6)
    # two streams per node share the uplink, at the loaded rate
    assert group_link(hw, 2, 2, 2, 2)[0].beta_s_per_byte == pytest.approx(2 * 8 / 8e6)
    # a pipeline's send is one stream: the one-stream rates, as calibrated alone
    assert hw.intra_link().beta_s_per_byte == pytest.approx(8 / 300e6)
    assert hw.inter_link(1).beta_s_per_byte == pytest.approx(8 / 12e6)
    assert "links.inter_node.loaded_bandwidth_bytes_per_s" in hw.figures
    assert hw.figures["links.inter_node.loaded_bandwidth_bytes_per_s"].provenance == "cluster"


def test_a_record_without_loaded_rates_keeps_one_streams_and_says_so(scale_hw):
    hw, basis = links_for_record(scale_hw, _record(inter=None, intra=None))
    assert hw is scale_hw and basis.startswith("one stream")
    hw, basis = links_for_record(scale_hw, _record(inter=8e6, intra=None))
    assert basis == "under load: inter_node"
    assert group_link(hw, 2, 1, 2, 1)[0].beta_s_per_byte == pytest.approx(8 / 300e6)


def test_only_a_profile_of_the_cluster_that_ran_reads_the_records_rates():
    from recpar.perfmodel.hardware import load_profile

    a100 = load_profile("paper-a100")  # a datasheet cluster: the record's rates are not its
    hw, basis = links_for_record(a100, _record(inter=8e6, intra=150e6))
    assert hw is a100 and basis == "profile"


def test_the_profile_key_is_checked():
    m = scale_profile_mapping(SCALE, CALIBRATION, 2)
    assert m["links_under_load"]["value"] == "run_record"
    bad = copy.deepcopy(m)
    bad["links_under_load"]["value"] = "always"
    with pytest.raises(ProfileError, match="links_under_load.value"):
        profile_from_mapping(bad, "sp.yaml")
    bad["links_under_load"] = {"value": "run_record"}
    with pytest.raises(ProfileError, match="links_under_load.source"):
        profile_from_mapping(bad, "sp.yaml")


def test_a_validation_row_says_which_rates_priced_it(scale_hw):
    from recpar.perfmodel.validation import validation_row

    rec = _record(inter=8e6, intra=150e6)
    rec.update(run_id="dp4-ring-tiny-n2", scheme="dp",
               plan={"dp": 4, "tp": 1, "pp": 1},
               config={"model": {"size": "tiny", "d_model": 64, "n_layers": 2, "n_heads": 4,
                                 "d_ff": 256, "max_seq_len": 50, "vocab_size": 1350},
                       "train": {"global_batch_size": 192, "device": "cpu"}},
               metrics={"iter_ms": 1000.0})
    loaded = validation_row("a", rec, scale_hw, grid_role="held-out")
    plain = validation_row("a", _strip(rec), scale_hw, grid_role="held-out")
    assert loaded["link_rates"] == "under load: intra_node, inter_node"
    assert plain["link_rates"].startswith("one stream")
    assert loaded["predicted_iter_ms"] > plain["predicted_iter_ms"]  # slower links
    from recpar.perfmodel.validation_summary import summary_markdown

    text = summary_markdown([loaded, {**plain, "run_id": "other"}])
    assert "- under load: intra_node, inter_node: `dp4-ring-tiny-n2`" in text
    assert "- one stream (the record has no rate under load): `other`" in text


def _strip(rec: dict) -> dict:
    out = copy.deepcopy(rec)
    for key in ("inter_node", "intra_node"):
        out["topology"][key]["calibrated"].pop("concurrent_rate_bit_per_s")
    return out
