"""Sentence encoders from Hugging Face transformers, usable frozen (zero-shot) or fine-tuned (training)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import platformdirs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .minilm import DEFAULT_TEXT_MODEL, resolve_text_model


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("AUDIOFIND_OFFLINE") == "1"


def materialise_files(files: dict[str, bytes]) -> Path:
    """Write a checkpoint's tokenizer and config files into the cache once; returns that folder."""
    digest = hashlib.sha256(b"".join(k.encode() + b"\0" + v for k, v in sorted(files.items()))).hexdigest()
    root = Path(os.environ.get("AUDIOFIND_CACHE") or platformdirs.user_cache_dir("audiofind")).expanduser()
    folder = root / "text-models" / digest[:16]
    if not (folder / ".complete").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            if Path(name).name != name:
                raise ValueError(f"refusing text-model file name {name!r}")
            tmp = folder / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, folder / name)
        (folder / ".complete").touch()
    return folder


class TextEncoder(nn.Module):
    """Tokenise, run a transformer, pool tokens into one vector per sentence.

    `pretrained=False` builds the transformer from its config with random weights (a checkpoint replaces
    them); `files` (tokenizer and config files, as a checkpoint stores them) make that need no hub at all.
    `dropout` overrides the model's hidden and attention dropout (the DCASE baseline uses 0.2).
    """

    def __init__(self, name: str = DEFAULT_TEXT_MODEL, pooling: str = "mean", max_length: int = 64,
                 pretrained: bool = True, dropout: float | None = None,
                 files: dict[str, bytes] | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a per-tensor loading bar is noise on every `audiofind search`

        source = str(materialise_files(files)) if files else resolve_text_model(name)
        local = Path(source).exists()
        # a local folder must never trigger a hub lookup; a hub name may (the user asked for it)
        kwargs = {"local_files_only": True} if local or _offline() else {}
        extra = {} if dropout is None else {"hidden_dropout_prob": dropout,
                                            "attention_probs_dropout_prob": dropout}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            if pretrained:
                self.transformer = AutoModel.from_pretrained(source, **kwargs, **extra)
            else:
                config = AutoConfig.from_pretrained(source, **kwargs, **extra)
                self.transformer = AutoModel.from_config(config)
        except OSError as err:
            raise OSError(
                f"cannot load text model {name!r} ({source}): {err}. Pass a local folder with the model's "
                "files (config.json, tokenizer files and, to train, the weights), or a Hugging Face name "
                "while online (HF_HUB_OFFLINE=1 / AUDIOFIND_OFFLINE=1 forbid the hub)."
            ) from err
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', not {pooling!r}")
        self.name, self.pooling, self.max_length = name, pooling, max_length
        self.dim = int(self.transformer.config.hidden_size)
        self._files = files

    def files(self) -> dict[str, bytes]:
        """Tokenizer and config files, so a checkpoint rebuilds this tower without the hub."""
        if self._files is None:
            with tempfile.TemporaryDirectory() as tmp:
                self.tokenizer.save_pretrained(tmp)
                self.transformer.config.save_pretrained(tmp)
                self._files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        return self._files

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def forward(self, texts: list[str]) -> Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        hidden = self.transformer(**batch).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """L2-normalised sentence vectors, batched, without gradients."""
        was_training = self.training
        self.eval()
        chunks = [F.normalize(self(texts[i:i + batch_size]).float(), dim=-1).cpu().numpy()
                  for i in range(0, len(texts), batch_size)]
        self.train(was_training)
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
