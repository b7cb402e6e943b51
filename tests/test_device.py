"""recpar.device: the GEMM peak a record's MFU is measured against, and its CLI."""

import json

import pytest

from recpar.cli import main as recpar_main
from recpar.device import gemm_flops_per_s


def test_gemm_peak_is_a_rate_and_bad_arguments_are_named():
    assert gemm_flops_per_s("fp32", n=128, repeats=2) > 1e6
    with pytest.raises(ValueError, match="dtype must be one of"):
        gemm_flops_per_s("int8")
    with pytest.raises(ValueError, match="n and repeats must be >= 1"):
        gemm_flops_per_s(n=0)


def test_perfmodel_peak_prints_the_peak_for_its_dtype_and_threads(capsys):
    assert recpar_main(["perfmodel", "peak", "--dtype", "bf16", "--threads", "1", "--n", "128",
                        "--repeats", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dtype"] == "bf16" and out["threads"] == 1 and out["gemm_peak_tflops_per_s"] > 0


def test_precision_resolves_per_device_and_forward_context_autocasts_only_for_bf16():
    import torch

    from recpar.device import autocast_dtype, forward_context, resolve_precision

    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "bf16"
    assert autocast_dtype("fp32", "cuda") is None
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        resolve_precision("fp16", "cpu")
    a = torch.randn(4, 4)
    with forward_context(None, "cpu"):
        assert (a @ a).dtype == torch.float32
    with forward_context(torch.bfloat16, "cpu"):
        assert (a @ a).dtype == torch.bfloat16
