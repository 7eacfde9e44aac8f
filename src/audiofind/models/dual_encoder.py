"""Text-audio dual encoder: pretrained backbones, pooling over time, projections into one space, checkpoints.

`build_model(config)` makes the network that `audiofind.research.train` fits; `DualEncoderModel` wraps a
trained checkpoint as an `EmbeddingModel` for the library index, the CLI and the server.

It is longer than 400 lines because the network, its two inference paths (windows, and the DCASE
baseline's whole-clip segments) and the checkpoint format that rebuilds it belong together; the
backbones live in `audio_backbones` and `encoders/`.
"""

from __future__ import annotations

import math
import os
import re
import string
import warnings
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..audio import SAMPLE_RATE, frame_windows
from ..download import file_digest
from .audio_backbones import build_audio_backbone
from .base import AudioEmbeddings
from .encoders.text import DEFAULT_TEXT_MODEL, TextEncoder

CHECKPOINT_FORMAT = "audiofind-dual-encoder/1"


@dataclass
class DualEncoderConfig:
    """Everything needed to rebuild the network; stored inside every checkpoint."""

    audio_backbone: str = "mn04"  # "mn01".."mn40" (EfficientAT), "passt[:arch]", "clap:<HF name or folder>"
    audio_options: dict[str, Any] = field(
        default_factory=dict
    )  # backbone-specific, e.g. PaSST strides/patchout
    text_backbone: str = DEFAULT_TEXT_MODEL  # Hugging Face name or local folder
    text_pooling: str = "mean"  # over tokens: "mean" | "cls"
    pooling: str = "mean"  # over audio frames: "mean" | "attention"
    embed_dim: int = 512
    projection: str = "linear"  # "linear" | "mlp"
    temperature: float = 0.05
    learnable_temperature: bool = False
    window_s: float = 10.0  # the audio model sees this much at a time; longer clips are windowed
    hop_s: float = 10.0
    # whole clips (the DCASE baseline): pad (or crop) training audio to clip_s, cut it into window_s
    # segments, average the segments' features weighted by `segment_weighting`; None = one window_s crop
    clip_s: float | None = None
    segment_weighting: str = "count"  # "count": segments holding audio count equally | "duration": by seconds
    max_text_length: int = 64  # tokens
    text_dropout: float | None = None  # hidden and attention dropout of the text model; None = its own
    # "normalise": lower-case, strip, collapse whitespace (punctuation to spaces with strip_punctuation);
    # "baseline": lower-case and delete ASCII punctuation, nothing else ("door-bell" -> "doorbell"); "none"
    clean_text: str = "normalise"
    strip_punctuation: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.clean_text, bool):  # checkpoints written before the modes existed
            self.clean_text = "normalise" if self.clean_text else "none"
        if self.clean_text not in CLEAN_MODES:
            raise ValueError(f"clean_text must be one of {', '.join(CLEAN_MODES)}, not {self.clean_text!r}")
        if self.segment_weighting not in ("count", "duration"):
            raise ValueError(f"segment_weighting must be count or duration, not {self.segment_weighting!r}")
        if self.clip_s is not None and self.clip_s < self.window_s:
            raise ValueError(f"clip_s ({self.clip_s}) must be at least window_s ({self.window_s})")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DualEncoderConfig:
        """Build from a plain dict, refusing unknown keys so typos do not pass silently."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown model option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**values)


CLEAN_MODES = ("normalise", "baseline", "none")
_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_caption(text: str, strip_punctuation: bool = False, mode: str = "normalise") -> str:
    """Normalise a caption or query the same way in training and search."""
    if mode == "none":
        return text
    if mode == "baseline":  # the DCASE 2025 baseline: lower(), then delete string.punctuation
        return text.lower().translate(_DELETE_PUNCTUATION)
    text = text.lower().strip()
    if strip_punctuation:
        text = re.sub(r"[^\w\s]", " ", text.replace("'", ""))
    return " ".join(text.split())


# ---------------------------------------------------------------- heads


class MeanPool(nn.Module):
    """Average frames over time: robust, and what the taggers were trained with."""

    def forward(self, frames: Tensor) -> Tensor:
        return frames.mean(dim=-1)


class AttentionPool(nn.Module):
    """Learned softmax weights over time, so brief events can dominate a clip's vector."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = max(dim // 4, 16)
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, frames: Tensor) -> Tensor:
        x = frames.transpose(1, 2)  # (B, T, C)
        weights = torch.softmax(self.score(x).float(), dim=1).to(x.dtype)
        return (weights * x).sum(dim=1)


def make_projection(kind: str, d_in: int, d_out: int) -> nn.Module:
    """Map a backbone's features into the shared space."""
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(d_in, d_in), nn.GELU(), nn.Linear(d_in, d_out))
    raise ValueError(f"projection must be 'linear' or 'mlp', not {kind!r}")


# ---------------------------------------------------------------- the network


class DualEncoder(nn.Module):
    """Two towers whose L2-normalised outputs are compared by cosine similarity."""

    def __init__(
        self, config: DualEncoderConfig, pretrained: bool = True, text_files: dict[str, bytes] | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.audio = build_audio_backbone(config.audio_backbone, pretrained, config.audio_options)
        self.text = TextEncoder(config.text_backbone, config.text_pooling, config.max_text_length,
                                pretrained=pretrained, dropout=config.text_dropout, files=text_files)
        if config.pooling == "mean":
            self.audio_pool: nn.Module = MeanPool()
        elif config.pooling == "attention":
            self.audio_pool = AttentionPool(self.audio.dim)
        else:
            raise ValueError(f"pooling must be 'mean' or 'attention', not {config.pooling!r}")
        self.audio_proj = make_projection(config.projection, self.audio.dim, config.embed_dim)
        self.text_proj = make_projection(config.projection, self.text.dim, config.embed_dim)
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / config.temperature)), requires_grad=config.learnable_temperature
        )
        self.frozen: set[str] = set()
        self.frozen_batchnorm = False  # keep the audio backbone's BatchNorm statistics fixed while training
        pooler = getattr(self.text.transformer, "pooler", None)
        if isinstance(pooler, nn.Module):  # we pool tokens ourselves; an unused layer would upset DDP
            pooler.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def scale(self) -> Tensor:
        """Inverse temperature, capped at 100 as in CLIP so a learnable one cannot run away."""
        return self.logit_scale.exp().clamp(max=100.0)

    def audio_features(
        self, waves: Tensor, durations: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Normalised audio embeddings (B, d) plus the backbone's tag logits when it has a tagging head.

        With `clip_s` set, each row is a whole (padded) clip: it is cut into window_s segments and the
        segments' pooled features are averaged with weights from `durations` (seconds of real audio per
        row; None = all of it) before the projection, as the DCASE baseline does."""
        if self.config.clip_s is None:
            frames, logits = self.audio(waves)
            return F.normalize(self.audio_proj(self.audio_pool(frames)).float(), dim=-1), logits
        cfg = self.config
        seg, hop = round(cfg.window_s * SAMPLE_RATE), round(cfg.hop_s * SAMPLE_RATE)
        if waves.shape[1] < seg:
            waves = F.pad(waves, (0, seg - waves.shape[1]))
        segments = waves.unfold(1, seg, hop)  # (B, S, seg)
        b, n_seg = segments.shape[:2]
        frames, logits = self.audio(segments.reshape(b * n_seg, seg))
        if durations is None:
            durations = torch.full((b,), waves.shape[1] / SAMPLE_RATE, device=waves.device)
        weights = segment_weights(durations, n_seg, cfg.window_s, cfg.hop_s, cfg.segment_weighting)
        weights = weights.to(frames.device, frames.dtype)
        pooled = (weights.unsqueeze(-1) * self.audio_pool(frames).reshape(b, n_seg, -1)).sum(1)
        if logits is not None:
            logits = (weights.unsqueeze(-1) * logits.reshape(b, n_seg, -1)).sum(1)
        return F.normalize(self.audio_proj(pooled).float(), dim=-1), logits

    def encode_audio(self, waves: Tensor, durations: Tensor | None = None) -> Tensor:
        """(B, samples) at 32 kHz -> (B, d) L2-normalised."""
        return self.audio_features(waves, durations)[0]

    def encode_text(self, texts: list[str]) -> Tensor:
        """Captions or queries -> (B, d) L2-normalised; cleaned as the config says."""
        texts = [clean_caption(t, self.config.strip_punctuation, self.config.clean_text) for t in texts]
        return F.normalize(self.text_proj(self.text(list(texts))).float(), dim=-1)

    def forward(
        self, waves: Tensor, texts: list[str], durations: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Both towers and the scale in one call, so DistributedDataParallel sees every trained parameter."""
        return self.encode_audio(waves, durations), self.encode_text(texts), self.scale()

    # ---- training helpers

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by role, for separate learning rates: backbones vs. heads."""
        fixed = {id(p) for p in self.audio.head_parameters()}
        pooler = getattr(self.text.transformer, "pooler", None)
        if isinstance(pooler, nn.Module):
            fixed |= {id(p) for p in pooler.parameters()}
        audio = [p for p in self.audio.parameters() if id(p) not in fixed]
        text = [p for p in self.text.parameters() if id(p) not in fixed]
        taken = {id(p) for p in audio + text} | fixed
        heads = [p for p in self.parameters() if id(p) not in taken]
        if not self.config.learnable_temperature:
            heads = [p for p in heads if p is not self.logit_scale]
        return {"audio_backbone": audio, "text_backbone": text, "heads": heads}

    def set_frozen(self, audio: bool = False, text: bool = False) -> None:
        """Freeze or release the backbones; frozen ones also stay in eval mode (no BatchNorm drift)."""
        groups = self.parameter_groups()
        for name, frozen in (("audio_backbone", audio), ("text_backbone", text)):
            for p in groups[name]:
                p.requires_grad_(not frozen)
            (self.frozen.add if frozen else self.frozen.discard)(name)
        self.train(self.training)

    def train(self, mode: bool = True) -> DualEncoder:
        super().train(mode)
        if "audio_backbone" in self.frozen:
            self.audio.eval()
        elif self.frozen_batchnorm:  # small batches: batch statistics are noisy and drift from eval mode
            for module in self.audio.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        if "text_backbone" in self.frozen:
            self.text.eval()
        return self

    # ---- inference over whole clips

    @torch.no_grad()
    def embed_waves(
        self, waves: list[np.ndarray], batch_size: int = 16
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Clips of any length: `window_s` windows averaged and renormalised; plus mean tag probabilities.

        With `clip_s` set, a clip's segments (zero-padded, none dropped) are weighted as in training and
        averaged before the projection, as the DCASE baseline's inference does."""
        cfg = self.config
        if cfg.clip_s is not None:
            return self._embed_segments(waves, batch_size)
        was_training = self.training
        self.eval()
        windows = [
            (i, w)
            for i, wave in enumerate(waves)
            for w in frame_windows(_tile_short(wave), SAMPLE_RATE, cfg.window_s, cfg.hop_s)
        ]
        windows.sort(key=lambda t: len(t[1]))  # equal lengths share a forward pass
        sums = torch.zeros(len(waves), cfg.embed_dim)
        counts = torch.zeros(len(waves), 1)
        probs: Tensor | None = None
        start = 0
        while start < len(windows):
            stop = start + 1
            while (
                stop < len(windows)
                and stop - start < batch_size
                and len(windows[stop][1]) == len(windows[start][1])
            ):
                stop += 1
            owners = torch.tensor([i for i, _ in windows[start:stop]])
            batch = torch.from_numpy(np.stack([w for _, w in windows[start:stop]])).to(self.device)
            emb, logits = self.audio_features(batch)
            sums.index_add_(0, owners, emb.float().cpu())
            counts.index_add_(0, owners, torch.ones(len(owners), 1))
            if logits is not None:
                probs = torch.zeros(len(waves), logits.shape[1]) if probs is None else probs
                probs.index_add_(0, owners, torch.sigmoid(logits.float()).cpu())
            start = stop
        self.train(was_training)
        vectors = F.normalize(sums / counts.clamp(min=1), dim=-1).numpy().astype(np.float32)
        return vectors, None if probs is None else (probs / counts.clamp(min=1)).numpy()

    @torch.no_grad()
    def _embed_segments(
        self, waves: list[np.ndarray], batch_size: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        cfg = self.config
        seg, hop = round(cfg.window_s * SAMPLE_RATE), round(cfg.hop_s * SAMPLE_RATE)
        was_training = self.training
        self.eval()
        items: list[tuple[int, float, np.ndarray]] = []  # (clip, weight, segment)
        for i, wave in enumerate(waves):
            wave = np.asarray(wave, dtype=np.float32)
            n_seg = max(1, math.ceil(max(len(wave) - seg, 0) / hop) + 1)
            padded = np.zeros((n_seg - 1) * hop + seg, np.float32)
            padded[: len(wave)] = wave
            weights = segment_weights(torch.tensor([len(wave) / SAMPLE_RATE]), n_seg, cfg.window_s, cfg.hop_s,
                                      cfg.segment_weighting)[0].tolist()
            items += [(i, w, padded[k * hop : k * hop + seg]) for k, w in enumerate(weights) if w > 0]
        sums = torch.zeros(len(waves), self.audio.dim)
        probs: Tensor | None = None
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            owners = torch.tensor([i for i, _, _ in chunk])
            weights = torch.tensor([w for _, w, _ in chunk]).unsqueeze(1)
            batch = torch.from_numpy(np.stack([x for _, _, x in chunk])).to(self.device)
            frames, logits = self.audio(batch)
            sums.index_add_(0, owners, weights * self.audio_pool(frames).float().cpu())
            if logits is not None:
                probs = torch.zeros(len(waves), logits.shape[1]) if probs is None else probs
                probs.index_add_(0, owners, weights * torch.sigmoid(logits.float()).cpu())
        vectors = F.normalize(self.audio_proj(sums.to(self.device)).float(), dim=-1).cpu().numpy()
        self.train(was_training)
        return vectors.astype(np.float32), None if probs is None else probs.numpy()

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Embed many texts without gradients, as float32 (n, d)."""
        was_training = self.training
        self.eval()
        chunks = [
            self.encode_text(texts[i : i + batch_size]).cpu().numpy()
            for i in range(0, len(texts), batch_size)
        ]
        self.train(was_training)
        return (
            np.concatenate(chunks).astype(np.float32)
            if chunks
            else np.zeros((0, self.config.embed_dim), np.float32)
        )


def segment_weights(durations: Tensor, n_segments: int, window_s: float, hop_s: float, mode: str) -> Tensor:
    """(B, S) weights summing to 1 per row for segments starting at 0, hop_s, 2 hop_s, ...

    "count" (the DCASE baseline): every segment that starts inside the real audio counts equally (a 14 s
    clip padded to 30 s averages its first two 10 s segments); "duration": by seconds of real audio."""
    starts = torch.arange(n_segments, dtype=torch.float32) * hop_s
    d = durations.detach().float().cpu().reshape(-1, 1)
    if mode == "count":
        w = (starts[None] < d - 1e-6).float()
    else:
        w = (d - starts[None]).clamp(min=0.0, max=window_s)
    w[:, 0] = torch.where(w.sum(1) > 0, w[:, 0], torch.ones_like(w[:, 0]))  # silence: the first segment
    return w / w.sum(1, keepdim=True)


def _tile_short(wave: np.ndarray, min_s: float = 1.0) -> np.ndarray:
    """Repeat a sound shorter than `min_s` rather than pad it with silence, as training does."""
    wave = np.asarray(wave, dtype=np.float32)
    n = round(min_s * SAMPLE_RATE)
    return np.resize(wave, n) if 0 < len(wave) < n else wave


def build_model(
    config: DualEncoderConfig | dict[str, Any],
    pretrained: bool = True,
    text_files: dict[str, bytes] | None = None,
) -> DualEncoder:
    """Factory: a network from its config; `pretrained=False` skips weights a checkpoint will replace
    (and with `text_files`, the tokenizer and config a checkpoint carries, needs no hub)."""
    if isinstance(config, dict):
        config = DualEncoderConfig.from_dict(config)
    return DualEncoder(config, pretrained=pretrained, text_files=text_files)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(
    path: str | os.PathLike[str], network: DualEncoder, meta: dict[str, Any] | None = None, **extra: Any
) -> Path:
    """Write one self-describing file (format, config, weights, metadata, extras) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(network.config),
        "state_dict": state,
        "meta": meta or {},
        "text_files": network.text.files(),  # tokenizer + config: the checkpoint rebuilds offline
        **extra,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint dict safely (tensors and plain types only) and check that it is ours."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an audiofind dual-encoder checkpoint (written by `audiofind train`)")
    return payload


class DualEncoderModel:
    """A trained checkpoint as an `EmbeddingModel`; its id is the file's hash, so retraining changes it."""

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        network: DualEncoder,
        source: str,
        model_id: str,
        meta: dict[str, Any] | None = None,
        batch_size: int = 16,
    ) -> None:
        self.network = network.eval()
        self.config = network.config
        self.source = source
        self.model_id = model_id
        self.meta = meta or {}
        self.dim = network.config.embed_dim
        self.batch_size = batch_size

    @property
    def audio_model_id(self) -> str:
        """Clip vectors come from the trained audio tower, so they are only compatible within one file."""
        return self.model_id

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> DualEncoderModel:
        """Rebuild the network from the config inside the file, then load its weights strictly."""
        path = Path(path).expanduser().absolute()
        payload = read_checkpoint(path)
        network = build_model(payload["config"], pretrained=False, text_files=payload.get("text_files"))
        network.load_state_dict(payload["state_dict"], strict=True)
        network.to(torch.device(device))
        return cls(network, str(path), f"dual-{file_digest(Path(path))[:12]}", payload.get("meta"))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this model as a checkpoint that `load` (and `audiofind.models.load_model`) accepts."""
        return save_checkpoint(path, self.network, self.meta)

    @cached_property
    def _vocabulary(self) -> Any:
        """AudioSet names for tags; a missing label file only costs the tags."""
        from .tagging import AudioSetVocabulary

        try:
            return AudioSetVocabulary.default()
        except (OSError, ValueError) as err:
            warnings.warn(f"no AudioSet labels, so no tags: {err}", stacklevel=3)
            return None

    def embed_audio(self, waves: list[np.ndarray]) -> AudioEmbeddings:
        if not waves:
            return AudioEmbeddings(np.zeros((0, self.dim), np.float32), [])
        vectors, probs = self.network.embed_waves(list(waves), self.batch_size)
        vocab = self._vocabulary if probs is not None else None
        tags = (
            [vocab.top_tags(p) for p in probs]
            if vocab is not None and probs is not None
            else [[] for _ in waves]
        )
        return AudioEmbeddings(vectors=vectors, tags=tags)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return self.network.embed_texts(list(texts))
