"""Where sfx-dev lives for module-level test constants, the small set of its clips several tests index, and a
cheap stand-in for the tagger so library tests run real decoding and SQLite without the real model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from audiofind.models import AudioEmbeddings

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AUDIOFIND_SHARED") or ROOT.parent / "shared")  # as conftest's shared_dir
SFX = SHARED / "data" / "sfx-dev"

# eight short real clips of clearly different sounds (animals, glass, a sword, thunder)
EIGHT_CLIPS = [
    "widelands/data/sound/farm/sheep_00.ogg",
    "widelands/data/sound/animals/bird1_00.ogg",
    "0ad/audio/actor/fauna/animal/chicken_10.ogg",
    "0ad/audio/actor/fauna/animal/cattle_01.ogg",
    "minetest/games/minetest_game/mods/default/sounds/default_break_glass.1.ogg",
    "0ad/audio/attack/weapon/sword_attack_03.ogg",
    "0ad/audio/ambient/weather/thunder_10.ogg",
    "widelands/data/sound/farm/horse_00.ogg",
]


def copy_clip(rel: str, dest: Path, name: str | None = None) -> Path:
    """Copy sfx-dev's `rel` into folder `dest` (under its own name or `name`)."""
    path = dest / (name or Path(rel).name)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SFX / rel, path)
    return path


class SpectrumModel:
    """A cheap deterministic stand-in for the tagger (a coarse spectrum); counts the clips it embeds."""

    model_id = "spectrum-stand-in-v1"
    source = "spectrum"
    dim = 8
    sample_rate = 32_000

    def __init__(self) -> None:
        self.embedded = 0

    def embed_audio(self, waves):
        self.embedded += len(waves)
        vecs = np.stack([np.abs(np.fft.rfft(w[: 1 << 16], 14))[:8] + 1e-3 for w in waves]).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        return AudioEmbeddings(vectors=vecs, tags=[[("Sound", 1.0)] for _ in waves])

    def encode_text(self, texts):
        return np.ones((len(texts), self.dim), np.float32) / np.sqrt(self.dim)
