"""Which engine trains each parallel scheme, as "module:class" strings: importable without
torch, so `recpar train` checks a scheme before it starts any rank (recpar.train.engines
imports the engine on use)."""

from __future__ import annotations

ENGINES: dict[str, str] = {
    "baseline": "recpar.train.engines.data_parallel:ReplicaEngine",
    "dp": "recpar.train.engines.data_parallel:ReplicaEngine",
    "zero": "recpar.train.engines.zero:ZeroEngine",
    "mp": "recpar.train.engines.model_parallel:ModelParallelEngine",
    "hybrid": "recpar.train.engines.model_parallel:ModelParallelEngine",
    "deepspeed": "recpar.train.engines.deepspeed_pipeline:DeepSpeedPipelineEngine",
    "async": "recpar.train.engines.async_ps:AsyncEngine",
}
"""scheme -> "module:class" of its engine (imported on use: megatron and DeepSpeed are slow
to import)."""
