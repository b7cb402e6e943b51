"""recpar.parallel.all_to_all_probe: expert parallelism's exchange alone, in EP groups carved
from the world as training carves them. World size 4, ep 2 (two groups exchanging at once),
gloo on loopback: every row comes back to its place, the bytes that left each rank are the
(ep - 1)/ep of its buffer the term prices, and the count exchange is part of the time."""

import json
import socket

import pytest

from ..comm.mp_launch import skip_unless_ranks, start_ranks

WORLD_SIZE = 4
pytestmark = pytest.mark.multiprocess


def _probe_rank(rank: int, world: int, port: int, out: str) -> None:
    import os

    from recpar.parallel import all_to_all_probe

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    rc = all_to_all_probe.main(["--ep", "2", "--sizes", "64k,1k", "--num-experts", "4",
                                "--d-model", "16", "--iters", "2", "--warmup", "1",
                                "--out", out])
    assert rc == 0


def test_probe_exchanges_in_ep_groups_and_checks_every_row(tmp_path):
    skip_unless_ranks(WORLD_SIZE)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "probe.json"
    start_ranks(_probe_rank, (WORLD_SIZE, port, str(out)), WORLD_SIZE)
    res = json.loads(out.read_text())
    assert (res["world_size"], res["ep"], res["iters"]) == (4, 2, 2)
    big, small = res["sizes"]
    # 64 KiB of fp32 rows of 16: 1024 rows, 256 per expert; half go to the other rank, and
    # come back: buffer / 2 each way
    assert big["buffer_bytes"] == 65536 and big["correct"]
    assert big["bytes_to_others_per_call"] == 65536
    # 1 KiB: 16 rows, 4 per expert
    assert small["buffer_bytes"] == 1024 and small["correct"]
    for row in (big, small):
        assert 0 < row["counts_ms"] < row["time_ms"]


def test_probe_refuses_experts_not_divisible_by_ep():
    from recpar.parallel import all_to_all_probe

    with pytest.raises(SystemExit, match="--num-experts 3 is not a multiple of --ep 2"):
        all_to_all_probe.main(["--ep", "2", "--num-experts", "3"])
