"""recpar.perfmodel.step_check (the GPU check's measuring code, run here on CPU): datasheet
peaks by device name, and a tiny step measured in fp32, bf16 and through torch.compile."""

import json
import math

import pytest

from recpar.cli import main as recpar_main
from recpar.perfmodel.step_check import check_step, datasheet_peak

N_ITEMS = 97


@pytest.mark.parametrize("name, precision, tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989), ("NVIDIA H100 PCIe", "bf16", 756),
    ("NVIDIA H100 NVL", "fp32", 60), ("NVIDIA H200", "bf16", 989),
    ("NVIDIA A100-SXM4-40GB", "bf16", 312)])
def test_datasheet_peak_by_device_name(name, precision, tflops):
    peak, source = datasheet_peak(name, precision)
    assert peak == tflops * 1e12 and "datasheet" in source


def test_unlisted_devices_have_no_datasheet_peak():
    assert datasheet_peak("cpu", "fp32") is None
    assert datasheet_peak("NVIDIA GeForce RTX 4090", "bf16") is None


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_tiny_step_is_measured_in_its_precision(precision):
    c = check_step("tiny", precision, False, batch=4, n_items=N_ITEMS, steps=2, warmup=1,
                   gemm_n=64)
    assert c.precision == precision and c.device_name == "cpu"
    assert 0 < c.loss < 2 * math.log(N_ITEMS)  # ln(97) = 4.6 at initialisation
    assert c.step_ms > 0 and c.samples_per_s == pytest.approx(4e3 / c.step_ms)
    assert c.mfu_pct_measured_gemm == pytest.approx(
        100 * c.model_tflops_per_s / c.gemm_peak_tflops_per_s)
    assert c.datasheet_peak_tflops_per_s is None and c.mfu_pct_datasheet is None
    assert c.peak_mem_gib > 0 and c.predicted_mem_gib > 0


def test_compiled_step_trains_like_the_plain_one():
    """torch.compile through dynamo (the `eager` backend: no code generation, seconds instead
    of a minute here) reproduces the plain step's losses: same weights, same data."""
    plain = check_step("tiny", "fp32", False, batch=4, n_items=N_ITEMS, steps=2, warmup=1,
                       gemm_n=64)
    compiled = check_step("tiny", "fp32", True, batch=4, n_items=N_ITEMS, steps=2, warmup=1,
                          gemm_n=64, compile_backend="eager")
    assert compiled.compile and compiled.loss == pytest.approx(plain.loss, rel=1e-5)
    # the memory-lean loss, 7 positions at a time, trains the same weights to rounding
    chunked = check_step("tiny", "fp32", False, batch=4, n_items=N_ITEMS, steps=2, warmup=1,
                         gemm_n=64, chunk_size=7)
    assert chunked.cross_entropy_chunk_size == 7 and plain.cross_entropy_chunk_size == 0
    assert chunked.loss == pytest.approx(plain.loss, rel=1e-5)


def test_cli_prints_a_row_per_configuration_and_writes_them(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert recpar_main(["perfmodel", "step-check", "--sizes", "tiny", "--precision",
                        "fp32,bf16", "--batch", "2", "--items", str(N_ITEMS), "--steps", "1",
                        "--warmup", "0", "--gemm-n", "64", "--chunk", "16",
                        "--out", str(out)]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if "ms/step" in l]
    assert len(lines) == 2 and "predicted" in lines[0] and "chunk 16" in lines[0]
    assert [r["precision"] for r in json.loads(out.read_text())] == ["fp32", "bf16"]
