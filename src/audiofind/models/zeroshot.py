"""Zero-shot retrieval, no audio training: an AudioSet tagger bridged to a sentence encoder via class texts.

A clip becomes its (calibrated) AudioSet class probabilities; a query becomes a soft assignment over the
same classes, from the trained text bridge (`text_bridge`: the similarity between the query and each
class's text, corrected per class on AudioCaps captions) or, with `text_bridge=""`, from that similarity
alone. Both live in one 527-d space, so search is one inner product and works with FAISS. BENCHMARKS.md
holds the ablations that chose the defaults below.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from ..assets import asset_cache_dir, resolve_asset
from ..audio import SAMPLE_RATE, frame_windows
from .base import AudioEmbeddings
from .encoders.minilm import DEFAULT_TEXT_MODEL
from .tagging import AudioSetVocabulary
from .text_bridge import DEFAULT_TEXT_BRIDGE, TextBridge

if TYPE_CHECKING:
    from .encoders.efficientat import MobileNetTagger
    from .encoders.text import TextEncoder

DEFAULT_TAGGER = "mn04_as_mAP_432.pt"
BULK_SAMPLES = 30 * SAMPLE_RATE  # audio in one call beyond which freezing the tagger pays off
TEXT_BACKENDS = ("torch", "numpy")  # numpy: the default MiniLM without torch, for processes that only search

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZeroShotConfig:
    """Every knob of the bridge; its hash is the model id, so an index knows exactly what built it."""

    tagger: str = DEFAULT_TAGGER
    text_model: str = DEFAULT_TEXT_MODEL
    label_style: str = "aliases"  # how each class is written for the text encoder
    space: str = "class"  # "class": compare in the 527-d class space; "text": project clips into text space
    window_s: float = 10.0
    hop_s: float = 10.0
    pad_to_s: float = 1.0  # shorter windows are padded with silence to a multiple of this (10 = full window)
    pooling: str = "max"  # over a long file's windows: "mean", "max" or "meanmax"
    audio_power: float = 0.25  # clip vector = probabilities ** power (sharpens or flattens the tag profile)
    query_temperature: float = 0.1  # softmax temperature over query-class cosine similarities
    query_top: int = 20  # keep only the top classes of a query (0 = all)
    # ---- trained text bridge (text_bridge.py): a package asset; "" = the similarity bridge above.
    # When set, it alone maps query sentences to class vectors: label_style, query_temperature and
    # query_top then only matter for the similarity bridge.
    text_bridge: str = DEFAULT_TEXT_BRIDGE

    @property
    def model_id(self) -> str:
        fields = asdict(self)
        if not self.text_bridge:
            del fields["text_bridge"]  # configs of the similarity bridge keep the ids they had before it
        digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
        return f"zeroshot-{self.tagger.split('_')[0]}-{self.text_model.split('/')[-1]}-{digest}"

    @property
    def audio_model_id(self) -> str:
        """Hash of only what shapes clip vectors: indexes with equal audio ids hold interchangeable vectors,
        whatever turns queries into vectors (text bridge, temperature, ...)."""
        keys = ["tagger", "window_s", "hop_s", "pad_to_s", "pooling", "audio_power", "space"]
        if self.space == "text":  # clips are then projected onto the class texts
            keys += ["text_model", "label_style"]
        fields = {k: getattr(self, k) for k in keys}
        digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
        return f"zeroshot-audio-{self.tagger.split('_')[0]}-{digest}"


def pool_windows(probs: np.ndarray, how: str) -> np.ndarray:
    """Merge per-window class probabilities of one file: max keeps brief events, mean keeps the texture."""
    if how == "mean":
        return probs.mean(0)
    if how == "max":
        return probs.max(0)
    if how == "meanmax":
        return 0.5 * (probs.mean(0) + probs.max(0))
    raise ValueError(f"unknown pooling {how!r}")


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


class ZeroShotModel:
    """The default `EmbeddingModel`: works offline from the pretrained tagger and sentence encoder alone.

    Torch is imported only when the tagger or the torch text encoder is first used, so a process that only
    searches by text (`text_backend="numpy"`) never loads it.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, config: ZeroShotConfig | None = None, device: str = "cpu",
                 source: str | None = None, text_backend: str = "torch") -> None:
        if text_backend not in TEXT_BACKENDS:
            raise ValueError(f"text_backend must be one of {', '.join(TEXT_BACKENDS)}, not {text_backend!r}")
        self.config = config or ZeroShotConfig()
        self.device = str(device)
        self.text_backend = text_backend
        self._frozen = False
        self.vocab = AudioSetVocabulary.default()
        self.model_id = self.config.model_id
        self.audio_model_id = self.config.audio_model_id  # what clip vectors depend on (see ZeroShotConfig)
        self.source = source or self.model_id  # the name `load_model` knows it by
        self.dim = len(self.vocab) if self.config.space == "class" else self.text_encoder.dim

    @property
    def class_names(self) -> list[str] | None:
        """The name of each dimension of the search space, when it is the class space (for explanations)."""
        return self.vocab.names if self.config.space == "class" else None

    @cached_property
    def tagger(self) -> MobileNetTagger:
        """Loaded on first use: a text search never runs it."""
        from .encoders.efficientat import MobileNetTagger

        tagger = MobileNetTagger.from_checkpoint(str(resolve_asset(self.config.tagger)))
        return tagger.fold_batchnorm().to(self.device)

    def _freeze_tagger(self) -> None:
        """Bulk embedding pays for a TorchScript graph of the tagger; a failure only costs speed."""
        import torch

        self._frozen = True
        try:
            self.tagger.freeze_for_inference()
        except (RuntimeError, torch.jit.Error) as err:  # pragma: no cover - depends on the torch build
            log.warning("running the tagger eagerly: TorchScript freezing failed: %s", err)

    @cached_property
    def text_encoder(self) -> TextEncoder | Any:
        """Loaded on first use: indexing needs no text model in the class space. With the numpy backend
        a `NumpyTextEncoder` (the same vectors to 1e-4, no torch)."""
        if self.text_backend == "numpy":
            from .encoders.minilm import NumpyTextEncoder

            return NumpyTextEncoder(self.config.text_model)
        from .encoders.text import TextEncoder

        return TextEncoder(self.config.text_model).to(self.device)

    @cached_property
    def text_bridge(self) -> TextBridge | None:
        """The trained query-side bridge named by the config, checked against the text model and classes."""
        if not self.config.text_bridge:
            return None
        bridge = TextBridge.load(resolve_asset(self.config.text_bridge))
        mids = [c.mid for c in self.vocab.classes]
        if bridge.meta.get("text_model") != self.config.text_model or bridge.meta.get("mids") != mids:
            raise ValueError(
                f"text bridge {self.config.text_bridge} was trained for text model "
                f"{bridge.meta.get('text_model')!r} and other classes; "
                f"this model uses {self.config.text_model!r}"
            )
        return bridge

    @cached_property
    def phrase_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every class phrase embedded, with each class's first row; cached on disk across runs."""
        phrases = self.vocab.texts(self.config.label_style)
        starts = np.cumsum([0] + [len(p) for p in phrases[:-1]])
        flat = [t for p in phrases for t in p]
        key = hashlib.sha1(json.dumps([self.config.text_model, flat]).encode()).hexdigest()[:16]
        path = asset_cache_dir().parent / "label-vectors" / f"{key}.npy"
        try:
            vectors = np.load(path)
            if vectors.shape[0] == len(flat):
                return vectors, starts
        except (OSError, ValueError):
            pass
        vectors = self.text_encoder.encode(flat)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, vectors)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache only costs recomputation
        return vectors, starts

    def class_similarities(self, text_vectors: np.ndarray) -> np.ndarray:
        """Cosine between each text and each class: the best-matching phrase of the class."""
        vectors, starts = self.phrase_vectors
        return np.maximum.reduceat(text_vectors @ vectors.T, starts, axis=1)

    @cached_property
    def class_text_vectors(self) -> np.ndarray:
        """One text-space vector per class (mean of its phrases), for the "text" space."""
        vectors, starts = self.phrase_vectors
        return _normalise(np.add.reduceat(vectors, starts, axis=0))

    def tag_probabilities(self, waves: list[np.ndarray], batch_size: int = 32) -> list[np.ndarray]:
        """Per file, (windows, classes) sigmoid probabilities.

        Windows are sorted by length and padded with silence to the next multiple of `pad_to_s`, so
        clips of similar length share a forward pass (the ablation found this no worse than exact lengths).
        """
        import torch

        with torch.inference_mode():
            return self._tag_probabilities(waves, batch_size)

    def _tag_probabilities(self, waves: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
        import torch

        cfg = self.config
        windows = [frame_windows(w, SAMPLE_RATE, cfg.window_s, cfg.hop_s) for w in waves]
        step = int(round(cfg.pad_to_s * SAMPLE_RATE))
        flat = sorted(((i, j, win) for i, ws in enumerate(windows) for j, win in enumerate(ws)),
                      key=lambda t: len(t[2]))
        out = [np.zeros((len(ws), len(self.vocab)), np.float32) for ws in windows]
        start = 0
        while start < len(flat):
            padded = max(-(-len(flat[start][2]) // step) * step, len(flat[start][2]))
            stop = start
            while stop < len(flat) and stop - start < batch_size and len(flat[stop][2]) <= padded:
                stop += 1
            group = flat[start:stop]
            batch = np.zeros((len(group), padded), np.float32)
            for row, (_, _, win) in enumerate(group):
                batch[row, :len(win)] = win
            if not self._frozen and len(flat) * padded >= BULK_SAMPLES:
                self._freeze_tagger()
            logits = self.tagger(torch.from_numpy(batch).to(self.device)).logits
            for (i, j, _), p in zip(group, torch.sigmoid(logits).float().cpu().numpy()):
                out[i][j] = p
            start = stop
        return out

    def clip_vectors(self, pooled_probs: np.ndarray) -> np.ndarray:
        """Map pooled (n, classes) probabilities into the search space."""
        weights = np.power(pooled_probs, self.config.audio_power)
        if self.config.space == "class":
            return _normalise(weights)
        return _normalise(weights @ self.class_text_vectors)

    def embed_audio(self, waves: list[np.ndarray]) -> AudioEmbeddings:
        pooled = np.stack([pool_windows(p, self.config.pooling) for p in self.tag_probabilities(waves)]) \
            if waves else np.zeros((0, len(self.vocab)), np.float32)
        tags = [self.vocab.top_tags(p) for p in pooled]
        return AudioEmbeddings(vectors=self.clip_vectors(pooled), tags=tags)

    def query_vectors(self, text_vectors: np.ndarray) -> np.ndarray:
        """Turn sentence vectors into search vectors: a soft class assignment in the class space."""
        if self.config.space == "text":
            return _normalise(text_vectors)
        if self.text_bridge is not None:
            return self.text_bridge.query_vectors(text_vectors)
        sims = self.class_similarities(text_vectors) / self.config.query_temperature
        if self.config.query_top:
            cutoff = -np.sort(-sims, axis=1)[:, self.config.query_top - 1: self.config.query_top]
            sims = np.where(sims >= cutoff, sims, -np.inf)
        sims -= sims.max(axis=1, keepdims=True)
        weights = np.exp(sims)
        return _normalise(weights / weights.sum(axis=1, keepdims=True))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return self.query_vectors(self.text_encoder.encode(list(texts)))
