"""The blocking work behind the workbench routes: format filters, region cuts as WAV, collection exports.

Kept apart from `service` (search, streaming, waveforms) so the two change independently; everything that
opens a clip's file goes through `LibraryService.open_clip_file`, so the same containment check applies.
"""

from __future__ import annotations

import csv
import io
import os
import struct
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import soundfile as sf

from ..library import SearchResult
from ..library.collections import CollectionItem
from ..paths import display_path
from .errors import ApiError
from .service import LibraryService

MAX_OVERFETCH = 10_000  # most hits asked of the index to find k of a wanted format
MAX_REGION_SECONDS = 600.0
MAX_REGION_BYTES = 2**31  # a RIFF size field is 32 bits; stay well inside it
REGION_BLOCK_FRAMES = 65_536

Format = tuple[int, int]  # (sample rate, channels)


# ---------------------------------------------------------------- formats on search results


def search_with_formats(
    service: LibraryService,
    search: Callable[[int], list[SearchResult]],
    k: int,
    sample_rate: int | None = None,
    channels: int | None = None,
) -> tuple[list[SearchResult], dict[int, Format]]:
    """The best `k` hits of `search(n)` whose clips have the wanted rate and channels, and hits' formats.

    With no format wanted this is one search. With one, the index is asked for 4x more hits each round
    (up to MAX_OVERFETCH) until `k` pass or the index runs out, so the filter never edits the searcher.
    """
    collections = service.library.collections
    n = k
    while True:
        hits = search(n)
        formats = collections.formats(h.id for h in hits)
        if sample_rate is None and channels is None:
            return hits, formats
        kept = [h for h in hits if _wanted(formats.get(h.id), sample_rate, channels)]
        if len(kept) >= k or len(hits) < n or n >= MAX_OVERFETCH:
            return kept[:k], formats
        n = min(MAX_OVERFETCH, n * 4)


def _wanted(fmt: Format | None, sample_rate: int | None, channels: int | None) -> bool:
    if fmt is None:
        return False
    return (sample_rate is None or fmt[0] == sample_rate) and (channels is None or fmt[1] == channels)


# ---------------------------------------------------------------- a region as WAV

# libsndfile subtypes copied sample for sample; anything else (lossy, ADPCM, 8-bit) becomes 32-bit float
_PCM = {"PCM_16": ("int16", 16, 1), "PCM_24": ("int32", 24, 1), "PCM_32": ("int32", 32, 1),
        "FLOAT": ("float32", 32, 3), "DOUBLE": ("float32", 32, 3)}
_FLOAT = ("float32", 32, 3)


def region_wav(
    service: LibraryService, clip_id: int, start: float, end: float
) -> tuple[dict[str, Any], Iterator[bytes]]:
    """(facts, WAV bytes) of [start, end) seconds of a clip: frames round(start*sr) to round(end*sr).

    The cut keeps the file's own rate and channels (no resampling, no mixing) and its PCM depth; it is
    read and sent in blocks, so memory stays bounded whatever the length. `end` past the file's end is
    cut at the end; a region starting past it, empty, or longer than MAX_REGION_SECONDS is a 400.
    """
    if not (np.isfinite(start) and np.isfinite(end)) or start < 0:
        raise ApiError(400, "start and end are seconds from the start of the clip",
                       {"start": start, "end": end})
    if end <= start:
        raise ApiError(400, "end must be after start", {"start": start, "end": end})
    if end - start > MAX_REGION_SECONDS:
        raise ApiError(400, "region too long", {"max_seconds": MAX_REGION_SECONDS, "seconds": end - start})
    rec, f, _ = service.open_clip_file(clip_id)
    try:
        snd = sf.SoundFile(f)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        f.close()
        raise ApiError(415, "this clip's format cannot be cut on the server",
                       {"id": clip_id, "reason": str(e)}) from None
    rate, chans, total = snd.samplerate, snd.channels, snd.frames
    first, last = round(start * rate), min(round(end * rate), total)
    if first >= total or last <= first:
        snd.close()
        f.close()
        raise ApiError(400, "the region lies past the end of the clip",
                       {"start": start, "end": end, "duration": round(total / rate, 6)})
    dtype, bits, tag = _PCM.get(snd.subtype, _FLOAT)
    frames = last - first
    data_bytes = frames * chans * bits // 8
    if data_bytes > MAX_REGION_BYTES:
        snd.close()
        f.close()
        raise ApiError(400, "region too large to send as one WAV", {"bytes": data_bytes})
    facts = {"name": _region_name(rec.path, first / rate, last / rate), "frames": frames,
             "sample_rate": rate, "channels": chans, "start_frame": first, "bits": bits,
             "length": 44 + (12 if tag == 3 else 0) + data_bytes}

    def body() -> Iterator[bytes]:
        try:
            yield _wav_header(rate, chans, bits, tag, frames)
            snd.seek(first)
            left = frames
            while left > 0:
                block = snd.read(min(REGION_BLOCK_FRAMES, left), dtype=dtype, always_2d=True)
                if len(block) == 0:  # the file shrank under us: pad with silence, the header promised it
                    block = np.zeros((min(REGION_BLOCK_FRAMES, left), chans), dtype=dtype)
                left -= len(block)
                yield _pack(block, bits)
        finally:
            snd.close()
            f.close()

    return facts, body()


def _wav_header(rate: int, chans: int, bits: int, tag: int, frames: int) -> bytes:
    align = chans * bits // 8
    data = frames * align
    fmt = struct.pack("<HHIIHH", tag, chans, rate, rate * align, align, bits)
    fact = b"fact" + struct.pack("<II", 4, frames) if tag == 3 else b""
    riff = 4 + (8 + len(fmt)) + len(fact) + 8 + data
    return b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + fact \
        + b"data" + struct.pack("<I", data)


def _pack(block: np.ndarray, bits: int) -> bytes:
    if bits == 24:  # libsndfile hands 24-bit PCM left-aligned in int32: keep the top three bytes
        as_bytes = (block.astype("<i4") >> 8).view(np.uint8).reshape(-1, 4)[:, :3]
        return as_bytes.tobytes()
    return block.astype(block.dtype.newbyteorder("<"), copy=False).tobytes()


def _region_name(path: str, start: float, end: float) -> str:
    stem = os.path.splitext(os.path.basename(display_path(path)))[0]
    return f"{stem}_{start:.3f}-{end:.3f}.wav"


# ---------------------------------------------------------------- collection exports

CSV_COLUMNS = ["path", "name", "clip_id", "duration", "sample_rate", "channels", "content_hash", "added_at"]


def collection_csv(items: list[CollectionItem]) -> str:
    """One row per item, paths as the index shows them."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for it in items:
        shown = display_path(it.path)
        writer.writerow([shown, os.path.basename(shown), "" if it.clip_id is None else it.clip_id,
                         "" if it.duration is None else round(it.duration, 3), it.sample_rate or "",
                         it.channels or "", it.content_hash, it.added_at])
    return out.getvalue()


class _Sink:
    """A write-only stream for ZipFile whose bytes are taken out as they come (ZipFile handles no seek)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.pos = 0  # bytes written in all
        self.buffered = 0  # bytes not yet taken

    def write(self, b: bytes) -> int:
        self.parts.append(bytes(b))
        self.pos += len(b)
        self.buffered += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.parts, self.buffered = b"".join(self.parts), [], 0
        return data


def collection_zip(service: LibraryService, items: list[CollectionItem]) -> Iterator[bytes]:
    """The files of a collection as a stored (uncompressed: audio does not shrink) ZIP, streamed.

    Items whose clip is no longer indexed, or whose file cannot be served, are listed in MISSING.txt.
    """
    sink = _Sink()
    missing: list[str] = []
    used: set[str] = set()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for it in items:
            if it.clip_id is None:
                missing.append(f"{display_path(it.path)}\tnot in the index")
                continue
            try:
                _, f, st = service.open_clip_file(it.clip_id)
            except ApiError as e:
                missing.append(f"{display_path(it.path)}\t{e.error}")
                continue
            with f:
                info = zipfile.ZipInfo(_unique(os.path.basename(display_path(it.path)), used))
                info.file_size = st.st_size
                with zf.open(info, "w", force_zip64=st.st_size > 2**31) as dest:
                    while chunk := f.read(256 * 1024):
                        dest.write(chunk)
                        if sink.buffered >= 1024 * 1024:
                            yield sink.take()
            yield sink.take()
        if missing:
            zf.writestr("MISSING.txt", "\n".join(missing) + "\n")
    yield sink.take()


def _unique(name: str, used: set[str]) -> str:
    stem, ext = os.path.splitext(name)
    candidate, n = name, 1
    while candidate.lower() in used:
        n += 1
        candidate = f"{stem} ({n}){ext}"
    used.add(candidate.lower())
    return candidate
