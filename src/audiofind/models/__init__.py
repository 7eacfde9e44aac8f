"""Embedding models: everything that turns audio and text into vectors of one shared space.

Here live the `EmbeddingModel` interface (`base`), the `load_model` factory (`factory`), the
pretrained encoders (`encoders/`: the EfficientAT tagger and Hugging Face sentence encoders), the
zero-shot bridge from text to the tagger's AudioSet classes (`zeroshot`, `tagging`), and the trainable
dual encoder (`dual_encoder`). Modules here may import the ground floor (`audiofind.audio`,
`assets`, `download`, `paths`) and each other, never `library`, `research`, `server` or `cli`.
"""

from .base import AudioEmbeddings, EmbeddingModel
from .factory import DEFAULT_MODEL, audio_model_id_of, load_model, sentence_encoder, zero_shot_presets

__all__ = [
    "AudioEmbeddings", "DEFAULT_MODEL", "EmbeddingModel", "audio_model_id_of", "load_model",
    "sentence_encoder", "zero_shot_presets",
]
