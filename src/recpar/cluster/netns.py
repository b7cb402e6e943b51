"""Thin wrappers around iproute2 (`ip netns`, `ip link`, `tc`) and the names we own.

Every object the emulator creates carries the project prefix (default `rp`): namespaces
`rp-n<i>` (one per node) and `rp-sw` (the switch), the bridge `rp-br0` inside `rp-sw`, and per
node a veth pair `rp-v<i>` (inside `rp-n<i>`) / `rp-b<i>` (inside `rp-sw`, enslaved to the
bridge). Both veth ends are created directly inside their namespaces, so nothing is ever placed
in the host's namespace and deleting our namespaces deletes every veth, bridge and qdisc with
them. Functions here never touch a name that does not start with `<prefix>-`.

With shaped intra-node links (`recpar.cluster.device_links`) every device (rank) of node i also
has its own namespace `rp-n<i>d<j>`, holding its address (198.19.<i>.<j+1>) on a veth to the
node namespace, which routes it to other nodes, and a tap into the node's shaped intra-node
switch, which carries its traffic to the node's other devices.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

DEFAULT_PREFIX = "rp"
# Linux interface names are at most 15 bytes (IFNAMSIZ - 1): "<prefix>-b<index>" must fit.
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,5}$")
MAX_NODES = 64
# 198.18.0.0/15 is reserved for network benchmarking (RFC 2544); we use 198.18.0.0/24 for the
# nodes and 198.19.<node>.0/24 for devices (with intra-node links), only inside our own
# namespaces, which have no route anywhere else.
SUBNET_PREFIX_LEN = 24
MAX_DEVICES_PER_NODE = 64  # device j's address is 198.19.<node>.<j+1>; .254 is the node's gateway


class ClusterError(RuntimeError):
    """An emulated-cluster operation failed; the message is one line naming what and why."""


@dataclass(frozen=True)
class Names:
    """Names of every object an emulated cluster with one prefix owns."""

    prefix: str
    """Project prefix; every name below starts with '<prefix>-'."""

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(f"prefix: {self.prefix!r} must be 1-6 lowercase letters/digits, "
                             f"starting with a letter")

    def node_ns(self, i: int) -> str:
        return f"{self.prefix}-n{i}"

    def device_ns(self, i: int, j: int) -> str:
        """Device (local rank) j of node i, with intra-node links (device_links)."""
        return f"{self.prefix}-n{i}d{j}"

    @property
    def device_dev(self) -> str:
        """A device's veth to its node namespace, inside the device namespace (the name is the
        same in every device namespace; it holds the device's address: GLOO_SOCKET_IFNAME)."""
        return f"{self.prefix}-e"

    def node_device_dev(self, j: int) -> str:
        """The node-side end of device j's veth, inside the node namespace."""
        return f"{self.prefix}-e{j}"

    def intra_tap(self, i: int, j: int) -> str:
        """Device j of node i's tap into the node's intra-node switch (unique: it is created in
        the switch namespace and then moved into the device namespace)."""
        return f"{self.prefix}-t{i}d{j}"

    @staticmethod
    def device_addr(i: int, j: int) -> str:
        return f"198.19.{i}.{j + 1}"

    @staticmethod
    def device_subnet(i: int) -> str:
        return f"198.19.{i}.0/24"

    @staticmethod
    def device_gateway(i: int) -> str:
        """Node i's address towards its devices (on each node-side device veth)."""
        return f"198.19.{i}.254"

    @property
    def switch_ns(self) -> str:
        return f"{self.prefix}-sw"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br0"

    def node_dev(self, i: int) -> str:
        """The node's uplink, inside its namespace (what GLOO_SOCKET_IFNAME names)."""
        return f"{self.prefix}-v{i}"

    def switch_dev(self, i: int) -> str:
        """The switch-side end of node i's veth, inside the switch namespace."""
        return f"{self.prefix}-b{i}"

    @staticmethod
    def node_addr(i: int) -> str:
        return f"198.18.0.{i + 1}"

    def owns(self, name: str) -> bool:
        return name.startswith(f"{self.prefix}-")

    def is_namespace(self, name: str) -> bool:
        return bool(re.fullmatch(rf"{re.escape(self.prefix)}-(n[0-9]+(d[0-9]+)?|sw)", name))


def run(argv: list[str], check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run one iproute2 command; on failure raise ClusterError with the command and stderr."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ClusterError(f"{argv[0]} not found (install iproute2)") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"`{' '.join(argv)}` timed out after {timeout:g} s") from None
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise ClusterError(f"`{' '.join(argv)}` failed: {err[0] if err else 'exit ' + str(proc.returncode)}")
    return proc


def unavailable_reason() -> str | None:
    """Why the emulated topology cannot run here (None when it can): tests skip with this."""
    try:
        require_root_and_iproute2("the emulated topology")
    except ClusterError as e:
        return str(e)
    return None


def require_root_and_iproute2(action: str = "cluster up") -> None:
    """Raise ClusterError (one line) unless we are root and `ip netns` and `tc` work."""
    if os.geteuid() != 0:
        raise ClusterError(f"{action} needs root (network namespaces and tc); "
                           f"run as root or use the 'local' topology")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise ClusterError(f"{action} needs `{tool}` from iproute2 "
                               f"(apt-get install -y iproute2)")
    proc = run(["ip", "netns", "list"], check=False)
    if proc.returncode != 0:
        raise ClusterError(f"{action} needs `ip netns`, which failed here: "
                           f"{(proc.stderr or '').strip().splitlines()[:1]}")


def list_namespaces() -> list[str]:
    """All named network namespaces (`ip netns list`), ours or not."""
    out = run(["ip", "netns", "list"]).stdout
    # Lines look like "rp-n0 (id: 3)" or "rp-n0".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def list_links(ns: str | None = None) -> list[str]:
    """Interface names in a namespace (None: the host's namespace)."""
    argv = ["ip"] + (["-n", ns] if ns else []) + ["-o", "link", "show"]
    out = run(argv).stdout
    names = []
    for line in out.splitlines():
        # "3: rp-b0@if2: <...>" -> "rp-b0"
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def namespace_pids(ns: str) -> list[int]:
    """Processes whose network namespace is `ns` (`ip netns pids`)."""
    proc = run(["ip", "netns", "pids", ns], check=False)
    if proc.returncode != 0:
        return []
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def kill_namespace_processes(ns: str, timeout_s: float = 10.0) -> int:
    """SIGKILL every process in `ns` (they are ours: only our launcher starts them) and wait.

    SIGCONT first so that processes a straggler fault left stopped die at once.
    Returns how many processes were signalled.
    """
    pids = namespace_pids(ns)
    for sig in (signal.SIGCONT, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = namespace_pids(ns)
        if not left:
            break
        for pid in left:  # children forked meanwhile
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    else:
        raise ClusterError(f"processes {namespace_pids(ns)} in namespace {ns} did not die")
    return len(pids)


def netns_exec(ns: str, argv: list[str]) -> list[str]:
    """argv that runs `argv` inside namespace `ns`."""
    return ["ip", "netns", "exec", ns, *argv]


def link_counters(ns: str, dev: str) -> dict[str, int]:
    """Kernel byte/packet counters of `dev` in `ns` (`ip -s -j link show`)."""
    import json

    out = run(["ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev]).stdout
    st = json.loads(out)[0]["stats64"]
    return {"tx_bytes": int(st["tx"]["bytes"]), "rx_bytes": int(st["rx"]["bytes"]),
            "tx_packets": int(st["tx"]["packets"]), "rx_packets": int(st["rx"]["packets"])}
