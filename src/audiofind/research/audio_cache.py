"""Decoded audio on disk: each file is decoded and resampled to 32 kHz mono once, then read back in slices.

`AudioCache(folder).load(path, offset_s, duration_s)` decodes `path` the first time (any format
`audio.load_audio` reads) and keeps it as a float16 `.npy` next to others in `folder`, keyed by the file's
absolute path, size and mtime (so an edited file is decoded again). Later reads memory-map that array and
copy only the slice asked for, so a 10 s crop of a 30 s clip reads a third of it and a clip read five
times per epoch (once per caption) is decoded once for the whole run. Writes are atomic (a temporary file
renamed into place), so DataLoader workers and DDP ranks can share one folder. Size: 230 MB per hour of
audio (Clotho development about 3 GB, AudioCaps train about 32 GB, WavCaps about 1.7 TB).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import platformdirs

from ..audio import SAMPLE_RATE, load_audio


def default_cache_dir() -> Path:
    """$AUDIOFIND_CACHE/audio-32k, else the per-user cache."""
    root = os.environ.get("AUDIOFIND_CACHE") or platformdirs.user_cache_dir("audiofind")
    return Path(root).expanduser().absolute() / "audio-32k"


class AudioCache:
    """32 kHz mono audio decoded once, sliced from disk; `decodes`, `hits` count this process's reads."""

    def __init__(self, folder: str | os.PathLike[str] | None) -> None:
        self.folder = None if folder is None else Path(folder).expanduser()
        self.decodes = 0
        self.hits = 0

    def _entry(self, path: Path) -> Path:
        st = path.stat()
        key = f"{path.absolute()}\0{st.st_size}\0{st.st_mtime_ns}\0{SAMPLE_RATE}"
        digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()
        assert self.folder is not None
        return self.folder / digest[:2] / f"{digest}.npy"

    def _decode(self, path: Path) -> np.ndarray:
        self.decodes += 1
        return load_audio(path)[0]

    def array(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The whole clip as an array: memory-mapped float16 from the cache, or freshly decoded float32."""
        path = Path(path)
        if self.folder is None:
            return self._decode(path)
        entry = self._entry(path)
        try:
            data = np.load(entry, mmap_mode="r")
        except (OSError, ValueError):  # absent (or unreadable): decode and store
            wave = self._decode(path)
            self._store(entry, wave)
            return wave
        self.hits += 1
        return data

    def load(
        self, path: str | os.PathLike[str], offset_s: float = 0.0, duration_s: float | None = None
    ) -> tuple[np.ndarray, float]:
        """(float32 samples from offset_s, at most duration_s long; the whole clip's duration in s)."""
        data = self.array(path)
        start = max(0, round(offset_s * SAMPLE_RATE))
        stop = None if duration_s is None else start + round(duration_s * SAMPLE_RATE)
        return np.asarray(data[start:stop], dtype=np.float32), len(data) / SAMPLE_RATE

    @staticmethod
    def _store(entry: Path, wave: np.ndarray) -> None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".", suffix=".npy.tmp")
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.clip(wave, -65504, 65504).astype(np.float16))
            os.replace(tmp, entry)
        except OSError:  # a full or read-only disk only costs decoding again next time
            pass


def open_cache(setting: str | None) -> AudioCache:
    """data.audio_cache: "auto" (the default folder), a folder, or None / "none" (decode every time)."""
    if setting is None or str(setting).lower() in ("none", "off", "false"):
        return AudioCache(None)
    return AudioCache(default_cache_dir() if setting == "auto" else setting)
