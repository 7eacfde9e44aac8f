"""Embedding models: the one interface the library index, the CLI and the server talk to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class AudioEmbeddings:
    """A batch of clip embeddings plus what the tagger heard, for display."""

    vectors: np.ndarray  # (n, dim) float32, L2-normalised
    tags: list[list[tuple[str, float]]]  # per clip: top AudioSet (label, probability), best first


class EmbeddingModel(Protocol):
    """Anything that puts audio and text into one space where cosine similarity means relevance."""

    model_id: str  # recorded in an index; searching with another model is refused
    source: str  # what `load_model` takes to rebuild this model (a name or a checkpoint path)
    dim: int
    sample_rate: int

    def embed_audio(self, waves: list[np.ndarray]) -> AudioEmbeddings:
        """Embed mono float32 waveforms at `sample_rate`, each of any length."""
        ...

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Embed queries as (n, dim) float32 L2-normalised rows."""
        ...


DEFAULT_MODEL = "default"


def zero_shot_presets() -> dict:
    """Named zero-shot models. "full-window" pads short clips to the tagger's 10 s training length:
    better ranking (BENCHMARKS.md), about three times slower indexing of short sound effects."""
    from .zeroshot import ZeroShotConfig

    return {DEFAULT_MODEL: ZeroShotConfig(), "full-window": ZeroShotConfig(pad_to_s=10.0)}


def load_model(name: str | None = None, device: str = "cpu") -> EmbeddingModel:
    """Build a model from a name ("default", "full-window", a zero-shot model id) or a trained checkpoint."""
    from pathlib import Path

    from .zeroshot import ZeroShotModel

    name = name or DEFAULT_MODEL
    for preset, config in zero_shot_presets().items():
        if name in (preset, config.model_id):
            return ZeroShotModel(config, device=device, source=preset)
    path = Path(name).expanduser()
    if path.is_file():
        from .dual_encoder import DualEncoderModel

        return DualEncoderModel.load(path, device=device)
    raise ValueError(
        f"unknown model {name!r}: use {' or '.join(repr(p) for p in zero_shot_presets())} (zero-shot) "
        "or the path of a checkpoint written by `audiofind train`"
    )
