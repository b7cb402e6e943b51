# Tables built from run records (records are schema-validated when read).


rule baseline_quality:
    input:
        baseline=records(BASELINE_RUN),
        popular=records("most-popular"),
    output:
        table=report(
            BASELINE_QUALITY,
            caption="../report/baseline_quality.rst",
            category="Quality",
        ),
        # the records it was rendered from, so the committed table can be re-rendered
        records=directory(BASELINE_QUALITY_RECORDS),
    conda:
        "../../envs/environment.yaml"
    log:
        f"logs/report/baseline_quality{_QUALITY_KEY}.log",
    shell:
        "recpar report quality --records {input.baseline} {input.popular} --out {output.table}"
        " --publish-records {output.records} > {log} 2>&1"


rule paper_tables:
    input:
        records=sweep_records(),
        paper=PAPER_VALUES,
    output:
        tables=report(
            expand("paper_tables/{{sweep}}/{name}", name=REPORT_TABLES),
            caption="../report/paper_tables.rst",
            category="Paper tables",
        ),
        figures=report(
            expand("paper_tables/{{sweep}}/{name}", name=REPORT_FIGURES),
            caption="../report/figures.rst",
            category="Figures",
        ),
        # the records they were rendered from: `recpar report tables --records
        # paper_tables/<sweep>/records` re-renders the published tables
        records=directory("paper_tables/{sweep}/records"),
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/report/{sweep}/paper_tables.log",
    params:
        out_dir=lambda w, output: os.path.dirname(output.tables[0]),
    shell:
        "recpar report tables --records {input.records} --paper {input.paper}"
        " --out-dir {params.out_dir} --publish-records {output.records} > {log} 2>&1"


rule quality_delta:
    input:
        records=sweep_records(),
    output:
        report(
            "paper_tables/{sweep}/quality_delta.md",
            caption="../report/quality_delta.rst",
            category="Quality",
        ),
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/report/{sweep}/quality_delta.log",
    params:
        reference=lambda w: SWEEP["reference"],
    shell:
        "recpar report quality-delta --records {input.records} --reference {params.reference}"
        " --out {output} > {log} 2>&1"


rule quality_ablation:
    input:
        records=sweep_records(),
        # made first where the config lists the study, else the published one if it exists
        compression=ablation_result("compression"),
    output:
        files=QUALITY_ABLATION_FILES,
        # the records it was rendered from (`recpar report restore-records` resumes the grid
        # from them on another checkout)
        records=directory(f"{ABLATIONS_DIR}/quality/records"),
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/report/quality_ablation.log",
    params:
        reference=lambda w: SWEEP["reference"],
        compression=lambda w, input: (f"--compression {input.compression}"
                                      if input.compression else ""),
        out_dir=lambda w, output: os.path.dirname(output.files[0]),
    shell:
        "recpar report quality-ablation --records {input.records} --reference {params.reference}"
        " {params.compression} --out {params.out_dir} --publish-records {output.records}"
        " > {log} 2>&1"


rule moe_report:
    input:
        records=sweep_records(),
    output:
        files=expand("paper_tables/{{sweep}}/moe/{name}", name=MOE_REPORT_FILES),
        # the records it was rendered from, so the published table can be re-rendered
        records=directory("paper_tables/{sweep}/moe/records"),
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/report/{sweep}/moe.log",
    params:
        out_dir=lambda w, output: os.path.dirname(output.files[0]),
    shell:
        "recpar report moe --records {input.records} --out {params.out_dir}"
        " --publish-records {output.records} > {log} 2>&1"


rule moe_all_to_all:
    input:
        records=sweep_records(),
        # on the emulated cluster each expert-parallel run's exchange is probed alone too
        cluster=[CLUSTER_STATE] if TOPOLOGY == "emulated" else [],
    output:
        expand("paper_tables/{{sweep}}/moe/{name}", name=MOE_ALL_TO_ALL_FILES),
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/report/{sweep}/moe_all_to_all.log",
    params:
        out_dir=lambda w, output: os.path.dirname(output[0]),
        probe=lambda w: (f"--probe --work-dir results/{w.sweep}/moe_all_to_all_probe"
                         if TOPOLOGY == "emulated" else ""),
    resources:
        # the probes time exchanges: alone on the host, like a timed run
        timing_slot=1,
    shell:
        "recpar perfmodel moe-all-to-all --records {input.records} --out {params.out_dir}"
        " {params.probe} > {log} 2>&1"


rule ablation_claims:
    input:
        quality=f"{ABLATIONS_DIR}/quality/quality_ablation.json",
        # made first where the config lists the study, else the published one if it exists
        ablations=ablation_result("compression") + ablation_result("allreduce"),
    output:
        f"{ABLATIONS_DIR}/claims.md",
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/report/ablation_claims.log",
    params:
        ablations=lambda w, output: os.path.dirname(output[0]),
    shell:
        "recpar report ablation-claims --ablations {params.ablations} --out {output} > {log} 2>&1"


rule chaos_table:
    input:
        records=sweep_records(),
    output:
        report(
            "paper_tables/{sweep}/chaos.md",
            caption="../report/chaos.rst",
            category="Reliability",
        ),
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/report/{sweep}/chaos.log",
    params:
        expect=" ".join(SWEEP_RUNS),
    shell:
        "recpar report chaos --records {input.records} --expect {params.expect}"
        " --out {output} > {log} 2>&1"


if SCALE_MODEL:

    # The scale model: the cost model predicts its runs on the profile of the cluster that ran
    # them (the measured budgeted device, the links as calibrated; recpar.perfmodel.scale_profile)
    rule perfmodel_validation:
        input:
            records=sweep_records(),
            scale="results/cluster/scale_model.json",
        output:
            profile=f"{PERFMODEL_DIR}/scale_profile.yaml",
            table=report(
                f"{PERFMODEL_DIR}/validation_projected_vs_measured.csv",
                caption="../report/perfmodel_validation.rst",
                category="Performance model",
            ),
            summary=report(
                f"{PERFMODEL_DIR}/validation_summary.md",
                caption="../report/perfmodel_validation.rst",
                category="Performance model",
            ),
        conda:
            "../../envs/environment.yaml"
        log:
            "logs/report/{sweep}/perfmodel_validation.log",
        params:
            schemes=perfmodel_schemes,
            role=perfmodel_grid_role,
            out_dir=lambda w, output: os.path.dirname(output.table),
        shell:
            "(recpar perfmodel scale-profile --scale-model {input.scale}"
            " --records {input.records} --out {output.profile}"
            " && recpar perfmodel validate --records {input.records} --schemes {params.schemes}"
            " --grid {wildcards.sweep} --grid-role {params.role}"
            " --hardware {output.profile} --out {params.out_dir}) > {log} 2>&1"

else:

    rule perfmodel_validation:
        input:
            records=sweep_records(),
            cluster=CLUSTER_STATE,
        output:
            profile=f"{PERFMODEL_DIR}/emulated_profile.yaml",
            table=report(
                f"{PERFMODEL_DIR}/validation_projected_vs_measured.csv",
                caption="../report/perfmodel_validation.rst",
                category="Performance model",
            ),
            summary=report(
                f"{PERFMODEL_DIR}/validation_summary.md",
                caption="../report/perfmodel_validation.rst",
                category="Performance model",
            ),
        conda:
            "../../envs/environment.yaml"
        log:
            "logs/report/{sweep}/perfmodel_validation.log",
        resources:
            # the calibration times training steps: alone on the host, like a timed run
            timing_slot=1,
        params:
            baseline=perfmodel_baseline_record,
            ranks=perfmodel_loaded_ranks,
            repeats=perfmodel_calibration_repeats,
            rpn=perfmodel_ranks_per_node,
            schemes=perfmodel_schemes,
            role=perfmodel_grid_role,
            out_dir=lambda w, output: os.path.dirname(output.table),
        shell:
            "(recpar perfmodel calibrate --inter-node {input.cluster} --ranks-per-node {params.rpn}"
            " --baseline-record {params.baseline} --loaded-ranks {params.ranks}"
            " --loaded-repeats {params.repeats} --out {output.profile}"
            " && recpar perfmodel validate --records {input.records} --schemes {params.schemes}"
            " --grid {wildcards.sweep} --grid-role {params.role}"
            " --hardware {output.profile} --out {params.out_dir}) > {log} 2>&1"
