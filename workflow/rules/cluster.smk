# The emulated cluster (topology: emulated): network namespaces with shaped links, built once
# before the multi-rank runs and removed when the workflow ends (Snakefile onsuccess/onerror).


rule cluster_up:
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
        bw=lambda w: config["cluster"]["inter_bw"],
        # a latency puts the links on the VDE data path on kernels without netem (loss too)
        latency=lambda w: (f"--inter-latency {config['cluster']['inter_latency']}"
                           if config["cluster"].get("inter_latency") else ""),
    shell:
        "(recpar cluster up --nodes {params.nodes} --ranks-per-node {params.rpn}"
        " --inter-bw {params.bw} {params.latency} && recpar cluster calibrate"
        " && recpar cluster status > {output.state}) > {log} 2>&1"
