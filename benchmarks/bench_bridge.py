"""Text bridges compared: today's similarity bridge, an AudioCaps-only linear head, their mix, the shipped
trained bridge and the alternatives tried on the way to it.

    python benchmarks/bench_bridge.py --sfx ../shared/data/sfx-dev --audiocaps ../shared/data/audiocaps \
        --work bench-out/bridge-bench [--compare rebuilt.npz]

Columns (every row keeps the default clip vectors: only the query side changes):

* sfx-dev, audio only: the 159 queries of ``sfxdev_queries.tsv`` over the 1,498 clips (tagger outputs are
  cached in ``--work``, as in ``ablate_zeroshot.py``; no file names are involved): R@1, R@5, R@10, mAP@10;
* sfx sentences: mean mAP@10 of the same queries put into three sentence templates;
* AudioCaps val caption->label mAP: each of the 2,475 val captions ranks the 527 classes by the bridge's
  class scores (before the top-k cut); AP against its clip's AudioSet labels;
* AudioCaps val sentence retrieval (perfect tagger): each caption searches the val clips' label sets
  (as L2-normalised 0/1 clip vectors: 279 distinct sets for 495 clips) with its query vector; relevant is
  its own clip's set: R@1, mAP@10.

AudioCaps val is only reported here: the pull strength was compared on held-out train captions
(``scripts/build_text_bridge.py --holdout``). Trained rows are fitted on all train captions, seeded.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))
from ablate_zeroshot import window_probs  # noqa: E402
from build_text_bridge import (  # noqa: E402
    FitSettings,
    caption_label_map,
    embed,
    fit,
    label_profile_retrieval,
    phrase_table,
    read_captions,
    similarities,
    to_bridge,
)
from sfxdev import load_manifest, load_queries  # noqa: E402

from audiofind.assets import resolve_asset  # noqa: E402
from audiofind.models.text_bridge import DEFAULT_TEXT_BRIDGE, TextBridge, softmax_top  # noqa: E402
from audiofind.models.zeroshot import ZeroShotConfig, ZeroShotModel, pool_windows  # noqa: E402
from audiofind.research.metrics import retrieval_metrics  # noqa: E402

TEMPLATES = ("the sound of {}", "in this recording, {} can be heard", "someone recorded {} up close")
Row = tuple[str, Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def fit_linear(texts: np.ndarray, labels: np.ndarray, lam: float = 1e-4, epochs: int = 10, seed: int = 0):
    """The product side's head: logits = W t + b for all 527 classes, BCE, from zero (bias: base rates)."""
    torch.manual_seed(seed)
    t, y = torch.from_numpy(texts), torch.from_numpy(labels)
    rate = labels.mean(0).clip(1e-5, 1 - 1e-5)
    w = torch.zeros(labels.shape[1], texts.shape[1], requires_grad=True)
    b = torch.tensor(np.log(rate / (1 - rate)), dtype=torch.float32, requires_grad=True)
    adam = torch.optim.Adam([w, b], lr=3e-3)
    steps = epochs * -(-len(t) // 512)
    schedule = torch.optim.lr_scheduler.LambdaLR(adam, lambda k: 0.5 * (1 + np.cos(np.pi * k / steps)))
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(t), generator=order).split(512):
            bce = F.binary_cross_entropy_with_logits(t[idx] @ w.T + b, y[idx], reduction="none")
            loss = bce.sum(1).mean() + 0.5 * lam * (w ** 2).sum()
            adam.zero_grad()
            loss.backward()
            adam.step()
            schedule.step()
    weight, bias = w.detach().numpy(), b.detach().numpy()
    return lambda v: v @ weight.T + bias


def ancestor_matrix(vocab) -> np.ndarray:
    """M[c, a] = 1 when class a is an ontology ancestor of class c (through classes outside the 527 too)."""
    import json

    nodes = json.loads(resolve_asset("ontology.json").read_text(encoding="utf-8"))
    parents: dict[str, list[str]] = {}
    for node in nodes:
        for child in node["child_ids"]:
            parents.setdefault(child, []).append(node["id"])
    index = {c.mid: c.index for c in vocab.classes}
    out = np.zeros((len(vocab), len(vocab)), np.float32)
    for c in vocab.classes:
        stack, seen = list(parents.get(c.mid, [])), set()
        while stack:
            mid = stack.pop()
            if mid not in seen:
                seen.add(mid)
                stack += parents.get(mid, [])
                if mid in index:
                    out[c.index, index[mid]] = 1.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sfx", type=Path, default=ROOT.parent / "shared" / "data" / "sfx-dev")
    ap.add_argument("--audiocaps", type=Path, default=ROOT.parent / "shared" / "data" / "audiocaps")
    ap.add_argument("--work", type=Path, default=ROOT / "bench-out" / "bridge-bench")
    ap.add_argument("--bridge", type=Path, default=None,
                    help="bridge file to score (default: the shipped one)")
    ap.add_argument("--compare", type=Path, action="append", default=[], help="more bridge files to score")
    ap.add_argument("--quick", action="store_true", help="only the baselines and the given files")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    sim_model = ZeroShotModel(ZeroShotConfig(text_bridge=""))
    vocab, encoder = sim_model.vocab, sim_model.text_encoder
    clips = load_manifest(args.sfx)
    queries, relevant = load_queries(clips=clips)
    paths = [args.sfx / c.rel_path for c in clips]
    probs = window_probs(sim_model, paths, args.work / "sfx-probs-pad-1s.npz")
    pooled = np.stack([pool_windows(p, sim_model.config.pooling) for p in probs])
    clip_vectors = sim_model.clip_vectors(pooled)
    q_plain = embed(encoder, queries, args.work)
    q_sentences = [embed(encoder, [t.format(q) for q in queries], args.work) for t in TEMPLATES]

    mid_index = {c.mid: c.index for c in vocab.classes}
    train_text, train_labels = read_captions(args.audiocaps / "train.tsv", mid_index)
    val_text, val_labels = read_captions(args.audiocaps / "val.tsv", mid_index)
    train_vec, val_vec = embed(encoder, train_text, args.work), embed(encoder, val_text, args.work)
    phrases, starts = phrase_table(vocab)
    phrase_vectors = embed(encoder, phrases, args.work).astype(np.float16).astype(np.float32)
    train_sims = similarities(train_vec, phrase_vectors, starts)
    print(f"inputs ready in {time.time() - t0:.0f} s", file=sys.stderr)

    def sim_scores(v: np.ndarray) -> np.ndarray:
        return similarities(v, phrase_vectors, starts)

    rows: list[Row] = [("similarity bridge (today: `text_bridge=\"\"`)", sim_model.query_vectors, sim_scores)]
    linear = fit_linear(train_vec, train_labels)
    rows.append(("AudioCaps-only linear head (BCE, all classes)", lambda v: softmax_top(linear(v), 20, 1.0),
                 linear))

    def mix_all(v: np.ndarray) -> np.ndarray:
        return _normalise(softmax_top(10 * sim_scores(v), 0, 1.0) + softmax_top(linear(v), 0, 1.0))

    rows.append(("naive mix: similarity + linear query vectors, 1:1",
                 lambda v: _normalise(sim_model.query_vectors(v) + softmax_top(linear(v), 20, 1.0)), mix_all))
    files = [("**trained bridge (shipped default)**", args.bridge or resolve_asset(DEFAULT_TEXT_BRIDGE))]
    files += [(f"bridge file {p}", p) for p in args.compare]
    for label, path in files:
        bridge = TextBridge.load(path)
        rows.append((label, bridge.query_vectors, bridge.evidence))
    if not args.quick:
        shipped = TextBridge.load(files[0][1])
        rows.append(("  output: sigmoid(evidence), all classes", lambda v: _normalise(
            1 / (1 + np.exp(-shipped.evidence(v)))), shipped.evidence))
        rows.append(("  output: softmax temperature 2", lambda v: softmax_top(shipped.evidence(v), 20, 2.0),
                     shipped.evidence))
        variants = [("  pull lam 1e-4 (best on held-out captions)", dict(lam=1e-4), False),
                    ("  pull lam 1e-2", dict(lam=1e-2), False),
                    ("  targets closed under ontology ancestors", {}, True)]
        closure = ancestor_matrix(vocab)
        for label, kw, close in variants:
            labels = np.maximum(train_labels, (train_labels @ closure > 0)) if close else train_labels
            params = fit(train_vec, train_sims, labels.astype(np.float32), FitSettings(**kw))
            bridge = to_bridge(params, phrase_vectors, starts, {}, 20)
            rows.append((label, bridge.query_vectors, bridge.evidence))
        params = fit(train_vec, train_sims, train_labels, FitSettings())
        default = to_bridge(params, phrase_vectors, starts, {}, 20)
        base = params["base_rate"]
        rows.append(("  base rates kept in the query",
                     lambda v: softmax_top(default.evidence(v) + base, 20, 1.0),
                     lambda v: default.evidence(v) + base))
        support = train_labels.sum(0)
        gate = support / (support + 100.0)
        rate = train_labels.mean(0).clip(1e-5, 1 - 1e-5)

        def gated(v: np.ndarray) -> np.ndarray:
            return (1 - gate) * 10 * sim_scores(v) + gate * (linear(v) - np.log(rate / (1 - rate)))

        rows.append(("  per-class mix by support n/(n+100): similarity vs linear head",
                     lambda v: softmax_top(gated(v), 20, 1.0), gated))

    print(f"{len(queries)} sfx-dev queries over {len(clips)} clips; AudioCaps val {len(val_text):,} "
          f"captions; trained rows fitted on {len(train_text):,} train captions\n")
    print("| query side | sfx R@1 | R@5 | R@10 | mAP@10 | sfx sentences mAP@10 "
          "| AudioCaps val caption→label mAP | val sentence retrieval R@1 | mAP@10 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, query_vectors, class_scores in rows:
        m = retrieval_metrics(query_vectors(q_plain) @ clip_vectors.T, relevant)
        sentences = np.mean([retrieval_metrics(query_vectors(q) @ clip_vectors.T, relevant)["mAP@10"]
                             for q in q_sentences])
        label_map = caption_label_map(class_scores(val_vec), val_labels)
        proxy = label_profile_retrieval(query_vectors(val_vec), val_labels)
        print(f"| {label} | {m['R@1']:.3f} | {m['R@5']:.3f} | {m['R@10']:.3f} | {m['mAP@10']:.3f} | "
              f"{sentences:.3f} | {label_map:.3f} | {proxy['R@1']:.3f} | {proxy['mAP@10']:.3f} |", flush=True)
    print(f"\ncommand: python {shlex.join(sys.argv)}  ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
