"""recpar.megatron_core: megatron-core imported without its import-time torch.compile calls."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHECK = textwrap.dedent("""
    import sys
    import torch
    real = torch.compile
    from recpar import megatron_core
    core = megatron_core.load()
    assert torch.compile is real, "torch.compile not restored"
    assert "torch._dynamo" not in sys.modules, "importing megatron-core compiled something"
    import megatron.core.jit as jit
    from megatron.core.fusions.fused_bias_geglu import geglu
    assert jit.jit_fuser is jit.noop_decorator, jit.jit_fuser  # later imports decorate no-op
    assert type(geglu).__name__ == "function", type(geglu)  # not a compiled wrapper
    from megatron.core import parallel_state, tensor_parallel  # what recpar uses is there
    assert core.parallel_state is parallel_state and megatron_core.load() is core
    print("ok")
""")


def test_megatron_core_loads_without_compiling_and_restores_torch_compile():
    """In a fresh interpreter, as a rank starts: megatron-core's fused activations are left
    uncompiled, torch._dynamo is never imported, torch.compile is the real one afterwards."""
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", CHECK], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
