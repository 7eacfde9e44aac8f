"""Where sfx-dev lives for module-level test constants, and the small set of its clips several tests index."""

from __future__ import annotations

import os
from pathlib import Path

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
