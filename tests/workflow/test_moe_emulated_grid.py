"""config/moe_emulated.yaml: MoE on the emulated cluster, and the cost model's all-to-all term
checked against its expert-parallel runs (rule moe_all_to_all)."""

from . import test_snakemake as ts

pytestmark = ts.pytestmark


def test_moe_emulated_grid_runs_ep_across_nodes_and_checks_the_all_to_all_term():
    r = ts._snakemake("--forceall", "paper_tables/moe-emulated/moe/moe_all_to_all.md",
                   "paper_tables/moe-emulated/moe/moe.md", "-n", "-p", "--cores", "1",
                   "--configfile", "config/moe_emulated.yaml")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "recpar perfmodel moe-all-to-all --records" in out
    # each expert-parallel run's exchange probed alone too, on the cluster that is up
    assert "--probe --work-dir results/moe-emulated/moe_all_to_all_probe" in out
    assert "logs/report/moe-emulated/moe_all_to_all.log" in out
    assert "recpar cluster up --nodes 4 --ranks-per-node 1 --inter-bw 100mbit" \
           " --inter-latency 5ms" in out
    for run in ("baseline-tiny-n1", "dp2-ring-tiny-n2", "dp2ep2-ring-moe4top2-tiny-n2",
                "dp4ep2-ring-moe4top2-tiny-n4", "dp4ep4-ring-moe4top2-tiny-n4"):
        assert f"results/movielens-100k/moe-emulated/{run}/seed0" in out, run
    assert "--topology emulated" in out


def test_moe_emulated_run_ids_spell_out_what_runs():
    ts.test_sweep_run_ids_spell_out_what_runs("config/moe_emulated.yaml")
