"""Calibrate the emulated cluster's hardware profile: recpar.perfmodel.calibrate's measurements
put together into the profile mapping `recpar perfmodel calibrate` writes.

Measured on this host: matmul FLOP/s, reduce rate and the loopback link. Taken from the cluster's
calibration: the inter-node link. At a single-rank baseline run record's model shape and batch
(its configuration only): recpar's training step timed on this host at every thread count a
rank can get (which also gives the device efficiency), the loaded steps for W concurrent ranks
(repeated, interleaved over W, so their run-to-run spread is measured) and the top-k / sign
compression rates.

No figure is taken from a run record's measured outcome (its throughput, its iteration time):
the baseline record is itself one of the validated runs, and a figure read from it would make
its own prediction circular and carry its noise into every other prediction. Every figure says
so in its `provenance` (recpar.perfmodel.hardware.PROVENANCE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from recpar.perfmodel import calibrate as cal
from recpar.perfmodel.hardware import ProfileError
from recpar.perfmodel.predict import Scenario, scenario_from_record
from recpar.perfmodel.shapes import CostInputError
from recpar.rank_threads import host_cores, threads_per_rank


class CalibrationError(ValueError):
    """The baseline record cannot be calibrated against, or a timing at its shape failed."""


@dataclass(frozen=True)
class CalibrationOptions:
    """What to measure (the options of `recpar perfmodel calibrate`)."""

    ranks_per_node: int
    """Emulated ranks per node (the profile's devices_per_node)."""
    threads_per_rank: int = 1
    """Intra-op threads of each rank: the matmul rate is measured at this count."""
    host_cores: int | None = None
    """Cores the emulated ranks share; None: os.cpu_count()."""
    shared_host: bool = True
    """Measure the shared_host section (False: ranks have their own cores)."""
    loaded_ranks: tuple[int, ...] = ()
    """Rank counts W at which W concurrent training steps are timed; empty: none."""
    loaded_repeats: int = 3
    """Times each loaded-step measurement is repeated (interleaved over W): the line goes
    through the per-batch medians, and the spread of the repeats is recorded."""
    topk_ratio: float = 0.01
    """Top-k ratio at which the compression rate is measured."""


@dataclass(frozen=True)
class Calibration:
    """The profile mapping and what to tell the user about it."""

    profile: dict[str, Any]
    """Mapping for recpar.perfmodel.calibrate.write_profile."""
    flops_per_s: float
    """Measured matmul FLOP/s at threads_per_rank."""
    loopback: dict[str, float]
    """Measured loopback link (latency_s, bandwidth_bytes_per_s)."""
    notes: list[str]
    """One line per baseline-shape measurement."""


def parse_rank_counts(text: str) -> list[int]:
    """'4,1,2' -> [1, 2, 4] (duplicates dropped); '' -> [] (no loaded steps)."""
    if not text.strip():
        return []
    try:
        ranks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"expected comma-separated rank counts, got {text!r}") from None
    if not ranks or ranks[0] < 1:
        raise ValueError(f"rank counts must be >= 1, got {text!r}")
    return ranks


def calibrate_emulated_profile(*, inter_latency_s: float, inter_bandwidth_bytes_per_s: float,
                               inter_source: str, options: CalibrationOptions,
                               baseline: Mapping[str, Any] | None = None,
                               baseline_name: str = "<baseline>") -> Calibration:
    """Measure this host and build the emulated profile; without a baseline record the
    efficiency is assumed 1.0 and there is no shared-host section or compression rate."""
    if options.loaded_repeats < 1:
        raise CalibrationError(f"loaded_repeats must be >= 1, got {options.loaded_repeats}")
    flops = cal.measure_matmul_flops(threads=options.threads_per_rank)
    reduce_rate = cal.measure_reduce_bytes_per_s()
    loopback = cal.measure_loopback_link()
    efficiency = (1.0, "assumed: 1.0 until a baseline run is measured", "assumed")
    shared, topk, sign, notes = None, None, None, []
    if baseline is not None:
        try:
            efficiency, shared, (topk, sign), notes = _baseline_measurements(
                baseline, baseline_name, flops, options)
        except (CostInputError, ProfileError, ValueError, RuntimeError) as e:
            # incl. a failed loaded-step timing
            raise CalibrationError(str(e)) from e
    profile = cal.emulated_profile_mapping(
        ranks_per_node=options.ranks_per_node, threads_per_rank=options.threads_per_rank,
        inter_latency_s=inter_latency_s, inter_bandwidth_bytes_per_s=inter_bandwidth_bytes_per_s,
        inter_source=inter_source, flops_per_s=flops, reduce_bytes_per_s=reduce_rate,
        loopback=loopback, cpu_name=cal.cpu_model(), mem_gib=cal.mem_gib(),
        efficiency=efficiency[0], efficiency_source=efficiency[1],
        efficiency_provenance=efficiency[2], shared_host=shared, topk_compress=topk,
        sign_compress=sign)
    return Calibration(profile, flops, loopback, notes)


def _baseline_measurements(base: Mapping[str, Any], name: str, peak: float,
                           options: CalibrationOptions
                           ) -> tuple[tuple[float, str, str], Any, tuple[Any, Any], list[str]]:
    """(efficiency, shared_host section, (top-k, sign) rates, notes), all timed on this host at
    the baseline's shape (`name`: the record's path as given; every record file is called
    record.json)."""
    scenario = scenario_from_record(base, name)
    if scenario.plan.world_size != 1:
        raise CalibrationError(f"{name}: the calibration needs a single-rank (baseline) run, "
                               f"got world size {scenario.plan.world_size}")
    cores = options.host_cores or host_cores()
    threads = {options.threads_per_rank}
    if options.shared_host:
        threads |= {threads_per_rank(w, cores) for w in range(1, cores + 1)}
    rates, notes = _thread_rates(base, name, sorted(threads))
    efficiency = _efficiency(rates[options.threads_per_rank], peak, options.threads_per_rank,
                             name)
    shared = None
    if options.shared_host:
        loaded = None
        if options.loaded_ranks:
            loaded, loaded_notes = _loaded_steps(base, name, scenario, cores, options)
            notes += loaded_notes
        shared = cal.shared_host_mapping(cores, {t: rates[t] for t in rates
                                                 if t <= cores}, loaded)
    (topk, sign), compress_notes = _compress_rates(scenario.shape.trainable_params, name,
                                                   options.topk_ratio)
    return efficiency, shared, (topk, sign), notes + compress_notes


def _efficiency(rate: tuple[float, str, str], peak: float, threads: int, name: str
                ) -> tuple[float, str, str]:
    """Host-timed training-step FLOP/s ÷ the matmul peak, both at `threads` threads."""
    eff = rate[0] / peak
    if not 0 < eff <= 1:
        raise CalibrationError(f"{name}: efficiency {eff:.3f} (training step {rate[0] / 1e9:.2f}"
                               f" GFLOP/s ÷ matmul {peak / 1e9:.2f} GFLOP/s) is outside (0, 1]")
    source = (f"measured: recpar training step at {name}'s model and batch on this host, "
              f"{threads} thread(s), {rate[0] / 1e9:.2f} GFLOP/s ÷ the torch.mm peak (not the "
              "record's throughput)")
    return eff, source, "host"


def _thread_rates(base: Mapping[str, Any], name: str, threads: list[int]
                  ) -> tuple[dict[int, tuple[float, str, str]], list[str]]:
    """FLOP/s of recpar's training step at the baseline's model and batch, timed on this host at
    each thread count (1 thread in CPU time, more in wall time); none is read from the record."""
    notes: list[str] = []
    rates: dict[int, tuple[float, str, str]] = {}
    for t in threads:
        r = cal.measure_model_step_flops_per_s(base, threads=t, where=name)
        clock = "CPU time" if t == 1 else "wall time"
        v = r["flops_per_s"] if t == 1 else r["flops_per_s"] * r["cpu_s_per_step"] \
            / r["wall_s_per_step"]
        rates[t] = (v, f"measured: recpar Recommender training step (fwd + bwd + clip + "
                       f"AdamW) at {name}'s model and batch {r['batch']}, random ids, "
                       f"{t} thread(s), median {clock} of {r['steps']} steps after 1 "
                       f"warm-up ({r['cpu_s_per_step'] * 1e3:.0f} ms CPU, "
                       f"{r['wall_s_per_step'] * 1e3:.0f} ms wall per step)"
                       + ("; CPU time so that other jobs on the host do not count"
                          if t == 1 else ""), "host")
        notes.append(f"model step, {t} thread(s): {v / 1e9:.2f} GFLOP/s "
                     f"({r['cpu_s_per_step'] * 1e3:.0f} ms CPU, "
                     f"{r['wall_s_per_step'] * 1e3:.0f} ms wall per step)")
    return rates, notes


def _loaded_steps(base: Mapping[str, Any], name: str, scenario: Scenario, cores: int,
                  options: CalibrationOptions) -> tuple[dict[str, Any], list[str]]:
    """shared_host.loaded_step: for each W of options.loaded_ranks, W concurrent training steps
    at batches B // 4, B // 2 and B (B = the baseline's global batch), the whole set repeated
    options.loaded_repeats times (W = 1, 2, ..., then again), so that the repeats of one W are
    minutes apart, as a calibration and the runs it is compared with are."""
    big = scenario.global_batch_size
    batches = (max(1, big // 4), max(1, big // 2), big)
    timings: dict[int, list[dict[str, Any]]] = {w: [] for w in options.loaded_ranks}
    for _ in range(options.loaded_repeats):
        for w in options.loaded_ranks:
            timings[w].append(cal.time_loaded_steps(base, w, cores, batches, where=name))
    notes: list[str] = []
    measured = []
    for w in options.loaded_ranks:
        m = cal.combine_loaded_repeats(timings[w])
        measured.append(m)
        spread = ("" if m["spread_pct"] is None else
                  f"; run-to-run spread {m['spread_pct']:.1f} % over {m['repeats']} repeats")
        notes.append(f"loaded step, {w} rank(s) × {m['threads']} thread(s): slowest "
                     + ", ".join(f"b={b} {t * 1e3:.0f} ms" for b, t in
                                 zip(m["batches"], m["slowest_s"]))
                     + f" -> {m['fixed_s'] * 1e3:.1f} ms + "
                       f"{m['per_sequence_s'] * 1e3:.2f} ms/sequence{spread}")
    return cal.loaded_step_mapping(scenario.shape.train_flops_per_sequence, measured, name), notes


def _compress_rates(n_params: int, name: str, topk_ratio: float
                    ) -> tuple[tuple[dict[str, Any], dict[str, Any]], list[str]]:
    """(top-k, sign) hook-work rates in elements/s, measured on the baseline's trainable
    parameter count."""
    notes: list[str] = []
    out = []
    for codec in ("topk", "sign"):
        r = cal.measure_compress_elements_per_s(n_params, codec, ratio=topk_ratio)
        work = ("p = g + r, topk_encode, r = p - g_hat, topk_decode_mean" if codec == "topk"
                else "p = g + r, sign_encode, r = p - g_hat, sign_decode_mean")
        ratio = f", ratio {r['ratio']}" if codec == "topk" else ""
        out.append({"value": r["elements_per_s"], "provenance": "host",
                    "source": f"measured: recpar {codec} hook work ({work} of {r['world']} "
                              f"payloads) on {n_params} random elements (= {name}'s trainable "
                              f"parameters){ratio}, 1 thread, median CPU time "
                              f"{r['cpu_s'] * 1e3:.2f} ms of 10"})
        notes.append(f"{codec} hook work: {r['cpu_s'] * 1e3:.2f} ms CPU for {n_params} elements "
                     f"({r['elements_per_s'] / 1e6:.0f} M elements/s)")
    return (out[0], out[1]), notes
