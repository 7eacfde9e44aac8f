"""Embedding clips and captions with a network under training: for validation and distillation teachers."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..download import file_digest
from ..models.dual_encoder import DualEncoder, DualEncoderModel
from .audio_cache import open_cache
from .data import CaptionedClip
from .distributed import Runtime, all_gather_objects
from .losses import (
    TeacherBank,
)
from .metrics import retrieval_metrics
from .train_config import (
    DataConfig,
)
from .train_data import (
    WaveDataset,
)

# ---------------------------------------------------------------- evaluation

log = logging.getLogger(__name__)


@torch.no_grad()
def embed_clips(
    network: DualEncoder, clips: list[CaptionedClip], rt: Runtime, data: DataConfig
) -> np.ndarray:
    """Whole-clip embeddings (windowed, averaged), each rank doing a share, gathered in clip order."""
    mine = list(range(rt.rank, len(clips), rt.world))
    loader = DataLoader(
        WaveDataset([clips[i] for i in mine], open_cache(data.audio_cache)),
        batch_size=data.val_batch_size,
        collate_fn=list,
        num_workers=data.num_workers,
    )
    parts = []
    with rt.autocast():
        for waves in loader:
            parts.append(network.embed_waves(waves, data.val_batch_size)[0])
    local = np.concatenate(parts) if parts else np.zeros((0, network.config.embed_dim), np.float32)
    out = np.zeros((len(clips), network.config.embed_dim), np.float32)
    for rank, vectors in enumerate(all_gather_objects(rt, local)):
        out[rank :: rt.world] = vectors
    return out


@torch.no_grad()
def embed_captions(network: DualEncoder, texts: list[str], rt: Runtime) -> np.ndarray:
    with rt.autocast():
        local = network.embed_texts(texts[rt.rank :: rt.world])
    out = np.zeros((len(texts), network.config.embed_dim), np.float32)
    for rank, vectors in enumerate(all_gather_objects(rt, local)):
        out[rank :: rt.world] = vectors
    return out


def evaluate(
    network: DualEncoder, clips: list[CaptionedClip], rt: Runtime, data: DataConfig
) -> dict[str, float]:
    """Single-positive Clotho protocol: every caption is a query whose only relevant clip is its own."""
    audio = embed_clips(network, clips, rt, data)
    captions = [c for clip in clips for c in clip.captions]
    relevant = [[i] for i, clip in enumerate(clips) for _ in clip.captions]
    text = embed_captions(network, captions, rt)
    return retrieval_metrics(text @ audio.T, relevant)


# ---------------------------------------------------------------- distillation teacher


def build_teacher_bank(
    paths: list[str], clips: list[CaptionedClip], rt: Runtime, data: DataConfig, cache: Path
) -> TeacherBank:
    """Embed every training clip and caption with each teacher once (ranks share the work); cached."""
    key = hashlib.sha256(
        "\n".join([*(file_digest(Path(p)) for p in paths), *(c.file_name for c in clips)]).encode()
    ).hexdigest()[:16]
    fresh = rt.main and cache.is_file() and TeacherBank.load(cache).key == key
    if not all_gather_objects(rt, fresh)[0]:  # rank 0 decides, so every rank takes the same branch
        audio, text = [], []
        captions = [c for clip in clips for c in clip.captions]
        for path in paths:
            log.info("teacher %s: embedding %d clips and %d captions", path, len(clips), len(captions))
            network = DualEncoderModel.load(path, device=str(rt.device)).network
            audio.append(torch.from_numpy(embed_clips(network, clips, rt, data)).half())
            text.append(torch.from_numpy(embed_captions(network, captions, rt)).half())
            del network
        if rt.main:
            TeacherBank(audio, text, key).save(cache)
    rt.barrier()
    return TeacherBank.load(cache)
