"""The Snakemake workflow: lint, config validation, and (pipeline marker) a full tiny run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent) + os.pathsep
                         + os.environ.get("PATH", ""))
pytestmark = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")


def _env():
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _snakemake(*args, cwd=ROOT, timeout=120):
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_lint_is_clean():
    r = _snakemake("--lint")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Lints for" not in r.stdout + r.stderr


@pytest.mark.parametrize("mutate, expect", [
    (lambda c: c["train"].update(learning_rate=0.1), ["'learning_rate' was unexpected",
                                                       "instance['train']"]),
    (lambda c: c["train"].update(lr=-1), ["instance['train']['lr']"]),
    (lambda c: c.update(dataset="netflix"), ["instance['dataset']"]),
    (lambda c: c["model"].update(size="huge"), ["instance['model']['size']"]),
    # links scaled from a profile and set by hand at once
    (lambda c: c["cluster"].update(scale_model={"profile": "paper-a100", "cpu_budget": 0.2}),
     ["instance['cluster']['inter_bw']", "is not of type 'null'"]),
])
def test_wrong_config_stops_before_any_job_naming_the_key(tmp_path, mutate, expect):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    mutate(cfg)
    bad = tmp_path / "config.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = _snakemake("-n", "--cores", "1", "--configfile", str(bad))
    out = r.stdout + r.stderr
    assert r.returncode != 0
    for e in expect:
        assert e in out, out[-2000:]
    assert not (ROOT / "results" / "netflix").exists()


def test_default_dag_is_the_documented_slice():
    r = _snakemake("-n", "--cores", "1", "--forceall", "--quiet", "rules")
    assert r.returncode == 0, r.stderr
    for rule in ("prepare", "embed", "table1", "baseline", "most_popular", "baseline_quality",
                 "sweep_run", "paper_tables"):
        assert rule in r.stdout, r.stdout
    assert "perfmodel_validation" not in r.stdout  # off by default (config perfmodel_validation)


def _perfmodel_dry_run(configfile: str, sweep: str) -> str:
    """The shell command of rule perfmodel_validation in a dry run of `configfile`."""
    target = f"paper_tables/{sweep}/perfmodel/validation_summary.md"
    r = _snakemake("-n", "-p", "--cores", "1", "--forceall", target, "--configfile", configfile)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    return next(line for line in out.splitlines() if "recpar perfmodel calibrate" in line)


def test_emulated_grid_calibrates_and_validates_the_cost_model_after_its_runs():
    """config/emulated.yaml, the development grid: rule perfmodel_validation needs every sweep
    record, calibrates a loaded-step line (3 repeats) for each rank count of the sweep's runs
    (1-8), at the largest ranks per node among them (dp2tp2 on one node), and compares every
    scheme; the summary says the grid is a development grid."""
    cmd = _perfmodel_dry_run("config/emulated.yaml", "emulated")
    assert "--loaded-ranks 1,2,3,4,6,8 " in cmd and "--ranks-per-node 4 " in cmd
    assert "--loaded-repeats 3 " in cmd
    assert "--inter-node results/cluster/state.json" in cmd
    assert "--schemes dp,mp,hybrid,baseline,deepspeed " in cmd
    assert "--grid emulated --grid-role development " in cmd
    for run in ("dp4-hierarchical-tiny-n2", "pp3-tiny-n3", "deepspeed-pp2-tiny-n1"):
        assert f"emulated/{run}/seed0/record.json" in cmd


def test_chaos_grid_reports_its_faults():
    """config/chaos.yaml: only its own runs, each with its fault schedule passed to recpar
    train, and rule chaos_table over all of them."""
    r = _snakemake("-n", "-p", "--cores", "1", "--forceall", "--configfile",
                   "config/chaos.yaml")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    cmd = next(line for line in out.splitlines() if "recpar report chaos" in line)
    runs = ["dp2-ring-tiny-n2", "dp2-ring-tiny-n2-killed", "dp2-ring-tiny-n2-straggler4x",
            "dp2-ring-tiny-n2-lossy-link", "async3-damped-tiny-n3-straggler4x"]
    assert cmd.count("results/movielens-100k/chaos/") == len(runs)
    assert "--out paper_tables/chaos/chaos.md" in cmd
    assert "tp2-tiny-n1" not in out  # the default sweep's runs are excluded
    killed = next(line for line in out.splitlines()
                  if "--run-id dp2-ring-tiny-n2-killed " in line)
    assert '"fault_schedule":[{"at_s":15,"action":"kill-rank"' in killed
    assert "--topology emulated" in killed
    assert "--inter-latency 5ms" in out  # the VDE data path, which can lose packets


def test_scale_model_grid_measures_a_device_scales_every_link_and_validates():
    """config/scale_model.yaml: rule scale_model measures one budgeted device of the sweep's
    model on the dataset's items, cluster_up scales every link from it (no hand-set rate),
    every run has the same budget, and the cost model is judged on the scale model's own
    profile (a development grid since the model learnt gloo's collectives from its errors)."""
    r = _snakemake("-n", "-p", "--cores", "1", "--forceall", "--configfile",
                   "config/scale_model.yaml")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    lines = out.splitlines()
    measure = next(line for line in lines if "recpar perfmodel scale-model" in line)
    assert "--hardware paper-a100 --cpu-budget 0.2 --model-size tiny" in measure
    assert "--data results/data/movielens-100k " in measure
    up = next(line for line in lines if "recpar cluster up" in line)
    assert "--scale-model results/cluster/scale_model.json" in up and "--inter-bw" not in up
    runs = [line for line in lines if "recpar train --run-id" in line]
    assert len(runs) == 17 and all('"cpu_budget":0.2' in line for line in runs)
    assert "tp2-tiny-n1 " not in out  # the default sweep's runs are excluded
    check = next(line for line in lines if "recpar perfmodel scale-profile" in line)
    assert "--grid scale-model --grid-role development" in check
    assert "recpar perfmodel calibrate" not in out  # the shared-host calibration is not used


def test_scale_model_held_out_grid_differs_in_budget_batch_and_model():
    """config/scale_model_heldout2.yaml (the second held-out grid; the first,
    scale_model_heldout.yaml, has the same form): its own sweep, judged held out, with another
    budget (so other link rates), batch and model shape than the development grid; the device
    is measured on the runs' own model, overrides included."""
    r = _snakemake("-n", "-p", "--cores", "1", "--forceall", "--configfile",
                   "config/scale_model_heldout2.yaml")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    lines = out.splitlines()
    measure = next(line for line in lines if "recpar perfmodel scale-model" in line)
    assert ("--cpu-budget 0.25 --model-size tiny --model-override d_model=128 "
            "--model-override n_layers=2 --model-override n_heads=4 "
            "--model-override d_ff=512 --data") in measure
    runs = [line for line in lines if "recpar train --run-id" in line]
    assert len(runs) == 7 and all('"cpu_budget":0.25' in line for line in runs)
    assert all("--set global_batch_size=144 " in line and "--model-override d_model=128" in line
               for line in runs)
    assert "results/movielens-100k/scale-model/" not in out
    check = next(line for line in lines if "recpar perfmodel scale-profile" in line)
    assert "--grid scale-model-heldout2 --grid-role held-out" in check


def test_scale_model_slice_is_the_grid_at_two_nodes_and_target_sweep_runs_only_it():
    """config/scale_model_n2.yaml (`make reproduce-scale-model-n2`): config/scale_model.yaml's
    runs at 1-2 nodes with the same options and settings on a 2 x 2 scaled cluster; target
    `sweep` runs the sweep, its tables and the cost model's validation, not Table I or the
    headline baseline."""
    grid = yaml.safe_load((ROOT / "config/scale_model.yaml").read_text())
    piece = yaml.safe_load((ROOT / "config/scale_model_n2.yaml").read_text())
    assert piece["sweep"]["train"] == grid["sweep"]["train"]
    assert piece["cluster"] == {**grid["cluster"], "nodes": 2}
    assert piece["sweep"]["runs"] and all(grid["sweep"]["runs"][k] == v
                                          for k, v in piece["sweep"]["runs"].items())
    assert {v.get("nodes", 1) for v in piece["sweep"]["runs"].values()} == {1, 2}
    r = _snakemake("-n", "-p", "--cores", "1", "--forceall", "sweep", "--configfile",
                   "config/scale_model_n2.yaml")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    lines = out.splitlines()
    runs = [line for line in lines if "recpar train --run-id" in line]
    assert sorted(line.split("--run-id ")[1].split()[0] for line in runs) == sorted(
        piece["sweep"]["runs"])
    assert all("results/movielens-100k/scale-model-n2/" in line for line in runs)
    assert "--nodes 2 --ranks-per-node 2 --scale-model" in next(
        line for line in lines if "recpar cluster up" in line)
    assert "--grid scale-model-n2 --grid-role development" in out
    assert "paper_tables/scale-model-n2/table3.md" in out
    assert "recpar data table1" not in out and "baseline-tiny-n1 " not in out


def test_held_out_grid_is_its_own_sweep_and_says_so():
    """config/emulated_heldout.yaml: its own sweep (records and tables apart from the
    development grid's), every scheme, rank counts 1, 2, 4, role held-out; its run ids spell out
    what runs."""
    cmd = _perfmodel_dry_run("config/emulated_heldout.yaml", "emulated-heldout")
    assert "--loaded-ranks 1,2,4 " in cmd and "--loaded-repeats 3 " in cmd
    assert "--grid emulated-heldout --grid-role held-out " in cmd
    assert set(cmd.split("--schemes ")[1].split()[0].split(",")) == \
        {"baseline", "dp", "mp", "hybrid", "deepspeed"}
    assert cmd.count("results/movielens-100k/emulated-heldout/") == 10  # 9 runs + the baseline
    assert "results/movielens-100k/emulated/" not in cmd
    test_sweep_run_ids_spell_out_what_runs("config/emulated_heldout.yaml")


def test_moe_grid_runs_its_models_and_reports_them():
    """config/moe.yaml: dense reference, MoE with and without the aux loss, dp2 and dp2 x ep2,
    3 seeds each (MoE fields per run through model_overrides), then recpar report moe over the
    sweep's records."""
    r = _snakemake("paper_tables/moe/moe/moe.md", "-n", "-p", "--forceall", "--cores", "1",
                   "--configfile",
                   "config/moe.yaml")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "recpar report moe --records" in out
    for run in ("baseline-tiny-n1", "baseline-moe4top2-tiny-n1", "baseline-moe4top2-aux0-tiny-n1",
                "dp2-ring-moe4top2-tiny-n1", "dp2ep2-ring-moe4top2-tiny-n1"):
        assert out.count(f"results/movielens-100k/moe/{run}/seed") >= 3, run
    assert '"model_overrides":{"num_moe_experts":4,"moe_aux_loss_coeff":0.0}' in out


def test_perfmodel_validation_needs_a_grid_role(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "emulated.yaml").read_text())
    del cfg["perfmodel_grid_role"]
    bad = tmp_path / "emulated.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = _snakemake("-n", "--cores", "1", "--configfile", str(bad))
    assert r.returncode != 0
    assert "'perfmodel_grid_role' is a required property" in r.stdout + r.stderr


def _merged(base: dict, over: dict) -> dict:
    """Snakemake's merge of a --configfile over the default one (nested keys updated)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@pytest.mark.parametrize("config_path", ["config/config.yaml", ".test/config/config.yaml",
                                         "config/emulated.yaml", "config/quality_ablation.yaml",
                                         "config/ablations.yaml", "config/chaos.yaml",
                                         "config/scale_model.yaml", "config/scale_model_n2.yaml",
                                         "config/scale_model_heldout.yaml",
                                         "config/scale_model_heldout2.yaml", "config/moe.yaml"])
def test_sweep_run_ids_spell_out_what_runs(config_path):
    """Each sweep key is the id `recpar train` gives its options, and the options validate
    (plan against the model, batch divisibility with the sweep's train settings). A run with a
    fault schedule (config/chaos.yaml) runs the same plan as another, so its key is that id
    and a label of the faults: `<id>-<label>`."""
    from recpar.cli import build_parser
    from recpar.train.cli import _spec, apply_run_options

    cfg = yaml.safe_load((ROOT / config_path).read_text())
    if config_path.startswith("config/") and config_path != "config/config.yaml":
        # used as --configfile over the default
        cfg = _merged(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), cfg)
    reference = cfg["sweep"].get("reference")
    assert reference is None or reference in cfg["sweep"]["runs"], reference
    train = {**cfg["train"], **cfg["sweep"].get("train", {})}
    sets = [f"--set={k}={v}" for k, v in train.items()]
    excluded = set(cfg["sweep"].get("exclude", []))  # the default sweep's runs, not run here
    for run_id, opts in cfg["sweep"]["runs"].items():
        if run_id in excluded:
            continue
        args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--model-size",
                                          cfg["model"]["size"], *sets])
        apply_run_options(args, opts)
        if "fault_schedule" in opts:
            args.topology = "emulated"  # faults need it (checked by _spec)
            made = _spec(args, args.scheme).run_id
            assert run_id.startswith(f"{made}-") and run_id != made, (config_path, opts)
            continue
        assert _spec(args, args.scheme).run_id == run_id, (config_path, opts)


def check_tiny_pipeline_outputs(work: Path, sweep_epochs: int) -> None:
    """What the whole default DAG on the shrunk `.test` grid leaves in `work`: the tables,
    records, reports and logs (the grid runs end to end, interrupted twice on the way, in
    tests/workflow/test_interrupted_pipeline.py, with `sweep_epochs` per sweep run)."""
    table1 = (work / "paper_tables" / "table1.md").read_text()
    assert "192,403" in table1 and "movielens-100k" in table1 and "synthetic-amazon" in table1
    # not the default grid's dataset: its own name (the committed table is not touched)
    assert not (work / "paper_tables" / "baseline_quality.md").exists()
    quality = (work / "paper_tables" / "baseline_quality-synthetic-amazon-tiny.md").read_text()
    assert "baseline-tiny-n1 | 2 |" in quality and "most-popular | 2 |" in quality
    from recpar.train import record

    for run in ("baseline-tiny-n1", "most-popular", "laptop/baseline-tiny-n1",
                "laptop/dp2-ring-tiny-n1"):
        for seed in (0, 1):
            rec = work / "results" / "synthetic-amazon" / run / f"seed{seed}" / "record.json"
            assert record.read(rec)["seed"] == seed
    delta = (work / "paper_tables" / "laptop" / "quality_delta.md").read_text()
    assert "| baseline-tiny-n1 (reference) | 0,1 |" in delta
    assert "| dp2-ring-tiny-n1 | 0,1 |" in delta
    claims = (work / "paper_tables" / "laptop" / "claims.md").read_text()
    assert "not run" in claims  # nothing of the paper's scale runs in the tiny grid
    assert "dp" in (work / "paper_tables" / "laptop" / "table2.md").read_text()
    sweep_dp = record.read(work / "results" / "synthetic-amazon" / "laptop" / "dp2-ring-tiny-n1"
                           / "seed0" / "record.json")
    assert sweep_dp["plan"]["dp"] == 2 and sweep_dp["metrics"]["epochs_count"] == sweep_epochs
    logs = sorted(p.name for p in (work / "logs").rglob("*.log"))
    assert "prepare-movielens-100k.log" in logs and "table1.log" in logs
    assert "embed-synthetic-amazon.log" in logs


def test_report_table_list_matches_the_cli():
    """The pipeline declares exactly the files `recpar report tables` writes."""
    import re

    from recpar.report.paper_tables import TABLE_FILES
    from recpar.report.figures import FIGURE_FILES

    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    for name, files in (("REPORT_TABLES", TABLE_FILES), ("REPORT_FIGURES", FIGURE_FILES)):
        declared = re.search(name + r" = \[(.*?)\]", common, re.S).group(1)
        assert tuple(re.findall(r'"([^"]+)"', declared)) == files
