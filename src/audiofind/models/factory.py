"""`load_model`: one factory from a name or a checkpoint path to a ready `EmbeddingModel`."""

from __future__ import annotations

from .base import EmbeddingModel

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
