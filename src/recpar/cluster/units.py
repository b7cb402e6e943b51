"""Parse and validate the link quantities users type: rates, durations, loss, slowdown.

Spellings follow `tc` (tc-rate(8)/tc-time(8)) so a value can be passed to tc unchanged in
meaning: rates in bit/s with SI prefixes (`100mbit`, `1gbit`, `10Mbit`) or bytes/s
(`12.5mbps`), durations with `s`, `ms`, `us` (`5ms`, `0.2s`). Every error names the option and
the offending value on one line.
"""

from __future__ import annotations

import math
import re

_NUM = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_RATE_RE = re.compile(rf"^\s*{_NUM}\s*([a-zA-Z/]*)\s*$")
# Multipliers to bit/s. SI prefixes (1 kbit = 1000 bit), as tc(8) documents for "kbit";
# "bps" means *bytes* per second in tc, so it is ×8.
_RATE_UNITS = {
    "bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
    "bps": 8.0, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12,
}
_TIME_UNITS = {"s": 1.0, "sec": 1.0, "ms": 1e-3, "msec": 1e-3, "us": 1e-6, "usec": 1e-6}

# tc's token-bucket arithmetic is faithful up to a few Gbit/s on veth (see DESIGN.md); above
# that the CPU, not the qdisc, sets the rate, so a configured value would be a fiction.
MAX_RATE_BIT_PER_S = 10e9
MIN_RATE_BIT_PER_S = 8e3  # htb's rate tables bottom out around a few kbit/s
MAX_LATENCY_S = 10.0


def parse_rate(text: str | float | int, what: str = "rate") -> float:
    """'100mbit' -> 1e8 bit/s. A bare number is bit/s. Raises ValueError naming `what`."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _RATE_RE.match(str(text))
        if not m:
            raise ValueError(f"{what}: cannot parse rate {text!r} (expected e.g. 100mbit, 1gbit)")
        unit = m.group(2).lower() or "bit"
        if unit not in _RATE_UNITS:
            raise ValueError(f"{what}: unknown rate unit {m.group(2)!r} in {text!r} "
                             f"(use one of {', '.join(sorted(_RATE_UNITS))})")
        value = float(m.group(1)) * _RATE_UNITS[unit]
    if not math.isfinite(value) or not (MIN_RATE_BIT_PER_S <= value <= MAX_RATE_BIT_PER_S):
        raise ValueError(f"{what}: rate {text!r} outside [{format_rate(MIN_RATE_BIT_PER_S)}, "
                         f"{format_rate(MAX_RATE_BIT_PER_S)}] where tc shaping is faithful")
    return value


def parse_duration(text: str | float | int, what: str = "duration",
                   max_s: float = MAX_LATENCY_S) -> float:
    """'5ms' -> 0.005 s. A bare number is seconds. Raises ValueError naming `what`."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _RATE_RE.match(str(text))
        if not m:
            raise ValueError(f"{what}: cannot parse duration {text!r} (expected e.g. 5ms, 0.2s)")
        unit = m.group(2).lower() or "s"
        if unit not in _TIME_UNITS:
            raise ValueError(f"{what}: unknown time unit {m.group(2)!r} in {text!r} "
                             f"(use s, ms or us)")
        value = float(m.group(1)) * _TIME_UNITS[unit]
    if not math.isfinite(value) or not (0.0 <= value <= max_s):
        raise ValueError(f"{what}: duration {text!r} outside [0, {max_s:g} s]")
    return value


def parse_loss(text: str | float | int, what: str = "loss") -> float:
    """'1%' -> 0.01; '0.01' -> 0.01 (a bare number is a probability). Must be in [0, 1)."""
    s = str(text).strip()
    try:
        value = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        raise ValueError(f"{what}: cannot parse loss {text!r} (expected e.g. 1% or 0.01)") from None
    if not math.isfinite(value) or not (0.0 <= value < 1.0):
        raise ValueError(f"{what}: loss {text!r} must be a probability in [0, 1)")
    return value


def parse_slowdown(text: str | float | int, what: str = "slowdown") -> float:
    """Straggler factor F >= 1: the node runs at 1/F of its speed."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: cannot parse {text!r} (expected a number >= 1, e.g. 2)") from None
    if not math.isfinite(value) or not (1.0 <= value <= 100.0):
        raise ValueError(f"{what}: {text!r} must be in [1, 100]")
    return value


def format_rate(bit_per_s: float) -> str:
    """1e8 -> '100mbit' (tc spelling, exact integers where possible)."""
    for unit, mult in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bit_per_s >= mult and abs(bit_per_s / mult - round(bit_per_s / mult)) < 1e-9:
            return f"{int(round(bit_per_s / mult))}{unit}"
    return f"{int(round(bit_per_s))}bit"


def format_duration_us(seconds: float) -> str:
    """0.005 -> '5000us' (tc accepts microseconds exactly)."""
    return f"{int(round(seconds * 1e6))}us"
