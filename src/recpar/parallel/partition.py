"""Cutting the recommender into pipeline stages: a profiling pass and two partition methods.

The model is a chain of *layer units*, the smallest pieces a stage boundary can fall between:

    unit 0            `embedding`  item ID embedding + projected text row + positions (+ dropout)
    units 1 .. L      `block.<i>`  one transformer block each
    unit L + 1        `head`       ln_f, logits against the (tied) fused item table, cross-entropy

`profile_units` measures, for one micro-batch, each unit's forward+backward time (median of
repeats) and memory (parameter, frozen-buffer and saved-activation bytes). `cut` turns a cost
per unit into stage boundaries:

- `uniform`: equal block counts per stage, the embedding on the first stage and the head on
  the last (what a layer-count split such as megatron-core's does when the embedding and the
  loss are not counted as layers);
- `balanced`: contiguous stages that minimise the largest stage cost, solved exactly by the
  linear-partition dynamic programme (Skiena, *The Algorithm Design Manual*, 2nd ed., 2008,
  Sec. 8.5 "The Partition Problem").

Imbalance of a cut = max stage cost / mean stage cost (1.0 = perfectly balanced).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from recpar.device import device_sync
from recpar.model.loss import mask_targets, mean_divisor
from recpar.parallel.plan import PARTITION_METHODS, PlanError
from recpar.parallel.stage_module import build_stage

EMBEDDING_UNIT = "embedding"
HEAD_UNIT = "head"


def unit_names(n_layers: int) -> list[str]:
    """Names of the layer units of a model with `n_layers` blocks, in pipeline order."""
    return [EMBEDDING_UNIT, *(f"block.{i}" for i in range(n_layers)), HEAD_UNIT]


# --- profiling --------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitCost:
    """Measured cost of one layer unit for one micro-batch."""

    name: str
    """Unit name (`embedding`, `block.<i>`, `head`)."""
    fwd_bwd_ms: float
    """Median wall time of forward + backward over the timed repeats, milliseconds."""
    fwd_bwd_ms_samples: tuple[float, ...]
    """Every timed repeat, milliseconds (the spread says how noisy the machine was)."""
    param_bytes: int
    """Bytes of the unit's trainable parameters (the head counts its copy of the tied table)."""
    buffer_bytes: int
    """Bytes of frozen buffers the unit holds (the item-text table on embedding and head)."""
    activation_bytes: int
    """Bytes autograd saves for backward during one micro-batch's forward (unique storages,
    parameters and buffers excluded): what the stage keeps per in-flight micro-batch."""


@dataclass(frozen=True)
class Profile:
    """Result of one profiling pass over all units."""

    units: tuple[UnitCost, ...]
    """One entry per unit, in pipeline order."""
    microbatch_size: int
    """Rows (sequences) in the profiled micro-batch."""
    seq_len: int
    """Positions per sequence in the profiled micro-batch."""
    repeats: int
    """Timed forward+backward repeats per unit (after `warmup` untimed ones)."""
    warmup: int
    """Untimed repeats per unit before timing."""
    device: str
    """Device the profile ran on."""

    def times_ms(self) -> list[float]:
        """Median forward+backward time per unit, ms (the cost `cut(..., 'balanced')` uses)."""
        return [u.fwd_bwd_ms for u in self.units]

    def names(self) -> list[str]:
        return [u.name for u in self.units]

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, rec: dict) -> "Profile":
        units = tuple(UnitCost(**{**u, "fwd_bwd_ms_samples": tuple(u["fwd_bwd_ms_samples"])})
                      for u in rec["units"])
        return cls(**{**rec, "units": units})


def _saved_activation_bytes(fn, exclude_ptrs: set[int]) -> int:
    """Run fn() under saved-tensor hooks; total bytes of the unique storages autograd saved."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in exclude_ptrs:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def profile_units(model, example_microbatch: tuple[torch.Tensor, torch.Tensor], *,
                  repeats: int = 5, warmup: int = 1) -> Profile:
    """Measure every layer unit of `model` (a `Recommender`) on one micro-batch.

    example_microbatch: (input_ids [mb, L] int64, targets [mb, L] int64), left-padded.
    Each unit runs on a copy of its weights (the model's own parameters and .grad are not
    touched) in the model's current train/eval mode, fed the previous unit's real output.
    The head's cost includes its loss and the per-micro-batch fused item table, exactly as the
    last pipeline stage computes them. Torch's RNG state is restored afterwards, so profiling
    on one rank does not shift that rank's dropout stream.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"profile_units: repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    ids, targets = example_microbatch
    if ids.dim() != 2 or targets.shape != ids.shape:
        raise ValueError(f"profile_units: example micro-batch must be two [mb, L] tensors, got "
                         f"{tuple(ids.shape)} and {tuple(targets.shape)}")
    device = next(model.parameters()).device
    ids, targets = ids.to(device), targets.to(device)
    masked, count = mask_targets(ids, targets)
    count = mean_divisor(count)
    names = unit_names(model.cfg.n_layers)
    costs: list[UnitCost] = []
    x: torch.Tensor = ids
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for u, name in enumerate(names):
            unit = build_stage(model, u, u + 1).train(model.training)
            exclude = {t.untyped_storage().data_ptr()
                       for t in [*unit.parameters(), *unit.buffers()]}
            is_head = name == HEAD_UNIT
            inp = x if u == 0 else x.detach().requires_grad_(True)
            grad_out: list[torch.Tensor] = []

            def fwd_bwd() -> torch.Tensor:
                out = unit(inp, input_ids=ids)
                if is_head:
                    (unit.head_loss_sum(out, masked) / count).backward()
                else:
                    if not grad_out:
                        # Fixed upstream gradient of the output's shape; its values do not
                        # change the cost of backward.
                        g = torch.Generator(device="cpu").manual_seed(0)
                        grad_out.append(torch.randn(out.shape, generator=g).to(out))
                    out.backward(grad_out[0])
                unit.zero_grad(set_to_none=True)
                if inp.grad is not None:
                    inp.grad = None
                return out.detach()

            act_bytes = _saved_activation_bytes(
                lambda: unit(inp, input_ids=ids) if not is_head else
                unit.head_loss_sum(unit(inp, input_ids=ids), masked) / count,
                exclude)
            for _ in range(warmup):
                fwd_bwd()
            samples = []
            for _ in range(repeats):
                device_sync(device)
                t0 = time.perf_counter()
                out = fwd_bwd()
                device_sync(device)
                samples.append((time.perf_counter() - t0) * 1e3)
            costs.append(UnitCost(
                name=name,
                fwd_bwd_ms=float(statistics.median(samples)),
                fwd_bwd_ms_samples=tuple(samples),
                param_bytes=sum(p.numel() * p.element_size() for p in unit.parameters()),
                buffer_bytes=sum(b.numel() * b.element_size() for b in unit.buffers()),
                activation_bytes=act_bytes,
            ))
            x = out
    return Profile(units=tuple(costs), microbatch_size=int(ids.shape[0]),
                   seq_len=int(ids.shape[1]), repeats=repeats, warmup=warmup, device=str(device))


# --- cutting ----------------------------------------------------------------------------------


def imbalance(stage_costs: Sequence[float]) -> float:
    """max / mean of the stage costs: 1.0 is perfect balance, pp means one stage does it all."""
    mean = math.fsum(stage_costs) / len(stage_costs)
    if mean <= 0:
        return 1.0
    return max(stage_costs) / mean


@dataclass(frozen=True)
class Partition:
    """Contiguous stage boundaries over the layer units."""

    method: str
    """`uniform` or `balanced`."""
    boundaries: tuple[tuple[int, int], ...]
    """Per stage, the half-open unit range [start, stop); consecutive, covering all units."""
    stage_costs: tuple[float, ...] | None
    """Per stage, the sum of its unit costs (profiled ms); None when no costs were given."""

    @property
    def num_stages(self) -> int:
        return len(self.boundaries)

    @property
    def imbalance(self) -> float | None:
        """max / mean stage cost (None without costs)."""
        return None if self.stage_costs is None else imbalance(self.stage_costs)

    def to_record(self, names: Sequence[str] | None = None) -> dict:
        rec = {"method": self.method, "boundaries": [list(b) for b in self.boundaries],
               "stage_costs_ms": None if self.stage_costs is None else list(self.stage_costs),
               "imbalance": self.imbalance}
        if names is not None:
            rec["stage_units"] = [list(names[a:b]) for a, b in self.boundaries]
        return rec


def _check_costs(costs: Sequence[float]) -> list[float]:
    out = []
    for i, c in enumerate(costs):
        c = float(c)
        if not math.isfinite(c) or c < 0:
            raise PlanError(f"partition: cost of unit {i} is {c!r}; costs must be finite and >= 0")
        out.append(c)
    return out


def uniform_boundaries(n_units: int, pp: int) -> list[tuple[int, int]]:
    """Equal block counts per stage; embedding (unit 0) on the first, head (last unit) on the
    last stage. With n_blocks % pp extra blocks, the extras go to the middle stages first
    (they carry neither the embedding nor the head), then to the first stage, then the last.
    """
    n_blocks = n_units - 2
    if n_blocks < 0:
        raise PlanError(f"partition: {n_units} unit(s); need at least embedding and head")
    if pp > n_blocks:
        raise PlanError(f"partition: uniform gives every stage at least one block, but pp = {pp} "
                        f"> {n_blocks} blocks; use partition_method='balanced' or fewer stages")
    counts = [n_blocks // pp] * pp
    order = list(range(1, pp - 1)) + [0, pp - 1]
    for s in order[: n_blocks % pp]:
        counts[s] += 1
    bounds, start = [], 0
    for s, c in enumerate(counts):
        stop = start + c + (1 if s == 0 else 0) + (1 if s == pp - 1 else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def balanced_boundaries(costs: Sequence[float], pp: int) -> list[tuple[int, int]]:
    """Exact min-max contiguous partition of `costs` into `pp` non-empty stages.

    The linear-partition dynamic programme (Skiena 2008, Sec. 8.5): best[j][i] is the
    smallest possible largest-stage cost when the first i units form j stages,
    best[j][i] = min over t of max(best[j-1][t], cost(t..i-1)). O(pp n^2) for n units.
    Written here because the library versions we have do not solve this objective:
    DeepSpeed's `partition_balanced` minimises (max - min) per DP step, which does not give the
    min-max optimum, and torchgpipe's block partition is not a maintained dependency.
    Ties go to the earliest cut. Segment sums use math.fsum, so a stage cost is the same
    number whichever way it is reached.
    """
    c = _check_costs(costs)
    n = len(c)
    if not 1 <= pp <= n:
        raise PlanError(f"partition: pp = {pp} stages but only {n} layer units")
    seg = [[0.0] * (n + 1) for _ in range(n + 1)]  # seg[t][i] = cost of units t..i-1
    for t in range(n):
        for i in range(t + 1, n + 1):
            seg[t][i] = math.fsum(c[t:i])
    inf = math.inf
    best = [[inf] * (n + 1) for _ in range(pp + 1)]
    arg = [[0] * (n + 1) for _ in range(pp + 1)]
    best[0][0] = 0.0
    for j in range(1, pp + 1):
        for i in range(j, n + 1):
            for t in range(j - 1, i):  # the last stage is units t .. i-1 (non-empty)
                v = max(best[j - 1][t], seg[t][i])
                if v < best[j][i]:
                    best[j][i], arg[j][i] = v, t
    bounds, i = [], n
    for j in range(pp, 0, -1):
        t = arg[j][i]
        bounds.append((t, i))
        i = t
    return bounds[::-1]


def cut(costs: Sequence[float] | None, pp: int, method: str, n_units: int | None = None
        ) -> Partition:
    """Stage boundaries for `pp` stages over the units whose costs are `costs`.

    costs: one non-negative number per unit (embedding, blocks..., head), e.g.
    `Profile.times_ms()`; may be None for `uniform` if `n_units` is given (then the partition
    carries no stage costs). Raises PlanError when pp exceeds the units (or, for uniform,
    the blocks) or the method is unknown.
    """
    if method not in PARTITION_METHODS:
        raise PlanError(f"partition: unknown method {method!r}; known: "
                        f"{', '.join(PARTITION_METHODS)}")
    if not isinstance(pp, int) or pp < 1:
        raise PlanError(f"partition: pp must be a positive integer, got {pp!r}")
    if costs is not None:
        c = _check_costs(costs)
        if n_units is not None and n_units != len(c):
            raise PlanError(f"partition: {len(c)} costs for {n_units} units")
        n_units = len(c)
    elif method == "balanced":
        raise PlanError("partition: 'balanced' needs a cost per unit (run profile_units)")
    elif n_units is None:
        raise PlanError("partition: give costs or n_units")
    if pp > n_units:
        raise PlanError(f"partition: pp = {pp} stages but the model has only {n_units} layer "
                        f"units (embedding, {n_units - 2} blocks, head)")
    bounds = uniform_boundaries(n_units, pp) if method == "uniform" else \
        balanced_boundaries(c, pp)
    stage_costs = None if costs is None else tuple(math.fsum(c[a:b]) for a, b in bounds)
    return Partition(method=method, boundaries=tuple(bounds), stage_costs=stage_costs)
