"""Topology dataclass: validation, record form, env hand-over (no root needed)."""

import json

import pytest

from recpar.cluster.topology import ENV_VAR, Topology


def test_record_round_trip_and_no_hostnames():
    t = Topology("emulated", 4, 2, inter_rate_bit_per_s=1e8, inter_latency_s=0.0, inter_loss=0.0,
                 calibrated_rate_bit_per_s=9.5e7, calibrated_latency_s=2e-5)
    rec = t.to_record()
    assert rec["world_size"] == 8
    assert rec["inter_node"]["configured"]["rate_bit_per_s"] == 1e8
    assert rec["inter_node"]["calibrated"]["rate_bit_per_s"] == 9.5e7
    assert "host" not in json.dumps(rec)
    assert Topology.from_record(rec) == t
    # the concurrent-streams rate appears only once calibrated
    assert "concurrent_rate_bit_per_s" not in rec["inter_node"]["calibrated"]
    both = Topology("emulated", 2, 1, calibrated_rate_bit_per_s=9.5e7,
                    calibrated_concurrent_rate_bit_per_s=6e7)
    rec = both.to_record()
    assert rec["inter_node"]["calibrated"]["concurrent_rate_bit_per_s"] == 6e7
    assert Topology.from_record(json.loads(json.dumps(rec))) == both
    with pytest.raises(ValueError, match="calibrated_concurrent_rate_bit_per_s"):
        Topology("emulated", 2, 1, calibrated_concurrent_rate_bit_per_s=-1.0)


def test_state_topology_picks_the_concurrent_rate_of_the_run_size():
    from recpar.cluster.state import ClusterState
    from recpar.cluster.shaping import LinkShape

    st = ClusterState(prefix="rp", nodes=4, ranks_per_node=1,
                      base_shape=LinkShape(1e8).to_dict(),
                      node_shapes=[LinkShape(1e8).to_dict()] * 4, netem=False,
                      created_unix_s=0.0)
    st.calibration = {"rate_bit_per_s": 9.5e7, "latency_s": 1e-3,
                      "concurrent": [{"nodes": 2, "rate_bit_per_s": 6e7},
                                     {"nodes": 4, "rate_bit_per_s": 4e7}],
                      "intra_node": {"rate_bit_per_s": 3e8, "latency_s": 1e-3,
                                     "concurrent": [{"nodes": 1, "rate_bit_per_s": 2e8},
                                                    {"nodes": 2, "rate_bit_per_s": 1.5e8}]}}
    assert st.topology().calibrated_concurrent_rate_bit_per_s == 4e7
    assert st.topology(2).calibrated_concurrent_rate_bit_per_s == 6e7
    assert st.topology(3).calibrated_concurrent_rate_bit_per_s is None  # not measured
    assert st.topology(1).calibrated_intra_concurrent_rate_bit_per_s == 2e8
    assert st.topology(2).calibrated_intra_concurrent_rate_bit_per_s == 1.5e8
    assert st.topology(4).calibrated_intra_concurrent_rate_bit_per_s is None
    st.calibration = {"rate_bit_per_s": 9.5e7, "latency_s": 1e-3}  # calibrated before it
    assert st.topology(2).calibrated_concurrent_rate_bit_per_s is None


def test_intra_node_links_and_scale_model_round_trip():
    sm = {"profile": "paper-a100", "dilation": 4.9e-5}
    t = Topology("emulated", 2, 2, inter_rate_bit_per_s=4.9e6, inter_latency_s=0.02,
                 intra_rate_bit_per_s=1.17e8, intra_latency_s=0.02,
                 calibrated_intra_rate_bit_per_s=1.1e8, calibrated_intra_latency_s=0.0205,
                 scale_model=sm)
    rec = t.to_record()
    assert rec["intra_node"] == {"configured": {"rate_bit_per_s": 1.17e8, "latency_s": 0.02},
                                 "calibrated": {"rate_bit_per_s": 1.1e8, "latency_s": 0.0205}}
    assert rec["scale_model"] == sm
    assert Topology.from_record(json.loads(json.dumps(rec))) == t
    # the loaded intra-node rate, once calibrated, rides along
    loaded = Topology(**{**t.__dict__, "calibrated_intra_concurrent_rate_bit_per_s": 6e7})
    rec = loaded.to_record()
    assert rec["intra_node"]["calibrated"]["concurrent_rate_bit_per_s"] == 6e7
    assert Topology.from_record(json.loads(json.dumps(rec))) == loaded
    # without intra-node links the record has neither key (ranks of a node share its loopback)
    plain = Topology("emulated", 2, 2).to_record()
    assert "intra_node" not in plain and "scale_model" not in plain


def test_env_hand_over():
    t = Topology("local", 1, 3)
    env = t.to_env()
    assert Topology.from_env(env) == t
    assert Topology.from_env({}) is None
    with pytest.raises(ValueError, match=ENV_VAR):
        Topology.from_env({ENV_VAR: "{not json"})


@pytest.mark.parametrize("kwargs,msg", [
    ({"kind": "cloud"}, "topology.kind"),
    ({"nodes": 0, "kind": "emulated"}, "topology.nodes"),
    ({"ranks_per_node": 1.5}, "topology.ranks_per_node"),
    ({"kind": "local", "nodes": 2}, "'local' topology has 1 node"),
    ({"inter_rate_bit_per_s": -1.0}, "inter_rate_bit_per_s"),
    ({"inter_loss": 1.0}, "inter_loss"),
])
def test_validation(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        Topology(**kwargs)


def test_from_record_requires_keys():
    with pytest.raises(ValueError, match="missing key"):
        Topology.from_record({"kind": "local"})


def test_record_matches_run_record_schema():
    """The training record's schema (recpar.train) must accept what we hand over."""
    import importlib.resources

    import jsonschema

    schema_text = importlib.resources.files("recpar.train").joinpath("run_record.schema.json")
    # a packaging regression (the schema left out of the package data) must fail, not skip
    assert schema_text.is_file(), f"{schema_text}: the run record schema is not packaged"
    schema = json.loads(schema_text.read_text())
    topo_schema = schema["properties"]["topology"]
    jsonschema.validate(Topology("emulated", 2, 1, 1e8).to_record(), topo_schema)
