"""Fixtures for the data-stage tests: fake Amazon 2014 files and a local Range-capable server.

The fake files follow the public format exactly (gzip; reviews as JSON lines with reviewerID,
asin, unixReviewTime, overall, ...; metadata as Python-literal dict lines written with repr)
and have a hand-designed structure whose statistics are known (see FAKE_EXPECTED).
"""

from __future__ import annotations

import gzip
import http.server
import json
import threading
from dataclasses import dataclass, field

import pytest

DAY = 86_400
T0 = 1_300_000_000 - 1_300_000_000 % DAY  # a midnight in March 2011

# Hand-designed review set (users A0..A9 x items I0..I6 is the 5-core):
#  - 10 core users each review all 7 core items                       70 rows kept
#  - A0 reviews I0 a second time, later                               1 duplicate
#  - AX reviews 3 core items: fails the 5-core in pass 1              3 rows dropped
#  - IZ is reviewed by A1, A2, A3 and AY: 4 < 5, dropped in pass 1    4 rows dropped
#  - AY reviews I0..I3 + IZ = 5, left with 4 after pass 1 -> pass 2    4 rows dropped
FAKE_EXPECTED = {
    "raw_interactions": 82, "duplicates_dropped": 1, "kcore_dropped": 11, "kcore_passes": 2,
    "users": 10, "items": 7, "interactions": 70, "train": 56, "valid": 7, "test": 7,
    "raw_users": 12, "raw_items": 8,
}
CORE_USERS = [f"A{u}" for u in range(10)]
CORE_ITEMS = [f"I{i}" for i in range(7)]


def fake_reviews() -> list[dict]:
    rows = []
    for u, user in enumerate(CORE_USERS):
        for i, item in enumerate(CORE_ITEMS):
            rows.append((user, item, T0 + DAY * (u * 7 + i)))
    rows.append(("A0", "I0", T0 + DAY * 500))  # duplicate pair, later: dropped
    rows += [("AX", item, T0 + DAY * (600 + k)) for k, item in enumerate(CORE_ITEMS[:3])]
    rows += [(user, "IZ", T0 + DAY * (700 + k)) for k, user in enumerate(["A1", "A2", "A3"])]
    rows += [("AY", item, T0 + DAY * (800 + k)) for k, item in enumerate(CORE_ITEMS[:4] + ["IZ"])]
    return [
        {"reviewerID": u, "asin": a, "reviewerName": f"Reviewer {u}", "helpful": [0, 0],
         "reviewText": f"{a} works fine", "overall": 4.0, "summary": "ok",
         "unixReviewTime": t, "reviewTime": "01 1, 2011"}
        for u, a, t in rows
    ]


def fake_meta() -> list[dict]:
    metas = []
    for i, item in enumerate(CORE_ITEMS[:-1]):  # I6 has no metadata row
        metas.append({
            "asin": item, "imUrl": f"http://example.invalid/{item}.jpg",
            "related": {"also_bought": ["I1", "IZ"]}, "salesRank": {"Electronics": i + 1},
            "categories": [["Electronics", "Accessories", "Cables"], ["Electronics"]],
            "title": f"Cable &amp; Adapter {item}", "brand": "Acme", "price": 9.99,
            "description": "<b>Great</b> cable. " * 200,  # long: gets truncated
        })
    metas.append({"asin": "IZ", "title": "Filtered item", "categories": [["Electronics"]]})
    metas.append({"asin": "UNUSED", "title": "Never reviewed"})
    return metas


def write_gzip_lines(lines: list[str]) -> bytes:
    return gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), mtime=0)


def fake_amazon_files(bad_review_lines: int = 0, bad_meta_lines: int = 0) -> dict[str, bytes]:
    """{file name: gzip bytes} of the two raw files, with optional malformed lines mixed in."""
    reviews = [json.dumps(r) for r in fake_reviews()]
    bad_r = ['{"reviewerID": "AB", "asin": ', "not json at all",
             '{"asin": "I0", "unixReviewTime": 1}', '{"reviewerID": "A1", "asin": "I1"}']
    for k in range(bad_review_lines):
        reviews.insert(3 + 5 * k, bad_r[k % len(bad_r)])
    metas = [repr(m) for m in fake_meta()]  # Python literals, as in the 2014 dump
    for k in range(bad_meta_lines):
        metas.insert(1, "{'asin': 'I%d', 'title': 'broken" % (k % 6))  # unterminated literal
    return {
        "reviews_Electronics_5.json.gz": write_gzip_lines(reviews),
        "meta_Electronics.json.gz": write_gzip_lines(metas),
    }


@dataclass
class FakeAmazon:
    """What tests need to know about the fake Amazon files."""

    expected: dict  # FAKE_EXPECTED
    core_items: list  # raw ids of the items that survive the 5-core, in id order
    files: object  # fake_amazon_files(bad_review_lines=0, bad_meta_lines=0) -> {name: bytes}


@pytest.fixture
def fake_amazon() -> FakeAmazon:
    return FakeAmazon(dict(FAKE_EXPECTED), list(CORE_ITEMS), fake_amazon_files)


@dataclass
class FakeServer:
    """State of the local HTTP server, changeable by each test."""

    base_url: str  # http://127.0.0.1:<port>/files/
    files: dict[str, bytes] = field(default_factory=dict)  # name -> body served
    corrupt_once: set[str] = field(default_factory=set)  # serve a damaged body once
    truncate_to: dict[str, int] = field(default_factory=dict)  # always serve a prefix only
    drop_after: dict[str, int] = field(default_factory=dict)  # close after N bytes, once
    ignore_range: bool = False  # answer Range requests with 200 + the full body
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (name, Range)


def _make_handler(state: FakeServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def do_GET(self):  # noqa: N802 (http.server API)
            name = self.path.rsplit("/", 1)[-1]
            rng = self.headers.get("Range")
            state.requests.append((name, rng))
            if name not in state.files:
                self.send_error(404, "Not Found")
                return
            body = state.files[name]
            if name in state.corrupt_once:
                state.corrupt_once.discard(name)
                mid = len(body) // 2
                body = body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1:]
            if name in state.truncate_to:
                body = body[: state.truncate_to[name]]
            start = 0
            if rng and not state.ignore_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.send_header("Content-Type", "application/gzip")
            self.end_headers()
            payload = body[start:]
            if name in state.drop_after:
                payload = payload[: state.drop_after.pop(name)]
                self.wfile.write(payload)
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(payload)

    return Handler


@pytest.fixture
def http_files():
    """A FakeServer on 127.0.0.1 (random port), serving `state.files` under /files/."""
    state = FakeServer(base_url="")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    server.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/files/"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
