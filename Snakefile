# recpar pipeline: data -> Table I -> baseline (+ most-popular reference).
# Rules are declarations; every step is a `recpar` CLI command (see workflow/rules/).
from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/cluster.smk"
include: "workflow/rules/ablations.smk"


onsuccess:
    _cluster_down()


onerror:
    _cluster_down()


rule all:
    input:
        "paper_tables/table1.md",
        BASELINE_QUALITY,
        sweep_targets(),
        quality_ablation_target(),
        ablation_targets(),


rule sweep:
    # The config's sweep alone: its runs, tables and figures, its quality against
    # sweep.reference, its chaos table and the cost model's validation; not Table I, the
    # headline baseline or the ablations (`snakemake sweep --configfile config/<grid>.yaml`,
    # e.g. the scale model's 2-node slice, config/scale_model_n2.yaml).
    input:
        sweep_targets(),
