# Data stage: download (networked sources only) -> prepare -> item-text embeddings -> Table I.


rule download:
    output:
        reviews=f"{RAW}/amazon-electronics-2014/reviews_Electronics_5.json.gz",
        meta=f"{RAW}/amazon-electronics-2014/meta_Electronics.json.gz",
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/data/download-amazon-electronics-2014.log",
    params:
        base_url=lambda w: source_opts("amazon-electronics-2014").get("base_url", ""),
        raw=lambda w, output: os.path.dirname(output.reviews),
    resources:
        runtime=120,
    shell:
        "recpar data download --source amazon-electronics-2014 --raw-dir {params.raw}"
        " --base-url '{params.base_url}' > {log} 2>&1"


rule prepare:
    input:
        raw_inputs,
    output:
        stats=f"{DATA}/{{source}}/stats.json",
        train=f"{DATA}/{{source}}/train.parquet",
        valid=f"{DATA}/{{source}}/valid.parquet",
        test=f"{DATA}/{{source}}/test.parquet",
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/data/prepare-{source}.log",
    params:
        args=prepare_args,
        out=lambda w: f"{DATA}/{w.source}",
        raw=lambda w: f"{RAW}/{w.source}",
    resources:
        mem_mb=4096,
        runtime=30,
    shell:
        "recpar data prepare --source {wildcards.source} --out {params.out} --raw-dir {params.raw}"
        " {params.args} > {log} 2>&1"


rule embed:
    input:
        stats=f"{DATA}/{{source}}/stats.json",
    output:
        emb=f"{DATA}/{{source}}/item_text_emb.npy",
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/data/embed-{source}.log",
    params:
        data=lambda w: f"{DATA}/{w.source}",
        encoder=config["encoder"],
    resources:
        mem_mb=4096,
        runtime=60,
    shell:
        "recpar data embed --data {params.data} --encoder '{params.encoder}' > {log} 2>&1"


rule table1:
    input:
        expand(f"{DATA}/{{source}}/stats.json", source=config["table1_sources"]),
    output:
        table=report(
            "paper_tables/table1.md",
            caption="../report/table1.rst",
            category="Table I",
        ),
        # the stats it was rendered from, so the committed table can be re-rendered
        stats=directory("paper_tables/records/table1"),
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/report/table1.log",
    shell:
        "recpar data table1 --stats {input} --out {output.table}"
        " --publish-stats {output.stats} > {log} 2>&1"
