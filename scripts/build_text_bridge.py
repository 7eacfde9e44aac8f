"""Rebuild the trained text bridge shipped in the package (src/audiofind/models/text_bridge_audiocaps_v1.npz).

    python scripts/build_text_bridge.py --audiocaps ../shared/data/audiocaps \
        --out src/audiofind/models/text_bridge_audiocaps_v1.npz

Needs the AudioSet label files (AUDIOFIND_ASSETS) and the MiniLM sentence encoder; one torch thread,
seeded, deterministic (same machine and library versions give the same bytes). What it fits, for each
of the 527 classes c, from AudioCaps train captions t and their clips' AudioSet labels y:

    z_c(t) = alpha * s_c(t) + b0 + w_c . (t - tbar) + d_c,     loss = BCE(z, y) + lam/2 * |w|^2

s_c is today's similarity bridge (cosine to the best-matching alias phrase of c), alpha and b0 calibrate
it once for all classes, w_c is the per-class correction pulled towards 0 (so a class with little
support keeps the zero-shot behaviour), d_c is the class's base rate (free, and left out of the shipped
query-side bias: a query should weigh what it says, not what AudioSet annotators mark on most YouTube
clips), tbar is the mean caption vector. Classes that AudioCaps never labels (music, most instruments,
~200 of 527) are not fitted at all: they keep alpha * s_c + b0, the calibrated zero-shot score.

`--holdout N` fits on all but N train captions (seeded) for each `--lam` and prints held-out numbers
instead of writing a file: how the shipped pull strength was compared (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from audiofind.assets import resolve_asset
from audiofind.download import file_digest
from audiofind.models.encoders.text import DEFAULT_TEXT_MODEL, TextEncoder
from audiofind.models.tagging import AudioSetVocabulary
from audiofind.models.text_bridge import DEFAULT_TEXT_BRIDGE, TextBridge, softmax_top

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "audiofind" / "models" / DEFAULT_TEXT_BRIDGE
LABEL_STYLE = "aliases"  # the phrases of the similarity bridge (tagging.AudioSetVocabulary.texts)
LICENCE = (
    "Trained on AudioCaps captions (Kim et al., AudioCaps: Generating Captions for Audios in the Wild, "
    "NAACL-HLT 2019; github.com/cdjkim/audiocaps, MIT licence file, academic use requested) and their "
    "clips' AudioSet labels (Gemmeke et al., ICASSP 2017; CC BY 4.0). Phrase vectors: all-MiniLM-L6-v2 "
    "(Apache-2.0) embeddings of the AudioSet class names (CC BY 4.0)."
)


@dataclass(frozen=True)
class FitSettings:
    lam: float = 1e-3  # L2 pull of the per-class corrections towards 0 (the similarity bridge)
    epochs: int = 10
    batch: int = 512
    lr: float = 3e-3
    seed: int = 0
    top: int = 20  # classes kept per query vector, as the similarity bridge does


# ---------------------------------------------------------------- data


def read_captions(path: Path, mid_index: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """Captions and their (n, classes) 0/1 label matrix from an AudioCaps tsv of ../shared/data."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    labels = np.zeros((len(rows), len(mid_index)), np.float32)
    for i, row in enumerate(rows):
        for mid in row["mids"].split(";"):
            labels[i, mid_index[mid]] = 1.0
    return [r["caption"] for r in rows], labels


def embed(encoder: TextEncoder, texts: list[str], cache: Path | None) -> np.ndarray:
    """MiniLM vectors of `texts`, kept in `cache` (a folder) under a hash of the model and the texts."""
    if cache is None:
        return encoder.encode(texts)
    key = hashlib.sha256(json.dumps([encoder.name, texts]).encode()).hexdigest()[:20]
    path = cache / f"text-vectors-{key}.npy"
    if path.is_file():
        return np.load(path)
    vectors = encoder.encode(texts)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def phrase_table(vocab: AudioSetVocabulary) -> tuple[list[str], np.ndarray]:
    """All alias phrases, grouped by class, and each class's first row."""
    phrases = vocab.texts(LABEL_STYLE)
    starts = np.cumsum([0] + [len(p) for p in phrases[:-1]]).astype(np.int64)
    return [t for p in phrases for t in p], starts


def similarities(text_vectors: np.ndarray, phrase_vectors: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.maximum.reduceat(text_vectors @ phrase_vectors.T, starts, axis=1).astype(np.float32)


# ---------------------------------------------------------------- fitting


def fit(texts: np.ndarray, sims: np.ndarray, labels: np.ndarray, settings: FitSettings) -> dict:
    """The residual bridge by maximum likelihood; returns alpha, b0, tbar and per-class w, d (0 if unfitted).

    Phase 1 fits the calibration of the similarity bridge alone (alpha, b0, base rates) with L-BFGS;
    phase 2 adds the corrections with seeded minibatch Adam (cosine-decayed), all classes seen in the data.
    """
    torch.manual_seed(settings.seed)
    n, dim = texts.shape
    fitted = np.flatnonzero(labels.sum(0) > 0)
    tbar = texts.mean(0)
    t = torch.from_numpy(np.ascontiguousarray(texts - tbar, np.float32))
    s = torch.from_numpy(np.ascontiguousarray(sims[:, fitted], np.float32))
    y = torch.from_numpy(np.ascontiguousarray(labels[:, fitted], np.float32))
    w = torch.zeros(len(fitted), dim, requires_grad=True)
    d = torch.zeros(len(fitted), requires_grad=True)
    log_alpha = torch.tensor(float(np.log(10.0)), requires_grad=True)  # today's temperature 0.1
    b0 = torch.tensor(0.0, requires_grad=True)

    def bce(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(z, target, reduction="none").sum(1).mean()

    lbfgs = torch.optim.LBFGS([log_alpha, b0, d], lr=1, max_iter=100, history_size=20,
                              line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        lbfgs.zero_grad()
        loss = bce(log_alpha.exp() * s + b0 + d, y)
        loss.backward()
        return loss

    lbfgs.step(closure)
    start_loss = float(closure().detach())

    adam = torch.optim.Adam([w, d, log_alpha, b0], lr=settings.lr)
    steps = settings.epochs * -(-n // settings.batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(adam, lambda k: 0.5 * (1 + np.cos(np.pi * k / steps)))
    order = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.epochs):
        for idx in torch.randperm(n, generator=order).split(settings.batch):
            z = t[idx] @ w.T + d + log_alpha.exp() * s[idx] + b0
            loss = bce(z, y[idx]) + 0.5 * settings.lam * (w ** 2).sum()
            adam.zero_grad()
            loss.backward()
            adam.step()
            schedule.step()
    with torch.no_grad():
        z = t @ w.T + d + log_alpha.exp() * s + b0
        end_loss = float(bce(z, y))
        weight = np.zeros((labels.shape[1], dim), np.float32)
        base = np.zeros(labels.shape[1], np.float32)
        weight[fitted], base[fitted] = w.numpy(), d.numpy()
    return dict(alpha=float(log_alpha.detach().exp()), b0=float(b0.detach()), tbar=tbar, weight=weight,
                base_rate=base, fitted=fitted, bce_start=start_loss, bce_end=end_loss)


def to_bridge(params: dict, phrase_vectors: np.ndarray, starts: np.ndarray, meta: dict,
              top: int = FitSettings.top) -> TextBridge:
    """Fold the centring and the shared offset into one query-side bias; leave the base rates out."""
    bias = (params["b0"] - params["weight"] @ params["tbar"]).astype(np.float32)
    return TextBridge(phrase_vectors=phrase_vectors, phrase_starts=starts, alpha=params["alpha"],
                      weight=params["weight"], bias=bias, top=top, temperature=1.0, meta=meta)


# ---------------------------------------------------------------- held-out numbers


def caption_label_map(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over captions of the average precision of ranking the classes against the clip's labels."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(labels, order, axis=1)
    precision = np.cumsum(hits, axis=1) / np.arange(1, labels.shape[1] + 1)
    return float(((precision * hits).sum(1) / hits.sum(1)).mean())


def label_profile_retrieval(query_vectors: np.ndarray, labels: np.ndarray, k: int = 10) -> dict[str, float]:
    """Sentence-style retrieval with a perfect tagger: each caption searches the distinct label sets (as
    L2-normalised 0/1 clip vectors); relevant is its own clip's label set. Returns R@1 and mAP@k."""
    keys = [labels[i].tobytes() for i in range(len(labels))]
    distinct = sorted(set(keys))
    column = {key: j for j, key in enumerate(distinct)}
    clips = np.stack([np.frombuffer(key, np.float32) for key in distinct])
    clips = clips / np.linalg.norm(clips, axis=1, keepdims=True)
    scores = query_vectors @ clips.T
    target = np.array([column[key] for key in keys])
    own = scores[np.arange(len(keys)), target]
    rank = 1 + (scores > own[:, None]).sum(1) + ((scores == own[:, None]) & (np.arange(len(distinct)) <
                                                                               target[:, None])).sum(1)
    return {"R@1": float((rank == 1).mean()), f"mAP@{k}": float(np.where(rank <= k, 1.0 / rank, 0.0).mean())}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--audiocaps", type=Path, default=REPO.parent / "shared" / "data" / "audiocaps")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--cache", type=Path, default=None, help="folder to keep MiniLM caption vectors in")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N train captions (tests)")
    ap.add_argument("--lam", default=str(FitSettings.lam),
                    help="L2 pull; several (comma-separated) with --holdout")
    ap.add_argument("--epochs", type=int, default=FitSettings.epochs)
    ap.add_argument("--seed", type=int, default=FitSettings.seed)
    ap.add_argument("--holdout", type=int, default=0, help="hold out N train captions and only report")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()

    vocab = AudioSetVocabulary.default()
    mids = [c.mid for c in vocab.classes]
    train_tsv = args.audiocaps / "train.tsv"
    captions, labels = read_captions(train_tsv, {m: i for i, m in enumerate(mids)})
    if args.limit:
        captions, labels = captions[: args.limit], labels[: args.limit]
    encoder = TextEncoder(DEFAULT_TEXT_MODEL)
    phrases, starts = phrase_table(vocab)
    phrase_vectors = embed(encoder, phrases, args.cache).astype(np.float16).astype(np.float32)  # as shipped
    texts = embed(encoder, captions, args.cache)
    sims = similarities(texts, phrase_vectors, starts)
    labelled = int((labels.sum(0) > 0).sum())
    print(f"{len(captions):,} captions from {train_tsv} ({labelled} of {len(mids)} classes labelled), "
          f"{len(phrases)} class phrases, MiniLM vectors in {time.time() - t0:.0f} s", file=sys.stderr)

    lams = [float(x) for x in args.lam.split(",")]
    if args.holdout:
        held = np.sort(np.random.default_rng(args.seed).permutation(len(captions))[: args.holdout])
        rest = np.setdiff1d(np.arange(len(captions)), held)
        print(f"held out {len(held):,} captions; fitting on {len(rest):,}\n")
        print("| lam | held-out caption->label mAP | label-profile retrieval R@1 | mAP@10 |")
        print("|---|---:|---:|---:|")
        today = softmax_top(10.0 * sims[held], FitSettings.top, 1.0)  # the similarity bridge
        m = label_profile_retrieval(today, labels[held])
        print(f"| similarity bridge | {caption_label_map(sims[held], labels[held]):.3f} | {m['R@1']:.3f} | "
              f"{m['mAP@10']:.3f} |")
        for lam in lams:
            settings = FitSettings(lam=lam, epochs=args.epochs, seed=args.seed)
            params = fit(texts[rest], sims[rest], labels[rest], settings)
            bridge = to_bridge(params, phrase_vectors, starts, {}, settings.top)
            m = label_profile_retrieval(bridge.query_vectors(texts[held]), labels[held])
            print(f"| {lam:g} | {caption_label_map(bridge.evidence(texts[held]), labels[held]):.3f} | "
                  f"{m['R@1']:.3f} | {m['mAP@10']:.3f} |", flush=True)
        return
    if len(lams) != 1:
        raise SystemExit("several --lam values only go with --holdout")
    settings = FitSettings(lam=lams[0], epochs=args.epochs, seed=args.seed)
    params = fit(texts, sims, labels, settings)
    meta = {
        "text_model": DEFAULT_TEXT_MODEL,
        "label_style": LABEL_STYLE,
        "mids": mids,
        "data": {"file": "audiocaps/train.tsv", "sha256": file_digest(train_tsv), "captions": len(captions)},
        "assets": {n: file_digest(resolve_asset(n)) for n in ("class_labels_indices.csv", "ontology.json")},
        "fitted_classes": int(len(params["fitted"])),
        "settings": settings.__dict__,
        "licence": LICENCE,
    }
    bridge = to_bridge(params, phrase_vectors, starts, meta, settings.top)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bridge.save(args.out)
    print(f"fitted {len(params['fitted'])} classes: alpha {params['alpha']:.3f}, b0 {params['b0']:.3f}, "
          f"train BCE {params['bce_start']:.4f} (similarity bridge, calibrated) -> {params['bce_end']:.4f}")
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes, sha256 {file_digest(args.out)}) "
          f"in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
