"""Ablate the zero-shot bridge on the sfx-dev benchmark: label texts, score space, pooling, calibration.

Tagger outputs are computed once per window setting and cached, so each variant costs only the
vector maths. Prints a markdown table (best first) and the command that produced it.

    python benchmarks/ablate_zeroshot.py --sfx ../shared/data/sfx-dev --work bench-out/ablation
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sfxdev import load_manifest, load_queries  # noqa: E402

from audiofind.audio import load_audio  # noqa: E402
from audiofind.models.zeroshot import ZeroShotConfig, ZeroShotModel, pool_windows  # noqa: E402
from audiofind.research.metrics import retrieval_metrics  # noqa: E402


def window_probs(model: ZeroShotModel, paths: list[Path], cache: Path) -> list[np.ndarray]:
    """Per-clip (windows, 527) probabilities for the model's window settings, cached on disk."""
    if cache.exists():
        data = np.load(cache)
        return [data[f"c{i}"] for i in range(len(paths))]
    out: list[np.ndarray] = []
    for start in range(0, len(paths), 64):
        waves = [load_audio(p)[0] for p in paths[start:start + 64]]
        out += model.tag_probabilities(waves)
    np.savez(cache, **{f"c{i}": p for i, p in enumerate(out)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sfx", type=Path, default=Path("../shared/data/sfx-dev"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/ablation"))
    ap.add_argument("--windows", default="pad-1s,exact-length,pad-2s,pad-10s,pad-1s-hop5",
                    help="comma-separated window settings to compare")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    clips = load_manifest(args.sfx)
    queries, relevant = load_queries(clips=clips)
    paths = [args.sfx / c.rel_path for c in clips]

    base = ZeroShotModel()
    query_text = base.text_encoder.encode(queries)
    rows = []
    settings = {
        "pad-1s": dict(pad_to_s=1.0, window_s=10.0, hop_s=10.0),
        "exact-length": dict(pad_to_s=1 / 32_000, window_s=10.0, hop_s=10.0),
        "pad-2s": dict(pad_to_s=2.0, window_s=10.0, hop_s=10.0),
        "pad-10s": dict(pad_to_s=10.0, window_s=10.0, hop_s=10.0),
        "pad-1s-hop5": dict(pad_to_s=1.0, window_s=10.0, hop_s=5.0),
    }
    for name in args.windows.split(","):
        window = settings[name]
        t0 = time.time()
        model = ZeroShotModel(ZeroShotConfig(**window, text_bridge=""))  # the similarity bridge
        model.__dict__["text_encoder"] = base.text_encoder
        probs = window_probs(model, paths, args.work / f"probs-{name}.npz")
        print(f"{name}: tagger outputs in {time.time() - t0:.1f} s", file=sys.stderr)
        grid = itertools.product(
            ["aliases", "name", "sound", "parent", "description"], ["class", "text"],
            ["max", "mean", "meanmax"],
            [0.25, 0.5, 1.0], [0.05, 0.1, 0.2], [0, 20],
        )
        for style, space, pooling, power, temp, top in grid:
            if space == "text" and (temp != 0.05 or top):
                continue  # query-side knobs only exist in the class space
            if name != "pad-1s" and (style, space) != ("aliases", "class"):
                continue  # window settings are compared on one bridge
            cfg = ZeroShotConfig(**window, label_style=style, space=space, pooling=pooling, audio_power=power,
                                 query_temperature=temp, query_top=top, text_bridge="")
            if style != model.config.label_style:
                for cached in ("phrase_vectors", "class_text_vectors"):
                    model.__dict__.pop(cached, None)
            model.config = cfg
            clip_vecs = model.clip_vectors(np.stack([pool_windows(p, pooling) for p in probs]))
            scores = model.query_vectors(query_text) @ clip_vecs.T
            m = retrieval_metrics(scores, relevant)
            rows.append((m["mAP@10"], name, dataclasses.replace(cfg), m))
    rows.sort(key=lambda r: -r[0])
    print(f"{len(queries)} queries, {len(clips)} clips\n")
    print("| windows | label text | space | pooling | power | temp | top | R@1 | R@5 | R@10 | mAP@10 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for _, name, cfg, m in rows[:40]:
        print(f"| {name} | {cfg.label_style} | {cfg.space} | {cfg.pooling} | {cfg.audio_power} | "
              f"{cfg.query_temperature if cfg.space == 'class' else '-'} | {cfg.query_top or '-'} | "
              f"{m['R@1']:.3f} | {m['R@5']:.3f} | {m['R@10']:.3f} | {m['mAP@10']:.3f} |")
    default = ZeroShotConfig(text_bridge="")  # these knobs are the similarity bridge's
    for _, name, cfg, m in rows:
        if name == "pad-1s" and cfg == default:
            print(f"\ncurrent default: rank {[r[2] for r in rows].index(cfg) + 1}, mAP@10 {m['mAP@10']:.3f}")
    print("\nOne knob at a time (every other setting at the default):\n")
    print("| knob | value | R@1 | R@10 | mAP@10 |")
    print("|---|---|---|---|---|")
    knobs = ["pad_to_s", "hop_s", "label_style", "space", "pooling", "audio_power", "query_temperature",
             "query_top"]
    for knob in knobs:
        for _, _, cfg, m in sorted(rows, key=lambda r: str(getattr(r[2], knob))):
            query_side = ("query_temperature", "query_top") if cfg.space == "text" else ()
            others = {k: getattr(cfg, k) for k in knobs if k != knob and k not in query_side}
            if all(getattr(default, k) == v for k, v in others.items()) and cfg.window_s == default.window_s:
                mark = " (default)" if getattr(cfg, knob) == getattr(default, knob) else ""
                print(f"| {knob} | {getattr(cfg, knob)}{mark} | {m['R@1']:.3f} | {m['R@10']:.3f} | "
                      f"{m['mAP@10']:.3f} |")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
