# The four ablations of README "Ablations" that run as `recpar perfmodel <study>-ablation`, one
# rule each (and the compression ablation's scale model): `ablation_studies` in the config says
# which ones `rule all` asks for (config/ablation_studies.yaml: all four), `ablation_options`
# their commands' options. Each writes exactly what its command publishes,
# paper_tables/ablations/<study>/<stem>.{json,csv,md,png} (recpar.perfmodel.ablation_studies);
# its runs' records stay in results/ablations/<study>/, from which an interrupted study resumes.
#
# Root only, like rule scale_model and the emulated cluster: network namespaces and tc
# (allreduce also vde2), cgroup CPU budgets (compression, pipeline, straggler). Without them the
# command stops before it measures anything, with one line saying what is missing (in the log).
#
# A published result is not re-measured because the prepared data is newer (a fresh checkout
# prepares the data again): the inputs are ancient(), and none at all where the study's files
# are there and an input is not yet (common.smk, ablation_inputs), so only a missing output
# runs a study. Each study measures time: alone on the machine (all cores, timing_slot).


rule allreduce_ablation:
    output:
        ablation_studies.outputs("allreduce"),
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/ablations/allreduce.log",
    params:
        opts=lambda w: ablation_flags("allreduce"),
        out_dir=lambda w, output: os.path.dirname(output[0]),
    threads: workflow.cores
    resources:
        mem_mb=8192,
        runtime=30,
        timing_slot=1,
    shell:
        "recpar perfmodel allreduce-ablation --out {params.out_dir} {params.opts} > {log} 2>&1"


rule ablation_scale_model:
    # The compression ablation's own scale model (not rule scale_model's: that one is the
    # scale-model sweep's, with its cluster's profile and budget and the data not ancient)
    input:
        # kept while the compression ablation's files are (ablation_inputs)
        unpack(ablation_data_inputs("compression")),
    output:
        ABLATION_SCALE_MODEL,
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/ablations/scale_model.log",
    params:
        opts=lambda w: ablation_studies.cli_flags(
            ablation_studies.scale_model_options(ABLATION_OPTIONS)),
        data=ABLATION_DATA,
    threads: workflow.cores
    resources:
        timing_slot=1,
    shell:
        "recpar perfmodel scale-model {params.opts} --data {params.data} --out {output}"
        " > {log} 2>&1"


rule compression_ablation:
    input:
        unpack(ablation_data_inputs("compression", scale=ABLATION_SCALE_MODEL)),
    output:
        ablation_studies.outputs("compression"),
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/ablations/compression.log",
    params:
        opts=lambda w: ablation_flags("compression"),
        scale=ABLATION_SCALE_MODEL,
        data=ABLATION_DATA,
        out_dir=lambda w, output: os.path.dirname(output[0]),
    threads: workflow.cores
    resources:
        mem_mb=8192,
        runtime=180,
        timing_slot=1,
    shell:
        "recpar perfmodel compression-ablation --scale-model {params.scale} --data {params.data}"
        " --out {params.out_dir} {params.opts} > {log} 2>&1"


rule pipeline_ablation:
    input:
        unpack(ablation_data_inputs("pipeline")),
    output:
        ablation_studies.outputs("pipeline"),
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/ablations/pipeline.log",
    params:
        opts=lambda w: ablation_flags("pipeline"),
        data=ABLATION_DATA,
        out_dir=lambda w, output: os.path.dirname(output[0]),
    threads: workflow.cores
    resources:
        mem_mb=8192,
        runtime=60,
        timing_slot=1,
    shell:
        "recpar perfmodel pipeline-ablation --data {params.data} --out {params.out_dir}"
        " {params.opts} > {log} 2>&1"


rule straggler_ablation:
    input:
        # and the quality ablation's JSON where this workflow makes it (its target band)
        unpack(straggler_inputs),
    output:
        ablation_studies.outputs("straggler"),
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/ablations/straggler.log",
    params:
        opts=lambda w: ablation_flags("straggler"),
        quality=lambda w, input: straggler_quality_flag(input),
        data=ABLATION_DATA,
        out_dir=lambda w, output: os.path.dirname(output[0]),
    threads: workflow.cores
    resources:
        mem_mb=8192,
        runtime=180,
        timing_slot=1,
    shell:
        "recpar perfmodel straggler-ablation --data {params.data} --out {params.out_dir}"
        " {params.quality} {params.opts} > {log} 2>&1"
