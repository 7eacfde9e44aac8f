"""`load_model`: one factory from a name or a checkpoint path to a ready `EmbeddingModel`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import EmbeddingModel

if TYPE_CHECKING:
    from .encoders.text import TextEncoder

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


def sentence_encoder(model: EmbeddingModel | None = None) -> TextEncoder:
    """The general-purpose sentence encoder (all-MiniLM-L6-v2) used for clip names, shared with `model` when
    it already holds one (the zero-shot model does), so it is loaded once."""
    from .encoders.text import DEFAULT_TEXT_MODEL, TextEncoder

    own = getattr(model, "text_encoder", None) if model is not None else None
    if isinstance(own, TextEncoder) and own.name == DEFAULT_TEXT_MODEL and own.pooling == "mean":
        return own
    return TextEncoder(DEFAULT_TEXT_MODEL)
