"""`recpar train` and `recpar eval popularity`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from pathlib import Path

import yaml

from recpar.cluster.elastic import DEFAULT_MAX_RESTARTS
from recpar.parallel.plan import SCHEMES, ParallelPlan


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="prepared dataset directory")
    p.add_argument("--out", required=True, type=Path, help="run output directory")
    p.add_argument("--run-id", help="defaults to one spelled out from the plan")
    p.add_argument("--model-size", default="tiny", help="named model size (tiny, small, ...)")
    p.add_argument("--model-override", action="append", default=[], metavar="KEY=VALUE",
                   help="override one ModelConfig field, e.g. n_layers=4 (repeatable)")
    p.add_argument("--train-config", type=Path,
                   help="YAML/JSON mapping of TrainConfig fields (see config/README.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="train_set",
                   help="override one TrainConfig field (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-text", action="store_true", help="ID embeddings only (no text fusion)")
    p.add_argument("--no-progress", action="store_true")


def register(sub) -> None:
    p = sub.add_parser("train", help="train one run and write its record")
    p.add_argument("--scheme", default="baseline", choices=SCHEMES)
    _add_common(p)
    p.add_argument("--replace-stale", action="store_true",
                   help="if --out holds a run of another configuration (its checkpoints have "
                        "another fingerprint), move it to <out>.replaced-<UTC time> and start "
                        "fresh; a run of the same configuration still resumes (what the workflow "
                        "uses when a run's settings change)")
    par = p.add_argument_group("parallelism")
    par.add_argument("--dp", type=int, default=1, help="data-parallel degree (ranks)")
    par.add_argument("--ep", type=int, default=1,
                     help="expert-parallel degree of an MoE model, carved from the dp ranks "
                          "(divides dp and num_moe_experts; scheme dp)")
    par.add_argument("--tp", type=int, default=1,
                     help="tensor-parallel degree (schemes mp, hybrid, deepspeed)")
    par.add_argument("--pp", type=int, default=1,
                     help="pipeline stages (schemes mp, hybrid, deepspeed)")
    par.add_argument("--microbatches", type=int, default=None,
                     help="pipeline micro-batches per global batch (default: 2 x pp)")
    par.add_argument("--pipeline-schedule", default="1f1b",
                     help="pipeline schedule: 1f1b | gpipe | interleaved-1f1b")
    par.add_argument("--partition", default="balanced",
                     help="stage cut: balanced (profiled cost) | uniform (equal layer counts)")
    par.add_argument("--zero-stage", type=int, default=1, choices=[1, 2, 3],
                     help="ZeRO stage for scheme zero (DeepSpeed)")
    par.add_argument("--topology", default="local", choices=["local", "emulated", "slurm"],
                     help="where ranks run; emulated needs `recpar cluster up` first; slurm runs "
                          "inside an allocation (sbatch, salloc, or --profile profiles/slurm): "
                          "one srun task per node, torchrun on each")
    par.add_argument("--nodes", type=int, default=1,
                     help="nodes the dp ranks are spread over (emulated: must match the cluster; "
                          "slurm: at most the allocation's nodes)")
    par.add_argument("--grad-sync", default="ring", help="all-reduce algorithm: ring | hierarchical")
    par.add_argument("--compressor", default="none",
                     help="none | sign | topk | powersgd | fp16 | bf16")
    par.add_argument("--topk-ratio", type=float, default=0.01, help="k as a fraction, in (0, 1]")
    par.add_argument("--no-error-feedback", action="store_true")
    par.add_argument("--no-overlap", action="store_true",
                     help="overlap_grad_reduce=False: each bucket's reduction blocks backward")
    par.add_argument("--bucket-size", type=int, default=None,
                     help="gradient bucket size in elements (megatron-core bucket_size)")
    par.add_argument("--timeout-s", type=float, default=None, help="kill the job after this long")
    par.add_argument("--max-restarts", type=int, default=DEFAULT_MAX_RESTARTS, metavar="N",
                     help="when a rank dies, restart every rank from the last complete "
                          "checkpoint up to N times (torchrun --max-restarts; the record counts "
                          "restarts, lost steps and lost time); 0: a lost rank ends the run. No "
                          "effect on scheme baseline (one process, no torchrun)")
    par.add_argument("--cluster-prefix", default="rp",
                     help="--topology emulated: the name prefix of the cluster to run on (as "
                          "`recpar cluster up --prefix`; default rp)")
    par.add_argument("--cluster-state-dir", default=None,
                     help="--topology emulated: directory of the cluster's state file (default: "
                          "$RECPAR_CLUSTER_STATE_DIR or /run/recpar)")
    par.add_argument("--fault-schedule", default=None, metavar="YAML",
                     help="inject faults while the run trains (--topology emulated): a YAML list "
                          "of {at_s, action, args} events, times in seconds after the run began "
                          "training (actions link, "
                          "reset-link, straggler, kill-rank; recpar.cluster.fault); the record's "
                          "`faults` says what was applied when, `slow_windows` when steps ran slow")
    par.add_argument("--cpu-budget", type=float, default=None, metavar="CORES",
                     help="run every device (rank, or the single device) in its own CPU cgroup "
                          "limited to CORES CPU-seconds per second, one intra-op thread (needs "
                          "root and a cgroup cpu controller)")
    par.add_argument("--cpu-budget-period-us", type=int, default=10_000,
                     help="CFS period of the CPU budget, µs")
    par.add_argument("--no-staleness-damping", action="store_true",
                     help="scheme async: apply stale gradients undamped (plain async SGD) "
                          "instead of Formula 12's g / (1 + tau)")
    par.add_argument("--async-work", choices=["static", "dynamic"], default="static",
                     help="scheme async: static = each worker computes its own share of every "
                          "batch (a round waits for the slowest worker); dynamic = the server "
                          "hands out the pieces of the round one at a time, so a straggler "
                          "takes fewer (recpar.comm.async_ps)")
    par.add_argument("--async-timeout-s", type=float, default=300.0,
                     help="scheme async: longest wait for one parameter-server message")
    p.add_argument("--run-options", default=None, metavar="JSON",
                   help="a mapping of this command's options (names with _), e.g. "
                        "'{\"scheme\": \"dp\", \"dp\": 2}'; used by the Snakemake sweep; "
                        "false for a boolean option means its --no-... flag")
    p.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="non-learned references")
    evs = ev.add_subparsers(dest="eval_cmd", required=True)
    pop = evs.add_parser("popularity", help="most-popular ranking, same protocols as training")
    _add_common(pop)
    pop.set_defaults(func=cmd_popularity)


# A float in exponent form without a dot (1e-05, as Python and the workflow print small floats):
# YAML 1.1 (PyYAML) reads it as a string, so it is matched here first.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_value(text: str):
    """A KEY=VALUE value: numbers (1e-05 too), bools and lists as YAML scalars, else a string."""
    if _EXPONENT_FLOAT.fullmatch(text.strip()):
        return float(text)
    return yaml.safe_load(text)


def parse_kv(items: list[str], what: str) -> dict:
    """`KEY=VALUE` flags (`what` names them in errors) as a mapping of parse_value's values."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{what} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def _spec(args, scheme: str):
    from recpar.comm.async_config import AsyncPSConfig
    from recpar.comm.config import GradSyncConfig
    from recpar.model.config import ModelConfig
    from recpar.train.config import TrainConfig
    from recpar.train.run_id import grad_sync_id, make_run_id
    from recpar.train.spec import RunSpec

    train_values = {}
    if args.train_config:
        if not args.train_config.is_file():
            raise FileNotFoundError(f"{args.train_config}: train config not found")
        loaded = yaml.safe_load(args.train_config.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.train_config}: expected a mapping of TrainConfig fields")
        train_values.update(loaded)
    train_values.update(parse_kv(args.train_set, "--set"))
    train = TrainConfig.from_mapping(train_values)
    model = ModelConfig.named(args.model_size, **parse_kv(args.model_override,
                                                           "--model-override"))
    dp, tp, pp = (getattr(args, k, 1) for k in ("dp", "tp", "pp"))
    if scheme in ("baseline", "dp", "zero", "async") and (tp, pp) != (1, 1):
        raise ValueError(f"scheme {scheme} is data-parallel only; got --tp {tp} --pp {pp} "
                         "(use --scheme mp, hybrid or deepspeed)")
    microbatches = getattr(args, "microbatches", None) or (2 * pp if pp > 1 else 1)
    plan = ParallelPlan(scheme=scheme, dp=dp, tp=tp, pp=pp, ep=getattr(args, "ep", 1),
                        num_microbatches=microbatches,
                        pipeline_schedule=getattr(args, "pipeline_schedule", "1f1b"),
                        partition_method=getattr(args, "partition", "balanced"))
    world = plan.world_size
    nodes = getattr(args, "nodes", 1)
    grad_sync = GradSyncConfig()
    sync_id = None
    if world % nodes:
        raise ValueError(f"dp×tp×pp = {world} ranks cannot be spread evenly over "
                         f"--nodes {nodes}")
    if scheme in ("dp", "hybrid") and dp > 1:
        grad_sync = GradSyncConfig(algorithm=args.grad_sync, compressor=args.compressor,
                                   topk_ratio=args.topk_ratio,
                                   error_feedback=not args.no_error_feedback,
                                   ranks_per_node=max(1, dp // nodes),
                                   overlap_grad_reduce=not args.no_overlap,
                                   bucket_size=args.bucket_size).validate(dp)
        sync_id = grad_sync_id(grad_sync)
    zero_stage = 0
    if scheme == "zero":
        zero_stage = args.zero_stage
        sync_id = f"stage{zero_stage}"
    plan.validate(world_size=plan.world_size, n_heads=model.n_heads, n_layers=model.n_layers,
                  num_experts=model.num_moe_experts)
    train.validate()
    if model.cross_entropy_chunk_size and scheme == "deepspeed":
        raise ValueError(f"--model-override cross_entropy_chunk_size="
                         f"{model.cross_entropy_chunk_size}: scheme deepspeed's head computes "
                         f"its logits whole (the chunked loss serves every other scheme)")
    if model.num_moe_experts and (scheme not in ("baseline", "dp", "mp", "hybrid")
                                  or plan.pp > 1):
        # dp replicates the experts (recpar.parallel.moe_data_parallel) or, with --ep, shards
        # them (recpar.parallel.expert_parallel); tensor parallelism keeps them whole on every
        # TP rank (recpar.parallel.tensor_parallel.apply_tp). Pipeline stages, ZeRO, async and
        # DeepSpeed do not route through experts yet.
        raise ValueError(f"--model-override num_moe_experts={model.num_moe_experts}: an MoE "
                         f"model trains with schemes baseline and dp, and mp / hybrid with "
                         f"tensor parallelism only (pp = 1), not scheme {scheme} with "
                         f"pp = {plan.pp}")
    if train.compile and scheme not in ("baseline", "dp"):
        raise ValueError(f"train.compile: scheme {scheme} is not compiled (baseline and dp are)")
    train, default_precision = _scheme_precision(train, scheme)
    if scheme in ("mp", "hybrid"):
        _validate_model_parallel(plan, model)
    if scheme == "deepspeed":  # DeepSpeed's 1F1B, batch = micro × microbatches × dp, TP shards
        from recpar.parallel.deepspeed_pipeline import validate_deepspeed_plan

        validate_deepspeed_plan(plan, train, model)
    async_ps = AsyncPSConfig()
    if scheme == "async":  # dp ranks = 1 parameter server (rank 0) + dp - 1 workers
        async_ps = AsyncPSConfig(staleness_damping=not args.no_staleness_damping,
                                 clip_grad=train.clip_grad, timeout_s=args.async_timeout_s,
                                 work_assignment=args.async_work).validate(world)
        sync_id = "damped" if async_ps.staleness_damping else "undamped"
        if async_ps.work_assignment == "dynamic":
            sync_id += "-dynamic"
    elif getattr(args, "no_staleness_damping", False):
        raise ValueError(f"--no-staleness-damping applies to --scheme async only, not {scheme}")
    elif getattr(args, "async_work", "static") != "static":
        raise ValueError(f"--async-work {args.async_work} applies to --scheme async only, "
                         f"not {scheme}")
    shards = plan.batch_shards  # ranks that split each global batch
    if train.global_batch_size % shards:
        who = f"dp = {dp}" if shards == dp else f"the {shards} async workers (dp = {dp})"
        raise ValueError(f"train.global_batch_size = {train.global_batch_size} is not divisible "
                         f"by {who}")
    if pp > 1 and (train.global_batch_size // dp) % microbatches:
        raise ValueError(f"train.global_batch_size / dp = {train.global_batch_size // dp} "
                         f"is not divisible by --microbatches {microbatches}")
    cpu_budget = _cpu_budget(args)
    run_id = args.run_id or make_run_id(plan, args.model_size, nodes=nodes, grad_sync=sync_id,
                                        cpu_cores=cpu_budget.cores if cpu_budget else None,
                                        precision=None if train.resolved_precision()
                                        == default_precision else train.resolved_precision(),
                                        compiled=train.compile, moe=model.moe_id)
    kind = getattr(args, "topology", "local")
    if kind == "local":
        # All ranks on this machine; --nodes only groups them into logical nodes (what the
        # hierarchical all-reduce's sub-groups are built from).
        topology = {"kind": "local", "nodes": 1, "ranks_per_node": world,
                    "logical_nodes": nodes}
    else:
        topology = {"kind": kind, "nodes": nodes, "ranks_per_node": world // nodes}
    if cpu_budget is not None:
        from recpar.cluster.cpu_budget import find_controller

        topology["cpu_budget"] = cpu_budget.to_record(find_controller(make_top=False).mechanism)
    return RunSpec(data_dir=args.data, out_dir=args.out, run_id=run_id, model=model, train=train,
                   plan=plan, seed=args.seed, use_text=not args.no_text, topology=topology,
                   grad_sync=grad_sync, zero_stage=zero_stage, async_ps=async_ps,
                   cpu_budget=cpu_budget, fault_schedule=_fault_schedule(args, kind, nodes))


def _fault_schedule(args, kind: str, nodes: int) -> list[dict] | None:
    """--fault-schedule (a YAML file) or the run option `fault_schedule` (a file or an inline
    list of events): validated, every node one of the run's, before any rank starts; the
    events in canonical units (rates in bit/s, times in s, loss as a probability)."""
    raw = getattr(args, "fault_schedule", None)
    if raw is None:
        return None
    from recpar.cluster.fault import load_schedule, parse_event

    if kind != "emulated":
        raise ValueError(f"--fault-schedule: faults are injected into the emulated cluster's "
                         f"namespaces and links; needs --topology emulated, not {kind}")
    if isinstance(raw, str):
        events = load_schedule(raw)
        where = raw
    elif isinstance(raw, list):
        where = "--run-options fault_schedule"
        events = sorted((parse_event(e, f"{where}[{i}]") for i, e in enumerate(raw)),
                        key=lambda e: e.at_s)
    else:
        raise ValueError(f"--run-options: fault_schedule must be a file name or a list of "
                         f"events, got {type(raw).__name__}")
    for i, ev in enumerate(events):
        if ev.args["node"] >= nodes:
            raise ValueError(f"{where}: event {i} ({ev.action} at {ev.at_s:g} s) names node "
                             f"{ev.args['node']}, but the run has nodes 0..{nodes - 1}")
    return [{"at_s": ev.at_s, "action": ev.action, "args": ev.args} for ev in events]


def _cpu_budget(args):
    """--cpu-budget: validated, and known to be applicable here, before any rank starts."""
    cores = getattr(args, "cpu_budget", None)
    if cores is None:
        return None
    from recpar.cluster.cpu_budget import CpuBudget, unavailable_reason

    if getattr(args, "topology", "local") == "slurm":
        raise ValueError(f"--cpu-budget {cores}: CPU budgets emulate devices on one machine "
                         "(topology local or emulated), not on a Slurm cluster's real nodes")
    budget = CpuBudget(cores=cores, period_us=args.cpu_budget_period_us)
    reason = unavailable_reason()
    if reason is not None:
        raise ValueError(f"--cpu-budget {cores}: {reason}")
    return budget


NEGATED_OPTIONS = {"error_feedback": "no_error_feedback", "overlap": "no_overlap",
                   "staleness_damping": "no_staleness_damping"}
"""Boolean run options whose `false` is a --no-... flag (dest names)."""


def apply_run_options(args, options: dict | str) -> None:
    """Set `recpar train` options from a mapping (the sweep's `sweep.runs.<id>` entry).

    Keys are option names with _ for -; booleans of NEGATED_OPTIONS map to their --no-... flag;
    `model_overrides` (a mapping) adds --model-override flags after the config's.
    An unknown key or a value of the wrong type fails naming the key.
    """
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError as e:
            raise ValueError(f"--run-options: not valid JSON ({e})") from e
    if not isinstance(options, dict):
        raise ValueError(f"--run-options: expected a JSON object, got {type(options).__name__}")
    for key, value in options.items():
        if key == "model_overrides":  # this run's model fields over the config's
            if not isinstance(value, dict):
                raise ValueError(f"--run-options: model_overrides must be a mapping of "
                                 f"ModelConfig fields, got {value!r}")
            args.model_override = [*args.model_override,
                                   *(f"{k}={json.dumps(v)}" for k, v in value.items())]
            continue
        if key in NEGATED_OPTIONS:
            if not isinstance(value, bool):
                raise ValueError(f"--run-options: {key} must be true or false, got {value!r}")
            if not hasattr(args, NEGATED_OPTIONS[key]):
                raise ValueError(f"--run-options: unknown option {key!r}")
            setattr(args, NEGATED_OPTIONS[key], not value)
            continue
        if key in ("data", "out", "run_options", "func") or not hasattr(args, key):
            raise ValueError(f"--run-options: unknown option {key!r}")
        default = getattr(args, key)
        if default is not None and not isinstance(value, type(default)) and not (
                isinstance(default, float) and isinstance(value, int)):
            raise ValueError(f"--run-options: {key} = {value!r} should be a "
                             f"{type(default).__name__}")
        setattr(args, key, value)


def _scheme_precision(train, scheme: str):
    """(train with `auto` settled for this scheme, the precision `auto` gives it). `auto` is
    fp32 on CPU and bf16 on CUDA (recpar.device), but fp32 for scheme deepspeed, whose stages
    do not autocast (DeepSpeed's own bf16 mode would be needed), so an explicit bf16 is
    refused there. A run id names the precision only where it differs from `auto`'s."""
    if scheme != "deepspeed":
        return train, train.with_precision("auto").resolved_precision()
    if train.precision == "bf16":
        raise ValueError("train.precision = bf16: scheme deepspeed trains in fp32 only (its "
                         "stages would need DeepSpeed's own bf16 mode); use fp32 or auto")
    return train.with_precision("fp32"), "fp32"


def _validate_model_parallel(plan, model) -> None:
    """Schemes mp and hybrid: what would otherwise fail inside the ranks, with the numbers."""
    from recpar.parallel.tensor_parallel import validate_tp  # no megatron import

    if plan.scheme == "mp" and plan.dp != 1:
        raise ValueError(f"scheme mp is tensor/pipeline parallel only; got --dp {plan.dp} "
                         "(use --scheme hybrid for tp×pp×dp)")
    validate_tp(model, plan)  # heads and d_ff split into whole shards
    # interleaved 1F1B: 2 virtual stages per rank (apply_pp's default)
    stages = plan.pp * (2 if plan.pipeline_schedule == "interleaved-1f1b" else 1)
    if plan.pp > 1 and stages > model.n_layers + 2:
        raise ValueError(f"--pp {plan.pp} with {plan.pipeline_schedule} = {stages} stages but "
                         f"the model has only n_layers + 2 = {model.n_layers + 2} layer units "
                         f"(embedding, {model.n_layers} blocks, head)")
    if plan.pp > 1 and plan.partition_method == "uniform":
        from recpar.parallel.partition import cut

        cut(None, stages, "uniform", n_units=model.n_layers + 2)  # PlanError: blocks < stages


def cmd_train(args) -> int:
    if args.run_options is not None:
        apply_run_options(args, args.run_options)
    from recpar.train.engine_registry import ENGINES

    if args.scheme not in ENGINES:
        raise ValueError(f"scheme {args.scheme!r} has no training engine in this checkout "
                         f"(available: {', '.join(ENGINES)})")
    if args.scheme == "baseline" and (args.dp, args.tp, args.pp) != (1, 1, 1):
        raise ValueError(f"scheme baseline runs on one device; got --dp {args.dp} --tp "
                         f"{args.tp} --pp {args.pp} (use --scheme dp, mp or hybrid)")
    from recpar.cluster.elastic import restart_args

    restart_args(args.max_restarts)  # a bad count fails here, not in torchrun
    spec = _spec(args, args.scheme)  # everything validated before any rank starts
    if spec.topology["kind"] == "emulated":  # the cluster's links, as the ranks will see them
        from recpar.cluster.launch import with_cluster_links
        from recpar.cluster.state import ClusterState
        from recpar.cluster.topology import Topology

        layout = Topology(kind="emulated", nodes=spec.topology["nodes"],
                          ranks_per_node=spec.topology["ranks_per_node"])
        state = ClusterState.load(args.cluster_prefix, args.cluster_state_dir)
        spec.topology = {**spec.topology, **with_cluster_links(layout, state).to_record()}
    if args.replace_stale:
        from recpar.train.loop import replace_stale_run

        moved = replace_stale_run(spec)
        if moved is not None:
            print(f"recpar train: {spec.out_dir} held a run of another configuration; "
                  f"moved it to {moved}", file=sys.stderr)
    if args.scheme == "baseline":
        rec = _train_here(spec, progress=not args.no_progress)
    else:
        rec = _launch_ranks(spec, args)
    print(json.dumps({"run_id": rec["run_id"], "metrics": rec["metrics"],
                      "test": rec["quality"]["test"]}, indent=1))
    return 0


def _launch_ranks(spec, args) -> dict:
    """Write the validated spec, start dp ranks with torchrun on the topology, read the record."""
    from recpar.cluster.launch import launch
    from recpar.cluster.topology import Topology
    from recpar.data.prepared import PreparedDataset
    from recpar.rank_threads import threads_per_rank
    from recpar.train import record
    from recpar.train.spec import spec_to_dict

    PreparedDataset.load(spec.data_dir)  # a missing dataset fails here, not in every rank
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    spec_path = spec.out_dir / "spec.json"
    spec_path.write_text(json.dumps(spec_to_dict(spec), indent=1))
    topo = Topology(kind=spec.topology["kind"], nodes=spec.topology["nodes"],
                    ranks_per_node=spec.topology["ranks_per_node"])
    # One intra-op thread per rank when ranks share the CPU cores; more would oversubscribe.
    env = {"OMP_NUM_THREADS": str(threads_per_rank(spec.plan.world_size))}
    with contextlib.ExitStack() as stack:
        if spec.cpu_budget is not None:
            from recpar.cluster.cpu_budget import ENV_DIR, budget_groups

            groups = stack.enter_context(budget_groups(spec.cpu_budget, spec.plan.world_size,
                                                       spec.run_id))
            env = {"OMP_NUM_THREADS": str(spec.cpu_budget.intra_op_threads),
                   ENV_DIR: str(groups.dir)}
        schedule, fault_log = None, None
        if spec.fault_schedule is not None:
            from recpar.cluster.fault import parse_event
            from recpar.train.injected_faults import LOG_FILE, START_MARKER

            schedule = [parse_event(e, f"{spec_path}: fault_schedule[{i}]")
                        for i, e in enumerate(spec.fault_schedule)]
            fault_log = spec.out_dir / LOG_FILE
            fault_log.unlink(missing_ok=True)  # an earlier launch's: not this run's faults
            (spec.out_dir / START_MARKER).unlink(missing_ok=True)
        code = launch(topo, ["-m", "recpar.train.worker", str(spec_path)], env=env,
                      fault_schedule=schedule, fault_log=fault_log,
                      fault_start_marker=(None if schedule is None
                                          else spec.out_dir / START_MARKER),
                      prefix=args.cluster_prefix, state_dir=args.cluster_state_dir,
                      timeout_s=args.timeout_s, max_restarts=args.max_restarts)
    if code != 0:
        raise RuntimeError(f"recpar train: ranks exited with code {code} (see the log above)")
    return record.read(spec.out_dir / "record.json")


def _train_here(spec, progress: bool) -> dict:
    """A single-device run in this process; with a CPU budget, in its own group, which
    `train` joins when training starts, as a rank does (left and removed afterwards, also on
    an error)."""
    from recpar.train.loop import train

    if spec.cpu_budget is None:
        return train(spec, progress=progress)
    import torch

    from recpar.cluster.cpu_budget import ENV_DIR, budget_groups, leave

    with budget_groups(spec.cpu_budget, 1, spec.run_id) as groups:
        threads = torch.get_num_threads()
        torch.set_num_threads(spec.cpu_budget.intra_op_threads)
        os.environ[ENV_DIR] = str(groups.dir)
        try:
            return train(spec, progress=progress)
        finally:
            del os.environ[ENV_DIR]
            torch.set_num_threads(threads)
            leave()


def cmd_popularity(args) -> int:
    from recpar.train.loop import run_most_popular

    spec = _spec(args, "baseline")
    spec.run_id = args.run_id or "most-popular"
    rec = run_most_popular(spec)
    print(json.dumps({"run_id": rec["run_id"], "test": rec["quality"]["test"]}, indent=1))
    return 0
