"""Count UDP datagrams that cross an emulated link (loss checks shared by the tc and VDE tests)."""

from __future__ import annotations

import subprocess
import sys

from recpar.cluster import netns

_UDP_RECV = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 6001))
s.settimeout(1.0); print("ready", flush=True); n = 0
try:
    while True:
        s.recv(64); n += 1
except OSError:
    pass
print(n)
"""
_UDP_SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[2])):
    s.sendto(b"x", (sys.argv[1], 6001))
    if i % 100 == 99:
        time.sleep(0.005)
"""


def udp_delivered(st, src: int, dst: int, count: int) -> int:
    """Datagrams of `count` sent from node `src` to node `dst` that arrived."""
    addr = st.names.node_addr(dst)
    rx = subprocess.Popen(netns.netns_exec(st.names.node_ns(dst),
                                           [sys.executable, "-c", _UDP_RECV, addr]),
                          stdout=subprocess.PIPE, text=True)
    assert rx.stdout.readline().strip() == "ready"
    subprocess.run(netns.netns_exec(st.names.node_ns(src),
                                    [sys.executable, "-c", _UDP_SEND, addr, str(count)]),
                   check=True)
    return int(rx.communicate(timeout=30)[0].strip())
