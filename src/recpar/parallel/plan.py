"""`ParallelPlan`: the one validated description of how a run is parallelised.

Degrees follow torchtitan's `ParallelDims`: dp × tp × pp must equal the world size, or the
plan raises with the numbers in the message. Validation happens before any rank starts
(`recpar train` validates in the launcher process), so a wrong plan never costs a rendezvous.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SCHEMES = ("baseline", "dp", "zero", "mp", "hybrid", "deepspeed", "async")
PIPELINE_SCHEDULES = ("1f1b", "gpipe", "interleaved-1f1b")
PARTITION_METHODS = ("uniform", "balanced")


class PlanError(ValueError):
    """A plan that cannot run: raised before any rank starts."""


@dataclass(frozen=True)
class ParallelPlan:
    """Degrees of parallelism for one run (world_size = dp × tp × pp)."""

    scheme: str = "baseline"
    """One of SCHEMES; `baseline` is single-device training."""
    dp: int = 1
    """Data-parallel degree (outermost: replicas that each see a shard of the batch). Scheme
    `async`: all ranks, i.e. 1 parameter server (rank 0) + dp − 1 workers (see batch_shards)."""
    tp: int = 1
    """Tensor-parallel degree (innermost: ranks that split each layer's weights)."""
    pp: int = 1
    """Pipeline-parallel degree (number of stages the layer stack is cut into)."""
    num_microbatches: int = 1
    """Micro-batches per global step for the pipeline (bubble fraction (pp−1)/m for GPipe/1F1B)."""
    pipeline_schedule: str = "1f1b"
    """One of PIPELINE_SCHEDULES."""
    partition_method: str = "uniform"
    """How stages are cut: `uniform` (equal layer counts) or `balanced` (profiled cost)."""
    ep: int = 1
    """Expert-parallel degree of an MoE model (recpar.parallel.expert_parallel): carved from
    the dp ranks as in megatron-core, so it divides dp and adds no rank; each group of ep
    consecutive dp ranks shares out the experts, num_moe_experts / ep each. 1 = every rank
    holds every expert. Scheme dp only."""

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def batch_shards(self) -> int:
        """Ranks that split each global batch: dp, except scheme `async`, where rank 0 is the
        parameter server and the dp − 1 workers take rows idx[w−1::dp−1] (w = 1..dp−1)."""
        return self.dp - 1 if self.scheme == "async" and self.dp > 1 else self.dp

    def validate(
        self,
        world_size: int | None = None,
        n_heads: int | None = None,
        n_layers: int | None = None,
        num_experts: int | None = None,
    ) -> "ParallelPlan":
        """Check the plan against the job and model; raise PlanError naming the numbers."""
        if self.scheme not in SCHEMES:
            raise PlanError(f"unknown scheme {self.scheme!r}; known: {', '.join(SCHEMES)}")
        for name in ("dp", "tp", "pp", "num_microbatches", "ep"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise PlanError(f"{name} must be a positive integer, got {v!r}")
        if self.pipeline_schedule not in PIPELINE_SCHEDULES:
            raise PlanError(
                f"unknown pipeline_schedule {self.pipeline_schedule!r}; "
                f"known: {', '.join(PIPELINE_SCHEDULES)}"
            )
        if self.partition_method not in PARTITION_METHODS:
            raise PlanError(
                f"unknown partition_method {self.partition_method!r}; "
                f"known: {', '.join(PARTITION_METHODS)}"
            )
        if self.scheme == "baseline" and self.world_size != 1:
            raise PlanError(
                f"scheme baseline is single-device but dp×tp×pp = {self.dp}×{self.tp}×{self.pp} "
                f"= {self.world_size}"
            )
        if self.scheme == "async" and (self.dp < 2 or (self.tp, self.pp) != (1, 1)):
            raise PlanError(
                f"scheme async needs dp >= 2 ranks (rank 0 = parameter server, ranks "
                f"1..dp-1 = workers) and tp = pp = 1; got dp={self.dp} tp={self.tp} pp={self.pp}"
            )
        if world_size is not None and self.world_size != world_size:
            raise PlanError(
                f"dp×tp×pp = {self.dp}×{self.tp}×{self.pp} = {self.world_size} "
                f"does not equal the world size {world_size}"
            )
        if self.ep > 1:
            if self.scheme not in ("dp", "hybrid") or self.pp > 1:
                raise PlanError(f"ep = {self.ep}: expert parallelism runs under scheme dp, or "
                                f"hybrid with pp = 1 (dp x tp), not {self.scheme} with "
                                f"pp = {self.pp}")
            if self.dp % self.ep:
                raise PlanError(f"ep = {self.ep} does not divide dp = {self.dp} (expert-parallel "
                                "groups are carved from the data-parallel ranks)")
            if num_experts is not None and (num_experts < 2 or num_experts % self.ep):
                raise PlanError(f"ep = {self.ep} needs an MoE model whose num_moe_experts it "
                                f"divides; num_moe_experts = {num_experts}")
        if n_heads is not None and n_heads % self.tp:
            raise PlanError(f"n_heads = {n_heads} is not divisible by tp = {self.tp}")
        # Stages are cut over layer units (embedding, n_layers blocks, head): at most n + 2.
        if n_layers is not None and self.pp > n_layers + 2:
            raise PlanError(f"pp = {self.pp} pipeline stages but the model has only "
                            f"n_layers + 2 = {n_layers + 2} layer units (embedding, "
                            f"{n_layers} blocks, head)")
        if self.pp > 1 and self.num_microbatches < self.pp:
            raise PlanError(
                f"num_microbatches = {self.num_microbatches} < pp = {self.pp}: "
                "every stage would idle for most of the step"
            )
        return self

    def to_record(self) -> dict:
        """The fields and world_size; `ep` only when > 1, so that a plan without experts keeps
        its pre-MoE record and checkpoint fingerprint."""
        out = {**asdict(self), "world_size": self.world_size}
        if self.ep == 1:
            del out["ep"]
        return out
