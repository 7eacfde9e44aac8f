"""How the audio, text and name scores become one ranking and one match strength: pure functions.

A clip's audio score is the cosine of query and clip vectors; its text score is BM25 of the query over
the clip's text record (name, folders, UCS category, embedded tags), saturated into [0, 1) so one
strong word cannot swamp the audio; its name score is the cosine of the query's and the name's sentence
vectors (library.names), 0 for a name without words. Hybrid ranking adds them,
`audio + text_weight * text + name_weight * name`: a clip whose name carries no words and whose record
holds no query word gets exactly its audio score, so a library of hash-named files ranks exactly as
audio-only search. The match strength is a logistic fit of P(relevant | audio, text, name) on
development queries. BENCHMARKS.md gives the data, the alternatives tried (reciprocal-rank fusion, a
learned ranking) and the numbers behind every constant here; `benchmarks/bench_hybrid.py` recomputes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("hybrid", "audio", "text")


@dataclass(frozen=True)
class FusionParams:
    """The constants of fusion and calibration, fitted on sfx-dev by benchmarks/tune_hybrid.py."""

    text_weight: float = 1.0  # hybrid = audio + text_weight * saturated BM25 + name_weight * name cosine
    name_weight: float = 1.5
    text_half: float = 8.0  # BM25 at which the saturated text score is 0.5
    calibration: tuple[float, float, float, float] = (-5.35, 9.65, 2.97, 3.15)  # logit = c0+ca*a+ct*t+cn*n
    name_floor: float = 0.4  # text mode lists a clip for its name vector alone only from this cosine up
    weak_below: float = 0.2  # a best match weaker than this is "nothing in this library matches well"


DEFAULT_FUSION = FusionParams()


def saturate(bm25: np.ndarray, half: float) -> np.ndarray:
    """Map BM25 (>= 0, unbounded) into [0, 1): b / (b + half)."""
    b = np.maximum(np.asarray(bm25, dtype=np.float64), 0.0)
    return b / (b + half)


def fuse(audio: np.ndarray, text: np.ndarray, name: np.ndarray, mode: str,
         params: FusionParams = DEFAULT_FUSION) -> np.ndarray:
    """The ranking score of each candidate under `mode` ("hybrid", "audio" or "text")."""
    a, t, n = (np.asarray(x, dtype=np.float64) for x in (audio, text, name))
    if mode == "audio":
        return a
    words = params.text_weight * t + params.name_weight * n
    if mode == "text":
        return words
    if mode == "hybrid":
        return a + words
    raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")


def reciprocal_rank_fusion(audio: np.ndarray, text: np.ndarray, k: float = 60.0) -> np.ndarray:
    """The classic RRF alternative (Cormack et al. 2009); clips with no text match get no text term."""
    audio_rank = np.argsort(np.argsort(-np.asarray(audio), kind="stable"), kind="stable")
    text = np.asarray(text)
    text_rank = np.argsort(np.argsort(-text, kind="stable"), kind="stable")
    return 1.0 / (k + 1 + audio_rank) + np.where(text > 0, 1.0 / (k + 1 + text_rank), 0.0)


def match_strength(audio: np.ndarray, text: np.ndarray, name: np.ndarray,
                   params: FusionParams = DEFAULT_FUSION) -> np.ndarray:
    """Calibrated P(relevant) of each result from its scores: 0.5 means about one in two is right."""
    c0, ca, ct, cn = params.calibration
    a, t, n = (np.asarray(x, dtype=np.float64) for x in (audio, text, name))
    return 1.0 / (1.0 + np.exp(-(c0 + ca * a + ct * t + cn * n)))


def is_weak(best_match: float | None, params: FusionParams = DEFAULT_FUSION) -> bool:
    """True when the best result is too weak to call a match ("nothing in this library matches well")."""
    return best_match is None or best_match < params.weak_below


def fit_logistic(features: np.ndarray, labels: np.ndarray, l2: float = 1e-3, steps: int = 50) -> np.ndarray:
    """Weights (bias first) of an L2-regularised logistic regression by Newton's method: for calibration."""
    x = np.hstack([np.ones((len(features), 1)), np.asarray(features, dtype=np.float64)])
    y = np.asarray(labels, dtype=np.float64)
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return w
