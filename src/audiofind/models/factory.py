"""`load_model`: one factory from a name or a checkpoint path to a ready `EmbeddingModel`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import EmbeddingModel

if TYPE_CHECKING:
    from .encoders.text import TextEncoder
    from .zeroshot import ZeroShotConfig

DEFAULT_MODEL = "default"


def zero_shot_presets() -> dict:
    """Named zero-shot models. "full-window" pads short clips to the tagger's 10 s training length:
    better ranking (BENCHMARKS.md), about three times slower indexing of short sound effects."""
    from .zeroshot import ZeroShotConfig

    return {DEFAULT_MODEL: ZeroShotConfig(), "full-window": ZeroShotConfig(pad_to_s=10.0)}


def _known_zero_shot() -> list[tuple[str, ZeroShotConfig]]:
    """(name `load_model` knows it by, config) of each preset, then each preset on the similarity bridge
    (`text_bridge=""`, the default before the trained bridge) known by its model id: old indexes hold it."""
    from dataclasses import replace

    presets = list(zero_shot_presets().items())
    similarity = [replace(config, text_bridge="") for _, config in presets]
    return presets + [(config.model_id, config) for config in similarity]


def audio_model_id_of(model_id: str) -> str | None:
    """The audio side (`audio_model_id`) of a zero-shot model id this version knows, else None."""
    for _, config in _known_zero_shot():
        if config.model_id == model_id:
            return config.audio_model_id
    return None


def load_model(name: str | None = None, device: str = "cpu", text_backend: str = "torch") -> EmbeddingModel:
    """Build a model from a name ("default", "full-window", a zero-shot model id) or a trained checkpoint.

    `text_backend="numpy"` encodes text with the numpy MiniLM (no torch import: a quick cold search) for
    the zero-shot models; a trained checkpoint always runs on torch.
    """
    from pathlib import Path

    from .zeroshot import ZeroShotModel

    name = name or DEFAULT_MODEL
    for preset, config in _known_zero_shot():
        if name in (preset, config.model_id):
            return ZeroShotModel(config, device=device, source=preset, text_backend=text_backend)
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
    it already holds one (the zero-shot model does: a `TextEncoder` or a `NumpyTextEncoder`), so it is
    loaded once."""
    from .encoders.minilm import DEFAULT_TEXT_MODEL, NumpyTextEncoder

    own = getattr(model, "text_encoder", None) if model is not None else None
    if isinstance(own, NumpyTextEncoder) and own.name == DEFAULT_TEXT_MODEL:
        return own  # type: ignore[return-value]  # the same `encode` and `dim`, without torch
    from .encoders.text import TextEncoder

    if isinstance(own, TextEncoder) and own.name == DEFAULT_TEXT_MODEL and own.pooling == "mean":
        return own
    return TextEncoder(DEFAULT_TEXT_MODEL)
