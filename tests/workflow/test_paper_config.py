"""config/paper.yaml: the paper's grid for a Slurm cluster (run ids, memory, dry run)."""

import re
from pathlib import Path

import pytest
import yaml

from .test_snakemake import SNAKEMAKE, _merged, _snakemake

ROOT = Path(__file__).resolve().parents[2]
A100_40GB_GIB = 40e9 / 2**30
AMAZON_ITEMS = 63_001
TEXT_DIM = 384  # all-MiniLM-L6-v2


def _paper() -> dict:
    return _merged(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                   yaml.safe_load((ROOT / "config" / "paper.yaml").read_text()))


def _runs(cfg):
    return {k: v for k, v in cfg["sweep"]["runs"].items() if k not in cfg["sweep"]["exclude"]}


def test_paper_run_ids_spell_out_what_runs_and_cover_1_to_4_nodes_of_8_gpus():
    from recpar.cli import build_parser
    from recpar.train.cli import _spec, apply_run_options

    cfg = _paper()
    assert cfg["dataset"] == "amazon-electronics-2014" and cfg["train"]["device"] == "cuda"
    assert cfg["topology"] == "slurm"
    train = {**cfg["train"], **cfg["sweep"]["train"]}
    runs = _runs(cfg)
    assert cfg["sweep"]["reference"] in runs
    for run_id, opts in runs.items():
        args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--model-size",
                                          cfg["model"]["size"],
                                          *[f"--set={k}={v}" for k, v in train.items()]])
        apply_run_options(args, dict(opts))
        assert _spec(args, args.scheme).run_id == run_id, opts
    # Table III: every scheme on 2, 3 and 4 nodes of 8 GPUs
    for n in (2, 3, 4):
        for scheme in ("dp", "mp", "hybrid"):
            assert any(o["scheme"] == scheme and o.get("nodes", 1) == n and
                       o.get("dp", 1) * o.get("tp", 1) * o.get("pp", 1) == 8 * n
                       for o in runs.values()), (scheme, n)


def _peak_gib(cfg, opts) -> float:
    from recpar.model.config import ModelConfig
    from recpar.perfmodel.memory import memory_per_rank_bytes
    from recpar.perfmodel.shapes import ModelShape, PlanShape, Precision

    shape = ModelShape.from_config(ModelConfig.named(cfg["model"]["size"], text_dim=TEXT_DIM),
                                   AMAZON_ITEMS)
    dp, tp, pp = (opts.get(k, 1) for k in ("dp", "tp", "pp"))
    shards = dp - 1 if opts["scheme"] == "async" else dp  # async: rank 0 is the server
    m = opts.get("microbatches", 2 * pp if pp > 1 else 1)
    plan = PlanShape(data_parallel_size=dp, tensor_model_parallel_size=tp,
                     pipeline_model_parallel_size=pp, num_microbatches=m)
    b = cfg["train"]["global_batch_size"] // shards // m
    zero = opts.get("zero_stage", 1) if opts["scheme"] == "zero" else 0
    return memory_per_rank_bytes(shape, plan, b, Precision(activation_bytes=4), zero) / 2**30


def test_every_paper_run_fits_an_a100_40gb_and_the_config_states_the_estimate():
    cfg = _paper()
    peaks = {run: _peak_gib(cfg, opts) for run, opts in _runs(cfg).items()}
    assert max(peaks.values()) < A100_40GB_GIB, peaks
    text = (ROOT / "config" / "paper.yaml").read_text().replace("\n#", "")
    for run, stated in [("baseline-350m-n1", r"baseline \(1 GPU, batch 192\) ([\d.]+) GiB"),
                        ("dp8-ring-350m-n1", r"dp8 ([\d.]+) GiB"),
                        ("tp4pp2-350m-n1", r"tp4pp2 ([\d.]+) GiB"),
                        ("async5-damped-350m-n1", r"\(4 workers, batch 48\) ([\d.]+) GiB")]:
        assert float(re.search(stated, text).group(1)) == pytest.approx(peaks[run], abs=0.05)


@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")
def test_dry_run_lists_every_paper_job_with_its_slurm_resources():
    r = _snakemake("-n", "--profile", "profiles/slurm",
                   "--configfile", "config/paper.yaml")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert re.search(r"sweep_run\s+78\b", out)  # 26 runs x 3 seeds
    assert "recpar: topology slurm" in out
    job = out[out.index("run=dp32-ring-350m-n4, seed=0"):][:1500]
    assert "nodes=4, gres=gpu:8, slurm_extra=--exclusive" in job and "runtime=240" in job
    assert "--topology slurm" in job
    assert "tiny-n1" not in out.split("Job stats")[0].split("rule sweep_run")[-1]
    # its quality baseline under its own name: the default grid's committed table stays
    assert "output: paper_tables/baseline_quality-amazon-electronics-2014-350m.md" in out
    assert "paper_tables/baseline_quality.md" not in out
