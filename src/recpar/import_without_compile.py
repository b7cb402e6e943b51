"""megatron-core and DeepSpeed's Muon optimizer, imported without the torch.compile calls they
make at import time.

On torch 2.13 the first `torch.compile` call of a process imports torch._dynamo and
torch._inductor: seconds of CPU in every rank, for functions recpar never calls.

- megatron-core: `megatron.core.jit` binds `jit_fuser = torch.compile` when it is imported,
  and the modules that `import megatron.core` loads decorate their fused activations with it
  (`fusions.fused_bias_geglu`, `fused_bias_swiglu`, `activations`, ...): about 4 s of CPU per
  rank (py-spy on a hybrid tp2 x pp2 x dp2 run of the tiny model: 86 of its 285 CPU-s, the
  run's largest single cost). recpar uses megatron-core's parallel state, TP linear and
  embedding layers and their mappings, the vocab-parallel cross-entropy and the MoE routing
  helpers of `moe_utils`, none of them decorated. megatron-core's own switch
  (`megatron.core.jit.disable_jit_fuser`) can only be reached after the package's `__init__`
  has decorated them, so that first import runs with `torch.compile` standing in as the
  identity, and the switch is then thrown so that modules imported later decorate with its
  no-op as well.
- DeepSpeed: `deepspeed.initialize` imports its Muon optimizer to check ZeRO support
  (`runtime.zero.utils.is_zero_supported_optimizer`), and that module compiles its kernels
  when imported: about 2.5 s of CPU per rank (py-spy on a deepspeed dp2 x pp2 run: 9.8 of its
  57.6 CPU-s). recpar trains with torch's AdamW, never Muon.

The functions so decorated run eagerly if anything ever calls them. `torch.compile` is the
real one outside these imports: a run with `train.compile` compiles recpar's own step with it.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from types import ModuleType

_LOCK = threading.Lock()

DEEPSPEED_MUON = "deepspeed.runtime.zero.muon.muon_optimizer"
"""The module deepspeed.initialize imports to check ZeRO support (DeepSpeed 0.19)."""


def _identity_compile(model=None, **_options):
    """torch.compile's call forms (`compile(fn, ...)` and `compile(...)(fn)`), compiling
    nothing."""
    return model if model is not None else (lambda fn: fn)


@contextlib.contextmanager
def _compile_is_identity():
    import torch

    real = torch.compile
    torch.compile = _identity_compile
    try:
        yield
    finally:
        torch.compile = real


def _import(name: str) -> ModuleType:
    """`name`, imported once with torch.compile as the identity; a module already imported
    (in this process, by any route) is returned as it is."""
    if name not in sys.modules:
        with _LOCK, _compile_is_identity():
            if name not in sys.modules:
                importlib.import_module(name)
    return sys.modules[name]


def megatron_core() -> ModuleType:
    """`megatron.core`, its fused activations left uncompiled (module docstring)."""
    first = "megatron.core" not in sys.modules
    core = _import("megatron.core")
    if first:
        importlib.import_module("megatron.core.jit").disable_jit_fuser()
    return core


def deepspeed_muon() -> None:
    """Import DeepSpeed's Muon optimizer module ahead of `deepspeed.initialize`, its kernels
    left uncompiled (module docstring); a DeepSpeed without it needs nothing."""
    try:
        _import(DEEPSPEED_MUON)
    except ImportError:
        pass
