"""The embedding-model interface: what the library index, the CLI and the server talk to."""

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

    model_id: str  # recorded in an index; searching with another model is refused...
    audio_model_id: str  # ...unless it has this audio side: clip vectors depend on nothing else
    source: str  # what `load_model` takes to rebuild this model (a name or a checkpoint path)
    dim: int
    sample_rate: int

    def embed_audio(self, waves: list[np.ndarray]) -> AudioEmbeddings:
        """Embed mono float32 waveforms at `sample_rate`, each of any length."""
        ...

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Embed queries as (n, dim) float32 L2-normalised rows."""
        ...
