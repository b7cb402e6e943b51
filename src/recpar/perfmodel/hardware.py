"""Hardware profiles as data: device peak, efficiency, link latency/bandwidth, each with a source.

A profile is a YAML file. Every number is a mapping `{value: <number>, source: <text>}` so a
projection can say where each input came from; a source starting with `assumed` marks a
number we chose, `measured` one we measured, anything else a citation. A figure may also say
what kind of evidence it is, `provenance: <one of PROVENANCE>` (the calibration writes it for
every figure): `record` marks a number taken from a run record's measured outcome, which makes
a validation against that record circular (see `figure_provenance`). Packaged profiles live
in `recpar/perfmodel/profiles/` and are named by their file stem (`paper-a100`, `emulated`);
a user passes the path of their own file instead. Layout (all keys required unless noted):

    name: str
    description: str
    devices_per_node: {value, source}        # accelerators (or ranks) per node
    max_nodes: {value, source}               # optional
    device:
      name: str
      compute_dtype: bf16 | fp16 | tf32 | fp32
      peak_flops_per_s: {<dtype>: {value, source}, ...}   # must contain compute_dtype
      efficiency: {value, source}            # achieved model FLOP/s ÷ peak, in (0, 1]
      memory_gib: {value, source}
      memory_bandwidth_bytes_per_s: {value, source}   # optional; gives γ when no reduce rate
      reduce_bytes_per_s: {value, source}    # optional; local sum rate (γ = 1 / this)
      topk_compress_elements_per_s: {value, source}   # optional; top-k EF encode+decode rate
      sign_compress_elements_per_s: {value, source}   # optional; sign EF encode+decode rate
      fp16_compress_elements_per_s: {value, source}   # optional; 16-bit cast and back rate
      powersgd_compress_elements_per_s: {value, source}  # optional; PowerSGD rank-r work rate
    shared_host:                             # optional: every rank of a run shares one host
      cores: {value, source}                 # CPU cores C all ranks run on
      model_flops_per_s_by_threads:          # achieved model FLOP/s of ONE rank with t threads
        1: {value, source}                   # and the host to itself; keys 1 and C required
        2: {value, source}
      loaded_step:                           # optional: step time with W ranks running at once
        flops_per_sequence: {value, source}  # the model shape it was measured at
        by_ranks:                            # W -> slowest rank's step = fixed + per_seq × b
          2: {fixed_s: {value, source}, per_sequence_s: {value, source},
              repeats: {value, source},      # optional: times the measurement was repeated
              spread_pct: {value, source}}   # optional: its run-to-run spread (max-min)/median
    links:
      intra_node: {latency_s: {value, source}, bandwidth_bytes_per_s: {value, source}}
      inter_node: {latency_s: ..., bandwidth_bytes_per_s: ..., nics_per_node: {value, source}}
    collective_library: {value: nccl | gloo, source}   # optional, default nccl: whose
                                             # collective algorithms price the communication
                                             # (recpar.perfmodel.collectives.LIBRARIES)

Bandwidths are per direction, per device for intra_node and per NIC for inter_node.

`shared_host` describes the emulated cluster, whose "nodes" are network namespaces of ONE
host: the W ranks of a run share its C cores. A rank gets max(1, C // W) intra-op threads
(recpar.train.cli `_launch_ranks` sets OMP_NUM_THREADS so) and, when W > C, a share C / W of
a core by time-sharing; its compute rate is model_flops_per_s_by_threads[max(1, C // W)] ×
min(1, C / W) instead of peak × efficiency (see `SharedHost.rank_flops_per_s`).

`shared_host.loaded_step`, when present, replaces that rule for the model shape it was
measured at and the rank counts it lists: calibrate runs W processes of recpar's training
step at once (each with the threads a rank of a W-rank run gets) at three batch sizes, and
fits a line to the slowest process's step times: fixed_s + per_sequence_s × b. This prices
what the thread rule leaves out: ranks slowing each other down on shared cores and memory,
the slowest rank pacing a synchronous step, and the per-step cost (optimiser, per-call
overhead) that does not shrink when ranks split a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from recpar.perfmodel.collectives import LIBRARIES, CollectiveLibrary, LinkCost
from recpar.rank_threads import threads_per_rank

DTYPES = ("bf16", "fp16", "tf32", "fp32")
COMPRESS_CODECS = ("topk", "sign", "fp16", "powersgd")
"""Codecs whose rank-local work a profile may give a measured rate for
(`device.<codec>_compress_elements_per_s`); bf16 is priced at the fp16 rate (the same casts)."""
PROFILE_PACKAGE = "recpar.perfmodel.profiles"


def compress_codec(compression: str) -> str:
    """The COMPRESS_CODECS entry whose rate prices `compression` (bf16 -> fp16)."""
    return "fp16" if compression == "bf16" else compression


class ProfileError(ValueError):
    """A hardware profile that cannot be used; the message names the file and the key."""


PROVENANCE = {
    "host": "measured on the calibration host by timing recpar's own kernels or steps (at a "
            "record's configured shape at most); no run's measured outcome enters",
    "cluster": "the emulated cluster's own link calibration",
    "record": "taken from a run record's measured outcome (e.g. its throughput): a validation "
              "against that record is circular",
    "model": "cost-model arithmetic on a configuration (e.g. FLOPs per sequence of a shape)",
    "config": "a setting of the calibration (command-line option or emulated topology)",
    "assumed": "a number we chose",
    "cited": "a published figure (datasheet, paper)",
}
"""Values of a figure's optional `provenance` field, and what each means."""

LEGACY_RECORD_SOURCE = "measured: baseline run"
"""How `recpar perfmodel calibrate` began the source of a record-derived figure before figures
had a provenance field: such figures read as provenance `record`."""


@dataclass(frozen=True)
class Figure:
    """One number of a profile and where it came from."""

    value: float
    """The number, in the unit its key names."""
    source: str
    """Citation, or `assumed: why`, or `measured: how`."""
    provenance: str | None = None
    """Kind of evidence (a key of PROVENANCE); None when the profile does not say."""


def figure_provenance(fig: Figure) -> str | None:
    """The figure's provenance; for a profile written before the field existed, `record` when
    its source is a run record's measured outcome (LEGACY_RECORD_SOURCE), else None."""
    if fig.provenance is not None:
        return fig.provenance
    if fig.source.startswith(LEGACY_RECORD_SOURCE):
        return "record"
    return None


@dataclass(frozen=True)
class LinkProfile:
    """One network level."""

    latency_s: Figure
    """Per-message latency α in seconds."""
    bandwidth_bytes_per_s: Figure
    """Achievable bandwidth per direction of one stream (bytes/s)."""
    nics_per_node: Figure | None = None
    """inter_node only: NICs per node; concurrent cross-node streams share them."""
    loaded_bandwidth_bytes_per_s: Figure | None = None
    """Bandwidth per stream while every stream of a collective step runs at once (bytes/s;
    recpar.perfmodel.loaded_links sets it from a run record); None: `bandwidth_bytes_per_s`.
    Collectives are priced with it, point-to-point sends with `bandwidth_bytes_per_s`."""

    def bandwidth(self, loaded: bool) -> float:
        fig = self.loaded_bandwidth_bytes_per_s if loaded else None
        return (fig or self.bandwidth_bytes_per_s).value


@dataclass(frozen=True)
class LoadedStep:
    """Measured step time of the slowest of W ranks running at once on the shared host."""

    fixed_s: Figure
    """Seconds per step that do not depend on the batch (intercept of the fitted line)."""
    per_sequence_s: Figure
    """Seconds per sequence of the rank's batch (slope of the fitted line)."""
    repeats: Figure | None = None
    """How often the measurement was repeated (the line goes through the per-batch medians)."""
    spread_pct: Figure | None = None
    """Run-to-run spread of the repeats: 100 · (max − min) / median of the slowest rank's step,
    the largest over the batch sizes; None with one repeat."""

    def seconds(self, sequences: float) -> float:
        return self.fixed_s.value + self.per_sequence_s.value * sequences


@dataclass(frozen=True)
class SharedHost:
    """All ranks of a run share one host's cores (the emulated cluster: nodes are namespaces)."""

    cores: Figure
    """CPU cores C of the host, shared by every rank of every emulated node."""
    model_flops_per_s_by_threads: dict[int, Figure]
    """Achieved model FLOP/s (the cost model's own FLOP count per second) of one rank that runs
    with t intra-op threads and has the host to itself, by t. Measured as rates rather than
    efficiencies because the thread counts need no common peak: a rate is what is timed."""
    loaded_step_flops_per_sequence: Figure | None = None
    """Training FLOPs per sequence (cost-model count) of the shape loaded_step_by_ranks was
    measured at; the table applies to that shape only."""
    loaded_step_by_ranks: dict[int, LoadedStep] = field(default_factory=dict)
    """W -> step time of the slowest of W concurrent ranks (see the module docstring)."""

    @property
    def cores_count(self) -> int:
        return int(self.cores.value)

    def threads_per_rank(self, ranks_on_host: int) -> int:
        """max(1, C // W): the OMP_NUM_THREADS recpar gives each of W ranks on C cores
        (recpar.rank_threads, the rule `recpar train` uses)."""
        return threads_per_rank(ranks_on_host, self.cores_count)

    def cpu_share(self, ranks_on_host: int) -> float:
        """min(1, C / W): the fraction of its threads' time a rank runs when W > C time-share."""
        return min(1.0, self.cores_count / ranks_on_host)

    def rank_flops_per_s(self, ranks_on_host: int) -> float:
        """Compute rate of one of W ranks: rate[max(1, C // W)] × min(1, C / W).

        Raises ProfileError naming the missing `shared_host.model_flops_per_s_by_threads.<t>`.
        """
        if isinstance(ranks_on_host, bool) or not isinstance(ranks_on_host, int) \
                or ranks_on_host < 1:
            raise ValueError(f"ranks_on_host must be a positive integer, got {ranks_on_host!r}")
        t = self.threads_per_rank(ranks_on_host)
        if t not in self.model_flops_per_s_by_threads:
            raise ProfileError(f"shared_host.model_flops_per_s_by_threads.{t}: missing (a run "
                               f"of {ranks_on_host} rank(s) on {self.cores_count} cores gives "
                               f"each rank {t} thread(s)); measured: "
                               f"{sorted(self.model_flops_per_s_by_threads)}")
        return self.model_flops_per_s_by_threads[t].value * self.cpu_share(ranks_on_host)

    def loaded_step(self, ranks_on_host: int, flops_per_sequence: float | None
                    ) -> LoadedStep | None:
        """The measured loaded-step line for W ranks, if there is one for this model shape."""
        step = self.loaded_step_by_ranks.get(ranks_on_host)
        if step is None or flops_per_sequence is None \
                or self.loaded_step_flops_per_sequence is None:
            return None
        if not math.isclose(flops_per_sequence, self.loaded_step_flops_per_sequence.value,
                            rel_tol=1e-6):
            return None
        return step


@dataclass(frozen=True)
class HardwareProfile:
    """A cluster the performance model can price plans on."""

    name: str
    """Short identifier (`paper-a100`, `emulated`, ...)."""
    description: str
    """One line saying what the profile describes."""
    devices_per_node: Figure
    """Accelerators (ranks) per node."""
    device_name: str
    """Device model, e.g. NVIDIA A100-SXM4-40GB."""
    compute_dtype: str
    """Dtype whose peak prices the model's matmuls."""
    peak_flops_per_s: dict[str, Figure]
    """Dense peak FLOP/s per dtype."""
    efficiency: Figure
    """Achieved model FLOP/s divided by peak (measured where the device is at hand)."""
    memory_gib: Figure
    """Device memory in GiB."""
    intra_node: LinkProfile
    """Link between devices of one node."""
    inter_node: LinkProfile
    """Link between nodes (per NIC)."""
    reduce_bytes_per_s: Figure | None = None
    """Local reduction rate (γ = 1 / this); None: derived from memory bandwidth or 0."""
    memory_bandwidth_bytes_per_s: Figure | None = None
    """Device memory bandwidth (bytes/s); used for γ when reduce_bytes_per_s is absent."""
    max_nodes: Figure | None = None
    """Largest node count the profile describes (None: unbounded)."""
    topk_compress_elements_per_s: Figure | None = None
    """Gradient elements per second one rank's top-k error-feedback encode + decode processes
    (selection, residual update, scatter-add decode); None: priced as 2 memory passes at γ."""
    sign_compress_elements_per_s: Figure | None = None
    """The same for 1-bit sign with error feedback (L1 scale, bit packing, unpack and mean);
    None: priced as 1 memory pass at γ."""
    fp16_compress_elements_per_s: Figure | None = None
    """The same for the 16-bit cast hooks (fp16 and bf16: cast down, all-reduce, cast back);
    None: priced as 2 memory passes at γ."""
    powersgd_compress_elements_per_s: Figure | None = None
    """The same for PowerSGD at the run's rank (error feedback, M·Q, orthogonalisation, Mᵀ·P,
    P·Qᵀ and the residual, per gradient matrix); None: priced as 4 memory passes at γ."""
    collective_library: str = "nccl"
    """Whose collective algorithms the communication is priced with: `nccl` (textbook rings,
    the GPU cluster) or `gloo` (torch's CPU backend over TCP); see collectives.LIBRARIES."""
    collective_library_source: str = "assumed: default (the profile does not say)"
    """Why the profile names that library."""
    shared_host: SharedHost | None = None
    """Set when all ranks of a run share one host's cores (emulated cluster); None: every rank
    has its own device at sustained_flops_per_s (the A100 profile)."""
    links_under_load: str | None = None
    """`run_record`: the profile describes the cluster that ran, and a run's links are priced
    at the rates its own record's calibration measured under a collective step's load
    (`topology.*.calibrated.concurrent_rate_bit_per_s`, for the run's node count) where the
    record has them (recpar.perfmodel.loaded_links); None: at the links above."""
    links_under_load_source: str = ""
    """Why (the profile's `links_under_load.source`)."""
    path: str = ""
    """File the profile was read from."""
    figures: dict[str, Figure] = field(default_factory=dict, compare=False)
    """Every figure by dotted key (for the sources table)."""

    @property
    def gpus_per_node(self) -> int:
        return int(self.devices_per_node.value)

    @property
    def sustained_flops_per_s(self) -> float:
        """peak[compute_dtype] × efficiency: the FLOP rate compute time is priced at."""
        return self.peak_flops_per_s[self.compute_dtype].value * self.efficiency.value

    @property
    def gamma_s_per_byte(self) -> float:
        if self.reduce_bytes_per_s is not None:
            return 1.0 / self.reduce_bytes_per_s.value
        if self.memory_bandwidth_bytes_per_s is not None:
            # a + b -> c touches 3 bytes of memory per byte reduced (two reads, one write)
            return 3.0 / self.memory_bandwidth_bytes_per_s.value
        return 0.0

    def compress_elements_per_s(self, compression: str) -> float | None:
        """The measured rank-local rate of a compressor's work, or None (not in the profile)."""
        fig = getattr(self, f"{compress_codec(compression)}_compress_elements_per_s", None)
        return None if fig is None else fig.value

    @property
    def collectives(self) -> CollectiveLibrary:
        """The cost formulas of the profile's collective library."""
        return LIBRARIES[self.collective_library]

    def intra_link(self, loaded: bool = False) -> LinkCost:
        """Device-to-device link in a node; `loaded`: for a collective (LinkProfile.bandwidth)."""
        return LinkCost(self.intra_node.latency_s.value,
                        1.0 / self.intra_node.bandwidth(loaded), self.gamma_s_per_byte)

    def inter_link(self, streams_per_node: int = 1, loaded: bool = False) -> LinkCost:
        """Cross-node link for one stream when `streams_per_node` streams leave each node;
        `loaded`: for a collective (LinkProfile.bandwidth)."""
        nics = int(self.inter_node.nics_per_node.value) if self.inter_node.nics_per_node else 1
        share = max(1, math.ceil(streams_per_node / nics))
        return LinkCost(self.inter_node.latency_s.value,
                        share / self.inter_node.bandwidth(loaded), self.gamma_s_per_byte)

    def rank_flops_per_s(self, ranks_on_host: int, sequences: float | None = None,
                         flops_per_sequence: float | None = None) -> float:
        """FLOP/s one rank computes at when `ranks_on_host` ranks run, each on `sequences`
        sequences of a model of `flops_per_sequence` training FLOPs per sequence.

        On a shared host: the measured loaded step (flops_per_sequence × b / step seconds) when
        the profile has one for this W and shape, else SharedHost.rank_flops_per_s. Otherwise
        sustained_flops_per_s (the batch does not enter).
        """
        if self.shared_host is None:
            return self.sustained_flops_per_s
        step = self.shared_host.loaded_step(ranks_on_host, flops_per_sequence)
        if step is not None and sequences:
            return flops_per_sequence * sequences / step.seconds(sequences)
        return self.shared_host.rank_flops_per_s(ranks_on_host)

    def compute_basis(self, ranks_on_host: int, flops_per_sequence: float | None = None) -> str:
        """Which rule rank_flops_per_s uses: 'device', 'loaded_step' or 'thread_rate'."""
        if self.shared_host is None:
            return "device"
        if self.shared_host.loaded_step(ranks_on_host, flops_per_sequence) is not None:
            return "loaded_step"
        return "thread_rate"

    def host_slowdown(self, ranks_on_host: int) -> float:
        """1 / cpu_share on a shared host (rank-local CPU work such as top-k encoding stretches
        by this when W > C ranks time-share the cores); 1 otherwise."""
        if self.shared_host is None:
            return 1.0
        return 1.0 / self.shared_host.cpu_share(ranks_on_host)

    def sources(self) -> list[dict[str, Any]]:
        """Rows (key, value, source) for every figure: goes next to every projection."""
        return [{"profile": self.name, "key": k, "value": f.value,
                 "provenance": figure_provenance(f), "source": f.source}
                for k, f in sorted(self.figures.items())]


# --- loading and validation ------------------------------------------------------------------

class _Reader:
    """Walks a parsed YAML mapping, raising one-line errors that name file and dotted key."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.figures: dict[str, Figure] = {}

    def fail(self, key: str, what: str) -> ProfileError:
        return ProfileError(f"{self.where}: {key}: {what}")

    def mapping(self, node: Any, key: str) -> dict:
        if not isinstance(node, dict):
            raise self.fail(key, f"expected a mapping, got {type(node).__name__}")
        return node

    def text(self, node: dict, key: str, prefix: str) -> str:
        full = f"{prefix}{key}"
        if key not in node:
            raise self.fail(full, "missing")
        v = node[key]
        if not isinstance(v, str) or not v.strip():
            raise self.fail(full, f"expected a non-empty string, got {v!r}")
        return v

    def figure(self, node: dict, key: str, prefix: str, *, required: bool = True,
               lo: float = 0.0, lo_open: bool = True, hi: float | None = None,
               integer: bool = False) -> Figure | None:
        full = f"{prefix}{key}"
        if key not in node or node[key] is None:
            if required:
                raise self.fail(full, "missing")
            return None
        m = self.mapping(node[key], full)
        unknown = sorted(set(m) - {"value", "source", "note", "provenance"})
        if unknown:
            raise self.fail(full, f"unknown field(s) {', '.join(unknown)}; "
                                  "expected value, source (and optional note, provenance)")
        prov = m.get("provenance")
        if prov is not None and prov not in PROVENANCE:
            raise self.fail(f"{full}.provenance", f"must be one of {', '.join(PROVENANCE)}, "
                                                  f"got {prov!r}")
        if "source" not in m or not isinstance(m["source"], str) or not m["source"].strip():
            raise self.fail(f"{full}.source", "missing: every figure needs a source "
                                              "(citation, 'assumed: ...' or 'measured: ...')")
        v = m.get("value")
        if isinstance(v, str):  # YAML 1.1 reads 312e12 (no dot) as a string
            try:
                v = float(v)
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.fail(f"{full}.value", f"expected a finite number, got {m.get('value')!r}")
        if (v <= lo) if lo_open else (v < lo):
            raise self.fail(f"{full}.value", f"must be {'>' if lo_open else '>='} {lo}, got {v}")
        if hi is not None and v > hi:
            raise self.fail(f"{full}.value", f"must be <= {hi}, got {v}")
        if integer and int(v) != v:
            raise self.fail(f"{full}.value", f"must be an integer, got {v}")
        fig = Figure(float(v), m["source"].strip(), prov)
        self.figures[full] = fig
        return fig


def _link(r: _Reader, node: dict, key: str, inter: bool) -> LinkProfile:
    m = r.mapping(node.get(key), f"links.{key}") if key in node else None
    if m is None:
        raise r.fail(f"links.{key}", "missing")
    p = f"links.{key}."
    allowed = {"latency_s", "bandwidth_bytes_per_s"} | ({"nics_per_node"} if inter else set())
    unknown = sorted(set(m) - allowed)
    if unknown:
        raise r.fail(f"links.{key}", f"unknown key(s) {', '.join(unknown)}; "
                                     f"known: {', '.join(sorted(allowed))}")
    return LinkProfile(
        latency_s=r.figure(m, "latency_s", p, lo_open=False),
        bandwidth_bytes_per_s=r.figure(m, "bandwidth_bytes_per_s", p),
        nics_per_node=r.figure(m, "nics_per_node", p, required=False, integer=True)
        if inter else None,
    )


def _shared_host(r: _Reader, node: Any) -> SharedHost:
    m = r.mapping(node, "shared_host")
    known = {"cores", "model_flops_per_s_by_threads", "loaded_step"}
    unknown = sorted(set(m) - known)
    if unknown:
        raise r.fail(f"shared_host.{unknown[0]}", f"unknown key; known: {', '.join(sorted(known))}")
    cores = r.figure(m, "cores", "shared_host.", integer=True)
    key = "shared_host.model_flops_per_s_by_threads"
    if m.get("model_flops_per_s_by_threads") is None:
        raise r.fail(key, "missing")
    by_t = r.mapping(m["model_flops_per_s_by_threads"], key)
    rates: dict[int, Figure] = {}
    for k in by_t:
        t = k
        if isinstance(k, str) and k.strip().isdigit():  # JSON / quoted YAML keys
            t = int(k)
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise r.fail(f"{key}.{k}", "thread count must be a positive integer")
        if t > cores.value:
            raise r.fail(f"{key}.{k}", f"thread count exceeds shared_host.cores "
                                       f"{int(cores.value)}")
        if t in rates:
            raise r.fail(f"{key}.{k}", "thread count given twice")
        rates[t] = r.figure(by_t, k, f"{key}.")
        if str(k) != str(t):  # keep the figures table keyed by the plain number
            r.figures[f"{key}.{t}"] = r.figures.pop(f"{key}.{k}")
    # every rank of a run gets max(1, C // W) threads: 1 (W >= C) and C (W = 1) always occur
    for t in sorted({1, int(cores.value)}):
        if t not in rates:
            raise r.fail(f"{key}.{t}", f"missing (a run of "
                                       f"{'one rank' if t > 1 else 'cores or more ranks'} "
                                       f"gives each rank {t} thread(s))")
    fps, steps = _loaded_step(r, m.get("loaded_step"))
    return SharedHost(cores=cores, model_flops_per_s_by_threads=rates,
                      loaded_step_flops_per_sequence=fps, loaded_step_by_ranks=steps)


def _loaded_step(r: _Reader, node: Any) -> tuple[Figure | None, dict[int, LoadedStep]]:
    if node is None:
        return None, {}
    key = "shared_host.loaded_step"
    m = r.mapping(node, key)
    unknown = sorted(set(m) - {"flops_per_sequence", "by_ranks"})
    if unknown:
        raise r.fail(f"{key}.{unknown[0]}", "unknown key; known: by_ranks, flops_per_sequence")
    fps = r.figure(m, "flops_per_sequence", f"{key}.")
    if m.get("by_ranks") is None:
        raise r.fail(f"{key}.by_ranks", "missing")
    by = r.mapping(m["by_ranks"], f"{key}.by_ranks")
    steps: dict[int, LoadedStep] = {}
    for k, v in by.items():
        w = int(k) if isinstance(k, str) and k.strip().isdigit() else k
        p = f"{key}.by_ranks.{w}"
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise r.fail(f"{key}.by_ranks.{k}", "rank count must be a positive integer")
        if w in steps:
            raise r.fail(p, "rank count given twice")
        e = r.mapping(v, p)
        known = ("fixed_s", "per_sequence_s", "repeats", "spread_pct")
        unknown = sorted(set(e) - set(known))
        if unknown:
            raise r.fail(f"{p}.{unknown[0]}", f"unknown key; known: {', '.join(known)}")
        steps[w] = LoadedStep(fixed_s=r.figure(e, "fixed_s", f"{p}.", lo_open=False),
                              per_sequence_s=r.figure(e, "per_sequence_s", f"{p}."),
                              repeats=r.figure(e, "repeats", f"{p}.", required=False,
                                               lo=1.0, lo_open=False, integer=True),
                              spread_pct=r.figure(e, "spread_pct", f"{p}.", required=False,
                                                  lo_open=False))
    if not steps:
        raise r.fail(f"{key}.by_ranks", "empty: give at least one rank count")
    return fps, steps


def profile_from_mapping(data: Any, where: str = "<profile>") -> HardwareProfile:
    """Validate a parsed profile; raise ProfileError naming `where` and the offending key."""
    r = _Reader(where)
    top = r.mapping(data, "(top level)")
    known = {"name", "description", "devices_per_node", "max_nodes", "device", "links",
             "shared_host", "collective_library", "links_under_load"}
    unknown = sorted(set(top) - known)
    if unknown:
        raise r.fail(unknown[0], f"unknown key; known: {', '.join(sorted(known))}")
    name = r.text(top, "name", "")
    description = r.text(top, "description", "")
    devices_per_node = r.figure(top, "devices_per_node", "", integer=True)
    max_nodes = r.figure(top, "max_nodes", "", required=False, integer=True)
    if "device" not in top:
        raise r.fail("device", "missing")
    dev = r.mapping(top["device"], "device")
    dev_known = {"name", "compute_dtype", "peak_flops_per_s", "efficiency", "memory_gib",
                 "memory_bandwidth_bytes_per_s", "reduce_bytes_per_s",
                 *(f"{c}_compress_elements_per_s" for c in COMPRESS_CODECS)}
    unknown = sorted(set(dev) - dev_known)
    if unknown:
        raise r.fail(f"device.{unknown[0]}", f"unknown key; known: {', '.join(sorted(dev_known))}")
    device_name = r.text(dev, "name", "device.")
    dtype = r.text(dev, "compute_dtype", "device.")
    if dtype not in DTYPES:
        raise r.fail("device.compute_dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if "peak_flops_per_s" not in dev:
        raise r.fail("device.peak_flops_per_s", "missing")
    peaks_node = r.mapping(dev["peak_flops_per_s"], "device.peak_flops_per_s")
    peaks: dict[str, Figure] = {}
    for k in peaks_node:
        if k not in DTYPES:
            raise r.fail(f"device.peak_flops_per_s.{k}", f"unknown dtype; known: {', '.join(DTYPES)}")
        peaks[k] = r.figure(peaks_node, k, "device.peak_flops_per_s.")
    if dtype not in peaks:
        raise r.fail(f"device.peak_flops_per_s.{dtype}", "missing (it is the compute_dtype)")
    efficiency = r.figure(dev, "efficiency", "device.", hi=1.0)
    memory_gib = r.figure(dev, "memory_gib", "device.")
    mem_bw = r.figure(dev, "memory_bandwidth_bytes_per_s", "device.", required=False)
    reduce_bw = r.figure(dev, "reduce_bytes_per_s", "device.", required=False)
    rates = {f"{c}_compress_elements_per_s": r.figure(dev, f"{c}_compress_elements_per_s",
                                                       "device.", required=False)
             for c in COMPRESS_CODECS}
    if "links" not in top:
        raise r.fail("links", "missing")
    links = r.mapping(top["links"], "links")
    unknown = sorted(set(links) - {"intra_node", "inter_node"})
    if unknown:
        raise r.fail(f"links.{unknown[0]}", "unknown key; known: inter_node, intra_node")
    intra = _link(r, links, "intra_node", inter=False)
    inter = _link(r, links, "inter_node", inter=True)
    shared = _shared_host(r, top["shared_host"]) if top.get("shared_host") is not None else None
    library, library_source = _collective_library(r, top.get("collective_library"))
    under_load, under_load_source = _links_under_load(r, top.get("links_under_load"))
    return HardwareProfile(
        name=name, description=description, devices_per_node=devices_per_node,
        device_name=device_name, compute_dtype=dtype, peak_flops_per_s=peaks,
        efficiency=efficiency, memory_gib=memory_gib, intra_node=intra, inter_node=inter,
        reduce_bytes_per_s=reduce_bw, memory_bandwidth_bytes_per_s=mem_bw, max_nodes=max_nodes,
        **rates,
        collective_library=library, collective_library_source=library_source,
        shared_host=shared, links_under_load=under_load,
        links_under_load_source=under_load_source, path=where, figures=dict(r.figures))


LINKS_UNDER_LOAD = ("run_record",)


def _sourced_choice(r: _Reader, node: Any, key: str, allowed: Any, why: str) -> tuple[str, str]:
    """A profile entry {value: one of `allowed`, source: why (, note)}: (value, source)."""
    m = r.mapping(node, key)
    unknown = sorted(set(m) - {"value", "source", "note"})
    if unknown:
        raise r.fail(key, f"unknown field(s) {', '.join(unknown)}; expected value, source (and "
                          f"optional note)")
    if m.get("value") not in allowed:
        raise r.fail(f"{key}.value", f"must be one of {', '.join(allowed)}, "
                                     f"got {m.get('value')!r}")
    source = m.get("source")
    if not isinstance(source, str) or not source.strip():
        raise r.fail(f"{key}.source", f"missing: say why {why}")
    return m["value"], source.strip()


def _links_under_load(r: _Reader, node: Any) -> tuple[str | None, str]:
    if node is None:
        return None, ""
    return _sourced_choice(r, node, "links_under_load", LINKS_UNDER_LOAD,
                           "the runs' own calibrations describe their links")


GLOO_LIBRARY = {"value": "gloo",
                "source": "recpar's CPU runs communicate through torch.distributed's gloo "
                          "backend over TCP"}
"""`collective_library` of the profiles recpar measures (emulated cluster, scale model)."""


def _collective_library(r: _Reader, node: Any) -> tuple[str, str]:
    if node is None:
        return "nccl", HardwareProfile.collective_library_source
    return _sourced_choice(r, node, "collective_library", LIBRARIES,
                           "this library prices the communication")


def packaged_profiles() -> list[str]:
    """Names of the profiles shipped with recpar."""
    return sorted(p.name[:-5] for p in resources.files(PROFILE_PACKAGE).iterdir()
                  if p.name.endswith(".yaml") and not p.name.endswith(".template.yaml"))


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load a packaged profile by name, or a user's YAML file by path."""
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or "/" in s or Path(s).exists():
        path = Path(s)
        if not path.is_file():
            raise ProfileError(f"{path}: hardware profile file not found")
        text, where = path.read_text(), str(path)
    else:
        if s not in packaged_profiles():
            raise ProfileError(f"unknown hardware profile {s!r}; packaged: "
                               f"{', '.join(packaged_profiles())} (or pass a YAML path)")
        res = resources.files(PROFILE_PACKAGE) / f"{s}.yaml"
        text, where = res.read_text(), f"{s}.yaml"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ProfileError(f"{where}: not valid YAML{at}") from None
    return profile_from_mapping(data, where)
