"""`recpar perfmodel ...`: project the paper's tables, predict/validate run records, calibrate.

    recpar perfmodel project  --hardware paper-a100 [--model-size medium] --out DIR
    recpar perfmodel predict  --record run.json --hardware PROFILE [--out FILE]
    recpar perfmodel validate --records a.json b.json ... --hardware PROFILE --out DIR
    recpar perfmodel calibrate --inter-node FILE --ranks-per-node N [--baseline-record R] --out P
        (FILE: a calibration YAML/JSON, or a run record of the emulated cluster, whose
        topology.inter_node.calibrated holds the link `recpar cluster calibrate` measured)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

from recpar.atomic_write import write_text
from recpar.perfmodel.costs import CostInputError
from recpar.perfmodel.hardware import ProfileError, load_profile

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


def cmd_validate(args: argparse.Namespace) -> int:
    from recpar.perfmodel.predict import validation_rows

    hw = _profile(args.hardware)
    recs = [(p, _read_json(p)) for p in args.records]
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
        rows = validation_rows(recs, hw, _overrides(args.set))
    except _ERRORS as e:
        raise _fail(str(e)) from None
    out = Path(args.out)
    _atomic_write(out / "validation_projected_vs_measured.csv", _csv(rows))
    errs = [abs(r["iter_error_pct"]) for r in rows if r["iter_error_pct"] is not None]
    if errs:
        print(f"{len(errs)} record(s): max |iteration-time error| {max(errs):.1f} %, "
              f"{sum(r['within_target'] for r in rows if r['within_target'] is not None)} "
              f"within ±15 %")
    else:
        print("no record had a measured iter_ms: nothing to compare")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import yaml

    from recpar.perfmodel import calibrate as cal

    # checked before anything is measured
    args.loaded_ranks_list = _parse_ranks(args.loaded_ranks) if args.loaded_ranks.strip() else []
    try:
        text = Path(args.inter_node).read_text()
    except FileNotFoundError:
        raise _fail(f"{args.inter_node}: calibration file not found") from None
    try:
        lat, bw = cal.inter_node_from_calibration(yaml.safe_load(text), args.inter_node)
    except (ProfileError, yaml.YAMLError, TypeError, ValueError) as e:
        raise _fail(str(e).splitlines()[0]) from None
    flops = cal.measure_matmul_flops(threads=args.threads_per_rank)
    reduce_rate = cal.measure_reduce_bytes_per_s()
    loop = cal.measure_loopback_link()
    eff, eff_src = 1.0, "assumed: 1.0 until a baseline run is measured"
    shared, topk, sign, notes = None, None, None, []
    base = _read_json(args.baseline_record) if args.baseline_record else None
    if base is not None:
        bname = args.baseline_record
        try:
            eff = cal.efficiency_from_record(base, flops, bname)
            shared, (topk, sign), notes = _shared_host_and_compress(cal, base, bname,
                                                                    flops * eff, args)
        except (*_ERRORS, ValueError, RuntimeError) as e:  # incl. a failed loaded-step timing
            raise _fail(str(e)) from None
        eff_src = f"measured: baseline run {bname}"
    m = cal.emulated_profile_mapping(
        ranks_per_node=args.ranks_per_node, threads_per_rank=args.threads_per_rank,
        inter_latency_s=lat, inter_bandwidth_bytes_per_s=bw,
        inter_source=f"measured: cluster calibration in {args.inter_node}",
        flops_per_s=flops, reduce_bytes_per_s=reduce_rate, loopback=loop,
        cpu_name=cal.cpu_model(), mem_gib=cal.mem_gib(), efficiency=eff,
        efficiency_source=eff_src, shared_host=shared, topk_compress=topk,
        sign_compress=sign)
    cal.write_profile(m, args.out)
    print(f"wrote {args.out}: {flops / 1e9:.1f} GFLOP/s, loopback "
          f"{loop['bandwidth_bytes_per_s'] / 1e9:.2f} GB/s α={loop['latency_s'] * 1e6:.0f} µs")
    for line in notes:
        print(f"  {line}")
    return 0


def _parse_ranks(text: str) -> list[int]:
    try:
        ranks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise _fail(f"--loaded-ranks: expected comma-separated rank counts, got {text!r}") \
            from None
    if not ranks or ranks[0] < 1:
        raise _fail(f"--loaded-ranks: rank counts must be >= 1, got {text!r}")
    return ranks


def _shared_host_and_compress(cal, base: dict, bname: str, base_rate: float,
                              args: argparse.Namespace) -> tuple[Any, tuple[Any, Any], list[str]]:
    """The profile's shared_host section and top-k / sign rates, measured for the baseline's
    shape.

    Rates by thread count: the baseline record's own (train FLOPs × throughput) at the threads
    it ran with; every other thread count a rank can get (max(1, C // W), W = 1 .. C) timed
    with recpar's training step at the baseline's model and batch (measure_model_step_...).
    Loaded steps (unless --loaded-ranks is empty): for each W of --loaded-ranks, W concurrent
    training steps at batches B // 4, B // 2 and B (B = the baseline's global batch).
    """
    from recpar.perfmodel.predict import scenario_from_record
    from recpar.rank_threads import host_cores, threads_per_rank

    name = bname  # the path as given: every record file is called record.json
    notes: list[str] = []
    shared = None
    sc = scenario_from_record(base, bname)
    if not args.no_shared_host:
        cores = args.host_cores or host_cores()
        base_t = cal.record_threads(base)
        need = sorted({threads_per_rank(w, cores) for w in range(1, cores + 1)})
        rates: dict[int, tuple[float, str]] = {}
        if base_t is not None and base_t <= cores:
            rates[base_t] = (base_rate, f"measured: baseline run {name} ({base_t} thread(s), "
                                        "hardware.torch_threads): train FLOPs per sequence × "
                                        "metrics.throughput_samples_per_s")
        for t in need:
            if t in rates:
                continue
            r = cal.measure_model_step_flops_per_s(base, threads=t, where=bname)
            clock = "CPU time" if t == 1 else "wall time"
            v = r["flops_per_s"] if t == 1 else r["flops_per_s"] * r["cpu_s_per_step"] \
                / r["wall_s_per_step"]
            rates[t] = (v, f"measured: recpar Recommender training step (fwd + bwd + clip + "
                           f"AdamW) at {name}'s model and batch {r['batch']}, random ids, "
                           f"{t} thread(s), median {clock} of {r['steps']} steps after 1 "
                           f"warm-up ({r['cpu_s_per_step'] * 1e3:.0f} ms CPU, "
                           f"{r['wall_s_per_step'] * 1e3:.0f} ms wall per step); CPU time so "
                           "that other jobs on the host do not count"
                           if t == 1 else
                           f"measured: recpar Recommender training step at {name}'s model "
                           f"and batch {r['batch']}, {t} threads, median wall time")
            notes.append(f"model step, {t} thread(s): {v / 1e9:.2f} GFLOP/s "
                         f"({r['cpu_s_per_step'] * 1e3:.0f} ms CPU, "
                         f"{r['wall_s_per_step'] * 1e3:.0f} ms wall per step)")
        notes.append(f"baseline ({base_t} thread(s)): {base_rate / 1e9:.2f} GFLOP/s")
        loaded = None
        ranks = args.loaded_ranks_list
        if ranks:
            big = sc.global_batch_size
            measured = []
            for w in ranks:
                m = cal.measure_loaded_steps(base, w, cores,
                                             (max(1, big // 4), max(1, big // 2), big),
                                             where=bname)
                measured.append(m)
                notes.append(f"loaded step, {w} rank(s) × {m['threads']} thread(s): slowest "
                             + ", ".join(f"b={b} {t * 1e3:.0f} ms" for b, t in
                                         zip(m["batches"], m["slowest_s"]))
                             + f" -> {m['fixed_s'] * 1e3:.1f} ms + "
                               f"{m['per_sequence_s'] * 1e3:.2f} ms/sequence")
            loaded = cal.loaded_step_mapping(sc.shape.train_flops_per_sequence, measured, name)
        shared = cal.shared_host_mapping(cores, rates, loaded)
    n = sc.shape.trainable_params
    out = []
    for codec in ("topk", "sign"):
        r = cal.measure_compress_elements_per_s(n, codec, ratio=args.topk_ratio)
        work = ("p = g + r, topk_encode, r = p - g_hat, topk_decode_mean" if codec == "topk"
                else "p = g + r, sign_encode, r = p - g_hat, sign_decode_mean")
        ratio = f", ratio {r['ratio']}" if codec == "topk" else ""
        out.append({"value": r["elements_per_s"],
                    "source": f"measured: recpar {codec} hook work ({work} of {r['world']} "
                              f"payloads) on {n} random elements (= {name}'s trainable "
                              f"parameters){ratio}, 1 thread, median CPU time "
                              f"{r['cpu_s'] * 1e3:.2f} ms of 10"})
        notes.append(f"{codec} hook work: {r['cpu_s'] * 1e3:.2f} ms CPU for {n} elements "
                     f"({r['elements_per_s'] / 1e6:.0f} M elements/s)")
    return shared, (out[0], out[1]), notes


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

    va = sub.add_parser("validate", help="projected vs measured table for run records")
    va.add_argument("--records", nargs="+", required=True)
    va.add_argument("--hardware", required=True, help="profile name or YAML path")
    va.add_argument("--set", action="append", metavar="KEY=INT")
    va.add_argument("--schemes", default="",
                    help="comma-separated schemes to compare (e.g. baseline,dp); default: all")
    va.add_argument("--out", required=True, help="output directory")
    va.set_defaults(func=cmd_validate)

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
    ca.add_argument("--topk-ratio", type=float, default=0.01,
                    help="top-k ratio at which the compression rate is measured")
    ca.add_argument("--out", required=True, help="profile YAML to write")
    ca.set_defaults(func=cmd_calibrate)
