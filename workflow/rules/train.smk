# Training runs; one job per run and seed, each writing a schema-validated record.json.


rule baseline:
    input:
        stats=f"{DATA}/{{dataset}}/stats.json",
        emb=f"{DATA}/{{dataset}}/item_text_emb.npy",
    output:
        record="results/{dataset}/baseline-{size}-n1/seed{seed}/record.json",
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/{dataset}/baseline-{size}-n1/seed{seed}.log",
    params:
        args=train_args,
        data=lambda w: f"{DATA}/{w.dataset}",
        out=lambda w, output: os.path.dirname(output.record),
    threads: 2
    resources:
        mem_mb=4096,
        runtime=60,
        timing_slot=1,
        **BASELINE_SLURM_RESOURCES,
    shell:
        "recpar train --scheme baseline --data {params.data} --out {params.out}"
        " --model-size {wildcards.size} --seed {wildcards.seed} {params.args} --no-progress"
        " --replace-stale"
        " > {log} 2>&1"


rule most_popular:
    input:
        stats=f"{DATA}/{{dataset}}/stats.json",
    output:
        record="results/{dataset}/most-popular/seed{seed}/record.json",
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/{dataset}/most-popular/seed{seed}.log",
    params:
        data=lambda w: f"{DATA}/{w.dataset}",
        out=lambda w, output: os.path.dirname(output.record),
        size=MODEL_SIZE,
    resources:
        mem_mb=2048,
        runtime=10,
    shell:
        "recpar eval popularity --data {params.data} --out {params.out}"
        " --model-size {params.size} --seed {wildcards.seed} > {log} 2>&1"


rule sweep_run:
    input:
        stats=f"{DATA}/{{dataset}}/stats.json",
        emb=f"{DATA}/{{dataset}}/item_text_emb.npy",
        cluster=cluster_input,
    output:
        record="results/{dataset}/{sweep}/{run}/seed{seed}/record.json",
    wildcard_constraints:
        run="|".join(re.escape(r) for r in SWEEP_RUNS),
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/{dataset}/{sweep}/{run}/seed{seed}.log",
    params:
        args=sweep_args,
        data=lambda w: f"{DATA}/{w.dataset}",
        out=lambda w, output: os.path.dirname(output.record),
        size=MODEL_SIZE,
    threads: 2
    resources:
        mem_mb=8192,
        runtime=60,
        # One measured run at a time: runs sharing the cores would distort each other's
        # throughput (the profile caps timing_slot at 1).
        timing_slot=1,
        # topology slurm: the job's nodes and GPUs (or tasks) per node, from the run's options
        **SWEEP_SLURM_RESOURCES,
    shell:
        "recpar train --run-id {wildcards.run} --data {params.data} --out {params.out}"
        " --model-size {params.size} --seed {wildcards.seed} {params.args} --no-progress"
        " --replace-stale"
        " > {log} 2>&1"
