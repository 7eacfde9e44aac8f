"""Decode any audio file to mono float32 at the model's rate, in bounded memory, with clear errors.

It is longer than 400 lines because everything a hostile or odd file can do to a decoder is met here, in
one place, for both backends (libsndfile and PyAV): FIFOs and devices refused on the opened descriptor,
implausible rates and channel counts refused before allocating, and decoded output capped per file.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf
import soxr

from .paths import printable_path

SAMPLE_RATE = 32_000

# Suffixes the library indexer picks up: libsndfile reads the first two groups, PyAV (FFmpeg) the rest.
_PCM_SUFFIXES = (".wav", ".wave", ".w64", ".rf64", ".aif", ".aiff", ".aifc", ".caf", ".au", ".snd")
_CODEC_SUFFIXES = (".flac", ".ogg", ".oga", ".opus", ".mp3")
_FFMPEG_SUFFIXES = (".m4a", ".m4b", ".aac", ".mp4", ".wv", ".mka", ".wma")
AUDIO_EXTENSIONS: frozenset[str] = frozenset(_PCM_SUFFIXES + _CODEC_SUFFIXES + _FFMPEG_SUFFIXES)

PathLike = str | bytes | os.PathLike[str] | os.PathLike[bytes]

_BLOCK_FRAMES = 1 << 16  # frames decoded per step; bounds the transient memory per block
_TRUNCATION_SLACK = 0.01  # fraction a decoder may fall short of its header before we call the file truncated
_CODEC_PADDING = 4096  # frames an encoder may pad past the declared end (AAC pads to 1024-frame packets)
_MAX_PREALLOC = 1 << 31  # output samples (8 GiB) beyond which a header is not trusted for preallocation

# What a header may claim before anything is allocated for it: a 20 KB WAV that says 1 Hz would otherwise
# decode to 5.5 hours of output. Rates outside these bounds, or absurd channel counts, are refused by name.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 1_536_000
MAX_CHANNELS = 256
# Seconds of output decoded per file when the caller sets no `max_duration`: 2 h is 0.9 GB of float32 at
# 32 kHz. A longer file is decoded up to the cap and its AudioInfo says so (`truncated`).
MAX_DECODE_SECONDS = 2 * 3600.0


class AudioDecodeError(ValueError):
    """An audio file could not be decoded; says which file and why, so a library scan can report and go on."""

    def __init__(self, path: PathLike, reason: str, transient: bool = False):
        self.path = Path(os.fsdecode(path))
        self.reason = reason
        self.transient = transient  # the environment failed (permissions, I/O), not the bytes: worth retrying
        super().__init__(f"cannot decode audio file '{printable_path(path)}': {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Keep the exception picklable (DataLoader workers send it across processes)."""
        return (type(self), (self.path, self.reason, self.transient))


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds, before any conversion."""

    duration: float  # seconds
    sample_rate: int  # native rate of the file
    channels: int
    truncated: str | None = None  # why only part of the file was decoded (the default duration cap)


class _Unsupported(Exception):
    """libsndfile does not recognise the format: worth trying PyAV."""


# ---------------------------------------------------------------- public API


def probe(path: PathLike) -> AudioInfo:
    """Read only the header: cheap enough to run over a whole library before decoding.

    Being header-only, it does not notice a damaged body, and an MP3 without a Xing/Info header gets
    libsndfile's length estimate; load_audio's AudioInfo has the decoded truth.
    """
    with _open(path) as fh:
        try:
            with _sf_open(fh) as f:
                return AudioInfo(f.frames / f.samplerate, f.samplerate, f.channels)
        except _Unsupported as e:
            fh.seek(0)
            return _av_probe(fh, path, str(e))
        except (sf.SoundFileError, RuntimeError, ValueError) as e:
            raise AudioDecodeError(path, _reason(e)) from e


def load_audio(
    path: PathLike, sample_rate: int = SAMPLE_RATE, max_duration: float | None = None
) -> tuple[np.ndarray, AudioInfo]:
    """Decode to mono float32 at `sample_rate`, reading block by block so long files stay cheap.

    Channels are averaged and non-finite samples become 0. `max_duration` (seconds) stops decoding early;
    None means MAX_DECODE_SECONDS, after which the wave is cut and `AudioInfo.truncated` says why, and
    `math.inf` decodes everything. The returned AudioInfo describes the file itself: native rate, channels
    and its whole duration.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if max_duration is not None and max_duration <= 0:
        raise ValueError(f"max_duration must be positive or None, got {max_duration}")
    capped = max_duration is None
    limit = MAX_DECODE_SECONDS if max_duration is None else None if math.isinf(max_duration) else max_duration
    with _open(path) as fh:
        try:
            wave, info = _sf_load(fh, path, sample_rate, limit)
        except _Unsupported as e:
            fh.seek(0)
            wave, info = _av_load(fh, path, sample_rate, limit, str(e))
        except AudioDecodeError:
            raise
        except (sf.SoundFileError, RuntimeError, ValueError) as e:
            raise AudioDecodeError(path, _reason(e)) from e
    if capped and limit is not None and info.duration > limit + 1.0 / sample_rate:
        info = AudioInfo(info.duration, info.sample_rate, info.channels,
                         f"decoded only the first {limit:g} s of {info.duration:.1f} s (the per-file cap; "
                         f"pass max_duration to change it)")
    return wave, info


def frame_windows(
    wave: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    window_s: float = 10.0,
    hop_s: float | None = None,
    min_s: float = 1.0,
) -> np.ndarray:
    """Cut a wave into (n_windows, window_len) float32 windows for a model that sees `window_s` at a time.

    A wave no longer than one window comes back as a single window of its own length (zero-padded up to
    `min_s`); a longer one is covered by windows at 0, hop, 2*hop, ... plus one flush with the end.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {wave.shape}")
    if window_s <= 0 or (hop_s is not None and hop_s <= 0) or min_s < 0:
        raise ValueError(f"need window_s > 0, hop_s > 0 and min_s >= 0 ({window_s=}, {hop_s=}, {min_s=})")
    win = max(1, round(window_s * sample_rate))
    hop = max(1, round((hop_s if hop_s is not None else window_s) * sample_rate))
    min_len = min(win, round(min_s * sample_rate))
    n = len(wave)
    if n <= win:
        out = np.zeros((1, max(n, min_len)), dtype=np.float32)
        out[0, :n] = wave
        return out
    starts = np.arange(0, n - win + 1, hop)
    if starts[-1] != n - win:
        starts = np.append(starts, n - win)
    return np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(wave, win)[starts])


# ---------------------------------------------------------------- shared plumbing


@contextmanager
def _open(path: PathLike) -> Iterator[BinaryIO]:
    """Open the file ourselves: a file object sidesteps name-encoding issues; OS errors get a clear reason."""
    try:
        fh = open_regular(path)
    except FileNotFoundError as e:
        raise AudioDecodeError(path, "file not found", transient=True) from e
    except IsADirectoryError as e:
        raise AudioDecodeError(path, "is a directory, not a file") from e
    except NotRegularFileError as e:
        raise AudioDecodeError(path, str(e)) from e
    except OSError as e:
        raise AudioDecodeError(path, e.strerror or str(e), transient=True) from e
    with fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise AudioDecodeError(path, "file is empty (0 bytes)")
        yield fh


class NotRegularFileError(OSError):
    """A FIFO, socket or device where a file was expected: reading it could block forever."""


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISDIR, "a directory"))


def special_file_kind(mode: int) -> str | None:
    """'a FIFO (named pipe)' etc. for a non-regular st_mode, None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: PathLike) -> BinaryIO:
    """Open for reading without ever blocking: O_NONBLOCK (a FIFO opens at once instead of waiting for a
    writer), then fstat on the opened descriptor (so a file swapped for a FIFO after listing is caught)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        kind = special_file_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise NotRegularFileError(f"not a regular file: {kind}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _reason(e: BaseException) -> str:
    """Short human reason from a decoder exception."""
    msg = str(e).strip()
    if msg.startswith("Error opening") and ": " in msg:  # drop libsndfile's "Error opening <file object>: "
        msg = msg.rsplit(": ", 1)[-1]
    return msg or type(e).__name__


def _sf_open(fh: BinaryIO) -> sf.SoundFile:
    """Open with libsndfile; anything it refuses to open is worth a second try with FFmpeg."""
    try:
        f = sf.SoundFile(fh)
    except (sf.SoundFileError, RuntimeError) as e:
        raise _Unsupported(_reason(e)) from e
    if f.samplerate <= 0 or f.channels <= 0:
        f.close()
        raise ValueError(f"invalid header (sample rate {f.samplerate}, channels {f.channels})")
    try:
        check_format(f.samplerate, f.channels)
    except ValueError:
        f.close()
        raise
    return f


def check_format(rate: int, channels: int) -> None:
    """Refuse a header whose rate or channel count no real recording has, before allocating for it."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"implausible sample rate {rate} Hz in the header "
                         f"(accepted: {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)")
    if not 0 < channels <= MAX_CHANNELS:
        raise ValueError(f"implausible channel count {channels} in the header (accepted: 1-{MAX_CHANNELS})")


class _MonoSink:
    """Downmix, clean and resample blocks as they arrive, into one output array sized from the header."""

    def __init__(self, in_rate: int, out_rate: int, expected_in: int):
        self.ratio = Fraction(out_rate, in_rate)
        self.stream = None
        if in_rate != out_rate:
            self.stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32")
        size = math.ceil(max(expected_in, 0) * self.ratio) + 16
        self.out = np.empty(size if size <= _MAX_PREALLOC else 1 << 20, dtype=np.float32)  # else grow
        self.n_out = 0
        self.n_in = 0

    def push(self, block: np.ndarray) -> None:
        """Add a (frames, channels) float32 block."""
        mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        if not np.isfinite(mono).all():
            mono = np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)
        self.n_in += len(mono)
        self._write(mono if self.stream is None else self.stream.resample_chunk(mono))

    def finish(self, path: PathLike, n_in: int | None = None) -> np.ndarray:
        """Flush the resampler and return the wave, cut to `n_in` input frames when given."""
        if self.stream is not None:
            self._write(self.stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        n_out = self.n_out if n_in is None else min(self.n_out, round(n_in * self.ratio))
        if n_out == 0:
            raise AudioDecodeError(path, "no audio samples (empty or truncated stream)")
        self.out.resize(n_out, refcheck=False)  # give back what the header over-estimated; no views exist
        return self.out

    def _write(self, chunk: np.ndarray) -> None:
        if not np.isfinite(chunk).all():  # resampling huge values can overflow float32
            chunk = np.nan_to_num(chunk, nan=0.0, posinf=0.0, neginf=0.0)
        end = self.n_out + len(chunk)
        if end > len(self.out):  # the header under-counted: grow geometrically
            grown = np.empty(max(end, 2 * len(self.out)), dtype=np.float32)
            grown[: self.n_out] = self.out[: self.n_out]
            self.out = grown
        self.out[self.n_out : end] = chunk
        self.n_out = end


def _limit(max_duration: float | None, rate: int) -> int | None:
    """Native frames to read for `max_duration`, or None for all."""
    return None if max_duration is None else max(1, math.ceil(max_duration * rate))


# ---------------------------------------------------------------- libsndfile


def _sf_load(
    fh: BinaryIO, path: PathLike, sample_rate: int, max_duration: float | None
) -> tuple[np.ndarray, AudioInfo]:
    """Decode with libsndfile (wav, flac, ogg/vorbis, opus, mp3, aiff, ...)."""
    with _sf_open(fh) as f:
        limit = _limit(max_duration, f.samplerate)
        want = f.frames if limit is None else min(f.frames, limit)
        sink = _MonoSink(f.samplerate, sample_rate, want)
        while limit is None or sink.n_in < limit:
            step = _BLOCK_FRAMES if limit is None else min(_BLOCK_FRAMES, limit - sink.n_in)
            try:
                block = f.read(step, dtype="float32", always_2d=True)
            except (sf.SoundFileError, RuntimeError) as e:
                raise AudioDecodeError(
                    path, f"decoding failed after {sink.n_in} frames (truncated or corrupt): {_reason(e)}"
                ) from e
            if len(block) == 0:
                break
            sink.push(block)
        # MP3 frame counts are estimates unless a Xing/Info header is present, so only trust exact formats
        if f.format != "MP3" and 0 < sink.n_in < want * (1 - _TRUNCATION_SLACK):
            raise AudioDecodeError(
                path, f"truncated: the header declares {want} frames but only {sink.n_in} could be decoded"
            )
        total = sink.n_in if limit is None or sink.n_in < limit else max(f.frames, sink.n_in)
        return sink.finish(path), AudioInfo(total / f.samplerate, f.samplerate, f.channels)


# ---------------------------------------------------------------- PyAV fallback


def _import_av(path: PathLike, why: str) -> Any:
    """PyAV (a default dependency) decodes what libsndfile cannot; if it is missing, say so only for the
    formats that need it, so a file that is simply not audio is not blamed on the install."""
    try:
        import av
    except ImportError as e:
        suffix = os.path.splitext(os.fsdecode(path))[1].lower()
        if suffix in _FFMPEG_SUFFIXES:
            reason = f"libsndfile cannot read {suffix} files and PyAV is missing from this install: " \
                "pip install av"
        else:
            reason = f"not audio libsndfile can read ({why})"
        raise AudioDecodeError(path, reason) from e
    return av


@contextmanager
def _av_open(fh: BinaryIO, path: PathLike, why: str) -> Iterator[tuple[Any, Any]]:
    """Open with FFmpeg and yield (container, first audio stream); FFmpeg failures become AudioDecodeError."""
    av = _import_av(path, why)
    try:
        with av.open(fh) as container:
            if not container.streams.audio:
                raise AudioDecodeError(path, "the file has no audio stream")
            yield container, container.streams.audio[0]
    except AudioDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as e:
        raise AudioDecodeError(path, f"libsndfile: {why}; FFmpeg: {getattr(e, 'strerror', None) or e}") from e


def _av_format(stream: Any) -> tuple[int, int]:
    """(sample rate, channels) across PyAV versions."""
    cc = stream.codec_context
    layout = getattr(cc, "layout", None)
    channels = getattr(layout, "nb_channels", 0) or getattr(cc, "channels", 0) or 0
    return int(cc.sample_rate or stream.rate or 0), int(channels)


def _av_header_frames(container: Any, stream: Any, rate: int) -> int | None:
    """Frame count the container declares, if any."""
    if stream.duration and stream.time_base:
        return round(stream.duration * stream.time_base * rate)
    if container.duration:
        return round(container.duration * rate / 1_000_000)  # container durations are in microseconds
    return None


def _av_blocks(container: Any, stream: Any) -> Iterator[np.ndarray]:
    """Decoded audio as (frames, channels) float32 blocks, whatever the codec's sample format."""
    for frame in container.decode(stream):
        a = frame.to_ndarray()
        a = a.T if frame.format.is_planar else a.reshape(-1, frame.layout.nb_channels)
        if a.dtype.kind in "iu":  # integer PCM: centre and scale to [-1, 1)
            lo, hi = np.iinfo(a.dtype).min, np.iinfo(a.dtype).max
            a = (a.astype(np.float32) - (hi + 1 + lo) / 2) / ((hi - lo + 1) / 2)
        yield a.astype(np.float32, copy=False)


def _av_probe(fh: BinaryIO, path: PathLike, why: str) -> AudioInfo:
    """Header info through FFmpeg, for formats libsndfile does not know."""
    with _av_open(fh, path, why) as (container, stream):
        rate, channels = _av_format(stream)
        if rate <= 0:
            raise AudioDecodeError(path, "the audio stream declares no sample rate")
        frames = _av_header_frames(container, stream, rate)
        if frames is None:  # no duration in the header (rare): count by decoding
            frames = sum(len(b) for b in _av_blocks(container, stream))
        return AudioInfo(frames / rate, rate, channels)


def _av_load(
    fh: BinaryIO, path: PathLike, sample_rate: int, max_duration: float | None, why: str
) -> tuple[np.ndarray, AudioInfo]:
    """Decode through FFmpeg (m4a/aac, wavpack, ...) with the same block-wise downmix and resampling."""
    with _av_open(fh, path, why) as (container, stream):
        rate, channels = _av_format(stream)
        if rate <= 0:
            raise AudioDecodeError(path, "the audio stream declares no sample rate")
        try:
            check_format(rate, channels or 1)
        except ValueError as e:
            raise AudioDecodeError(path, str(e)) from e
        header = _av_header_frames(container, stream, rate)
        limit = _limit(max_duration, rate)
        sink = _MonoSink(rate, sample_rate, min((x for x in (limit, header) if x), default=0))
        for block in _av_blocks(container, stream):
            channels = channels or block.shape[1]
            sink.push(block if limit is None else block[: limit - sink.n_in])
            if limit is not None and sink.n_in >= limit:
                break
        decoded = sink.n_in
        if header and header <= decoded <= header + _CODEC_PADDING:  # encoder padding past the declared end
            decoded = header
        whole = decoded if limit is None or sink.n_in < limit else max(header or 0, decoded)
        return sink.finish(path, decoded), AudioInfo(whole / rate, rate, channels)
