"""`recpar bench collectives` under torchrun (WORLD_SIZE = 2), plus its input errors."""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recpar.comm import cli
from recpar.comm.collective_bench import all_reduce_busbw, matrix_shape, message_sizes, parse_size

WORLD_SIZE = 2
SRC = Path(__file__).resolve().parents[2] / "src"


def _parse(argv):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="group", required=True))
    return parser.parse_args(argv)


def test_sizes_and_busbw_definition():
    assert parse_size("4K") == 4096 and parse_size("64M") == 64 * 2**20 and parse_size("100") == 100
    assert message_sizes(4096, 65536, 4) == [4096, 16384, 65536]
    assert all_reduce_busbw(1.0, 4) == pytest.approx(1.5)
    assert matrix_shape(1024) == (32, 32) and matrix_shape(2048) == (32, 64) and matrix_shape(12) == (3, 4)
    with pytest.raises(ValueError, match="size 'abc'"):
        parse_size("abc")


def test_not_under_torchrun_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit, match="must run under torchrun"):
        cli.run_collectives(_parse(["bench", "collectives", "--out-dir", str(tmp_path)]))


@pytest.mark.parametrize("argv, match", [
    (["--cases", "hierarchical"], r"'hierarchical' needs >= 2 nodes"),
    (["--cases", "ring,tree"], r"bench case 'tree'"),
    (["--min-bytes", "64M", "--max-bytes", "4K"], r"min .* <= max"),
    (["--topk-ratio", "2"], r"topk_ratio"),
])
def test_bad_input_fails_before_any_process_group(monkeypatch, tmp_path, argv, match):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match=match):
        cli.run_collectives(_parse(["bench", "collectives", "--out-dir", str(tmp_path), *argv]))
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.multiprocess
def test_torchrun_sweep_writes_csv_and_json(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip(f"torchrun not found; needed to launch {WORLD_SIZE} ranks")
    out = tmp_path / "bench"
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               RECPAR_RANKS_PER_NODE="1", OMP_NUM_THREADS="1")
    cmd = [torchrun, "--standalone", "--nproc-per-node", str(WORLD_SIZE), "-m", "recpar.comm.cli", "bench",
           "collectives", "--out-dir", str(out), "--min-bytes", "4K", "--max-bytes", "16K", "--factor", "4",
           "--warmup", "1", "--iters", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "collectives.json").read_text())
    assert data["meta"]["world_size"] == WORLD_SIZE and data["meta"]["ranks_per_node"] == 1
    cases = {r["case"] for r in data["rows"]}
    assert cases == {"ring", "hierarchical", "sign", "topk", "powersgd", "fp16", "bf16"}
    for row in data["rows"]:
        assert row["time_us"] > 0
        assert row["algbw_gb_per_s"] == pytest.approx(row["size_bytes"] / (row["time_us"] * 1e-6) / 1e9)
        assert row["busbw_gb_per_s"] == pytest.approx(row["algbw_gb_per_s"] * 2 * (WORLD_SIZE - 1) / WORLD_SIZE)
    sign = [r for r in data["rows"] if r["case"] == "sign"]
    assert [r["payload_bytes_per_rank"] for r in sign] == [4096 // 4 // 8 + 4, 16384 // 4 // 8 + 4]
    header = (out / "collectives.csv").read_text().splitlines()[0]
    assert header.startswith("case,size_bytes,numel,time_us,algbw_gb_per_s,busbw_gb_per_s")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
