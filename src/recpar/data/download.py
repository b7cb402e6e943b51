"""Resumable, verified HTTP download of one raw file.

Written on the standard library's `urllib` because no maintained package in our pinned
environment does all of: resume a `.part` file with an HTTP Range request, check the size the
server announced, check a sha256 that may or may not be known in advance, check the gzip
stream end to end (CRC), record the checksum in a `.sha256` sidecar and re-fetch a bad file a
bounded number of times.

Layout in the download directory, for a file NAME:

    NAME          the verified file (present only once every check passed)
    NAME.part     bytes received so far (resumed with `Range: bytes=<size>-`)
    NAME.sha256   `sha256sum`-format record written after a verified download; later runs
                  re-hash NAME and compare, and re-fetch it if it changed
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from recpar.atomic_write import write_text
from recpar.data.errors import DataError

CHUNK_BYTES = 1 << 20  # 1 MiB read/write/hash block
DEFAULT_MAX_ATTEMPTS = 3  # bounded number of (re-)fetches per file
DEFAULT_TIMEOUT_S = 60.0  # socket timeout per blocking read
USER_AGENT = "recpar-data/0.1 (+https://arxiv.org/abs/2506.17551 reproduction)"

_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch and the facts known about it in advance."""

    name: str  # file name inside the download directory
    url: str  # full URL
    sha256: str | None = None  # expected sha256 hex digest; None = not known in advance
    size_bytes: int | None = None  # expected size; None = trust Content-Length only


class _Retry(Exception):
    """A transfer or check failed in a way another attempt may fix."""


def sha256_file(path: Path, progress: bool = False) -> str:
    """sha256 hex digest of a file, read in CHUNK_BYTES blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=f"sha256 {path.name}",
        disable=not progress, file=sys.stderr, leave=False,
    ) as bar:
        while block := f.read(CHUNK_BYTES):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def verify_gzip(path: Path, progress: bool = False) -> None:
    """Decompress the whole file; raise DataError if it is truncated or fails its CRC."""
    try:
        with open(path, "rb") as raw, tqdm.wrapattr(
            raw, "read", total=path.stat().st_size, desc=f"gzip check {path.name}",
            disable=not progress, file=sys.stderr, leave=False,
        ) as wrapped, gzip.GzipFile(fileobj=wrapped) as gz:
            while gz.read(CHUNK_BYTES * 8):
                pass
    except EOFError as e:
        raise DataError(f"{path}: truncated gzip stream ({e})") from e
    except (gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"{path}: corrupt gzip data ({e})") from e


def read_sidecar(path: Path) -> str | None:
    """The sha256 recorded in `<path>.sha256`, or None if there is none or it is unreadable."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    fields = side.read_text().split()
    return fields[0].lower() if fields and _HEX64.fullmatch(fields[0].lower()) else None


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_sidecar(path: Path, digest: str) -> None:
    """Write `<digest>  <name>` (sha256sum format) atomically beside `path`."""
    write_text(sidecar_path(path), f"{digest}  {path.name}\n")


def ensure_file(
    remote: RemoteFile,
    dest_dir: str | Path,
    *,
    validate: Callable[[Path, bool], None] | None = verify_gzip,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Return the path of a verified local copy of `remote`, downloading it if needed.

    A present file is accepted if its sha256 matches its sidecar (and `remote.sha256` when
    known); without a sidecar it must pass `validate` (and the known sha256/size), after which
    a sidecar is written. Anything else is deleted and fetched again, at most `max_attempts`
    times; on final failure no file is left at the destination and DataError is raised.
    """
    if max_attempts < 1:
        raise DataError(f"max_attempts={max_attempts}: must be >= 1")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / remote.name
    part = dest.with_name(dest.name + ".part")
    expected = remote.sha256.lower() if remote.sha256 else None
    if expected is not None and not _HEX64.fullmatch(expected):
        raise DataError(f"{remote.name}: sha256 {remote.sha256!r} is not 64 hex digits")

    if dest.is_file():
        problem = _check_present(dest, expected, remote.size_bytes, validate, progress)
        if problem is None:
            return dest
        log(f"{dest}: {problem}; fetching it again")
        dest.unlink()
        sidecar_path(dest).unlink(missing_ok=True)

    last: str = "no attempt made"
    for attempt in range(1, max_attempts + 1):
        try:
            _fetch(remote, part, timeout_s, progress)
            problem = _check_content(part, expected, remote.size_bytes, validate, progress)
            if problem is not None:
                part.unlink(missing_ok=True)  # bad content: a resume would keep the bad bytes
                raise _Retry(problem)
        except _Retry as e:
            last = str(e)
            if attempt < max_attempts:
                log(f"{remote.url}: attempt {attempt}/{max_attempts} failed ({last}); retrying")
            continue
        digest = sha256_file(part, progress)
        os.replace(part, dest)
        write_sidecar(dest, digest)
        return dest
    raise DataError(f"{remote.url}: download failed after {max_attempts} attempts: {last}")


def _check_present(
    dest: Path, expected: str | None, size: int | None,
    validate: Callable[[Path, bool], None] | None, progress: bool,
) -> str | None:
    """None if a file already at `dest` is good, else what is wrong with it."""
    recorded = read_sidecar(dest)
    if recorded is None:
        problem = _check_content(dest, expected, size, validate, progress)
        if problem is None:
            write_sidecar(dest, sha256_file(dest, progress))
        return problem
    if expected is not None and recorded != expected:
        return f"sidecar sha256 {recorded} differs from the expected {expected}"
    actual = sha256_file(dest, progress)
    if actual != recorded:
        return f"sha256 {actual} differs from the recorded {recorded} (file changed or corrupt)"
    return None


def _check_content(
    path: Path, expected: str | None, size: int | None,
    validate: Callable[[Path, bool], None] | None, progress: bool,
) -> str | None:
    """None if `path` has the expected size, sha256 and passes `validate`, else the problem."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size {actual_size} bytes, expected {size}"
    if expected is not None:
        actual = sha256_file(path, progress)
        if actual != expected:
            return f"sha256 {actual} differs from the expected {expected}"
    if validate is not None:
        try:
            validate(path, progress)
        except DataError as e:
            return str(e)
    return None


def _fetch(remote: RemoteFile, part: Path, timeout_s: float, progress: bool) -> None:
    """Bring `part` up to the full remote size, resuming what is there. Raises _Retry."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(
            urllib.request.Request(remote.url, headers=headers), timeout=timeout_s
        )
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # our .part is already as long as (or longer than) the file
            total = _parse_content_range(e.headers.get("Content-Range", ""))[2]
            if total is not None and total == offset:
                return
            part.unlink(missing_ok=True)
            raise _Retry(f"stale partial file ({offset} bytes) rejected by the server") from e
        if e.code in (408, 429) or e.code >= 500:
            raise _Retry(f"HTTP {e.code} {e.reason}") from e
        raise DataError(f"{remote.url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retry(f"cannot connect: {getattr(e, 'reason', e)}") from e

    with resp:
        length = resp.headers.get("Content-Length")
        if resp.status == 206:
            start, _end, total = _parse_content_range(resp.headers.get("Content-Range", ""))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Retry(f"server resumed at byte {start}, asked for {offset}")
            mode = "ab"
        else:  # 200: the server ignored Range (or none was sent): start over
            offset = 0
            total = int(length) if length is not None else None
            mode = "wb"
        try:
            with open(part, mode) as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=remote.name,
                disable=not progress, file=sys.stderr,
            ) as bar:
                while chunk := resp.read(CHUNK_BYTES):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            # keep what arrived: the next attempt resumes from it
            raise _Retry(f"transfer interrupted after {part.stat().st_size} bytes: {e}") from e
    got = part.stat().st_size
    if total is not None and got != total:
        if got > total:
            part.unlink(missing_ok=True)
        raise _Retry(f"received {got} of {total} bytes announced by the server")


def _parse_content_range(value: str) -> tuple[int | None, int | None, int | None]:
    """'bytes 10-99/100' -> (10, 99, 100); 'bytes */100' -> (None, None, 100)."""
    m = _CONTENT_RANGE.fullmatch(value.strip())
    if not m:
        return None, None, None
    start = int(m.group(1)) if m.group(1) else None
    end = int(m.group(2)) if m.group(2) else None
    total = int(m.group(3)) if m.group(3) and m.group(3) != "*" else None
    return start, end, total
