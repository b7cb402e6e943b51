"""tc tree arithmetic that needs no kernel: drop program, loss split (no root needed)."""

import math

import pytest

from recpar.cluster.shaping import LinkShape, drop_bytecode, per_end_loss


def _run_cbpf(bytecode: str, random_value: int) -> int:
    """Interpret the 4-instruction program for one value of the kernel's random number."""
    n, *insns = bytecode.split(",")
    prog = [tuple(int(x) for x in i.split()) for i in insns]
    assert int(n) == len(prog) == 4
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == 0x20:  # ld [SKF_AD_OFF + SKF_AD_RANDOM]
            assert k == 2**32 - 4096 + 56
            acc, pc = random_value, pc + 1
        elif code == 0x35:  # jge #k
            pc = pc + 1 + (jt if acc >= k else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


@pytest.mark.parametrize("p", [0.0, 0.01, 0.5])
def test_drop_program_drops_fraction_p(p):
    prog = drop_bytecode(p)
    # Sweep the 32-bit random value space evenly: the dropped share must be p.
    values = [int(i * (2**32 - 1) / 9999) for i in range(10000)]
    dropped = sum(_run_cbpf(prog, v) == 0x10002 for v in values)
    assert dropped / len(values) == pytest.approx(p, abs=2e-4)
    assert all(_run_cbpf(prog, v) in (0, 0x10002) for v in values[:10])


def test_loss_split_over_two_ends_gives_path_loss():
    for path in (0.0, 0.01, 0.3):
        q = per_end_loss(path)
        assert 1 - (1 - q) ** 2 == pytest.approx(path)


def test_link_shape_validation_and_update():
    s = LinkShape(1e8)
    assert s.shaped and not LinkShape().shaped
    assert s.updated(loss=0.1) == LinkShape(1e8, 0.0, 0.1)
    assert LinkShape.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="loss"):
        LinkShape(1e8, 0.0, 1.0)
    with pytest.raises(ValueError, match="rate"):
        LinkShape(0.0)
    assert math.isclose(per_end_loss(0.0), 0.0)


def test_fault_on_one_node_gives_requested_path_values():
    from recpar.cluster.shaping import end_latency_s, end_loss

    base = LinkShape(1e8, latency_s=0.002, loss=0.01)
    fault = LinkShape(1e8, latency_s=0.010, loss=0.2)
    # Path faulty node <-> unchanged node = faulty end + unchanged end (base split).
    lat = end_latency_s(fault, base) + end_latency_s(base)
    keep = (1 - end_loss(fault, base)) * (1 - end_loss(base))
    assert lat == pytest.approx(0.010) and 1 - keep == pytest.approx(0.2)
    # Uniform configuration: half and square-root split.
    assert end_latency_s(base) == pytest.approx(0.001)
    assert end_loss(base) == pytest.approx(per_end_loss(0.01))
