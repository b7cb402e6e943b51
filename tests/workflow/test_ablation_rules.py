"""The CLI-driven ablations as rules (workflow/rules/ablations.smk, issue 20 item 6): what each
rule runs, that a published result is not measured again, that the default pipeline has none of
them, and that the config keys are checked. Dry runs only, each in a scratch working
directory, so the repository's committed results do not decide what is scheduled."""

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from recpar.perfmodel import ablation_studies as S

from .test_snakemake import ROOT, SNAKEMAKE, _snakemake

pytestmark = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")

RULES = ("allreduce_ablation", "ablation_scale_model", "compression_ablation",
         "pipeline_ablation", "straggler_ablation")
DATA = "results/data/movielens-100k"
DATA_FILES = ("stats.json", "item_text_emb.npy", "train.parquet", "valid.parquet",
              "test.parquet")
QUALITY = "paper_tables/ablations/quality/quality_ablation.json"


def _workdir(tmp_path: Path, **over) -> Path:
    """A scratch working directory with the default config and config/ablation_studies.yaml
    (plus `over` merged into the latter)."""
    (tmp_path / "config").mkdir(parents=True)
    shutil.copy(ROOT / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    cfg = yaml.safe_load((ROOT / "config" / "ablation_studies.yaml").read_text())
    cfg.update(over)
    (tmp_path / "config" / "ablation_studies.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp_path


def _dry_run(work: Path, *configfiles: str, extra=()) -> str:
    """A dry run in `work` (its config/config.yaml the default) with `work`'s `configfiles`."""
    files = ["--configfile", *(str(work / f) for f in configfiles)] if configfiles else []
    r = _snakemake("-s", str(ROOT / "Snakefile"), "--directory", str(work), "-n", "-p",
                   "--cores", "1", *files, *extra)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    return out


def _jobs(out: str) -> dict[str, dict[str, str]]:
    """rule name -> {"log": ..., "shell": ...} of each job a dry run lists (one per rule here)."""
    jobs = {}
    for block in re.split(r"^(?=rule \w+:)", out, flags=re.M)[1:]:
        name = block.split(":", 1)[0].removeprefix("rule ")
        log = re.search(r"^\s+log: (.*)$", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs[name] = {"log": log.group(1) if log else "",
                      "shell": " ".join(shell.group(1).split()) if shell else ""}
    return jobs


def _touch(work: Path, rel: str, mtime: float) -> None:
    path = work / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    os.utime(path, (mtime, mtime))


def _publish(work: Path, studies=tuple(S.STUDIES), mtime: float = 1_000_000_000) -> None:
    """The studies' published files, old."""
    for study in studies:
        for f in S.outputs(study):
            _touch(work, f, mtime)


def _prepare_data(work: Path, mtime: float = 2_000_000_000) -> None:
    """The prepared dataset, newer than anything published (a fresh checkout's data stage)."""
    for name in DATA_FILES:
        _touch(work, f"{DATA}/{name}", mtime)


def test_each_study_runs_its_command_with_its_log(tmp_path):
    """config/ablation_studies.yaml: rule all asks for every study; each rule runs the README's
    command (the straggler with its published schemes and epochs) into logs/ablations/, and
    the compression ablation runs on its own scale model."""
    work = _workdir(tmp_path)
    jobs = _jobs(_dry_run(work, "config/ablation_studies.yaml"))
    log = " > logs/ablations/{} 2>&1"
    want = {
        "allreduce_ablation": ("recpar perfmodel allreduce-ablation --out "
                               "paper_tables/ablations/allreduce" + log.format("allreduce.log")),
        "ablation_scale_model": ("recpar perfmodel scale-model --hardware paper-a100 "
                                 "--cpu-budget 0.2 --model-size tiny --data " + DATA
                                 + " --out results/ablations/compression/scale_model.json"
                                 + log.format("scale_model.log")),
        "compression_ablation": ("recpar perfmodel compression-ablation --scale-model "
                                 "results/ablations/compression/scale_model.json --data " + DATA
                                 + " --out paper_tables/ablations/compression"
                                 + log.format("compression.log")),
        "pipeline_ablation": ("recpar perfmodel pipeline-ablation --data " + DATA
                              + " --out paper_tables/ablations/pipeline"
                              + log.format("pipeline.log")),
        # no quality ablation here, published or made: the command's default target band
        "straggler_ablation": ("recpar perfmodel straggler-ablation --data " + DATA
                               + " --out paper_tables/ablations/straggler --schemes "
                               "sync,async-dynamic,async-dynamic-undamped --max-epochs 20"
                               + log.format("straggler.log")),
    }
    for rule, shell in want.items():
        assert rule in jobs, sorted(jobs)
        assert jobs[rule]["shell"] == shell, (rule, jobs[rule]["shell"])
        assert jobs[rule]["log"] == shell.split(" > ")[1].split()[0], jobs[rule]
    assert "quality_ablation" not in jobs


def test_options_reach_the_commands_and_the_scale_model_measures_their_model(tmp_path):
    work = _workdir(tmp_path, ablation_studies=["compression", "pipeline"], ablation_options={
        "scale_model": {"cpu_budget": 0.3},
        "compression": {"model_size": "small", "link_factors": [1, 4], "repeats": 1},
        "pipeline": {"microbatches": [2, 4], "partition_case": "gpipe:2"}})
    jobs = _jobs(_dry_run(work, "config/ablation_studies.yaml"))
    assert "allreduce_ablation" not in jobs and "straggler_ablation" not in jobs
    assert ("--hardware paper-a100 --cpu-budget 0.3 --model-size small --data"
            in jobs["ablation_scale_model"]["shell"])
    assert ("--model-size small --link-factors 1,4 --repeats 1 >"
            in jobs["compression_ablation"]["shell"])
    assert "--microbatches 2,4 --partition-case gpipe:2 >" in jobs["pipeline_ablation"]["shell"]


def test_straggler_takes_the_quality_band_where_the_quality_ablation_is_made_or_exists(
        tmp_path):
    # made by this workflow (quality_ablation_report): an input, so it runs after it
    work = _workdir(tmp_path, ablation_studies=["straggler"])
    shutil.copy(ROOT / "config" / "quality_ablation.yaml", work / "config")
    out = _dry_run(work, "config/quality_ablation.yaml", "config/ablation_studies.yaml")
    jobs = _jobs(out)
    assert "quality_ablation" in jobs
    assert f"--quality {QUALITY} " in jobs["straggler_ablation"]["shell"]
    straggler = out[out.index("rule straggler_ablation:"):]
    assert QUALITY in re.search(r"^\s+input: (.*)$", straggler, re.M).group(1)
    # published but not made here: read, and its rule (with this config's sweep) not pulled in
    other = _workdir(tmp_path / "published", ablation_studies=["straggler"])
    _touch(other, QUALITY, 1_000_000_000)
    jobs = _jobs(_dry_run(other, "config/ablation_studies.yaml"))
    assert f"--quality {QUALITY} " in jobs["straggler_ablation"]["shell"]
    assert "quality_ablation" not in jobs


@pytest.mark.parametrize("data", ["prepared, newer", "not prepared yet"])
def test_published_results_are_not_measured_again(tmp_path, data):
    """The published files are older than the prepared data (ancient inputs), or the data is
    still to be prepared (a fresh checkout: its jobs would otherwise trigger the studies):
    nothing of the ablations runs; a study missing one file runs, alone."""
    work = _workdir(tmp_path)
    _publish(work)
    if data == "prepared, newer":
        _prepare_data(work)
    jobs = _jobs(_dry_run(work, "config/ablation_studies.yaml"))
    assert not set(RULES) & set(jobs), sorted(jobs)
    if data == "not prepared yet":
        assert "prepare" in jobs  # the default pipeline's data stage runs all the same
    (work / S.outputs("pipeline")[3]).unlink()
    jobs = _jobs(_dry_run(work, "config/ablation_studies.yaml"))
    assert set(RULES) & set(jobs) == {"pipeline_ablation"}, sorted(jobs)


def test_default_config_schedules_no_ablation(tmp_path):
    """`make reproduce`'s DAG is unchanged: with nothing published, still no ablation rule."""
    work = _workdir(tmp_path)
    out = _dry_run(work, extra=("--forceall", "--quiet", "rules"))
    assert "paper_tables" in out and "sweep_run" in out
    for rule in RULES:
        assert rule not in out, out[-2000:]


@pytest.mark.parametrize("over, expect", [
    ({"ablation_studies": ["allreduce", "latency"]},
     ["'latency' is not one of ['allreduce', 'compression', 'pipeline', 'straggler']",
      "ablation_studies"]),
    ({"ablation_options": {"straggler": {"max_epoch": 20}}},
     ["'max_epoch' was unexpected", "straggler"]),
])
def test_unknown_study_or_option_stops_before_any_job(tmp_path, over, expect):
    work = _workdir(tmp_path, **over)
    r = _snakemake("-s", str(ROOT / "Snakefile"), "--directory", str(work), "-n", "--cores",
                   "1", "--configfile", str(work / "config" / "ablation_studies.yaml"))
    out = r.stdout + r.stderr
    assert r.returncode != 0
    for e in expect:
        assert e in out, out[-2000:]
    assert "rule " not in out


SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
OPTIONS = SCHEMA["properties"]["ablation_options"]["properties"]
COMMANDS = {"scale_model": "scale-model", "allreduce": "allreduce-ablation",
            "compression": "compression-ablation", "pipeline": "pipeline-ablation",
            "straggler": "straggler-ablation"}
SET_BY_RULE = {"data", "out", "scale_model", "quality", "work_dir", "model_size", "n_items",
               "model_override"}
"""Options the rules set themselves (model_size only for scale-model: the compression's; and
no model_override, as the compression ablation trains its named size as it is)."""


def _command_options(command: str) -> set[str]:
    from recpar.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["perfmodel"]
    parser = sub._subparsers._group_actions[0].choices[command]
    return {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}


def test_schema_names_the_studies_and_their_commands_options():
    """The schema's study names are recpar.perfmodel.ablation_studies.STUDIES, and every
    option it admits is one of the command's own (so a renamed flag fails here, not after
    hours of measuring)."""
    assert SCHEMA["properties"]["ablation_studies"]["items"]["enum"] == list(S.STUDIES)
    assert set(OPTIONS) == set(S.STUDIES) | {"scale_model"}
    for study, props in OPTIONS.items():
        have = _command_options(COMMANDS[study])
        wrong = set(props["properties"]) - have
        assert not wrong, (study, wrong)
        left = have - set(props["properties"]) - SET_BY_RULE
        assert not left, f"{COMMANDS[study]} options not in the schema: {left}"


@pytest.mark.parametrize("study", list(S.STUDIES))
def test_declared_outputs_are_what_the_command_writes(study):
    """Each study's module writes `<stem>.{json,csv,md,png}` with the stem declared here."""
    import importlib
    import inspect

    from recpar.perfmodel.ablation_files import write_ablation_files

    module = importlib.import_module(f"recpar.perfmodel.{study}_ablation")
    src = inspect.getsource(module.write_outputs)
    assert f'write_ablation_files(out_dir, "{S.STUDIES[study]}"' in src
    assert '"json", "csv", "md", "png"' in inspect.getsource(write_ablation_files)
    assert S.outputs(study) == [f"paper_tables/ablations/{study}/{S.STUDIES[study]}.{e}"
                                for e in ("json", "csv", "md", "png")]
    assert (ROOT / S.result_json(study)).is_file()  # published


def test_cli_flags_render_options_as_the_commands_take_them():
    assert S.cli_flags(None) == ""
    assert S.cli_flags({"max_epochs": 20, "schemes": ["sync", "async-dynamic"],
                        "latencies": ["5ms/10ms"], "link_factors": [0.25, 1]}) == (
        "--max-epochs 20 --schemes sync,async-dynamic --latencies 5ms/10ms "
        "--link-factors 0.25,1")
    assert S.cli_flags({"prefix": "a b"}) == "--prefix 'a b'"
    for bad in ({"seed": True}, {"seed": None}, {"sizes": []}):
        with pytest.raises(ValueError, match="ablation option"):
            S.cli_flags(bad)
    assert S.scale_model_options({}) == {"hardware": "paper-a100", "cpu_budget": 0.2,
                                         "model_size": "tiny"}
    with pytest.raises(ValueError, match="not one of allreduce"):
        S.outputs("quality")


def test_config_readme_documents_the_keys():
    readme = (ROOT / "config" / "README.md").read_text()
    assert "| `ablation_studies` |" in readme
    for study in OPTIONS:
        assert f"`ablation_options.{study}" in readme, study
