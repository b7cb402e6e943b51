"""Measurement endpoints that `calibrate` runs inside node namespaces (stdlib only).

    python -m recpar.cluster.probe serve  --bind ADDR --port P --mode bulk|pingpong
    python -m recpar.cluster.probe client --connect ADDR --port P --mode bulk --seconds S
    python -m recpar.cluster.probe client --connect ADDR --port P --mode bulk --bytes N
    python -m recpar.cluster.probe client --connect ADDR --port P --mode pingpong --count N

Each prints one JSON line with its result (`serve` first prints `ready` once listening). A bulk
server also reports when the first and the last byte arrived (`t_first_s`, `t_last_s`: the
system-wide monotonic clock, `time.perf_counter`, so the servers of streams running at once in
different namespaces can be compared).
Written with plain sockets rather than iperf3 so the measurement needs no extra system package
and sees exactly what gloo sees: one TCP stream between two namespaces' addresses.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time

CHUNK_BYTES = 1 << 20  # 1 MiB send/recv buffer: large enough that Python is not the bottleneck


def _serve(bind: str, port: int, mode: str, warmup_s: float, timeout_s: float) -> dict:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((bind, port))
    srv.listen(1)
    srv.settimeout(timeout_s)
    print("ready", flush=True)
    conn, _ = srv.accept()
    conn.settimeout(timeout_s)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if mode == "pingpong":
        n = 0
        while True:
            b = conn.recv(1)
            if not b:
                break
            conn.sendall(b)
            n += 1
        return {"mode": mode, "echoed": n}
    buf = bytearray(CHUNK_BYTES)
    total = 0
    t_first = t_last = None
    t_warm, bytes_warm = None, 0
    while True:
        k = conn.recv_into(buf)
        now = time.perf_counter()
        if not k:
            break
        if t_first is None:
            t_first = now
        total += k
        t_last = now
        if t_warm is None and now - t_first >= warmup_s:
            # Steady state starts here: slow start and the token bucket's initial burst are over.
            t_warm, bytes_warm = now, total
    if t_first is None:
        return {"mode": mode, "bytes": 0, "rate_bit_per_s": None}
    if t_warm is None or t_last - t_warm <= 0:
        t_warm, bytes_warm = t_first, 0
    dt = t_last - t_warm
    rate = (total - bytes_warm) * 8 / dt if dt > 0 else None
    return {"mode": mode, "bytes": total, "window_s": dt, "rate_bit_per_s": rate,
            "t_first_s": t_first, "t_last_s": t_last}


def _client(connect: str, port: int, mode: str, seconds: float, count: int,
            timeout_s: float, nbytes: int | None = None) -> dict:
    """`nbytes` (bulk): send exactly that many bytes, not for `seconds`."""
    conn = socket.create_connection((connect, port), timeout=timeout_s)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if mode == "pingpong":
        rtts = []
        for _ in range(count):
            t0 = time.perf_counter()
            conn.sendall(b"x")
            if conn.recv(1) != b"x":
                raise RuntimeError("ping-pong peer closed early")
            rtts.append(time.perf_counter() - t0)
        conn.close()
        return {"mode": mode, "count": count, "rtt_median_s": statistics.median(rtts),
                "rtt_min_s": min(rtts), "rtt_max_s": max(rtts)}
    payload = memoryview(b"\0" * CHUNK_BYTES)
    sent = 0
    t0 = time.perf_counter()
    while (sent < nbytes) if nbytes is not None else (time.perf_counter() - t0 < seconds):
        k = CHUNK_BYTES if nbytes is None else min(CHUNK_BYTES, nbytes - sent)
        conn.sendall(payload[:k])
        sent += k
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)  # wait for the server to close: all bytes delivered
    conn.close()
    return {"mode": mode, "bytes": sent, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recpar.cluster.probe")
    p.add_argument("role", choices=("serve", "client"))
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--connect")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=("bulk", "pingpong"), required=True)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--bytes", type=int, default=None, dest="nbytes",
                   help="bulk client: send this many bytes (instead of for --seconds)")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--warmup-s", type=float, default=0.3)
    p.add_argument("--timeout-s", type=float, default=60.0)
    a = p.parse_args(argv)
    if a.role == "serve":
        res = _serve(a.bind, a.port, a.mode, a.warmup_s, a.timeout_s)
    else:
        if not a.connect:
            p.error("client needs --connect")
        if a.nbytes is not None and a.nbytes < 1:
            p.error(f"--bytes must be >= 1, got {a.nbytes}")
        res = _client(a.connect, a.port, a.mode, a.seconds, a.count, a.timeout_s, a.nbytes)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
