"""A trained text-to-class bridge: sentence vectors in, 527-d AudioSet query vectors out, in plain numpy.

The zero-shot model compares a query with a clip in the tagger's class space. Today's similarity bridge
scores each class by the cosine between the query and the class's alias phrases. This bridge keeps that
score as its backbone and adds what AudioCaps captions teach about how people describe sounds:

    evidence_c(t) = alpha * max_p cos(t, phrase_p of c) + w_c . t + bias_c

`alpha` is the similarity score's learned scale; `w_c` and `bias_c` are a per-class correction fitted
with a binary cross-entropy on AudioCaps captions and their clips' labels, pulled towards zero so that a
class with little training support keeps its zero-shot behaviour, and exactly zero for the classes
AudioCaps never shows (music, most instruments, ...). Each class's base rate (how often AudioSet
annotators marked it at all: Speech on 40 % of clips) is fitted as a separate intercept and left out of
`bias_c`, so `evidence_c` is the log-odds the text adds for the class, not how common the class is.
The query vector is a softmax over the `top` highest evidences (temperature 1: they are log-odds),
L2-normalised, like the similarity bridge's.

`scripts/build_text_bridge.py` writes the file; BENCHMARKS.md has the numbers that chose the method.
No torch is needed here.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "audiofind-text-bridge-1"
DEFAULT_TEXT_BRIDGE = "text_bridge_audiocaps_v1.npz"


@dataclass(frozen=True)
class TextBridge:
    """The arrays of a bridge file; `query_vectors` is all that search needs."""

    phrase_vectors: np.ndarray  # (phrases, dim) alias phrases of every class, L2-normalised
    phrase_starts: np.ndarray  # (classes,) index of each class's first phrase (phrases grouped by class)
    alpha: float  # scale of the phrase similarity, in log-odds per unit cosine
    weight: np.ndarray  # (classes, dim) learned correction per class (zero for classes never seen)
    bias: np.ndarray  # (classes,) learned offset per class, base rate excluded
    top: int  # classes kept in a query vector (0 = all)
    temperature: float  # softmax temperature over the evidences
    meta: dict[str, Any]  # provenance: text model, class mids, data, licence, training settings

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    @classmethod
    def load(cls, path: str | PathLike[str]) -> TextBridge:
        with np.load(path, allow_pickle=False) as data:
            if str(data["format"]) != FORMAT:
                raise ValueError(f"{path} is not a text bridge file (format {str(data['format'])!r})")
            bridge = cls(
                phrase_vectors=data["phrase_vectors"].astype(np.float32),
                phrase_starts=data["phrase_starts"].astype(np.int64),
                alpha=float(data["alpha"]),
                weight=data["weight"].astype(np.float32),
                bias=data["bias"].astype(np.float32),
                top=int(data["top"]),
                temperature=float(data["temperature"]),
                meta=json.loads(str(data["meta"])),
            )
        if bridge.phrase_starts.shape != (bridge.num_classes,) or bridge.bias.shape != (bridge.num_classes,):
            raise ValueError(f"{path}: inconsistent array shapes")
        return bridge

    def save(self, path: str | PathLike[str]) -> Path:
        """Write float16 weights into a zip whose bytes depend only on the arrays (no timestamps)."""
        arrays = {
            "format": np.array(FORMAT),
            "meta": np.array(json.dumps(self.meta, sort_keys=True, ensure_ascii=False)),
            "phrase_vectors": self.phrase_vectors.astype(np.float16),
            "phrase_starts": self.phrase_starts.astype(np.int32),
            "alpha": np.array(self.alpha, np.float32),
            "weight": self.weight.astype(np.float16),
            "bias": self.bias.astype(np.float32),
            "top": np.array(self.top, np.int32),
            "temperature": np.array(self.temperature, np.float32),
        }
        path = Path(path)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, array in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, array, allow_pickle=False)
                info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue())
        return path

    def similarities(self, text_vectors: np.ndarray) -> np.ndarray:
        """(n, classes) cosine between each text and each class's best-matching alias phrase."""
        return np.maximum.reduceat(text_vectors @ self.phrase_vectors.T, self.phrase_starts, axis=1)

    def evidence(self, text_vectors: np.ndarray) -> np.ndarray:
        """(n, classes) log-odds the text adds for each class (higher: the text names it more clearly)."""
        t = np.asarray(text_vectors, np.float32)
        return self.alpha * self.similarities(t) + t @ self.weight.T + self.bias

    def query_vectors(self, text_vectors: np.ndarray) -> np.ndarray:
        """L2-normalised (n, classes) search vectors: softmax over each text's `top` strongest evidences."""
        return softmax_top(self.evidence(text_vectors), self.top, self.temperature)


def softmax_top(scores: np.ndarray, top: int, temperature: float) -> np.ndarray:
    """Per row, a softmax over the `top` highest scores (the rest 0), then L2-normalised."""
    z = np.asarray(scores, np.float64) / temperature
    if top and top < z.shape[1]:
        cutoff = -np.sort(-z, axis=1)[:, top - 1: top]
        z = np.where(z >= cutoff, z, -np.inf)
    z -= z.max(axis=1, keepdims=True)
    w = np.exp(z)
    w /= w.sum(axis=1, keepdims=True)
    return (w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)).astype(np.float32)
