"""Profiles: the packaged paper cluster, and one-line errors for bad user profiles."""

import copy

import pytest
import yaml

from recpar.perfmodel.hardware import (ProfileError, load_profile, packaged_profiles,
                                       profile_from_mapping)

from .conftest import toy_mapping


def test_paper_profile_figures_and_sources():
    hw = load_profile("paper-a100")
    assert "paper-a100" in packaged_profiles() and "emulated.template" not in packaged_profiles()
    assert hw.gpus_per_node == 8 and hw.max_nodes.value == 8
    assert hw.peak_flops_per_s["bf16"].value == 312e12
    assert hw.peak_flops_per_s["fp16"].value == 312e12
    assert hw.peak_flops_per_s["tf32"].value == 156e12
    assert hw.peak_flops_per_s["fp32"].value == 19.5e12
    assert hw.intra_node.bandwidth_bytes_per_s.value == 300e9  # 600 GB/s both directions
    assert hw.inter_node.bandwidth_bytes_per_s.value == 12.5e9  # 100 Gb/s
    assert hw.memory_gib.value == 40
    assert "datasheet" in hw.peak_flops_per_s["bf16"].source
    assert hw.efficiency.source.startswith("assumed")
    rows = hw.sources()
    assert rows and all(r["source"] for r in rows)
    assert hw.sustained_flops_per_s == pytest.approx(312e12 * hw.efficiency.value)


def test_user_profile_from_path(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump(toy_mapping()))
    hw = load_profile(str(p))
    assert hw.name == "toy" and hw.gpus_per_node == 4
    assert hw.inter_link(streams_per_node=4).beta_s_per_byte == pytest.approx(4e-9)


def _broken(edit):
    m = copy.deepcopy(toy_mapping())
    edit(m)
    return m


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["device"].pop("efficiency"), "toy.yaml: device.efficiency: missing"),
    (lambda m: m["device"]["efficiency"].update(value=1.5),
     "device.efficiency.value: must be <= 1.0"),
    (lambda m: m["device"]["efficiency"].pop("source"), "device.efficiency.source: missing"),
    (lambda m: m["links"]["inter_node"]["bandwidth_bytes_per_s"].update(value="fast"),
     "links.inter_node.bandwidth_bytes_per_s.value: expected a finite number"),
    (lambda m: m["links"]["intra_node"]["latency_s"].update(value=-1),
     "links.intra_node.latency_s.value: must be >= 0.0"),
    (lambda m: m.update(colour="blue"), "colour: unknown key"),
    (lambda m: m["device"].update(compute_dtype="bf16"),
     "device.peak_flops_per_s.bf16: missing (it is the compute_dtype)"),
    (lambda m: m["devices_per_node"].update(value=2.5),
     "devices_per_node.value: must be an integer"),
    (lambda m: m["links"].pop("inter_node"), "links.inter_node: missing"),
    (lambda m: m.update(collective_library={"value": "mpi", "source": "x"}),
     "collective_library.value: must be one of nccl, gloo, got 'mpi'"),
    (lambda m: m.update(collective_library={"value": "gloo"}),
     "collective_library.source: missing"),
])
def test_validation_errors_name_the_key(edit, message):
    with pytest.raises(ProfileError) as e:
        profile_from_mapping(_broken(edit), "toy.yaml")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_load_errors(tmp_path):
    with pytest.raises(ProfileError, match="unknown hardware profile 'nope'"):
        load_profile("nope")
    with pytest.raises(ProfileError, match="not found"):
        load_profile(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="bad.yaml: not valid YAML"):
        load_profile(str(bad))


def test_collective_library_picks_the_formulas():
    from recpar.perfmodel import collectives as C

    assert load_profile("paper-a100").collectives is C.LIBRARIES["nccl"]
    assert profile_from_mapping(toy_mapping()).collective_library == "nccl"  # default
    m = copy.deepcopy(toy_mapping())
    m["collective_library"] = {"value": "gloo", "source": "the CPU backend"}
    hw = profile_from_mapping(m)
    assert hw.collectives is C.LIBRARIES["gloo"] and hw.collective_library_source == \
        "the CPU backend"
