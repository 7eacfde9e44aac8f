"""Training data: captioned-clip datasets, batching and augmentation, separate from the training loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..audio import SAMPLE_RATE
from .audio_cache import AudioCache
from .data import CaptionedClip, load_captions_csv, load_clotho
from .sources import SourceConfig, TrainingData, load_sources
from .train_config import AugmentConfig, DataConfig

__all__ = [
    "CaptionDataset",
    "WaveDataset",
    "augment_caption",
    "collate",
    "crop_or_pad",
    "load_split",
    "load_training",
    "training_sources",
    "mixup",
]


def augment_caption(text: str, generator: torch.Generator | None, dropout: float, swap: float) -> str:
    """Random word dropout (keeping at least one word) and one random swap of neighbouring words."""
    words = text.split()
    if dropout > 0 and len(words) > 1:
        keep = [w for w in words if torch.rand((), generator=generator).item() >= dropout]
        words = keep or [words[int(torch.randint(len(words), (), generator=generator))]]
    if swap > 0 and len(words) > 1 and torch.rand((), generator=generator).item() < swap:
        i = int(torch.randint(len(words) - 1, (), generator=generator))
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def crop_or_pad(wave: np.ndarray, length: int, random_offset: bool) -> np.ndarray:
    """Exactly `length` samples: a (random) crop of a long clip, a short one repeated to fill the window.

    Repeating rather than zero-padding keeps a short sound's frame statistics what inference sees, since
    inference embeds short clips at their natural length.
    """
    if len(wave) > length:
        start = int(torch.randint(len(wave) - length + 1, ())) if random_offset else 0
        return wave[start : start + length]
    if len(wave) == 0:
        return np.zeros(length, np.float32)
    return np.resize(wave, length)


class CaptionDataset(Dataset):
    """Training items: (wave cropped/padded to window_s, one caption, clip index, caption index).

    With `clip_s` (whole clips, as the DCASE baseline trains) a clip is zero-padded to clip_s, or cropped
    at random when longer, and the item carries its real duration for the segment weights."""

    def __init__(
        self,
        clips: list[CaptionedClip],
        window_s: float,
        items: str = "clips",
        augment: AugmentConfig | None = None,
        clip_s: float | None = None,
        cache: AudioCache | None = None,
    ) -> None:
        if items not in ("clips", "captions"):
            raise ValueError(f"data.items must be 'clips' or 'captions', not {items!r}")
        self.clips, self.augment = clips, augment or AugmentConfig()
        self.clip_s, self.cache = clip_s, cache or AudioCache(None)
        self.length = round((clip_s or window_s) * SAMPLE_RATE)
        self.offsets = np.concatenate([[0], np.cumsum([len(c.captions) for c in clips])]).astype(int)
        self.index = (
            [(c, None) for c in range(len(clips))]
            if items == "clips"
            else [(c, k) for c, clip in enumerate(clips) for k in range(len(clip.captions))]
        )

    def __len__(self) -> int:
        return len(self.index)

    def item_clips(self) -> list[int]:
        return [c for c, _ in self.index]

    def __getitem__(self, i: int) -> dict[str, Any]:
        c, k = self.index[i]
        clip, aug = self.clips[c], self.augment
        if k is None:
            k = int(torch.randint(len(clip.captions), ()))
        data = self.cache.array(clip.audio_path)  # memory-mapped when cached: only the crop is read
        start = 0
        if len(data) > self.length and (aug.random_crop or self.clip_s is not None):
            start = int(torch.randint(len(data) - self.length + 1, ()))
        wave = np.asarray(data[start : start + self.length], dtype=np.float32)
        duration = len(wave) / SAMPLE_RATE
        if self.clip_s is not None:
            wave = np.pad(wave, (0, self.length - len(wave)))
        else:
            wave = crop_or_pad(wave, self.length, False)
        if aug.gain_db > 0:
            wave = wave * 10 ** ((torch.rand(()).item() * 2 - 1) * aug.gain_db / 20)
        caption = augment_caption(clip.captions[k], None, aug.word_dropout, aug.word_swap)
        return {
            "wave": torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)),
            "caption": caption,
            "clip": c,
            "caption_id": int(self.offsets[c] + k),
            "duration": duration,
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "wave": torch.stack([it["wave"] for it in items]),
        "duration": torch.tensor([it.get("duration", 0.0) for it in items], dtype=torch.float32),
        "caption": [it["caption"] for it in items],
        "clip": torch.tensor([it["clip"] for it in items]),
        "caption_id": torch.tensor([it["caption_id"] for it in items]),
    }


class WaveDataset(Dataset):
    """Whole clips for validation and teacher embedding, decoded in DataLoader workers."""

    def __init__(self, clips: list[CaptionedClip], cache: AudioCache | None = None) -> None:
        self.clips, self.cache = clips, cache or AudioCache(None)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.cache.array(self.clips[i].audio_path), dtype=np.float32)


def training_sources(data: DataConfig) -> list[SourceConfig]:
    """data.sources, or the single source that clotho_root/train_split or train_csv describe."""
    if data.sources:
        return [SourceConfig.from_dict(dict(s)) for s in data.sources]
    if data.train_csv:
        return [SourceConfig("csv", path=data.train_csv, audio_root=data.audio_root, name="train")]
    if data.clotho_root and data.train_split:
        return [SourceConfig("clotho", root=data.clotho_root, split=data.train_split)]
    raise ValueError(
        "no training data: set data.clotho_root (Clotho), data.train_csv (your own CSV) or data.sources"
    )


def load_training(data: DataConfig) -> TrainingData:
    """Every training source, filtered by the DCASE 2025 exclusion list (data.exclude)."""
    return load_sources(training_sources(data), data.exclude)


def load_split(data: DataConfig, which: str) -> list[CaptionedClip]:
    """Training or validation clips, from Clotho or a captions CSV; [] when that split is not set."""
    csv_path = data.train_csv if which == "train" else data.val_csv
    split = data.train_split if which == "train" else data.val_split
    if csv_path:
        return load_captions_csv(csv_path, data.audio_root, split=which)
    if data.clotho_root and split:
        return load_clotho(data.clotho_root, split)
    if which == "train":
        raise ValueError("no training data: set data.clotho_root (Clotho) or data.train_csv (your own CSV)")
    return []


def mixup(batch: dict[str, Any], prob: float) -> Tensor:
    """Replace some items by a 50/50 mix with another item (captions joined); returns which were mixed."""
    n = len(batch["caption"])
    mixed = torch.rand(n) < prob if n > 1 else torch.zeros(n, dtype=torch.bool)
    for i in mixed.nonzero().flatten().tolist():
        j = (i + int(torch.randint(1, n, ()))) % n
        batch["wave"][i] = 0.5 * (batch["wave"][i] + batch["wave"][j])
        batch["caption"][i] = f"{batch['caption'][i].rstrip('. ')} and {batch['caption'][j]}"
    return mixed
