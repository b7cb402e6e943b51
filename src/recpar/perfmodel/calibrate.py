"""Measured inputs of the emulated cluster's profile: CPU FLOP/s, reduce rate, link α/β.

The emulated profile is only as good as these measurements, so each is a real timing on the
machine at hand (torch kernels; torch.distributed gloo for the loopback link) and its
`source` says how it was taken. The inter-node link comes from the cluster's calibration file
(written by recpar.cluster when it shapes links); accepted keys are listed in
`inter_node_from_calibration`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from recpar.perfmodel.hardware import GLOO_LIBRARY, ProfileError, profile_from_mapping
from recpar.rank_threads import threads_per_rank


def cpu_model() -> str:
    """CPU model name (no host name); the run records' own reading."""
    from recpar.train.record import cpu_model as read_cpu_model

    return read_cpu_model() or "unknown CPU"


def mem_gib() -> float:
    """Host memory in GiB; the run records' own reading."""
    from recpar.train.record import mem_gib as read_mem_gib

    value = read_mem_gib()
    if value is None:
        raise OSError("/proc/meminfo: MemTotal not found")
    return value


def measure_matmul_flops(n: int = 1024, repeats: int = 10, threads: int | None = None) -> float:
    """Sustained fp32 FLOP/s of torch.mm on n×n matrices (2n³ FLOPs per product).

    With threads = 1 the time is CPU time (immune to other jobs on the host, see
    _median_cpu_time); otherwise wall time."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        cpu_s, wall_s = _median_cpu_time(lambda: torch.mm(a, b), repeats, warmup=2)
        t = cpu_s if threads == 1 else wall_s
    finally:
        torch.set_num_threads(old)
    return 2.0 * n**3 / t


def _median_cpu_time(fn, repeats: int, warmup: int = 1) -> tuple[float, float]:
    """(median CPU seconds, median wall seconds) of fn() in this process.

    CPU time (time.process_time, all threads of this process) is what a single-threaded
    kernel costs even when other jobs share the host: it leaves out the time the scheduler
    gives to them (their cache and memory-bandwidth contention still counts)."""
    for _ in range(warmup):
        fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return float(np.median(cpu)), float(np.median(wall))


def _training_step(record: Mapping[str, Any], batch: int, where: str = "<record>"):
    """(step, flops_per_sequence): recpar's own training step at the record's model, on
    `batch` sequences of random item ids (no padding: shapes, hence FLOPs, are the same as
    with real histories). One step = forward + backward + grad clipping + AdamW with the
    run's parameter groups (what one iteration of the baseline does). Uses torch's current
    intra-op thread count."""
    import torch

    from recpar.model.config import ModelConfig
    from recpar.model.recommender import Recommender
    from recpar.perfmodel.predict import scenario_from_record
    from recpar.train.config import TrainConfig
    from recpar.train.optim import build_adamw

    sc = scenario_from_record(record, where)
    shape = sc.shape
    mcfg = dict(_model_config(record))
    known = set(ModelConfig.__dataclass_fields__)
    cfg = ModelConfig(**{k: v for k, v in mcfg.items() if k in known})
    n_items = shape.vocab_size - 1
    # the run's own optimiser set-up (parameter groups, weight decay, betas) and clipping
    train = (record.get("config") or {}).get("train") or {}
    tcfg = TrainConfig.from_mapping({k: v for k, v in train.items()
                                     if k in TrainConfig.__dataclass_fields__})
    clip = tcfg.clip_grad
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(n_items + 1, cfg.text_dim, generator=gen) if cfg.text_dim else None
    model = Recommender(cfg, n_items, text)
    model.train()
    opt = build_adamw(model, tcfg)
    ids = torch.randint(1, n_items + 1, (batch, shape.seq_len), generator=gen)  # [b, L]
    tgt = torch.randint(1, n_items + 1, (batch, shape.seq_len), generator=gen)  # [b, L]

    def step() -> None:
        total, count = model.loss_sum(ids, tgt)
        opt.zero_grad(set_to_none=True)
        (total / count.clamp(min=1)).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()

    return step, shape.train_flops_per_sequence


def measure_model_step_flops_per_s(record: Mapping[str, Any], threads: int = 1, steps: int = 4,
                                   where: str = "<record>") -> dict[str, float]:
    """Achieved model FLOP/s of recpar's own training step with `threads` intra-op threads.

    The step is `_training_step` at the record's global batch, timed `steps` times after one
    warm-up step. The FLOPs are the cost model's count (ModelShape.train_flops_per_sequence ×
    batch), so the rate plugs into the model unchanged. Timed in CPU seconds (see
    _median_cpu_time): exact for one thread on a host other jobs use; for more threads it is
    their summed CPU time, so only threads = 1 should be measured this way.
    """
    import torch

    from recpar.perfmodel.predict import scenario_from_record

    batch = scenario_from_record(record, where).global_batch_size
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        step, fps = _training_step(record, batch, where)
        cpu_s, wall_s = _median_cpu_time(step, steps)
    finally:
        torch.set_num_threads(old)
    flops = fps * batch
    return {"flops_per_s": flops / cpu_s, "cpu_s_per_step": cpu_s, "wall_s_per_step": wall_s,
            "batch": batch, "threads": threads, "steps": steps}


LOADED_STEP_TIMEOUT_S = 600.0
"""A process of time_loaded_steps that waits this long for the others gives up (one that
crashed would otherwise leave the rest waiting at the barrier for ever)."""


def _loaded_step_worker(rank: int, record: Mapping[str, Any], threads: int,
                        batches: Sequence[int], steps: int, barrier, done, out: str,
                        where: str) -> None:
    """One of W concurrent processes of time_loaded_steps (module level: spawned)."""
    import torch

    torch.set_num_threads(threads)
    medians = []
    for i, b in enumerate(batches):
        step, _ = _training_step(record, b, where)
        step()  # warm-up: allocations, first-call overheads
        barrier.wait(timeout=LOADED_STEP_TIMEOUT_S)  # BrokenBarrierError if one never comes
        ts = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            ts.append(time.perf_counter() - t0)
        medians.append(float(np.median(ts)))
        with done[i].get_lock():
            done[i].value += 1
        # keep the host loaded until every process has timed its steps at this batch, so no
        # process's window runs with fewer competitors than a real run has
        t_done = time.monotonic()
        while done[i].value < barrier.parties:
            if time.monotonic() - t_done > LOADED_STEP_TIMEOUT_S:
                raise TimeoutError(f"time_loaded_steps: waited {LOADED_STEP_TIMEOUT_S:.0f} "
                                   f"s for the other processes at batch {b}")
            step()
    Path(out, f"rank{rank}.json").write_text(json.dumps(medians))


def time_loaded_steps(record: Mapping[str, Any], ranks: int, cores: int,
                      batches: Sequence[int], steps: int = 8,
                      where: str = "<record>") -> dict[str, Any]:
    """Step time of W = `ranks` training steps running at once on this host (no fit).

    Spawns W processes, each with max(1, cores // W) intra-op threads (what `recpar train`
    gives a rank of a W-rank run), which start together at each batch size, time `steps`
    steps of `_training_step` (wall clock: when W > cores the time-sharing is part of what
    is measured) and keep stepping until every process is done. Returns per-process medians
    and the slowest process's median per batch (a synchronous step waits for the slowest
    rank). The host should otherwise be idle.
    """
    import multiprocessing
    import tempfile

    if ranks < 1 or cores < 1:
        raise ValueError(f"ranks and cores must be >= 1, got {ranks}, {cores}")
    bs = sorted(set(int(b) for b in batches))
    if len(bs) < 2 or bs[0] < 1:
        raise ValueError(f"time_loaded_steps needs two or more batch sizes >= 1, got "
                         f"{list(batches)}")
    threads = threads_per_rank(ranks, cores)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(ranks)
    done = [ctx.Value("i", 0) for _ in bs]
    with tempfile.TemporaryDirectory() as d:
        procs = [ctx.Process(target=_loaded_step_worker,
                             args=(r, dict(record), threads, bs, steps, barrier, done, d, where))
                 for r in range(ranks)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"time_loaded_steps: {len(bad)} of {ranks} processes failed "
                               f"(exit codes {bad})")
        per_rank = [json.loads(Path(d, f"rank{r}.json").read_text()) for r in range(ranks)]
    return {"ranks": ranks, "threads": threads, "batches": bs, "steps": steps,
            "per_rank_s": per_rank,
            "slowest_s": [max(pr[i] for pr in per_rank) for i in range(len(bs))],
            "mean_s": [float(np.mean([pr[i] for pr in per_rank])) for i in range(len(bs))]}


def fit_loaded_line(batches: Sequence[int], step_s: Sequence[float]) -> tuple[float, float]:
    """(fixed_s, per_sequence_s): least-squares line step(b) = fixed + per_sequence × b through
    the step times, fixed clamped at 0; a slope <= 0 (noise larger than the batch's effect)
    raises ValueError."""
    slope, intercept = np.polyfit(np.asarray(batches, float), np.asarray(step_s, float), 1)
    if float(slope) <= 0:
        raise ValueError(f"loaded-step line: step time did not grow with the batch "
                         f"({dict(zip(batches, step_s))} s): timings are too noisy")
    return max(0.0, float(intercept)), float(slope)


def combine_loaded_repeats(timings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """k repeats of time_loaded_steps for the same W and batches -> one loaded-step line and its
    run-to-run spread.

    The line goes through the per-batch median (over repeats) of the slowest process's step;
    `spread_pct` is 100 · (max − min) / median of those k times at the batch where it is
    largest (None with one repeat): how much the calibration itself moves from run to run.
    """
    if not timings:
        raise ValueError("combine_loaded_repeats: no timings")
    first = timings[0]
    if any(t["ranks"] != first["ranks"] or list(t["batches"]) != list(first["batches"])
           for t in timings):
        raise ValueError("combine_loaded_repeats: repeats of different rank counts or batches")
    bs = list(first["batches"])
    by_batch = [[float(t["slowest_s"][i]) for t in timings] for i in range(len(bs))]
    medians = [float(np.median(v)) for v in by_batch]
    fixed, slope = fit_loaded_line(bs, medians)
    ranges = [{"batch": b, "min_s": min(v), "median_s": med, "max_s": max(v)}
              for b, v, med in zip(bs, by_batch, medians)]
    spread = (max(100.0 * (r["max_s"] - r["min_s"]) / r["median_s"] for r in ranges)
              if len(timings) > 1 else None)
    return {"ranks": first["ranks"], "threads": first["threads"], "batches": bs,
            "steps": first["steps"], "repeats": len(timings), "slowest_s": medians,
            "repeat_ranges": ranges, "spread_pct": spread, "fixed_s": fixed,
            "per_sequence_s": slope}


def loaded_step_mapping(flops_per_sequence: float, measured: Sequence[Mapping[str, Any]],
                        where: str) -> dict[str, Any]:
    """The profile's `shared_host.loaded_step` section from combine_loaded_repeats or
    combine_loaded_repeats results (the latter add `repeats` and `spread_pct`)."""
    by = {}
    for m in measured:
        k = int(m.get("repeats", 1))
        of = f"median over {k} repeats of the " if k > 1 else ""
        src = (f"measured: {m['ranks']} concurrent recpar training steps (fwd + bwd + clip + "
               f"AdamW) at {where}'s model, {m['threads']} thread(s) each, batches "
               f"{m['batches']}: {of}slowest process's median wall time of {m['steps']} steps "
               f"({', '.join(f'{t * 1e3:.1f}' for t in m['slowest_s'])} ms), least-squares "
               "line")
        entry = {"fixed_s": {"value": m["fixed_s"], "source": src, "provenance": "host"},
                 "per_sequence_s": {"value": m["per_sequence_s"], "source": src,
                                    "provenance": "host"}}
        if "repeats" in m:
            entry["repeats"] = {"value": k, "source": "config: recpar perfmodel calibrate "
                                                      "--loaded-repeats (interleaved over W)",
                                "provenance": "config"}
        if m.get("spread_pct") is not None:
            ranges = "; ".join(f"b={r['batch']}: {r['min_s'] * 1e3:.1f} / "
                               f"{r['median_s'] * 1e3:.1f} / {r['max_s'] * 1e3:.1f} ms"
                               for r in m["repeat_ranges"])
            entry["spread_pct"] = {
                "value": m["spread_pct"],
                "source": f"measured: 100 x (max - min) / median of the slowest process's step "
                          f"over {k} repeats, largest over the batches (min / median / max: "
                          f"{ranges})",
                "provenance": "host"}
        by[int(m["ranks"])] = entry
    return {"flops_per_sequence": {
                "value": flops_per_sequence,
                "source": f"cost model: ModelShape.train_flops_per_sequence of {where}",
                "provenance": "model"},
            "by_ranks": by}


def _model_config(record: Mapping[str, Any]) -> Mapping[str, Any]:
    m = (record.get("config") or {}).get("model")
    if not isinstance(m, Mapping):
        raise ProfileError("record: missing config.model")
    return m


def measure_compress_elements_per_s(n_elements: int, codec: str = "topk", ratio: float = 0.01,
                                    world: int = 2, repeats: int = 10, threads: int = 1,
                                    grad_shapes: Sequence[Sequence[int]] | None = None,
                                    powersgd_rank: int = 1) -> dict[str, float]:
    """Gradient elements/s of a compressed hook's local work, one thread, timed in CPU seconds.

    - topk / sign: exactly recpar's hook work (recpar.comm.hooks `_compressed_reduce` with error
      feedback, recpar.comm.codecs): p = g + r; encode (top-k by |p| at `ratio`, or 1-bit sign
      with L1 scale); r = p − ĝ; then decode-and-average of `world` gathered payloads.
    - fp16: torch's fp16_compress_hook's casts, down to fp16 (divided by the world) and back.
    - powersgd: the steps of torch's powerSGD_hook for a bucket of `grad_shapes` (they must add
      up to n_elements) at `powersgd_rank`: error feedback, M·Q, torch's own orthogonalisation
      of P, Mᵀ·P, and the residual M − P·Qᵀ for every matrix it compresses.
    The collectives themselves are not in it.
    """
    import torch

    from recpar.comm.codecs import (sign_decode_mean, sign_encode, topk_decode_mean,
                                    topk_encode)

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        g = torch.randn(n_elements, generator=gen)
        r = torch.randn(n_elements, generator=gen) * 0.1
        if codec in ("topk", "sign"):
            encode, decode = (((lambda p: topk_encode(p, ratio)), topk_decode_mean)
                              if codec == "topk" else (sign_encode, sign_decode_mean))

            def work() -> None:
                p = g + r
                payload, g_hat = encode(p)
                r.copy_(p - g_hat)
                gathered = payload.repeat(world).view(world, -1)
                decode(gathered, n_elements)
        elif codec == "fp16":
            def work() -> None:
                r.copy_(g.to(torch.float16).div_(world))
        elif codec == "powersgd":
            work = _powersgd_work(g, r, grad_shapes, powersgd_rank, gen)
        else:
            raise ValueError(f"codec must be 'topk', 'sign', 'fp16' or 'powersgd', got {codec!r}")
        cpu_s, wall_s = _median_cpu_time(work, repeats)
    finally:
        torch.set_num_threads(old)
    return {"elements_per_s": n_elements / cpu_s, "cpu_s": cpu_s, "wall_s": wall_s,
            "n_elements": n_elements, "codec": codec,
            "ratio": ratio if codec == "topk" else None,
            "powersgd_rank": powersgd_rank if codec == "powersgd" else None,
            "world": world, "threads": threads}


def _powersgd_work(g, err, grad_shapes, rank: int, gen):
    """One bucket of torch's powerSGD_hook's local work (its compressed phase), as a callable."""
    import torch
    from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import _orthogonalize

    from recpar.comm.byte_formulas import powersgd_matrix

    if grad_shapes is None or sum(math.prod(s) for s in grad_shapes) != g.numel():
        raise ValueError(f"powersgd: grad_shapes must add up to the {g.numel()} elements")
    views, offset = [], 0
    for shape in grad_shapes:
        rows, cols, r = powersgd_matrix(shape, rank)  # torch's _should_compress
        if r is not None:
            views.append((offset, rows, cols, torch.randn(cols, r, generator=gen)))
        offset += rows * cols

    def work() -> None:
        g.add_(err)                       # error feedback: the bucket plus last step's residual
        before = g.clone()
        for off, rows, cols, q in views:
            m = g[off:off + rows * cols].view(rows, cols)
            p = m @ q                       # P = M Q, [rows, r]
            _orthogonalize(p.unsqueeze(0))  # in place, as a batch of one
            q.copy_(m.t() @ p)              # Q = Mᵀ P, [cols, r]
            m.copy_(p @ q.t())              # the rank-r approximation replaces M
        err.copy_(before - g)               # residual: what the approximation missed

    return work


def measure_reduce_bytes_per_s(n_bytes: int = 64 * 2**20, repeats: int = 10) -> float:
    """Bytes/s of an in-place fp32 add (a += b): the γ of a local reduction."""
    import torch

    n = n_bytes // 4
    a, b = torch.randn(n), torch.randn(n)
    t = _median_cpu_time(lambda: a.add_(b), repeats, warmup=2)[1]  # wall
    return n_bytes / t


def fit_alpha_beta(sizes_bytes: Sequence[float], times_s: Sequence[float]) -> tuple[float, float]:
    """Relative-error least-squares fit of t = α + n·β (numpy.linalg.lstsq); α clamped at 0."""
    n = np.asarray(sizes_bytes, dtype=float)
    t = np.asarray(times_s, dtype=float)
    if n.shape != t.shape or n.size < 2 or np.unique(n).size < 2:
        raise ValueError("fit_alpha_beta needs >= 2 distinct sizes with one time each")
    # weight rows by 1/t so small messages (which fix α) count as much as large ones (β)
    w = 1.0 / np.maximum(t, 1e-12)
    A = np.stack([np.ones_like(n), n], axis=1) * w[:, None]
    (alpha, beta), *_ = np.linalg.lstsq(A, t * w, rcond=None)
    if beta <= 0:
        raise ValueError(f"fitted beta {beta:.3g} s/B is not positive: timings are too noisy")
    return max(0.0, float(alpha)), float(beta)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pingpong_worker(rank: int, port: int, sizes: list[int], repeats: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        res = []
        warm = torch.zeros(1024)
        for _ in range(20):  # first messages pay for connection set-up: keep them out
            if rank == 0:
                dist.send(warm, 1)
                dist.recv(warm, 1)
            else:
                dist.recv(warm, 0)
                dist.send(warm, 0)
        for n in sizes:
            buf = torch.zeros(max(1, n // 4))
            ts = []
            for i in range(repeats + 2):
                dist.barrier()
                t0 = time.perf_counter()
                if rank == 0:
                    dist.send(buf, 1)
                    dist.recv(buf, 1)
                else:
                    dist.recv(buf, 0)
                    dist.send(buf, 0)
                if i >= 2:
                    ts.append((time.perf_counter() - t0) / 2)  # one way
            res.append(float(np.median(ts)))
        if rank == 0:
            Path(out).write_text(json.dumps({"sizes": sizes, "times_s": res}))
    finally:
        dist.destroy_process_group()


def measure_loopback_link(sizes: Sequence[int] = (4096, 2**18, 2**20, 2**22, 2**24),
                          repeats: int = 10) -> dict[str, Any]:
    """Fit α, β of gloo send/recv between two local processes (loopback TCP)."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "pingpong.json")
        mp.start_processes(_pingpong_worker, args=(_free_port(), list(sizes), repeats, out),
                           nprocs=2, join=True, start_method="spawn")
        data = json.loads(Path(out).read_text())
    alpha, beta = fit_alpha_beta(data["sizes"], data["times_s"])
    return {"latency_s": alpha, "bandwidth_bytes_per_s": 1.0 / beta, **data}


def inter_node_from_calibration(cal: Mapping[str, Any], where: str) -> tuple[float, float]:
    """(latency_s, bandwidth_bytes_per_s) of the shaped inter-node link from a calibration file.

    Accepted keys, top level or under `inter_node` (or its `calibrated` mapping, as a run
    record's `topology.inter_node` and `recpar cluster calibrate` write it; a whole run record
    is read through its `topology`): bandwidth as `bandwidth_bytes_per_s`, `rate_bit_per_s` or
    `measured_rate_mbit_per_s`; one-way latency as `latency_s` or `delay_ms`.
    """
    node = cal.get("inter_node", cal) if isinstance(cal, Mapping) else None
    if isinstance(cal, Mapping) and isinstance(cal.get("topology"), Mapping):
        node = cal["topology"].get("inter_node")  # a run record: its topology carries them
    if isinstance(node, Mapping) and isinstance(node.get("calibrated"), Mapping):
        node = node["calibrated"]  # recpar.cluster Topology: {configured, calibrated}
    if not isinstance(node, Mapping):
        raise ProfileError(f"{where}: expected a mapping")
    if "bandwidth_bytes_per_s" in node:
        bw = float(node["bandwidth_bytes_per_s"])
    elif node.get("rate_bit_per_s") is not None:  # recpar cluster calibrate's key
        bw = float(node["rate_bit_per_s"]) / 8
    elif "measured_rate_mbit_per_s" in node:
        bw = float(node["measured_rate_mbit_per_s"]) * 1e6 / 8
    else:
        raise ProfileError(f"{where}: missing bandwidth_bytes_per_s (or measured_rate_mbit_per_s)")
    if node.get("latency_s") is not None:
        lat = float(node["latency_s"])
    elif "delay_ms" in node:
        lat = float(node["delay_ms"]) / 1e3
    else:
        raise ProfileError(f"{where}: missing latency_s (or delay_ms)")
    if not bw > 0 or lat < 0:
        raise ProfileError(f"{where}: bandwidth must be > 0 and latency >= 0, got {bw}, {lat}")
    return lat, bw


def emulated_profile_mapping(*, ranks_per_node: int, threads_per_rank: int,
                             inter_latency_s: float, inter_bandwidth_bytes_per_s: float,
                             inter_source: str, flops_per_s: float, reduce_bytes_per_s: float,
                             loopback: Mapping[str, float], cpu_name: str, mem_gib: float,
                             efficiency: float = 1.0,
                             efficiency_source: str = "assumed: 1.0 until a baseline run "
                                                      "is measured",
                             efficiency_provenance: str = "assumed",
                             shared_host: Mapping[str, Any] | None = None,
                             topk_compress: Mapping[str, Any] | None = None,
                             sign_compress: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The emulated profile as a mapping (validated by `profile_from_mapping` before return);
    every figure says its provenance (recpar.perfmodel.hardware.PROVENANCE)."""
    m = {
        "name": "emulated",
        "description": f"emulated nodes of {ranks_per_node} rank(s) on one CPU host "
                       f"({cpu_name})",
        "devices_per_node": {"value": ranks_per_node,
                             "source": "measured: topology of the calibration run",
                             "provenance": "config"},
        "device": {
            "name": cpu_name,
            "compute_dtype": "fp32",
            "peak_flops_per_s": {"fp32": {
                "value": flops_per_s,
                "source": f"measured: torch.mm 1024x1024 fp32, {threads_per_rank} thread(s)",
                "provenance": "host"}},
            "efficiency": {"value": efficiency, "source": efficiency_source,
                           "provenance": efficiency_provenance},
            "memory_gib": {"value": mem_gib / ranks_per_node,
                           "source": "measured: /proc/meminfo MemTotal / ranks per node",
                           "provenance": "host"},
            "reduce_bytes_per_s": {"value": reduce_bytes_per_s,
                                   "source": "measured: torch.add_ on 64 MiB fp32",
                                   "provenance": "host"},
        },
        "links": {
            "intra_node": {
                "latency_s": {"value": loopback["latency_s"],
                              "source": "measured: gloo send/recv ping-pong on loopback, "
                                        "least-squares alpha", "provenance": "host"},
                "bandwidth_bytes_per_s": {"value": loopback["bandwidth_bytes_per_s"],
                                          "source": "measured: gloo send/recv ping-pong on "
                                                    "loopback, 1/beta", "provenance": "host"},
            },
            "inter_node": {
                "latency_s": {"value": inter_latency_s, "source": inter_source,
                              "provenance": "cluster"},
                "bandwidth_bytes_per_s": {"value": inter_bandwidth_bytes_per_s,
                                          "source": inter_source, "provenance": "cluster"},
                "nics_per_node": {"value": 1,
                                  "source": "emulated topology: one shaped veth per node",
                                  "provenance": "config"},
            },
        },
        "collective_library": dict(GLOO_LIBRARY),
    }
    if topk_compress is not None:
        m["device"]["topk_compress_elements_per_s"] = dict(topk_compress)
    if sign_compress is not None:
        m["device"]["sign_compress_elements_per_s"] = dict(sign_compress)
    if shared_host is not None:
        m["shared_host"] = dict(shared_host)
    profile_from_mapping(m, "<emulated profile>")
    return m


def shared_host_mapping(cores: int, rates: Mapping[int, tuple],
                        loaded_step: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The profile's `shared_host` section: C cores, {threads: (FLOP/s, source[, provenance])}
    (provenance `host` when not given) and, if given, the loaded-step section
    (loaded_step_mapping)."""
    out = {"cores": {"value": cores,
                      "source": "measured: os.cpu_count() on the calibration host, as recpar "
                                "train reads it to set OMP_NUM_THREADS = max(1, cores // ranks)",
                      "provenance": "host"},
            "model_flops_per_s_by_threads": {
                int(t): {"value": rate[0], "source": rate[1],
                         "provenance": rate[2] if len(rate) > 2 else "host"}
                for t, rate in sorted(rates.items())}}
    if loaded_step is not None:
        out["loaded_step"] = dict(loaded_step)
    return out


def write_profile(mapping: Mapping[str, Any], path: str | Path) -> Path:
    """Write a profile YAML atomically (temp file + rename)."""
    from recpar.atomic_write import write_text

    return write_text(path, yaml.safe_dump(dict(mapping), sort_keys=False))
