"""A clip's file as an HTTP response: one byte range at a time, with the headers browsers need to seek."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from email.utils import formatdate
from typing import BinaryIO
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..library import ClipRecord
from ..paths import display_path
from .errors import ApiError

CHUNK_BYTES = 256 * 1024
_DIGITS = re.compile(r"[0-9]{1,30}")  # ASCII digits only: str.isdigit() also takes '²' and '٣'

# Browsers need the right type to play and seek; Python's mimetypes misses several of these.
AUDIO_CONTENT_TYPES: dict[str, str] = {
    ".wav": "audio/wav",
    ".wave": "audio/wav",
    ".w64": "audio/x-w64",
    ".rf64": "audio/x-rf64",
    ".aif": "audio/aiff",
    ".aiff": "audio/aiff",
    ".aifc": "audio/aiff",
    ".caf": "audio/x-caf",
    ".au": "audio/basic",
    ".snd": "audio/basic",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".m4b": "audio/mp4",
    ".mp4": "audio/mp4",
    ".aac": "audio/aac",
    ".wv": "audio/x-wavpack",
    ".mka": "audio/x-matroska",
    ".wma": "audio/x-ms-wma",
}


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The one (start, end-inclusive) range a `Range` header asks for; None to send the whole file.

    Raises ApiError(416) for a malformed or unsatisfiable byte range. Several ranges at once, or units
    other than bytes, are ignored (RFC 9110 lets a server send the whole file instead); media players
    only ever ask for one.
    """
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    unsatisfiable = ApiError(
        416,
        "range not satisfiable",
        {"range": header[:100], "size": size},
        headers={"Content-Range": f"bytes */{size}"},
    )
    if not dash or not (first or last) or any(x and not _DIGITS.fullmatch(x) for x in (first, last)):
        raise unsatisfiable
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        raise unsatisfiable
    return start, min(end, size - 1)


def _read_span(f: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    """File bytes [start, start+length) in chunks; closes the file when done or abandoned."""
    try:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(CHUNK_BYTES, length))
            if not chunk:
                break
            length -= len(chunk)
            yield chunk
    finally:
        f.close()


def audio_response(request: Request, rec: ClipRecord, f: BinaryIO, st: os.stat_result) -> Response:
    """200 with the whole file, or 206 with the requested byte range, with the headers seeking needs."""
    size = st.st_size
    etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
    last_modified = formatdate(st.st_mtime, usegmt=True)
    ext = os.path.splitext(rec.path)[1].lower()
    name = os.path.basename(display_path(rec.path))
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Last-Modified": last_modified,
        "Cache-Control": "private, max-age=300",
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": "inline; filename*=utf-8''" + _quote(name),
    }
    media_type = AUDIO_CONTENT_TYPES.get(ext, "application/octet-stream")
    span: tuple[int, int] | None = None
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if range_header and (if_range is None or if_range.strip() in (etag, last_modified)):
        span = parse_range(range_header, size)
    if span is None:
        start, length, status = 0, size, 200
    else:
        start, length, status = span[0], span[1] - span[0] + 1, 206
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{size}"
    headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        f.close()
        return Response(status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(
        _read_span(f, start, length), status_code=status, headers=headers, media_type=media_type
    )


def _quote(name: str) -> str:
    return quote(name, safe="")
