"""The VDE data path: link latency and loss in user space, for kernels without `sch_netem`.

Used by `recpar.cluster.emulated.up` when a latency is asked for and the kernel has no netem
(rate-only links, and rate + loss, stay on the kernel's veth + htb path of `shaping`). Built
from Debian's `vde2` (`apt-get install vde2`), the same star as the veth path:

    node i:  tap <prefix>-v<i>  --  vde_switch --hub  (n<i>.ctl)
                                      |
                                 wirefilter  wf<i>   (L = node side, R = switch side)
                                      |
    central:                     vde_switch  (sw.ctl)  -- the other nodes' wirefilters

Each node's traffic to another node crosses its own wirefilter left to right (LR) and the
receiver's right to left (RL). Every process runs inside the switch namespace `<prefix>-sw`, so
it is out of reach of what acts on node namespaces (the launcher's cleanup, straggler faults)
and `down`'s sweep of our namespaces kills it even when its pid file is lost. A node's tap is
created by its switch (`vde_switch --tap`) in the switch namespace and then moved into the node
namespace, where it gets the node's address; it is never in the host's namespace, and it
disappears when its switch dies.

Everything else lives in the run directory `<state_dir>/<prefix>.vde/` (mode 0700): the
switches' control directories (every data socket, clients' included, is created there), pid
files, the wirefilters' rc files and management sockets. `down` kills the pid files' processes,
sweeps the namespaces, then removes the directory.

What a wirefilter can do, read from its source (vde2 2.3.2, the Debian package):
- delay is whole milliseconds (a packet's due time is kept in ms, `(int)` of the delay), plus
  about 0.1-0.2 ms of wake-up and copying per delayed pass. So a path gets its whole one-way
  latency on ONE pass: the sender's LR (a node configured alike has RL delay 0). Two half
  passes would round 2.5 ms down to 2 and add the overhead twice.
- loss is a percentage per direction, drawn per frame (a tap carries MTU-sized frames, no GSO).
  Like delay it is carried by the sender's LR pass.
- bandwidth (bytes/s) delays delivery and never blocks the sender, so the queue is bounded by
  the channel buffer: rate x delay (the frames on the wire) + the veth path's queue of
  LEAF_LIMIT_PKTS frames. Rate applies in both directions of every wirefilter, like htb on
  both veth ends: a full-duplex NIC of that rate per node.

Cost and limits (measured on a busy 2-core machine): the path tops out at 210-400 Mbit/s of
TCP goodput, and its processes use 20-32 CPU seconds per GB carried, CPU the nodes' work then
lacks (`status` shows each process's CPU seconds, `calibrate` the cost per transfer). When they
wait for a CPU, frames between them are dropped in bursts, so a transfer now and then runs at
65-85 % of the configured rate; the kernel's tc path does not do that.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from recpar.cluster.netns import ClusterError, Names, netns_exec, run
from recpar.cluster.shaping import LEAF_LIMIT_PKTS, LinkShape

TOOLS = ("vde_switch", "wirefilter")
FRAME_BYTES = 1514  # a full Ethernet frame at MTU 1500 (what the tap hands the switch)
QUEUE_BYTES = LEAF_LIMIT_PKTS * FRAME_BYTES  # same queue as the veth path's pfifo leaf
START_TIMEOUT_S = 5.0
# sun_path is 108 bytes; the longest socket we cause is "<run_dir>/d63x63.ctl/.<pid>-00000"
# (a client's data socket, named by libvdeplug inside a device hub's directory; see
# recpar.cluster.device_links for the device hubs).
_SUN_PATH_MAX = 107
_LONGEST_SOCKET_SUFFIX = len("/d63x63.ctl/.4194304-00000")
_REPLY_RE = re.compile(r"^(\d{4}) (.*)$", re.MULTILINE)
_MGMT_OK = 1000


def unavailable_reason() -> str | None:
    """Why the VDE data path cannot be used here (None when it can)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return (f"{' and '.join(missing)} not found: link latency without the kernel's netem "
                f"needs vde2 (apt-get install -y vde2)")
    return None


def run_dir(state_file: Path) -> Path:
    """The run directory of the cluster whose state file is `state_file`."""
    return state_file.with_suffix(".vde")


def delay_ms(latency_s: float) -> int:
    """A latency as wirefilter's whole milliseconds; anything finer is refused, not rounded."""
    ms = latency_s * 1e3
    if abs(ms - round(ms)) > 1e-6:
        raise ClusterError(f"the VDE data path delays in whole milliseconds (wirefilter's "
                           f"resolution); {ms:g} ms is not one, use e.g. {max(1, round(ms))}ms")
    return int(round(ms))


@dataclass(frozen=True)
class WireSettings:
    """What one node's wirefilter does (LR: frames the node sends, RL: frames it receives)."""

    delay_lr_ms: int
    delay_rl_ms: int
    loss_lr: float
    """Drop probability of a frame the node sends."""
    loss_rl: float
    band_bytes_per_s: int
    """Rate in each direction, bytes/s (0: not limited)."""
    chanbuf_bytes: int
    """Bytes a direction may hold (frames on the wire + queue; 0: unbounded, no rate set)."""

    def commands(self) -> list[str]:
        """wirefilter management commands (also the rc file's lines) that set all of it."""
        return [f"delay LR{self.delay_lr_ms}", f"delay RL{self.delay_rl_ms}",
                f"loss LR{self.loss_lr * 100:.6f}", f"loss RL{self.loss_rl * 100:.6f}",
                f"bandwidth {self.band_bytes_per_s}", f"chanbufsize {self.chanbuf_bytes}"]


def wire_settings(shape: LinkShape, partner: LinkShape | None = None) -> WireSettings:
    """Settings of a node configured as `shape` (path values, as in `shaping`) whose paths end
    at nodes configured as `partner` (default alike).

    The sender's LR pass carries a path's latency and loss; a node configured alike with its
    partners has RL delay and loss 0. After a `fault link` the changed node's RL carries what
    makes paths from unchanged nodes (whose LR carries the partner's values) total the new
    values; a path cannot be made shorter than the partner's own LR (max 0), as on the tc path.
    """
    partner = shape if partner is None else partner
    lr_ms, partner_ms = delay_ms(shape.latency_s), delay_ms(partner.latency_s)
    rl_loss = max(0.0, 1.0 - (1.0 - shape.loss) / (1.0 - partner.loss))
    band = 0 if shape.rate_bit_per_s is None else int(round(shape.rate_bit_per_s / 8))
    rl_ms = max(0, lr_ms - partner_ms)
    chanbuf = 0 if band == 0 else int(band * max(lr_ms, rl_ms) / 1e3) + QUEUE_BYTES
    return WireSettings(lr_ms, rl_ms, shape.loss, rl_loss, band, chanbuf)


def mgmt(sock: Path, commands: list[str], timeout_s: float = 5.0) -> None:
    """Send management commands to a running wirefilter; ClusterError on the first refused.

    Written by hand because vde2's clients do not fit a program: unixterm and vdeterm are
    interactive terminals, and unixcmd needs a parse-machine rc file that Debian does not ship
    for wirefilter. The protocol is text: a banner and prompt ending in "$ ", then per command
    its output and a status line "<4 digits> <text>" (1000 = success) before the next prompt.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(str(sock))
            _read_prompt(s)
            for cmd in commands:
                s.sendall(cmd.encode() + b"\n")
                codes = [(int(c), t) for c, t in _REPLY_RE.findall(_read_prompt(s)) if c != "0000"]
                if not codes or codes[-1][0] != _MGMT_OK:
                    got = f"{codes[-1][0]} {codes[-1][1]}" if codes else "no status line"
                    raise ClusterError(f"wirefilter {sock.name}: `{cmd}` refused ({got})")
        except OSError as e:
            raise ClusterError(f"wirefilter management socket {sock}: {e}") from None


def _read_prompt(s: socket.socket) -> str:
    buf = b""
    while not buf.endswith(b"$ "):
        chunk = s.recv(65536)
        if not chunk:
            raise ClusterError("wirefilter closed its management connection")
        buf += chunk
    return buf.decode(errors="replace")


def _wait_for(paths: list[Path], pidfile: Path, what: str) -> int:
    """Wait until `paths` exist and `pidfile` names a live process; return its pid."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        pid = _read_pid(pidfile)
        if pid is not None and _alive(pid) and all(p.exists() for p in paths):
            return pid
        time.sleep(0.02)
    raise ClusterError(f"{what} did not start within {START_TIMEOUT_S:g} s")


def _read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name (index 0 = state), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    f = _stat_fields(pid)
    return f is not None and f[0] not in ("Z", "X")


def _is_ours(pid: int, rdir: Path) -> bool:
    """A live vde_switch/wirefilter started for `rdir` (guards against reused pids)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return comm in TOOLS and str(rdir).encode() in cmdline and _alive(pid)


def start_switch(sw_ns: str, rdir: Path, role: str, tap: str | None = None) -> int:
    ctl, pidfile = rdir / f"{role}.ctl", rdir / f"{role}.pid"
    argv = ["vde_switch", "--sock", str(ctl), "--pidfile", str(pidfile), "--daemon"]
    if tap is not None:  # a node's own switch: two ports (tap, wirefilter), no learning needed
        argv += ["--hub", "--tap", tap]
    run(netns_exec(sw_ns, argv))
    return _wait_for([ctl / "ctl"], pidfile, f"vde_switch {role}")


def start_wirefilter(sw_ns: str, rdir: Path, role: str, left: str, right: str,
                     settings: WireSettings) -> int:
    """A wirefilter `role` between the switches `left` (L) and `right` (R) of `rdir`."""
    rc, mg, pidfile = rdir / f"{role}.rc", rdir / f"{role}.mgmt", rdir / f"{role}.pid"
    rc.write_text("\n".join(settings.commands()) + "\n")
    run(netns_exec(sw_ns, [
        "wirefilter", "--vde-plug", f"{rdir / f'{left}.ctl'}:{rdir / f'{right}.ctl'}",
        "--rcfile", str(rc), "--mgmt", str(mg), "--daemon", "--pidfile", str(pidfile)]))
    pid = _wait_for([mg], pidfile, f"wirefilter {role}")
    # wirefilter sleeps in poll() until a delayed frame is due; the kernel's default timer
    # slack (50 us) would add to every delayed frame, so ask for 1 ns (best effort).
    try:
        Path(f"/proc/{pid}/timerslack_ns").write_text("1")
    except OSError:
        pass
    return pid


def prepare_run_dir(rdir: Path) -> None:
    """Check that vde2 is installed and `rdir` can hold the sockets; create it (mode 0700)."""
    reason = unavailable_reason()
    if reason is not None:
        raise ClusterError(reason)
    if ":" in str(rdir):
        raise ClusterError(f"{rdir}: the VDE run directory may not contain ':' "
                           f"(wirefilter's --vde-plug separator)")
    if len(str(rdir)) + _LONGEST_SOCKET_SUFFIX > _SUN_PATH_MAX:
        raise ClusterError(f"{rdir}: too long for the VDE sockets inside it "
                           f"(at most {_SUN_PATH_MAX - _LONGEST_SOCKET_SUFFIX} characters); "
                           f"use a shorter --state-dir")
    rdir.mkdir(mode=0o700, parents=True, exist_ok=True)


def start(names: Names, node_addrs: list[str], prefix_len: int, settings: list[WireSettings],
          rdir: Path) -> dict:
    """Start the central switch, then per node its switch (making its tap), the tap's move
    into the node namespace with the node's address, and its wirefilter. The namespaces exist
    already. Returns the pids (as `ClusterState.vde` keeps them). Nothing is undone here on a
    failure: the caller's `down` does it (it must also work after a SIGKILL)."""
    prepare_run_dir(rdir)
    sw = names.switch_ns
    pids: dict = {"central": start_switch(sw, rdir, "sw"), "nodes": []}
    for i, addr in enumerate(node_addrs):
        ns, dev = names.node_ns(i), names.node_dev(i)
        switch_pid = start_switch(sw, rdir, f"n{i}", tap=dev)
        run(["ip", "-n", sw, "link", "set", dev, "netns", ns])
        run(["ip", "-n", ns, "addr", "add", f"{addr}/{prefix_len}", "dev", dev])
        run(["ip", "-n", ns, "link", "set", dev, "up"])
        pids["nodes"].append({"switch": switch_pid,
                              "wirefilter": start_wirefilter(sw, rdir, f"wf{i}", f"n{i}",
                                                             "sw", settings[i])})
    return {"run_dir": str(rdir), "pids": pids}


def set_wire(rdir: Path, node: int, settings: WireSettings) -> None:
    """Change node `node`'s live wirefilter (queued frames are kept) and its rc file."""
    mgmt(rdir / f"wf{node}.mgmt", settings.commands())
    (rdir / f"wf{node}.rc").write_text("\n".join(settings.commands()) + "\n")


def processes(rdir: Path) -> list[dict]:
    """Each pid file's process: role (sw, n<i>, wf<i>), pid, whether it runs, CPU seconds
    (user + system, from /proc/<pid>/stat; None once gone)."""
    tick_per_s = os.sysconf("SC_CLK_TCK")
    out = []
    for pidfile in sorted(rdir.glob("*.pid")):
        pid = _read_pid(pidfile)
        f = _stat_fields(pid) if pid is not None else None
        live = pid is not None and _is_ours(pid, rdir)
        cpu_s = (int(f[11]) + int(f[12])) / tick_per_s if (live and f) else None
        out.append({"role": pidfile.stem, "pid": pid, "running": live, "cpu_s": cpu_s})
    return out


def cpu_seconds(rdir: Path) -> float:
    """CPU seconds all running VDE processes of `rdir` have used so far."""
    return sum(p["cpu_s"] or 0.0 for p in processes(rdir))


def kill_processes(rdir: Path, timeout_s: float = 5.0) -> int:
    """SIGKILL the processes the pid files in `rdir` name (only if they are still ours) and
    wait until they are gone; returns how many were killed."""
    pids = [p for p in (_read_pid(f) for f in rdir.glob("*.pid")) if p is not None]
    ours = [p for p in pids if _is_ours(p, rdir)]
    for pid in ours:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in ours):
        if time.monotonic() > deadline:
            raise ClusterError(f"VDE processes {[p for p in ours if _alive(p)]} did not die")
        time.sleep(0.02)
    return len(ours)


def remove_run_dir(rdir: Path) -> bool:
    """Remove the run directory (sockets, pid and rc files); True if there was one."""
    if not rdir.exists():
        return False
    shutil.rmtree(rdir)
    return True
