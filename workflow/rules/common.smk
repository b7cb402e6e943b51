# Helpers shared by the workflow files (paths and CLI arguments derived from the config).
import json
import os
import re
import sys

from recpar.cluster.emulated import resolve_topology


DATA = "results/data"
RAW = "data/raw"
MODEL_SIZE = config["model"]["size"]
BASELINE_RUN = f"baseline-{MODEL_SIZE}-n1"
# The quality baseline's table and the records it is rendered from: config/config.yaml's
# dataset and model size keep the plain, committed names; any other grid's (config/paper.yaml,
# the held-out small model) carry both in the name, so no grid overwrites another's.
_QUALITY_KEY = ("" if (config["dataset"], MODEL_SIZE) == ("movielens-100k", "tiny")
                else f"-{config['dataset']}-{MODEL_SIZE}")
BASELINE_QUALITY = f"paper_tables/baseline_quality{_QUALITY_KEY}.md"
BASELINE_QUALITY_RECORDS = f"paper_tables/records/baseline_quality{_QUALITY_KEY}"


def source_opts(source):
    return config["sources"].get(source) or {}


def prepare_args(wildcards):
    opts = source_opts(wildcards.source)
    args = [f"--max-bad-fraction {config['max_bad_fraction']}"]
    if "scale" in opts:
        args.append(f"--scale {opts['scale']}")
    if "seed" in opts:
        args.append(f"--seed {opts['seed']}")
    return " ".join(args)


def raw_inputs(wildcards):
    """Downloaded files a source needs (none for the offline sources)."""
    if wildcards.source == "amazon-electronics-2014":
        return [f"{RAW}/amazon-electronics-2014/reviews_Electronics_5.json.gz",
                f"{RAW}/amazon-electronics-2014/meta_Electronics.json.gz"]
    return []


def _train_sets(train):
    sets = [f"--set {k}={v}" for k, v in train.items()]
    sets += [f"--model-override {k}={v}" for k, v in config["model"].get("overrides", {}).items()]
    return sets


def train_args(wildcards):
    return " ".join(_train_sets(config["train"]))


# `auto` becomes `emulated` when an emulated cluster can be built here (root, namespaces, tc;
# probed by building and removing a one-node cluster), else `local`; records and tables state
# which one ran.
# `slurm` (run with --profile profiles/slurm): each run is a Slurm job of its own nodes, and
# `recpar train --topology slurm` starts one srun task per node inside it.
if config["topology"] == "slurm":
    TOPOLOGY, TOPOLOGY_WHY = "slurm", "set in the config: one srun task per node of each job"
else:
    TOPOLOGY, TOPOLOGY_WHY = resolve_topology(config["topology"])
print(f"recpar: topology {TOPOLOGY} ({TOPOLOGY_WHY})", file=sys.stderr)

SWEEP = config["sweep"]
SWEEP_NAME = SWEEP["name"]  # records under results/<dataset>/<name>/, tables paper_tables/<name>/
# sweep.exclude: runs merged in from the default config (--configfile merges, it does not
# replace) that this grid does not run, e.g. the default's tiny runs in config/paper.yaml.
_unknown = [r for r in SWEEP.get("exclude", []) if r not in SWEEP["runs"]]
if _unknown:
    raise ValueError(f"config sweep.exclude: {', '.join(map(repr, _unknown))} not a key of "
                     f"sweep.runs")
SWEEP_RUNS = [r for r in SWEEP["runs"] if r not in SWEEP.get("exclude", [])]


# Slurm job geometry of each run (snakemake-executor-plugin-slurm resource names): its nodes,
# and GPUs per node (gres) on cuda or one task per node on CPU (recpar.cluster.slurm).
from recpar.cluster.slurm import job_resources

TRAIN_DEVICE = {**config["train"], **SWEEP.get("train", {})}.get("device", "cpu")


def _run_geometry(run):
    opts = SWEEP["runs"][run]
    nodes = opts.get("nodes", 1)
    world = opts.get("dp", 1) * opts.get("tp", 1) * opts.get("pp", 1)
    return nodes, max(1, world // nodes)


def _slurm_resource(name):
    return lambda w: job_resources(*_run_geometry(w.run), TRAIN_DEVICE)[name]


# Only on the slurm topology: the local and emulated runs keep the resources they had.
if TOPOLOGY == "slurm":
    SWEEP_SLURM_RESOURCES = {k: _slurm_resource(k) for k in job_resources(1, 1, TRAIN_DEVICE)}
    BASELINE_SLURM_RESOURCES = job_resources(1, 1, TRAIN_DEVICE)
else:
    SWEEP_SLURM_RESOURCES = BASELINE_SLURM_RESOURCES = {}


def sweep_args(wildcards):
    train = {**config["train"], **SWEEP.get("train", {})}
    opts = json.dumps(SWEEP["runs"][wildcards.run], separators=(",", ":"))
    flags = _train_sets(train) + [f"--run-options '{opts}'"]
    if SWEEP["runs"][wildcards.run]["scheme"] != "baseline":
        flags.append(f"--topology {TOPOLOGY}")
    return " ".join(flags)


CLUSTER_STATE = "results/cluster/state.json"


def _cluster_down():
    """Remove the emulated cluster: its namespaces live only while the workflow needs them.
    The state file goes too (a stale one would tell the next workflow the cluster is up)."""
    if TOPOLOGY == "emulated":
        shell("recpar cluster down > logs/cluster/down.log 2>&1 || true")
        if os.path.exists(CLUSTER_STATE):
            os.remove(CLUSTER_STATE)


def cluster_input(wildcards):
    """Multi-rank runs on the emulated topology need the cluster up first."""
    if TOPOLOGY != "emulated" or SWEEP["runs"][wildcards.run]["scheme"] == "baseline":
        return []
    return [CLUSTER_STATE]


def sweep_records(seeds=None):
    return expand("results/{dataset}/{sweep}/{run}/seed{seed}/record.json",
                  dataset=config["dataset"], sweep=SWEEP_NAME, run=SWEEP_RUNS,
                  seed=seeds if seeds is not None else config["seeds"])


def records(run, seeds=None):
    return expand("results/{dataset}/{run}/seed{seed}/record.json", dataset=config["dataset"],
                  run=run, seed=seeds if seeds is not None else config["seeds"])


wildcard_constraints:
    dataset="|".join(re.escape(s) for s in config["sources"]),
    seed=r"\d+",
    sweep=re.escape(SWEEP_NAME),


# The paper's values and tolerances ship with the workflow (not the working directory).
PAPER_VALUES = os.path.join(workflow.basedir, "paper_tables", "paper.yaml")

# What `recpar report tables` writes (recpar.report.paper_tables.TABLE_FILES; figures are extra).
REPORT_TABLES = ["table2.md", "table2.csv", "table2.tex", "table3.md", "table3.csv", "table3.tex",
                 "comm_share.md", "comm_share.csv", "claims.md", "audit.md"]
# ... and its figures (recpar.report.figures.FIGURE_FILES; a card says why one was not drawn).
REPORT_FIGURES = ["comm_share.png", "speedup_vs_nodes.png", "utilisation_memory.png"]


def chaos_target():
    """paper_tables/<sweep>/chaos.md when a run of the sweep has a fault schedule."""
    if not any("fault_schedule" in SWEEP["runs"][r] for r in SWEEP_RUNS):
        return []
    return [f"paper_tables/{SWEEP_NAME}/chaos.md"]


def quality_delta_target():
    """paper_tables/<sweep>/quality_delta.md when the sweep names a reference run."""
    if SWEEP.get("reference") is None:
        return []
    if SWEEP["reference"] not in SWEEP_RUNS:
        raise ValueError(f"config sweep.reference: {SWEEP['reference']!r} is not a key of "
                         f"sweep.runs less sweep.exclude ({', '.join(SWEEP_RUNS)})")
    return [f"paper_tables/{SWEEP_NAME}/quality_delta.md"]


# The quality ablation (config/quality_ablation.yaml sets quality_ablation_report): its table
# and figure, and the claims on Formulas 10-12 and hierarchical All-Reduce, which also read the
# results of the CLI ablations (compression, allreduce): made by their rules where the config's
# `ablation_studies` lists them, else the published ones where they exist.
from recpar.perfmodel import ablation_studies

ABLATIONS_DIR = ablation_studies.ABLATIONS_DIR
QUALITY_ABLATION_FILES = [f"{ABLATIONS_DIR}/quality/quality_ablation.{ext}"
                          for ext in ("json", "csv", "md", "png")]


def quality_ablation_target():
    """The quality ablation's files and the ablation claims, when the config asks for them."""
    if not config.get("quality_ablation_report", False):
        return []
    if SWEEP.get("reference") is None:
        raise ValueError("config quality_ablation_report: needs sweep.reference (the sync DP "
                         "run every other run is judged against)")
    return QUALITY_ABLATION_FILES + [f"{ABLATIONS_DIR}/claims.md"]


def moe_report_target():
    """paper_tables/<sweep>/moe/: recpar report moe over the sweep's records, when the config
    asks for it (config/moe.yaml)."""
    if not config.get("moe_report", False):
        return []
    names = MOE_REPORT_FILES + (MOE_ALL_TO_ALL_FILES if TOPOLOGY == "emulated" else [])
    return [f"paper_tables/{SWEEP_NAME}/moe/{name}" for name in names]


MOE_REPORT_FILES = ["moe.md", "moe.csv", "expert_load.png"]
# on the emulated cluster: the cost model's all-to-all term against the exchange times the
# expert-parallel runs measured (recpar perfmodel moe-all-to-all)
MOE_ALL_TO_ALL_FILES = ["moe_all_to_all.md", "moe_all_to_all.json"]


def published_ablation(path):
    """`path` as an input where it exists (a CLI ablation's published result), else nothing."""
    return [path] if os.path.exists(path) else []


# The CLI-driven ablations as rules (workflow/rules/ablations.smk): `ablation_studies` lists
# the ones the workflow makes (config/ablation_studies.yaml lists all four), `ablation_options`
# their commands' options (recpar.perfmodel.ablation_studies).
ABLATION_STUDIES = config.get("ablation_studies", [])
ABLATION_OPTIONS = config.get("ablation_options") or {}
ABLATION_DATA = f"{DATA}/{config['dataset']}"
ABLATION_SCALE_MODEL = "results/ablations/compression/scale_model.json"


def ablation_targets():
    """The published files of every study the config lists."""
    return [f for study in ABLATION_STUDIES for f in ablation_studies.outputs(study)]


def ablation_result(study):
    """`study`'s result JSON as an input: the rule's output where the config lists the study
    (it is made first), else the published file where it exists."""
    path = ablation_studies.result_json(study)
    return [path] if study in ABLATION_STUDIES else published_ablation(path)


def ablation_flags(study):
    """The config's options of `study` as its command's flags (empty: the command's defaults)."""
    return ablation_studies.cli_flags(ABLATION_OPTIONS.get(study))


def ablation_inputs(study, **files):
    """`files` as the inputs of `study`'s rule, ancient(): a published result is not measured
    again because its data is newer (a fresh checkout prepares the data again). ancient() does
    not cover an input that does not exist yet: the job that makes it would trigger the study
    (snakemake's DAG), so where one is missing and the study's files are all there, the rule
    has no inputs and nothing to do."""
    published = all(os.path.exists(f) for f in ablation_studies.outputs(study))
    if published and not all(os.path.exists(f) for f in files.values()):
        return {}
    return {name: ancient(path) for name, path in files.items()}


def ablation_data_inputs(study, **files):
    """ablation_inputs with the dataset's prepared files (stats.json, and the item-text
    embeddings: after the data stage, whose jobs would take CPU the measured devices lack)."""
    return lambda w: ablation_inputs(study, stats=f"{ABLATION_DATA}/stats.json",
                                     emb=f"{ABLATION_DATA}/item_text_emb.npy", **files)


def straggler_inputs(wildcards):
    """The data, and the quality ablation's JSON (its target band) where this workflow makes it
    (quality_ablation_report)."""
    quality = QUALITY_ABLATION_FILES[0]
    extra = {"quality": quality} if quality in quality_ablation_target() else {}
    return ablation_data_inputs("straggler", **extra)(wildcards)


def straggler_quality_flag(input):
    """--quality: the quality ablation's JSON where it is an input or exists (read, not an
    input then: its rule would come into the DAG with whatever sweep this config runs)."""
    path = QUALITY_ABLATION_FILES[0]
    if getattr(input, "quality", None) or os.path.exists(path):
        return f"--quality {path}"
    return ""


# Cost-model validation (config perfmodel_validation, emulated topology only): every run of the
# sweep, whatever its scheme (recpar.perfmodel.validation_runs picks them and derives the
# calibration's rank counts); the grid's role (perfmodel_grid_role: development or held-out)
# goes into every row and the summary.
from recpar.perfmodel import validation_runs

PERFMODEL_DIR = "paper_tables/{sweep}/perfmodel"
# config/scale_model.yaml: the cost model is checked against the scale model's own profile
SCALE_MODEL = bool((config.get("cluster") or {}).get("scale_model"))
PERFMODEL_OUTPUTS = ["validation_projected_vs_measured.csv", "validation_summary.md"]


def perfmodel_validation_target():
    if not config.get("perfmodel_validation") or TOPOLOGY != "emulated":
        return []
    return [f"paper_tables/{SWEEP_NAME}/perfmodel/{name}" for name in PERFMODEL_OUTPUTS]


def sweep_targets():
    """What the config's sweep makes: its runs' records, tables and figures, its quality against
    sweep.reference, its MoE and chaos tables and the cost model's validation (rule `sweep`;
    rule `all` asks for them too)."""
    return [sweep_records(),
            expand("paper_tables/{sweep}/{name}", sweep=SWEEP_NAME,
                   name=REPORT_TABLES + REPORT_FIGURES),
            quality_delta_target(), moe_report_target(), chaos_target(),
            perfmodel_validation_target()]


def perfmodel_schemes(wildcards):
    """Every scheme of the sweep (`recpar perfmodel validate --schemes`)."""
    return ",".join(validation_runs.sweep_schemes(SWEEP["runs"]))


def perfmodel_grid_role(wildcards):
    """development or held-out (the schema requires it when perfmodel_validation is on)."""
    return config["perfmodel_grid_role"]


def perfmodel_calibration_repeats(wildcards):
    return config.get("perfmodel_calibration_repeats", 3)


def perfmodel_baseline_record(wildcards):
    run = validation_runs.baseline_run(SWEEP["runs"])
    return (f"results/{config['dataset']}/{SWEEP_NAME}/{run}/seed{config['seeds'][0]}/"
            "record.json")


def perfmodel_loaded_ranks(wildcards):
    """Rank counts of the validated runs: each gets its own loaded-step line."""
    return ",".join(str(w) for w in validation_runs.loaded_ranks(SWEEP["runs"]))


def perfmodel_ranks_per_node(wildcards):
    return validation_runs.ranks_per_node(SWEEP["runs"])
