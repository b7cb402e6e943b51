"""recpar.import_without_compile: megatron-core and DeepSpeed's Muon optimizer imported
without their import-time torch.compile calls."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

CHECK = textwrap.dedent("""
    import importlib.util
    import sys
    import torch
    real = torch.compile
    from recpar import import_without_compile as iwc
    core = iwc.megatron_core()
    assert torch.compile is real, "torch.compile not restored"
    assert "torch._dynamo" not in sys.modules, "importing megatron-core compiled something"
    import megatron.core.jit as jit
    from megatron.core.fusions.fused_bias_geglu import geglu
    assert jit.jit_fuser is jit.noop_decorator, jit.jit_fuser  # later imports decorate no-op
    assert type(geglu).__name__ == "function", type(geglu)  # not a compiled wrapper
    from megatron.core import parallel_state, tensor_parallel  # what recpar uses is there
    assert core.parallel_state is parallel_state and iwc.megatron_core() is core
    if importlib.util.find_spec("deepspeed") is not None:
        iwc.deepspeed_muon()
        assert torch.compile is real and iwc.DEEPSPEED_MUON in sys.modules
        assert "torch._inductor" not in sys.modules, "importing Muon compiled something"
    print("ok")
""")


def test_libraries_load_without_compiling_and_torch_compile_is_restored():
    """In a fresh interpreter, as a rank starts: megatron-core's fused activations and
    DeepSpeed's Muon kernels are left uncompiled, neither torch._dynamo (megatron) nor
    torch._inductor (DeepSpeed) is imported, torch.compile is the real one afterwards."""
    if importlib.util.find_spec("megatron") is None:  # pragma: no cover - the env pins it
        pytest.skip("megatron-core is not installed")
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", CHECK], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split()[-1:] == ["ok"], r.stderr[-3000:]
