"""What every download of ours needs: a resumable HTTP fetch into NAME.part, file hashing, the offline switch.

Callers (assets.py, data.py) keep their own policy: where files go, which checksum, retries, error types.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from . import __version__

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes read per step while downloading or hashing
TIMEOUT_S = 60.0


def offline() -> bool:
    """True when $AUDIOFIND_OFFLINE asks for no network access."""
    return os.environ.get("AUDIOFIND_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's contents ("sha256", "md5", or any other hashlib name)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def fetch_resumable(
    url: str,
    part: Path,
    *,
    expected_size: int | None = None,
    desc: str | None = None,
    progress: bool | None = None,
    timeout: float = TIMEOUT_S,
) -> None:
    """Stream `url` into `part`, asking only for the missing bytes when `part` already holds some.

    A `part` of `expected_size` bytes is left as it is without a request, a longer one is started afresh, and
    a 416 answer to a range request means `part` is whole: the caller's checksum decides either way. A server
    that ignores the range restarts the file; one that answers another range has `part` deleted (what it
    holds cannot be told) and raises OSError. A body shorter than its Content-Length raises OSError and keeps
    what was received, for resuming. Network failures propagate as OSError (URLError, HTTPError, timeouts)
    or http.client.HTTPException. `progress`: a tqdm bar always (True), never (False), or on a terminal only
    (None).
    """
    desc = desc or part.name.removesuffix(".part")
    offset = part.stat().st_size if part.is_file() else 0
    if expected_size is not None and offset >= expected_size:
        if offset == expected_size:
            return  # complete already: the checksum decides
        part.unlink()
        offset = 0
    headers = {"User-Agent": f"audiofind/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to send: the .part is whole; the checksum decides
            return
        raise
    with resp:
        if offset and resp.status != 206:
            log.info("%s: the server ignored the range request; starting over", desc)
            offset = 0
        elif offset and not resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            part.unlink()  # cannot tell what we hold: the next try starts over
            raise OSError(
                f"{url}: asked for bytes {offset}- but the server sent {resp.headers.get('Content-Range')!r}"
            )
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        with (
            open(part, "ab" if offset else "wb") as out,
            tqdm(
                total=offset + expected if expected is not None else expected_size,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                disable=None if progress is None else not progress,  # None: only on a terminal
                leave=False,
            ) as bar,
        ):
            while block := resp.read(CHUNK):
                out.write(block)
                received += len(block)
                bar.update(len(block))
    if expected is not None and received != expected:  # http.client does not raise on a short body
        raise OSError(f"connection closed after {offset + received:,} of {offset + expected:,} bytes")
