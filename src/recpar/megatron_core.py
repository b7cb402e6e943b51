"""megatron-core, imported without compiling the fused activations recpar never calls.

`megatron.core.jit` binds `jit_fuser = torch.compile` when it is imported, and the modules
that `import megatron.core` loads decorate their fused activations with it at import time
(`fusions.fused_bias_geglu`, `fused_bias_swiglu`, `activations`, ...). On torch 2.13 the first
`torch.compile` call imports torch._dynamo and torch._inductor: about 4 s of CPU in every rank
that uses megatron-core (py-spy on a hybrid tp2 x pp2 x dp2 run of the tiny model: 86 of its
285 CPU-s, the largest single cost of the run). recpar calls none of those functions: it uses
megatron-core's parallel state, TP linear and embedding layers and their mappings, the
vocab-parallel cross-entropy and the MoE routing helpers of `moe_utils`, none of them
decorated. megatron-core's own switch (`megatron.core.jit.disable_jit_fuser`) can only be
reached after the package's `__init__` has already decorated them, so the first import runs
with `torch.compile` standing in as the identity (for that import only), and megatron's switch
is then thrown so that modules imported later decorate with its no-op as well.

The functions so decorated run eagerly if anything ever calls them. A run with
`train.compile` compiles recpar's own step with the real `torch.compile`, restored here.
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType

_LOCK = threading.Lock()


def _identity_compile(model=None, **_options):
    """torch.compile's call forms (`compile(fn, ...)` and `compile(...)(fn)`), compiling
    nothing."""
    return model if model is not None else (lambda fn: fn)


def load() -> ModuleType:
    """`megatron.core`, imported on first use as the module docstring says; later calls (and
    a process that imported it some other way first) get the module as it is."""
    if "megatron.core" in sys.modules:
        return sys.modules["megatron.core"]
    import torch

    with _LOCK:
        if "megatron.core" not in sys.modules:
            real = torch.compile
            torch.compile = _identity_compile
            try:
                import megatron.core
                import megatron.core.jit
            finally:
                torch.compile = real
            megatron.core.jit.disable_jit_fuser()
    return sys.modules["megatron.core"]
