# Helpers shared by the workflow files (paths and CLI arguments derived from the config).
import os


DATA = "results/data"
RAW = "data/raw"
MODEL_SIZE = config["model"]["size"]
BASELINE_RUN = f"baseline-{MODEL_SIZE}-n1"


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


def train_args(wildcards):
    sets = [f"--set {k}={v}" for k, v in config["train"].items()]
    sets += [f"--model-override {k}={v}" for k, v in config["model"].get("overrides", {}).items()]
    return " ".join(sets)


def records(run, seeds=None):
    return expand("results/{dataset}/{run}/seed{seed}/record.json", dataset=config["dataset"],
                  run=run, seed=seeds if seeds is not None else config["seeds"])
