"""`recpar perfmodel ...`: project the paper's tables, predict/validate run records, calibrate.

    recpar perfmodel project  --hardware paper-a100 [--model-size medium] --out DIR
    recpar perfmodel predict  --record run.json --hardware PROFILE [--out FILE]
    recpar perfmodel validate --records a.json b.json ... --hardware PROFILE
        --grid-role development|held-out [--grid NAME] --out DIR
        (DIR/validation_projected_vs_measured.csv and DIR/validation_summary.md)
    recpar perfmodel summarize --tables dev.csv heldout.csv ... --out summary.md
    recpar perfmodel calibrate --inter-node FILE --ranks-per-node N [--baseline-record R] --out P
        (FILE: a calibration YAML/JSON, or a run record of the emulated cluster, whose
        topology.inter_node.calibrated holds the link `recpar cluster calibrate` measured)
    recpar perfmodel scale-model --hardware paper-a100 --cpu-budget 0.2 [--out FILE]
        (measures one budgeted device's training FLOP/s and prints the dilation and the
        profile's links scaled to it; needs root and a cgroup cpu controller)
    recpar perfmodel moe-all-to-all --records DIR... --out DIR
        (expert parallelism's all-to-all term against the exchange time MoE records measured
        on the emulated cluster's calibrated links)
    recpar perfmodel allreduce-ablation --out DIR [--latencies 5ms/10ms,20ms/40ms] ...
        (ring vs hierarchical all-reduce across latency and message size on the emulated
        cluster, against the alpha-beta model; needs root and vde2)
    recpar perfmodel compression-ablation --scale-model FILE --data DIR --out DIR ...
        (every compressor's data-parallel step across inter-node link rates on the scale
        model, speedups and crossovers against the cost model; needs root)
    recpar perfmodel pipeline-ablation --data DIR --out DIR ...
        (the pipeline bubble of every schedule and micro-batch count, and uniform vs balanced
        stage cuts, on budgeted devices, against (p - 1)/(v m); needs root)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

from recpar.atomic_write import write_text
from recpar.perfmodel.hardware import ProfileError, load_profile
from recpar.perfmodel.shapes import CostInputError
from recpar.published import expand_inputs

_ERRORS = (CostInputError, ProfileError)


def _fail(msg: str) -> SystemExit:
    return SystemExit(f"recpar: {msg}")


def _atomic_write(path: Path, text: str) -> None:
    write_text(path, text)


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols and not isinstance(r[k], (dict, list))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str) + "\n"


def _read_json(path: str) -> dict:
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise _fail(f"{p}: file not found") from None
    except json.JSONDecodeError as e:
        raise _fail(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _profile(name: str):
    try:
        return load_profile(name)
    except ProfileError as e:
        raise _fail(str(e)) from None


def _overrides(pairs: list[str] | None) -> dict[str, int]:
    out = {}
    for p in pairs or []:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise _fail(f"--set expects KEY=VALUE, got {p!r}")
        try:
            out[k] = int(v)
        except ValueError:
            raise _fail(f"--set {k}: expected an integer, got {v!r}") from None
    return out


def cmd_project(args: argparse.Namespace) -> int:
    from recpar.perfmodel.predict import ProjectionSettings, project_paper_tables

    hw = _profile(args.hardware)
    try:
        nodes = tuple(int(x) for x in args.nodes.split(","))
    except ValueError:
        raise _fail(f"--nodes expects comma-separated integers, got {args.nodes!r}") from None
    settings = ProjectionSettings(shape_name=args.model_size,
                                  shape_overrides=tuple(sorted(_overrides(args.set).items())),
                                  batch_per_gpu=args.batch_per_gpu,
                                  num_microbatches=args.micro_batches, nodes=nodes)
    try:
        res = project_paper_tables(hw, settings)
    except _ERRORS as e:
        raise _fail(str(e)) from None
    out = Path(args.out)
    files = {
        "table2_projected.csv": _csv(res["table2"]),
        "table3_projected.csv": _csv(res["table3"]),
        "hardware_sources.csv": _csv(res["sources"]),
        "projection.json": _json(res),
    }
    for name, text in files.items():  # all rendered before any is written
        _atomic_write(out / name, text)
    print(f"wrote {', '.join(files)} to {out} (projected, {hw.name}, model {args.model_size})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from recpar.perfmodel.predict import predict_record

    hw = _profile(args.hardware)
    rec = _read_json(args.record)
    try:
        res = predict_record(rec, hw, args.record, _overrides(args.set))
    except _ERRORS as e:
        raise _fail(str(e)) from None
    text = _json(res)
    if args.out:
        _atomic_write(Path(args.out), text)
    else:
        print(text, end="")
    return 0


VALIDATION_CSV = "validation_projected_vs_measured.csv"
VALIDATION_SUMMARY = "validation_summary.md"


def cmd_validate(args: argparse.Namespace) -> int:
    from recpar.perfmodel.validation import validation_rows
    from recpar.perfmodel.validation_summary import measure_summary, summary_markdown

    hw = _profile(args.hardware)
    # a record is named <run>/seed<k>/record.json, as published: no machine's paths in the table
    recs = [(Path(*Path(p).parts[-3:]).as_posix(), _read_json(str(p)))
            for p in expand_inputs(args.records)]
    if args.schemes:
        keep = {s.strip() for s in args.schemes.split(",") if s.strip()}
        left = [p for p, r in recs if r.get("scheme") not in keep]
        recs = [(p, r) for p, r in recs if r.get("scheme") in keep]
        if left:
            print(f"left out {len(left)} record(s) of other schemes (--schemes "
                  f"{','.join(sorted(keep))})")
        if not recs:
            raise _fail(f"--schemes {args.schemes}: none of the {len(left)} record(s) has "
                        "one of these schemes")
    try:
        rows = validation_rows(recs, hw, grid_role=args.grid_role, grid=args.grid,
                               overrides=_overrides(args.set))
    except _ERRORS as e:
        raise _fail(str(e)) from None
    out = Path(args.out)
    table, summary = _csv(rows), summary_markdown(rows)  # both rendered before either is written
    _atomic_write(out / VALIDATION_CSV, table)
    _atomic_write(out / VALIDATION_SUMMARY, summary)
    band = f"±{rows[0]['target_pct']:g} %"
    print(f"grid {args.grid or '(unnamed)'} ({args.grid_role}), target {band}, "
          f"{len(rows)} record(s):")
    for key, label in (("iter", "iteration time"), ("comm", "communication time")):
        s = measure_summary(rows, key)
        worst = (f", largest |error| {s['max_abs_error_pct']:.1f} %"
                 if s["max_abs_error_pct"] is not None else "")
        print(f"  {label}: {s['within']} of {s['judged']} judged within {band}{worst}")
    for role in ("calibration workload", "not predicted"):
        n = sum(r["row_role"] == role for r in rows)
        if n:
            print(f"  left out of the summary: {n} {role} row(s)")
    print(f"wrote {VALIDATION_CSV} and {VALIDATION_SUMMARY} to {out}")
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    from recpar.perfmodel.validation_summary import rows_from_csv, summary_markdown

    rows = []
    for path in args.tables:
        try:
            rows += rows_from_csv(Path(path).read_text())
        except FileNotFoundError:
            raise _fail(f"{path}: file not found") from None
        except (KeyError, ValueError) as e:
            raise _fail(f"{path}: not a validation table ({e})") from None
    try:
        text = summary_markdown(rows)
    except KeyError as e:
        raise _fail(f"not a validation table: column {e} missing") from None
    _atomic_write(Path(args.out), text)
    print(f"wrote {args.out} ({len(rows)} row(s) of {len(args.tables)} table(s))")
    return 0


def cmd_scale_model(args: argparse.Namespace) -> int:
    from recpar.cluster.cpu_budget import CpuBudget, find_controller, unavailable_reason
    from recpar.perfmodel.device_step import run_devices, step_flops
    from recpar.perfmodel.dilation import scale_model

    try:
        profile = load_profile(args.hardware)
        budget = CpuBudget(cores=args.cpu_budget, period_us=args.cpu_budget_period_us)
    except (ProfileError, ValueError) as e:
        raise _fail(str(e)) from None
    reason = unavailable_reason()
    if reason is not None:
        raise _fail(f"--cpu-budget {args.cpu_budget}: {reason}")
    n_items = args.n_items
    if args.data is not None:  # the items of a prepared dataset (its stats.json)
        stats = _read_json(str(Path(args.data) / "stats.json"))
        if not isinstance(stats.get("items"), int):
            raise _fail(f"{args.data}/stats.json: no integer `items`")
        n_items = stats["items"]
    from recpar.train.cli import parse_kv  # the same KEY=VALUE values as `recpar train`'s

    try:  # an unknown or bad override fails here, before any device process starts
        overrides = parse_kv(args.model_override, "--model-override")
    except ValueError as e:  # names the flag and the value itself
        raise _fail(str(e)) from None
    try:
        step_flops(args.model_size, n_items, args.batch, overrides)
    except (TypeError, ValueError) as e:
        raise _fail(f"--model-override: {e}") from None
    measured = run_devices(1, budget, args.steps, (args.model_size, n_items, args.batch),
                           overrides)
    try:
        sm = scale_model(profile, measured["device_flops_per_s_mean"])
    except ValueError as e:
        raise _fail(str(e)) from None
    mechanism = find_controller(make_top=False).mechanism
    out = {"scale_model": sm.to_record(), "cpu_budget": budget.to_record(mechanism),
           "device_measurement": measured,
           "definition": "dilation D = device / profile sustained FLOP/s; links: rate × D, "
                         "latency / D (recpar.perfmodel.dilation)"}
    text = json.dumps(out, indent=1)
    if args.out:
        _atomic_write(Path(args.out), text + "\n")
    print(text)
    return 0


def cmd_scale_profile(args: argparse.Namespace) -> int:
    from recpar.perfmodel.calibrate import write_profile
    from recpar.perfmodel.scale_profile import calibration_from_records, scale_profile_mapping

    scale = _read_json(args.scale_model)
    try:
        cal, devices, src = calibration_from_records(
            [(str(p), _read_json(str(p))) for p in expand_inputs(args.records)])
        m = scale_profile_mapping(scale, cal, devices, where=f"{args.scale_model} + {src}")
    except (ProfileError, ValueError) as e:
        raise _fail(str(e)) from None
    write_profile(m, args.out)
    print(f"wrote {args.out} ({m['description']}; links as calibrated for {src})")
    return 0


def parse_latency_settings(text: str) -> tuple:
    """'5ms/10ms,20ms/40ms' -> settings of (intra-node, inter-node) one-way latency."""
    from recpar.cluster.units import parse_duration
    from recpar.perfmodel.allreduce_ablation import LatencySetting

    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        parts = item.split("/")
        if len(parts) != 2:
            raise ValueError(f"--latencies: {item!r} is not INTRA/INTER, e.g. 5ms/10ms")
        out.append(LatencySetting(parse_duration(parts[0], "--latencies (intra-node)"),
                                  parse_duration(parts[1], "--latencies (inter-node)")))
    if not out:
        raise ValueError("--latencies: give at least one INTRA/INTER setting")
    return tuple(out)


def cmd_moe_all_to_all(args: argparse.Namespace) -> int:
    from recpar.perfmodel.expert_dispatch import (probe_rows, probe_shapes, run_probes,
                                                  validate, write_outputs)

    try:
        rows = validate(args.records)
    except (OSError, ValueError) as e:
        raise _fail(str(e)) from None
    if not rows:
        raise _fail(f"{', '.join(args.records)}: no expert-parallel MoE record (plan.ep > 1 "
                    f"and a moe section)")
    probes = None
    if args.probe:
        shapes = probe_shapes(rows)
        if not shapes:
            raise _fail("--probe: no record the term judged (every one is 'not judged'), so "
                        "there is no layout to probe")
        if args.probe_iters < 1:
            raise _fail(f"--probe-iters must be >= 1, got {args.probe_iters}")
        try:
            probes = probe_rows(shapes, run_probes(shapes, args.work_dir,
                                                   iters=args.probe_iters))
        except (OSError, RuntimeError, ValueError) as e:
            raise _fail(f"--probe: {e}") from None
    for path in write_outputs(rows, args.out, probes):
        print(path)
    return 0


def cmd_allreduce_ablation(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from recpar.cluster.allreduce_probe import parse_size
    from recpar.cluster.units import parse_rate
    from recpar.perfmodel.allreduce_ablation import (AblationResult, AllreduceAblation,
                                                     measure, write_outputs)

    try:
        cfg = AllreduceAblation(
            nodes=args.nodes, ranks_per_node=args.ranks_per_node,
            intra_rate_bit_per_s=parse_rate(args.intra_bw, "--intra-bw"),
            inter_rate_bit_per_s=parse_rate(args.inter_bw, "--inter-bw"),
            latencies=parse_latency_settings(args.latencies),
            sizes_bytes=tuple(parse_size(t) for t in args.sizes.split(",") if t.strip()),
            iters=args.iters, warmup=args.warmup, prefix=args.prefix)
    except ValueError as e:
        raise _fail(str(e)) from None
    work = Path(args.work_dir)
    settings = measure(cfg, work / "state", work, progress=lambda m: print(m, flush=True))
    res = AblationResult(config=asdict(cfg), settings=settings)
    for path in write_outputs(res, args.out):
        print(f"wrote {path}")
    return 0


def cmd_compression_ablation(args: argparse.Namespace) -> int:
    from recpar.perfmodel.compression_ablation import (COMPRESSORS, CompressionAblation,
                                                       run, scale_link)

    scale = _read_json(args.scale_model)
    by_label = {c.label: c for c in COMPRESSORS}
    labels = [t.strip() for t in args.compressors.split(",") if t.strip()]
    unknown = [t for t in labels if t not in by_label]
    if unknown:
        raise _fail(f"--compressors: unknown {', '.join(unknown)}; known: "
                    f"{', '.join(by_label)}")
    try:
        factors = tuple(float(t) for t in args.link_factors.split(",") if t.strip())
    except ValueError:
        raise _fail(f"--link-factors: expected numbers separated by commas, got "
                    f"{args.link_factors!r}") from None
    try:
        scale_link(scale)
        cfg = CompressionAblation(
            link_factors=factors,
            compressors=tuple(by_label[t] for t in labels), nodes=args.nodes,
            model_size=args.model_size, global_batch_size=args.global_batch_size,
            warmup_steps=args.warmup_steps, timed_steps=args.timed_steps, seed=args.seed,
            repeats=args.repeats, prefix=args.prefix)
    except (KeyError, TypeError) as e:
        raise _fail(f"{args.scale_model}: not a `recpar perfmodel scale-model` output "
                    f"(missing {e})") from None
    except ValueError as e:
        raise _fail(str(e)) from None
    if not (Path(args.data) / "stats.json").is_file():
        raise _fail(f"--data {args.data}: no stats.json (run `recpar data prepare`)")
    work = Path(args.work_dir)
    run(cfg, scale, args.data, work / "state", work, args.out,
        progress=lambda m: print(m, flush=True))
    print(f"wrote {args.out}/compression_link_rate.{{json,csv,md,png}}")
    return 0


def cmd_peak(args: argparse.Namespace) -> int:
    import torch

    from recpar.device import gemm_flops_per_s

    if args.threads < 0:
        raise _fail(f"--threads: must be >= 0, got {args.threads}")
    old = torch.get_num_threads()
    threads = args.threads or old
    torch.set_num_threads(threads)
    try:
        peak = gemm_flops_per_s(args.dtype, n=args.n, repeats=args.repeats, device=args.device)
    except ValueError as e:
        raise _fail(str(e)) from None
    finally:
        torch.set_num_threads(old)
    print(json.dumps({"dtype": args.dtype, "threads": threads, "n": args.n,
                      "device": args.device, "gemm_peak_tflops_per_s": peak / 1e12}))
    return 0


def cmd_step_check(args: argparse.Namespace) -> int:
    from recpar.perfmodel.step_check import check_step, format_row, to_record

    sizes = [v for v in args.sizes.split(",") if v]
    precisions = [v for v in args.precision.split(",") if v]
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    rows, failed = [], 0
    for size in sizes:
        for precision in precisions:
            for comp in compiles:
                try:
                    c = check_step(size, precision, comp, batch=args.batch, n_items=args.items,
                                   device=args.device, steps=args.steps, warmup=args.warmup,
                                   gemm_n=args.gemm_n, chunk_size=args.chunk)
                except Exception as e:  # report every configuration, then fail
                    failed += 1
                    print(f"{size} {precision} compile={comp}: FAILED {type(e).__name__}: {e}",
                          flush=True)
                    continue
                print(format_row(c), flush=True)
                rows.append(to_record(c))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 1 if failed else 0


def _require_cpu_budget(cores: float) -> None:
    """Stop before anything runs where CPU budgets cannot be applied (root, a cgroup cpu
    controller), with the reason, as `scale-model` does."""
    from recpar.cluster.cpu_budget import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        raise _fail(f"--cpu-budget {cores:g}: {reason}")


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"straggler ablation: --seeds {text!r} is not a comma-separated "
                         f"list of integers") from None


def cmd_straggler_ablation(args: argparse.Namespace) -> int:
    from recpar.perfmodel.straggler_ablation import StragglerAblation, run, target_band

    try:
        cfg = StragglerAblation(
            slowdowns=tuple(float(t) for t in args.slowdowns.split(",") if t.strip()),
            schemes=tuple(t.strip() for t in args.schemes.split(",") if t.strip()),
            cpu_budget=args.cpu_budget, max_epochs=args.max_epochs, patience=args.patience,
            seeds=_seeds(args.seeds))
        band = target_band(args.quality)
    except ValueError as e:
        raise _fail(str(e) if str(e).startswith(("straggler", "--quality"))
                    else f"--slowdowns: {e}") from None
    if not (Path(args.data) / "stats.json").is_file():
        raise _fail(f"--data {args.data}: no stats.json (run `recpar data prepare`)")
    _require_cpu_budget(cfg.cpu_budget)
    paths = run(cfg, args.data, args.work_dir, args.out, band,
                progress=lambda m: print(m, flush=True))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def cmd_pipeline_ablation(args: argparse.Namespace) -> int:
    from recpar.perfmodel.pipeline_ablation import PipelineAblation, run

    try:
        sched, _, m = args.partition_case.partition(":")
        case = (sched, int(m))
    except ValueError:
        raise _fail(f"--partition-case: expected SCHEDULE:M, got {args.partition_case!r}") \
            from None
    try:
        cfg = PipelineAblation(
            pp=args.pp, schedules=tuple(t.strip() for t in args.schedules.split(",")
                                        if t.strip()),
            microbatches=tuple(int(t) for t in args.microbatches.split(",") if t.strip()),
            partition_case=case, model_size=args.model_size, n_layers=args.n_layers,
            cpu_budget=args.cpu_budget, global_batch_size=args.global_batch_size,
            warmup_steps=args.warmup_steps, timed_steps=args.timed_steps, seed=args.seed)
    except ValueError as e:
        raise _fail(str(e) if str(e).startswith("pipeline ablation")
                    else f"--microbatches: {e}") from None
    if not (Path(args.data) / "stats.json").is_file():
        raise _fail(f"--data {args.data}: no stats.json (run `recpar data prepare`)")
    _require_cpu_budget(cfg.cpu_budget)
    run(cfg, args.data, args.work_dir, args.out, progress=lambda m: print(m, flush=True))
    print(f"wrote {args.out}/pipeline_bubble.{{json,csv,md,png}}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import yaml

    from recpar.perfmodel import calibrate as cal
    from recpar.perfmodel.emulated_calibration import (CalibrationError, CalibrationOptions,
                                                       calibrate_emulated_profile,
                                                       parse_rank_counts)

    # checked before anything is measured
    try:
        loaded_ranks = parse_rank_counts(args.loaded_ranks)
    except ValueError as e:
        raise _fail(f"--loaded-ranks: {e}") from None
    if args.loaded_repeats < 1:
        raise _fail(f"--loaded-repeats: must be >= 1, got {args.loaded_repeats}")
    try:
        text = Path(args.inter_node).read_text()
    except FileNotFoundError:
        raise _fail(f"{args.inter_node}: calibration file not found") from None
    try:
        lat, bw = cal.inter_node_from_calibration(yaml.safe_load(text), args.inter_node)
    except (ProfileError, yaml.YAMLError, TypeError, ValueError) as e:
        raise _fail(str(e).splitlines()[0]) from None
    base = _read_json(args.baseline_record) if args.baseline_record else None
    options = CalibrationOptions(
        ranks_per_node=args.ranks_per_node, threads_per_rank=args.threads_per_rank,
        host_cores=args.host_cores, shared_host=not args.no_shared_host,
        loaded_ranks=tuple(loaded_ranks), loaded_repeats=args.loaded_repeats,
        topk_ratio=args.topk_ratio)
    try:
        res = calibrate_emulated_profile(
            inter_latency_s=lat, inter_bandwidth_bytes_per_s=bw,
            inter_source=f"measured: cluster calibration in {args.inter_node}", options=options,
            baseline=base, baseline_name=args.baseline_record)
    except CalibrationError as e:
        raise _fail(str(e)) from None
    cal.write_profile(res.profile, args.out)
    print(f"wrote {args.out}: {res.flops_per_s / 1e9:.1f} GFLOP/s, loopback "
          f"{res.loopback['bandwidth_bytes_per_s'] / 1e9:.2f} GB/s "
          f"α={res.loopback['latency_s'] * 1e6:.0f} µs")
    for line in res.notes:
        print(f"  {line}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `perfmodel` and its sub-commands to the top-level `recpar` parser."""
    from recpar.perfmodel.predict import DEFAULT_PROJECTION_SHAPE, PROJECTION_SHAPES

    p = subparsers.add_parser("perfmodel", help="analytic performance model (projections)")
    sub = p.add_subparsers(dest="perfmodel_command", required=True)

    pr = sub.add_parser("project", help="project Tables II-III on a hardware profile")
    pr.add_argument("--hardware", default="paper-a100", help="profile name or YAML path")
    pr.add_argument("--model-size", default=DEFAULT_PROJECTION_SHAPE,
                    choices=sorted(PROJECTION_SHAPES))
    pr.add_argument("--set", action="append", metavar="KEY=INT",
                    help="override a model-shape field, e.g. --set seq_len=200")
    pr.add_argument("--batch-per-gpu", type=int, default=256)
    pr.add_argument("--micro-batches", type=int, default=8)
    pr.add_argument("--nodes", default="1,2,3,4", help="comma-separated node counts")
    pr.add_argument("--out", required=True, help="output directory")
    pr.set_defaults(func=cmd_project)

    pd = sub.add_parser("predict", help="projected iteration time of one run record")
    pd.add_argument("--record", required=True)
    pd.add_argument("--hardware", required=True, help="profile name or YAML path")
    pd.add_argument("--set", action="append", metavar="KEY=INT",
                    help="override a model-shape field (e.g. vocab_size)")
    pd.add_argument("--out", help="JSON file (default: stdout)")
    pd.set_defaults(func=cmd_predict)

    from recpar.perfmodel.validation import GRID_ROLES, TARGET_PCT

    va = sub.add_parser(
        "validate", help="projected vs measured table and summary for run records",
        description=f"Predict each record and compare with what it measured: iteration time "
                    f"and communication time, each judged against ±{TARGET_PCT:g} % "
                    "(iter_verdict, comm_verdict). Records the model cannot price get a row "
                    "saying why; a single-rank record priced by the calibration's own timing "
                    "of its workload is marked and left out of the summary.")
    va.add_argument("--records", nargs="+", required=True,
                    help="run records, or a folder of published ones "
                         "(paper_tables/<sweep>/records)")
    va.add_argument("--hardware", required=True, help="profile name or YAML path")
    va.add_argument("--set", action="append", metavar="KEY=INT")
    va.add_argument("--schemes", default="",
                    help="comma-separated schemes to compare (e.g. baseline,dp); default: all")
    va.add_argument("--grid-role", required=True, choices=list(GRID_ROLES),
                    help="; ".join(f"{k}: {v}" for k, v in GRID_ROLES.items()))
    va.add_argument("--grid", default=None,
                    help="name of the grid (the sweep) the records belong to")
    va.add_argument("--out", required=True,
                    help=f"output directory ({VALIDATION_CSV}, {VALIDATION_SUMMARY})")
    va.set_defaults(func=cmd_validate)

    su = sub.add_parser("summarize",
                        help="one markdown summary of several validation tables, development "
                             "and held-out grids apart")
    su.add_argument("--tables", nargs="+", required=True,
                    help=f"{VALIDATION_CSV} files written by `recpar perfmodel validate`")
    su.add_argument("--out", required=True, help="markdown file to write")
    su.set_defaults(func=cmd_summarize)

    ca = sub.add_parser("calibrate", help="measure this host and write an emulated profile")
    ca.add_argument("--inter-node", required=True,
                    help="cluster link calibration (YAML/JSON: bandwidth + latency)")
    ca.add_argument("--ranks-per-node", type=int, required=True)
    ca.add_argument("--threads-per-rank", type=int, default=1)
    ca.add_argument("--baseline-record",
                    help="single-rank run record: measured efficiency, and the model shape at "
                         "which the shared-host step rates and the top-k rate are measured")
    ca.add_argument("--host-cores", type=int, default=None,
                    help="cores the emulated ranks share (default: os.cpu_count())")
    ca.add_argument("--no-shared-host", action="store_true",
                    help="omit shared_host: ranks have their own cores (not the emulated host)")
    ca.add_argument("--loaded-ranks", default="1,2,3,4,8",
                    help="rank counts W at which W concurrent training steps are timed for "
                         "shared_host.loaded_step (comma-separated; empty: skip)")
    ca.add_argument("--loaded-repeats", type=int, default=3,
                    help="times the loaded-step measurement is repeated (interleaved over the "
                         "rank counts): the line goes through the per-batch medians and the "
                         "profile records the repeats' spread")
    ca.add_argument("--topk-ratio", type=float, default=0.01,
                    help="top-k ratio at which the compression rate is measured")
    ca.add_argument("--out", required=True, help="profile YAML to write")
    ca.set_defaults(func=cmd_calibrate)

    sm = sub.add_parser("scale-model",
                        help="measure a budgeted device and scale a profile's links to it")
    sm.add_argument("--hardware", default="paper-a100", help="profile name or YAML path")
    sm.add_argument("--cpu-budget", type=float, required=True, metavar="CORES",
                    help="CPU-seconds per second of one emulated device")
    sm.add_argument("--cpu-budget-period-us", type=int, default=10_000)
    sm.add_argument("--steps", type=int, default=12, help="timed training steps")
    sm.add_argument("--model-size", default="tiny",
                    help="model whose training step is measured (the grid's model: its FLOP/s "
                         "per core depends on its shape)")
    sm.add_argument("--model-override", action="append", default=[], metavar="KEY=VALUE",
                    help="a ModelConfig field replacing the size's (the grid's "
                         "model.overrides), repeatable")
    sm.add_argument("--n-items", type=int, default=1682, help="item vocabulary of that model")
    sm.add_argument("--data", default=None, metavar="DIR",
                    help="a prepared dataset whose item count replaces --n-items")
    sm.add_argument("--batch", type=int, default=32, help="sequences per measured step")
    sm.add_argument("--out", default=None, help="JSON file to write (also printed)")
    sm.set_defaults(func=cmd_scale_model)

    sp = sub.add_parser("scale-profile",
                        help="the hardware profile of a scale-model cluster (measured device, "
                             "calibrated links), for predict/validate")
    sp.add_argument("--scale-model", required=True, help="`recpar perfmodel scale-model` output")
    sp.add_argument("--records", nargs="+", required=True,
                    help="run records of the scale-model cluster: the links are the "
                         "calibration the first multi-node one carries")
    sp.add_argument("--out", required=True, help="profile YAML to write")
    sp.set_defaults(func=cmd_scale_profile)

    ar = sub.add_parser("allreduce-ablation",
                        help="ring vs hierarchical all-reduce across latency and message size, "
                             "measured on the emulated cluster and projected (root, vde2)")
    ar.add_argument("--nodes", type=int, default=4)
    ar.add_argument("--ranks-per-node", type=int, default=2)
    ar.add_argument("--intra-bw", default="100mbit", help="every device's intra-node link")
    ar.add_argument("--inter-bw", default="20mbit", help="every node's uplink")
    ar.add_argument("--latencies", default="5ms/10ms,20ms/40ms",
                    help="settings INTRA/INTER of one-way latency, comma-separated")
    ar.add_argument("--sizes", default="64k,256k,1m,4m", help="message sizes")
    ar.add_argument("--iters", type=int, default=3, help="timed calls per size")
    ar.add_argument("--warmup", type=int, default=1)
    ar.add_argument("--prefix", default="rpa",
                    help="namespace prefix of the ablation's own clusters")
    ar.add_argument("--out", required=True,
                    help="directory for allreduce_latency.{json,csv,md,png}")
    ar.add_argument("--work-dir", default="results/ablations/allreduce",
                    help="the clusters' state, the probes' logs and raw results")
    ar.set_defaults(func=cmd_allreduce_ablation)

    ma = sub.add_parser("moe-all-to-all",
                        help="expert parallelism's all-to-all term against the exchange time "
                             "MoE run records measured on the emulated cluster")
    ma.add_argument("--records", nargs="+", required=True,
                    help="record.json files or directories holding them")
    ma.add_argument("--out", required=True, help="directory for moe_all_to_all.{md,json}")
    ma.add_argument("--probe", action="store_true",
                    help="also run each expert-parallel run's exchange alone on the emulated "
                         "cluster that is up (root; `recpar cluster up` with the records' "
                         "layout) and judge the term against it")
    ma.add_argument("--probe-iters", type=int, default=10, help="timed exchanges per probe")
    ma.add_argument("--work-dir", default="results/moe_all_to_all_probe",
                    help="the probes' logs and raw results")
    ma.set_defaults(func=cmd_moe_all_to_all)

    co = sub.add_parser("compression-ablation",
                        help="every gradient compressor's data-parallel step across link rates "
                             "on the scale model, against the cost model (root)")
    co.add_argument("--scale-model", required=True,
                    help="`recpar perfmodel scale-model` output: D, the budget, the scaled NIC")
    co.add_argument("--data", required=True, help="prepared dataset directory")
    co.add_argument("--link-factors", default="0.25,1,4,16,64",
                    help="inter-node rates as multiples of the scaled NIC, comma-separated")
    co.add_argument("--compressors", default="none,sign,topk0.1,topk0.01,topk0.001,powersgd,"
                    "fp16", help="comma-separated; the first must be none")
    co.add_argument("--nodes", type=int, default=2, help="nodes of one budgeted device each")
    co.add_argument("--model-size", default="tiny")
    co.add_argument("--global-batch-size", type=int, default=128)
    co.add_argument("--warmup-steps", type=int, default=3)
    co.add_argument("--timed-steps", type=int, default=8)
    co.add_argument("--seed", type=int, default=0)
    co.add_argument("--repeats", type=int, default=2,
                    help="runs of every point; their spread is the band a speedup must clear")
    co.add_argument("--prefix", default="rpz",
                    help="namespace prefix of the ablation's own clusters")
    co.add_argument("--out", required=True,
                    help="directory for compression_link_rate.{json,csv,md,png}")
    co.add_argument("--work-dir", default="results/ablations/compression",
                    help="the clusters' state, the runs' records and logs")
    co.set_defaults(func=cmd_compression_ablation)

    from recpar.perfmodel.straggler_ablation import SCHEMES as STRAGGLER_SCHEMES

    st = sub.add_parser("straggler-ablation",
                        help="sync DP vs the parameter server (damping on/off, static vs dynamic "
                             "work) with one worker slowed 1x/2x/4x: time to quality, final "
                             "quality, staleness (root)")
    st.add_argument("--data", required=True, help="prepared dataset directory")
    st.add_argument("--slowdowns", default="1,2,4", help="slowdown factors of the straggler")
    st.add_argument("--schemes", default=",".join(STRAGGLER_SCHEMES),
                    help="scheme labels; the first is the reference")
    st.add_argument("--cpu-budget", type=float, default=0.5, help="cores per device")
    st.add_argument("--max-epochs", type=int, default=30)
    st.add_argument("--patience", type=int, default=3)
    st.add_argument("--seeds", default="0",
                    help="seeds, comma-separated; each runs the whole grid (mean ± std beside "
                         "every run when more than one)")
    st.add_argument("--quality", default=None, metavar="JSON",
                    help="quality_ablation.json: its target band (the reference's seed spread) "
                         "sets the target; default 0.01")
    st.add_argument("--out", required=True,
                    help="directory for straggler_sync_async.{json,csv,md,png}")
    st.add_argument("--work-dir", default="results/ablations/straggler",
                    help="the runs' records and logs")
    st.set_defaults(func=cmd_straggler_ablation)
    pk = sub.add_parser("peak", help="GEMM peak FLOP/s of this machine for a dtype and thread "
                        "count (the denominator of a record's mfu_pct)")
    pk.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    pk.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's "
                    "default)")
    pk.add_argument("--n", type=int, default=2048, help="matrix size n (n x n times n x n)")
    pk.add_argument("--repeats", type=int, default=5, help="timed products; the best counts")
    pk.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    pk.set_defaults(func=cmd_peak)
    sc = sub.add_parser("step-check",
                        help="one device's training step per size, precision and compile "
                             "setting: ms/step, MFU against the datasheet and a measured GEMM, "
                             "peak memory against the cost model (bench/gpu_check.sh)")
    sc.add_argument("--sizes", default="tiny", help="named model sizes, comma-separated")
    sc.add_argument("--precision", default="fp32", help="fp32, bf16 or auto, comma-separated")
    sc.add_argument("--compile", default="off", choices=["off", "on", "both"],
                    help="torch.compile the loss function")
    sc.add_argument("--batch", type=int, default=16, help="sequences per step")
    sc.add_argument("--items", type=int, default=1682,
                    help="item vocabulary (63001: Amazon Electronics)")
    sc.add_argument("--steps", type=int, default=10, help="timed steps")
    sc.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    sc.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    sc.add_argument("--chunk", type=int, default=0,
                    help="positions per chunk of the memory-lean loss (model.overrides."
                         "cross_entropy_chunk_size); 0 (default): the whole logits at once")
    sc.add_argument("--gemm-n", type=int, default=None,
                    help="matrix size of the measured GEMM peak (default: 8192 on CUDA, 1024 on "
                         "CPU)")
    sc.add_argument("--out", help="JSON file for the rows")
    sc.set_defaults(func=cmd_step_check)
    pa = sub.add_parser("pipeline-ablation",
                        help="pipeline bubble by schedule, micro-batches and stage cut on "
                             "budgeted devices, against (p - 1)/(v m) (root)")
    pa.add_argument("--data", required=True, help="prepared dataset directory")
    pa.add_argument("--pp", type=int, default=2, help="pipeline stages (devices)")
    pa.add_argument("--schedules", default="gpipe,1f1b,interleaved-1f1b")
    pa.add_argument("--microbatches", default="2,4,8", help="micro-batch counts m")
    pa.add_argument("--partition-case", default="1f1b:4",
                    help="SCHEDULE:M also run with the uniform cut")
    pa.add_argument("--model-size", default="tiny")
    pa.add_argument("--n-layers", type=int, default=4,
                    help="blocks (the interleaved schedule needs 2 chunks per stage)")
    pa.add_argument("--cpu-budget", type=float, default=0.2, help="cores per device")
    pa.add_argument("--global-batch-size", type=int, default=128)
    pa.add_argument("--warmup-steps", type=int, default=3)
    pa.add_argument("--timed-steps", type=int, default=8)
    pa.add_argument("--seed", type=int, default=0)
    pa.add_argument("--out", required=True,
                    help="directory for pipeline_bubble.{json,csv,md,png}")
    pa.add_argument("--work-dir", default="results/ablations/pipeline",
                    help="the runs' records and logs")
    pa.set_defaults(func=cmd_pipeline_ablation)
