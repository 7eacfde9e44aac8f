"""Shared fixtures: where the read-only shared data lives, and generated audio files in tmp_path."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_root() -> Path:
    """$AUDIOFIND_SHARED, else ../shared next to the repository."""
    return Path(os.environ.get("AUDIOFIND_SHARED") or REPO_ROOT.parent / "shared")


def _default_assets() -> Path:
    """First folder of $AUDIOFIND_ASSETS, else ../shared/assets."""
    first = os.environ.get("AUDIOFIND_ASSETS", "").split(os.pathsep)[0]
    return Path(first) if first else _shared_root() / "assets"


@pytest.fixture(scope="session", autouse=True)
def _hermetic_assets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never download or write to the user's cache: assets come from the shared folder."""
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("AUDIOFIND_ASSETS") and _default_assets().is_dir():
            mp.setenv("AUDIOFIND_ASSETS", str(_default_assets()))
        mp.setenv("AUDIOFIND_CACHE", str(tmp_path_factory.mktemp("audiofind-cache")))
        mp.setenv("AUDIOFIND_OFFLINE", "1")
        yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only shared data folder (skips when absent)."""
    root = _shared_root()
    if not root.is_dir():
        pytest.skip(f"shared data folder not found at {root} (set AUDIOFIND_SHARED)")
    return root


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """Folder holding the pretrained files (skips when absent)."""
    path = _default_assets()
    if not (path / "mn04_as_mAP_432.pt").is_file():
        pytest.skip(f"pretrained assets not found in {path} (set AUDIOFIND_ASSETS)")
    return path


@pytest.fixture(scope="session")
def sfx_dir(shared_dir: Path) -> Path:
    """The sfx-dev sound-effect collection with its manifest.tsv (skips when absent)."""
    path = shared_dir / "data" / "sfx-dev"
    if not (path / "manifest.tsv").is_file():
        pytest.skip(f"sfx-dev not found at {path}")
    return path


# soundfile picks the container from the suffix; these suffixes need telling
_SF_FORMATS = {".opus": ("OGG", "OPUS"), ".oga": ("OGG", "VORBIS"), ".ogg": ("OGG", "VORBIS")}


@pytest.fixture
def tone_file(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a sine (or given samples) with soundfile into tmp_path; returns the path.

    tone_file("a.flac", freq=1000, sample_rate=44_100, duration=1.5, channels=2)
    tone_file("b.wav", data=array_of_shape_(frames, channels), sample_rate=32_000, subtype="FLOAT")
    """

    def make(
        name: str = "tone.wav",
        *,
        freq: float = 440.0,
        sample_rate: int = 44_100,
        duration: float = 1.0,
        channels: int = 1,
        amplitude: float = 0.5,
        data: np.ndarray | None = None,
        format: str | None = None,
        subtype: str | None = None,
    ) -> Path:
        if data is None:
            t = np.arange(round(duration * sample_rate)) / sample_rate
            data = np.repeat((amplitude * np.sin(2 * np.pi * freq * t))[:, None], channels, axis=1)
        path = tmp_path / name
        default_format, default_subtype = _SF_FORMATS.get(path.suffix.lower(), (None, None))
        sf.write(
            path,
            np.asarray(data, dtype=np.float32),
            sample_rate,
            format=format or default_format,
            subtype=subtype or default_subtype,
        )
        return path

    return make
