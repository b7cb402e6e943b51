# The emulated cluster (topology: emulated): network namespaces with shaped links, built once
# before the multi-rank runs and removed when the workflow ends (Snakefile onsuccess/onerror).


rule scale_model:
    # The scale model's dilation: one budgeted device's training step measured here, and the
    # profile's links scaled by it (recpar.perfmodel.dilation); kept, the tables cite it.
    input:
        stats=f"{DATA}/{config['dataset']}/stats.json",
        # after the data stage: its jobs would take CPU the measured device then lacks
        emb=f"{DATA}/{config['dataset']}/item_text_emb.npy",
    output:
        "results/cluster/scale_model.json",
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/cluster/scale_model.log",
    params:
        profile=lambda w: config["cluster"]["scale_model"]["profile"],
        budget=lambda w: config["cluster"]["scale_model"]["cpu_budget"],
        size=MODEL_SIZE,
        # the grid's model.overrides: the measured step is the runs' own model
        overrides=lambda w: "".join(f" --model-override {k}={v}"
                                    for k, v in config["model"].get("overrides", {}).items()),
        data=lambda w, input: os.path.dirname(input.stats),
    # alone on the machine: a job beside it would slow the measured device
    threads: workflow.cores
    resources:
        timing_slot=1,
    shell:
        "recpar perfmodel scale-model --hardware {params.profile} --cpu-budget {params.budget}"
        " --model-size {params.size}{params.overrides} --data {params.data} --out {output}"
        " > {log} 2>&1"


rule cluster_up:
    input:
        scale=lambda w: (["results/cluster/scale_model.json"]
                         if config["cluster"].get("scale_model") else []),
    output:
        # temp: the file stands for namespaces that live only while the workflow runs; once
        # gone (consumers done, or _cluster_down) it does not make finished runs rerun, and the
        # next workflow that has runs left builds the cluster again
        state=temp(CLUSTER_STATE),
    conda:
        "../../envs/environment.yaml"
    log:
        "logs/cluster/up.log",
    params:
        # Read when the rule runs: `cluster` is only required with topology: emulated.
        nodes=lambda w: config["cluster"]["nodes"],
        rpn=lambda w: config["cluster"]["ranks_per_node"],
        # the links: scaled from a profile (every one, intra-node too), or rate and latency
        # by hand; a latency puts the links on the VDE data path on kernels without netem
        links=lambda w, input: (
            f"--scale-model {input.scale[0]}" if input.scale else
            f"--inter-bw {config['cluster']['inter_bw']}"
            + (f" --inter-latency {config['cluster']['inter_latency']}"
               if config["cluster"].get("inter_latency") else "")),
    shell:
        "(recpar cluster up --nodes {params.nodes} --ranks-per-node {params.rpn}"
        " {params.links} && recpar cluster calibrate"
        " && recpar cluster status > {output.state}) > {log} 2>&1"
