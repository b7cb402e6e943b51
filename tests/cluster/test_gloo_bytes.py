"""What gloo puts on the wire, counted: the cost model's `collective_library: gloo` formulas
(recpar.perfmodel.collectives.gloo_*) assume that torch's gloo reduce-scatter moves all-reduce
bytes and that its all-reduce and all-gather move ring bytes.

Two gloo ranks (a file store, no torchrun: nothing else talks) in a network namespace that
holds nothing but its loopback: every byte they send crosses `lo` once, so its transmit counter
is the wire. TCP on a busy loopback now and then retransmits a segment (up to 64 KiB, counted
again on `lo`), so each collective runs REPEATS times and only repeats during which the
namespace's TCP retransmission counter stood still are judged. Needs root (a namespace)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from recpar.cluster import netns

from .conftest import TEST_PREFIX, needs_root

pytestmark = [pytest.mark.root, needs_root]

WORLD = 2
"""Ranks (the test's world size)."""
MIB = 1
"""MiB of fp32 per rank: large next to the few hundred bytes of gloo's headers."""
REPEATS = 5

PROBE = r'''
import json, sys, torch, torch.distributed as dist
out_path, mib, rank, world, store, repeats = sys.argv[1:7]
def lo_tx():
    for line in open("/proc/net/dev"):
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[8])
def retransmitted_segments():
    head, values = [l.split() for l in open("/proc/net/snmp") if l.startswith("Tcp:")]
    return int(values[head.index("RetransSegs")])
dist.init_process_group("gloo", init_method="file://" + store, rank=int(rank),
                        world_size=int(world))
p, n = dist.get_world_size(), int(mib) * 2**18   # fp32 elements
x = torch.ones(n)
ops = {"all_reduce": lambda: dist.all_reduce(x),
       "reduce_scatter": lambda: dist.reduce_scatter_tensor(torch.empty(n // p), x),
       "all_gather": lambda: dist.all_gather_into_tensor(torch.empty(n * p), x)}
out = {name: [] for name in ops}
for _ in range(int(repeats)):
    for name, op in ops.items():
        dist.barrier(); before, rt = lo_tx(), retransmitted_segments(); dist.barrier()
        op()
        dist.barrier()
        if retransmitted_segments() == rt:
            out[name].append(lo_tx() - before)
if dist.get_rank() == 0:
    open(out_path, "w").write(json.dumps(out))
dist.destroy_process_group()
'''


def test_gloo_reduce_scatter_moves_all_reduce_bytes(tmp_path):
    ns = f"{TEST_PREFIX}-lo"
    script, result = tmp_path / "probe.py", tmp_path / "bytes.json"
    script.write_text(PROBE)
    netns.run(["ip", "netns", "del", ns], check=False)
    netns.run(["ip", "netns", "add", ns])
    try:
        netns.run(["ip", "-n", ns, "link", "set", "lo", "up"])
        procs = [subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(script),
                                   str(result), str(MIB), str(r), str(WORLD),
                                   str(tmp_path / "store"), str(REPEATS)])
                 for r in range(WORLD)]
        assert [p.wait(timeout=120) for p in procs] == [0] * WORLD
    finally:
        netns.run(["ip", "netns", "del", ns], check=False)
    got = json.loads(result.read_text())
    assert all(got.values()), f"every repeat of some collective saw a retransmission: {got}"
    n = MIB * 2**20
    ring_all_reduce = WORLD * 2 * (WORLD - 1) / WORLD * n  # all ranks together
    # barriers and gloo's headers add a few kB: 1 % of the payload bounds them
    assert max(got["all_reduce"]) == pytest.approx(ring_all_reduce, rel=0.01), got
    assert max(got["all_gather"]) == pytest.approx(WORLD * (WORLD - 1) * n, rel=0.01), got
    # a ring reduce-scatter would send half of this
    assert max(got["reduce_scatter"]) == pytest.approx(ring_all_reduce, rel=0.01), got
