# Tables built from run records (records are schema-validated when read).


rule baseline_quality:
    input:
        baseline=records(BASELINE_RUN),
        popular=records("most-popular"),
    output:
        report(
            "paper_tables/baseline_quality.md",
            caption="../report/baseline_quality.rst",
            category="Quality",
        ),
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/report/baseline_quality.log",
    shell:
        "recpar report quality --records {input.baseline} {input.popular} --out {output}"
        " > {log} 2>&1"
