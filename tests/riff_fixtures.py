"""Hand-built RIFF/WAVE files for tests: chunks, BWF bext, LIST INFO and iXML around real audio."""

from __future__ import annotations

import struct
from pathlib import Path


def wav_fmt_and_data(path: Path) -> tuple[bytes, bytes]:
    """The fmt and data chunk bodies of a real WAV file, to rebuild WAVs with extra chunks around them."""
    raw = path.read_bytes()
    chunks, pos = {}, 12
    while pos + 8 <= len(raw):
        ident, n = raw[pos : pos + 4], struct.unpack("<I", raw[pos + 4 : pos + 8])[0]
        chunks.setdefault(ident, raw[pos + 8 : pos + 8 + n])
        pos += 8 + n + (n & 1)
    return chunks[b"fmt "], chunks[b"data"]


def chunk(ident: bytes, body: bytes) -> bytes:
    return ident + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


def riff_file(*chunks: bytes, form: bytes = b"RIFF") -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return form + struct.pack("<I", len(body) if form == b"RIFF" else 0xFFFFFFFF) + body


def bext_chunk(description: bytes, originator: bytes = b"ZOOM H6") -> bytes:
    """A version-1 BWF bext chunk: description (256), originator (32), ref (32), date, time, ..., history."""
    body = (
        description.ljust(256, b"\0") + originator.ljust(32, b"\0") + b"\0" * 32 + b"2024-05-01" + b"12:00:00"
    )
    body += struct.pack("<QH", 0, 1) + b"\0" * 64 + b"\0" * 10 + b"\0" * 180 + b"A=PCM,F=48000\r\n"
    return chunk(b"bext", body)


def info_chunk(**fields: bytes) -> bytes:
    return chunk(b"LIST", b"INFO" + b"".join(chunk(k.encode(), v + b"\0") for k, v in fields.items()))


def ixml_chunk(inner: str) -> bytes:
    return chunk(b"iXML", f'<?xml version="1.0" encoding="UTF-8"?><BWFXML>{inner}</BWFXML>'.encode())
