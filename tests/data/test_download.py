"""recpar.data.download against a local Range-capable HTTP server (no network)."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from recpar.data.download import (
    RemoteFile, ensure_file, read_sidecar, sidecar_path, verify_gzip,
)
from recpar.data.errors import DataError

NAME = "blob.json.gz"
BODY = gzip.compress(b"".join(b'{"k": %d, "pad": "%s"}\n' % (i, b"x" * 40) for i in range(3000)),
                     mtime=0)


def _remote(server, **kw) -> RemoteFile:
    return RemoteFile(name=NAME, url=server.base_url + NAME, **kw)


def _get(server, tmp_path, **kw):
    return ensure_file(_remote(server), tmp_path, progress=False, log=lambda m: None, **kw)


@pytest.fixture
def server(http_files):
    http_files.files[NAME] = BODY
    return http_files


def test_fresh_download_writes_file_and_sidecar(server, tmp_path):
    path = _get(server, tmp_path)
    assert path.read_bytes() == BODY
    assert read_sidecar(path) == hashlib.sha256(BODY).hexdigest()
    assert sidecar_path(path).read_text().endswith(f"  {NAME}\n")  # sha256sum format
    assert not (tmp_path / (NAME + ".part")).exists()
    assert server.requests == [(NAME, None)]


def test_verified_file_is_not_fetched_again(server, tmp_path):
    _get(server, tmp_path)
    _get(server, tmp_path)
    assert len(server.requests) == 1


def test_resumes_from_partial_file(server, tmp_path):
    k = len(BODY) // 3
    (tmp_path / (NAME + ".part")).write_bytes(BODY[:k])
    path = _get(server, tmp_path)
    assert path.read_bytes() == BODY
    assert server.requests == [(NAME, f"bytes={k}-")]


def test_interrupted_transfer_resumes_on_next_attempt(server, tmp_path):
    k = len(BODY) // 2
    server.drop_after[NAME] = k
    path = _get(server, tmp_path)
    assert path.read_bytes() == BODY
    assert server.requests == [(NAME, None), (NAME, f"bytes={k}-")]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.ignore_range = True
    (tmp_path / (NAME + ".part")).write_bytes(BODY[:100])
    assert _get(server, tmp_path).read_bytes() == BODY


def test_partial_longer_than_file_is_discarded(server, tmp_path):
    (tmp_path / (NAME + ".part")).write_bytes(BODY + b"junk")
    assert _get(server, tmp_path).read_bytes() == BODY
    assert server.requests[0][1] == f"bytes={len(BODY) + 4}-"  # answered 416, then restart


def test_corrupt_download_is_detected_and_refetched(server, tmp_path):
    server.corrupt_once.add(NAME)
    path = _get(server, tmp_path)
    assert path.read_bytes() == BODY
    assert len(server.requests) == 2


def test_truncated_gzip_fails_after_bounded_attempts(server, tmp_path):
    server.truncate_to[NAME] = len(BODY) - 50  # server itself serves a cut file
    with pytest.raises(DataError, match=r"after 2 attempts: .*truncated gzip"):
        _get(server, tmp_path, max_attempts=2)
    assert len(server.requests) == 2
    assert list(tmp_path.iterdir()) == []  # neither file, part nor sidecar left behind


def test_local_file_changed_after_download_is_refetched(server, tmp_path):
    path = _get(server, tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert _get(server, tmp_path).read_bytes() == BODY
    assert len(server.requests) == 2


def test_local_truncated_file_without_sidecar_is_refetched(server, tmp_path):
    (tmp_path / NAME).write_bytes(BODY[:-30])
    assert _get(server, tmp_path).read_bytes() == BODY
    assert read_sidecar(tmp_path / NAME) == hashlib.sha256(BODY).hexdigest()


def test_local_good_file_without_sidecar_gets_one(server, tmp_path):
    (tmp_path / NAME).write_bytes(BODY)
    _get(server, tmp_path)
    assert server.requests == []
    assert read_sidecar(tmp_path / NAME) == hashlib.sha256(BODY).hexdigest()


def test_expected_sha256_mismatch_fails(server, tmp_path):
    remote = _remote(server, sha256="0" * 64)
    with pytest.raises(DataError, match="differs from the expected"):
        ensure_file(remote, tmp_path, progress=False, max_attempts=2, log=lambda m: None)
    assert not (tmp_path / NAME).exists()


def test_expected_sha256_match_passes(server, tmp_path):
    remote = _remote(server, sha256=hashlib.sha256(BODY).hexdigest().upper())
    assert ensure_file(remote, tmp_path, progress=False).read_bytes() == BODY


def test_size_mismatch_fails(server, tmp_path):
    remote = _remote(server, size_bytes=len(BODY) + 1)
    with pytest.raises(DataError, match="size"):
        ensure_file(remote, tmp_path, progress=False, max_attempts=1)


def test_http_404_is_not_retried(http_files, tmp_path):
    remote = RemoteFile(name="missing.gz", url=http_files.base_url + "missing.gz")
    with pytest.raises(DataError, match="HTTP 404"):
        ensure_file(remote, tmp_path, progress=False)
    assert len(http_files.requests) == 1


def test_bad_expected_sha_is_rejected_before_any_request(server, tmp_path):
    with pytest.raises(DataError, match="not 64 hex digits"):
        ensure_file(_remote(server, sha256="abc"), tmp_path, progress=False)
    assert server.requests == []


def test_verify_gzip_detects_truncation_and_corruption(tmp_path):
    cut = tmp_path / "cut.gz"
    cut.write_bytes(BODY[:-10])
    with pytest.raises(DataError, match="truncated"):
        verify_gzip(cut)
    bad = tmp_path / "bad.gz"
    data = bytearray(BODY)
    data[-6] ^= 0xFF  # inside the CRC32/ISIZE trailer
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt"):
        verify_gzip(bad)
    verify_gzip_ok = tmp_path / "ok.gz"
    verify_gzip_ok.write_bytes(BODY)
    verify_gzip(verify_gzip_ok)
