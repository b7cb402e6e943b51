"""`recpar cluster` argument handling that needs no root."""

import os

import pytest

from recpar.cluster import cli as cluster_cli


def _main(argv):
    import argparse

    parser = argparse.ArgumentParser(prog="recpar")
    sub = parser.add_subparsers(dest="group", required=True)
    cluster_cli.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_up_without_root_says_so_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as e:
        _main(["cluster", "up", "--nodes", "2", "--ranks-per-node", "1", "--inter-bw", "100mbit",
               "--state-dir", str(tmp_path), "--prefix", "rpu"])
    msg = str(e.value.code)
    assert msg.startswith("recpar: ") and "needs root" in msg and "\n" not in msg
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("argv,msg", [
    (["--inter-bw", "lots"], "--inter-bw: cannot parse rate"),
    (["--inter-latency", "5 parsecs"], "--inter-latency"),
    (["--loss", "120%"], "--loss"),
    (["--intra-latency", "soon"], "--intra-latency"),
    (["--scale-model", "paper-a100", "--inter-bw", "1gbit"],
     "--scale-model sets every link; do not also give --inter-bw"),
    (["--scale-model", "paper-a100"], "needs --cpu-budget"),
    (["--scale-model", "missing.json"], "--scale-model missing.json: no such file"),
])
def test_up_bad_values(argv, msg, tmp_path):
    with pytest.raises(SystemExit) as e:
        _main(["cluster", "up", "--nodes", "2", "--ranks-per-node", "1",
               "--state-dir", str(tmp_path), *argv])
    assert msg in str(e.value.code) and str(e.value.code).startswith("recpar: ")


def test_commands_without_a_cluster_point_to_up(tmp_path):
    for argv in (["cluster", "calibrate"], ["cluster", "fault", "kill-rank", "--node", "0"],
                 ["cluster", "launch", "--", "x.py"]):
        with pytest.raises(SystemExit) as e:
            _main([*argv[:2], "--prefix", "rpu", "--state-dir", str(tmp_path), *argv[2:]]
                  if argv[1] != "fault" else
                  [*argv, "--prefix", "rpu", "--state-dir", str(tmp_path)])
        assert "recpar cluster up" in str(e.value.code)


def test_fault_link_needs_a_change(tmp_path):
    with pytest.raises(SystemExit, match="needs --rate"):
        _main(["cluster", "fault", "link", "--node", "0", "--state-dir", str(tmp_path)])


def test_auto_topology_resolves_from_the_probe():
    from recpar.cluster.emulated import resolve_topology

    assert resolve_topology("auto", probe=lambda: None)[0] == "emulated"
    kind, why = resolve_topology("auto", probe=lambda: "the emulated topology needs root")
    assert (kind, why) == ("local", "auto: the emulated topology needs root")
    # explicit choices are not probed
    assert resolve_topology("local", probe=lambda: 1 / 0) == ("local", "set in the config")
    assert resolve_topology("emulated", probe=lambda: 1 / 0)[0] == "emulated"
    with pytest.raises(ValueError, match="'slurm' is not one of auto, local, emulated"):
        resolve_topology("slurm")


def test_check_without_root_says_local_and_why(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert _main(["cluster", "check"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("topology local (auto: ") and "needs root" in out
    assert _main(["cluster", "check", "--scale-model"]) == 1


def test_check_scale_model_names_what_is_missing(monkeypatch, capsys):
    """`make reproduce-scale-model-n2` runs the scale model's slice only where `check
    --scale-model` passes; where it does not, the check prints the reason."""
    from recpar.cluster import cpu_budget, emulated, vde

    monkeypatch.setattr(emulated, "resolve_topology", lambda requested: ("emulated", "auto: ok"))
    monkeypatch.setattr(cpu_budget, "unavailable_reason", lambda: "no cgroup cpu controller")
    monkeypatch.setattr(vde, "unavailable_reason", lambda: None)
    assert _main(["cluster", "check"]) == 0
    assert _main(["cluster", "check", "--scale-model"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "scale model unavailable: no cgroup cpu controller"
    monkeypatch.setattr(cpu_budget, "unavailable_reason", lambda: None)
    assert _main(["cluster", "check", "--scale-model"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("scale model available")
