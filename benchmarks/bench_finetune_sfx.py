"""Fine-tune the CPU dual encoder on sfx-dev's weak labels and compare it with zero-shot on held-out packages.

Training uses only the training packages (0ad, widelands, minetest, hedgewars) with captions made from
their file-name labels (`path_label`, plus the folder context): the weak labels a user's own library
carries. Evaluation uses the held-out packages (wesnoth, freedesktop), anonymised, with the
human-written benchmark queries, through the same `bench_quality.py` path as the zero-shot row.

    python benchmarks/bench_finetune_sfx.py --sfx ../shared/data/sfx-dev --work bench-out/finetune
"""

from __future__ import annotations

import argparse
import csv
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sfxdev import Clip, load_manifest, load_queries, split_by_package  # noqa: E402

from audiofind.research.train import load_config, train  # noqa: E402


def weak_captions(clip: Clip) -> list[str]:
    """What a file name says about a clip, as captions; the folder adds context ("fauna animal")."""
    label = clip.path_label.strip()
    context = " ".join(clip.dir_context.replace("_", " ").replace("-", " ").split("/")).strip()
    captions = [label] if label else []
    if context:
        captions.append(f"{label} ({context})" if label else context)
    return captions


def write_captions(path: Path, sfx: Path, clips: list[Clip], captions: dict[str, list[str]]) -> int:
    rows = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["audio_path", "caption"])
        for clip in clips:
            for caption in captions[clip.rel_path]:
                out.writerow([str((sfx / clip.rel_path).resolve()), caption])
                rows += 1
    return rows


def caption_sets(clips: list[Clip], kind: str) -> dict[str, list[str]]:
    """Per clip: its weak file-name captions, or the descriptive benchmark queries it is relevant to."""
    by_clip = {c.rel_path: weak_captions(c) if kind in ("weak", "both") else [] for c in clips}
    if kind in ("queries", "both"):
        queries, relevant = load_queries(clips=clips)
        for query, rel in zip(queries, relevant):
            for i in rel:
                by_clip[clips[i].rel_path].append(query)
    return by_clip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sfx", type=Path, default=Path("../shared/data/sfx-dev"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/finetune"))
    default_config = Path(__file__).resolve().parents[1] / "configs" / "clotho_mn04_minilm.yaml"
    ap.add_argument("--config", default=str(default_config))
    ap.add_argument("--captions", choices=["weak", "queries", "both"], default="weak",
                    help="training captions: file-name labels, the descriptive queries of the training "
                         "packages' clips, or both")
    ap.add_argument("overrides", nargs="*", help="extra key=value training overrides")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    clips = load_manifest(args.sfx)
    train_idx, _ = split_by_package(clips)
    captions = caption_sets(clips, args.captions)
    train_clips = [clips[i] for i in train_idx if captions[clips[i].rel_path]]
    random.Random(0).shuffle(train_clips)
    n_val = max(50, len(train_clips) // 10)
    train_csv, val_csv = args.work / "train.csv", args.work / "val.csv"
    n_train_rows = write_captions(train_csv, args.sfx, train_clips[n_val:], captions)
    write_captions(val_csv, args.sfx, train_clips[:n_val], captions)

    overrides = [
        f"data.train_csv={train_csv}", f"data.val_csv={val_csv}", "data.clotho_root=null",
        "data.items=clips", "model.window_s=5.0", "model.hop_s=5.0", "epochs=6",
        f"run_dir={args.work / 'run'}", "data.num_workers=1", *args.overrides,
    ]
    t0 = time.perf_counter()
    best = train(load_config(args.config, overrides))
    train_s = time.perf_counter() - t0
    print(f"trained on {len(train_clips) - n_val} clips ({n_train_rows} {args.captions} captions) "
          f"in {train_s / 60:.1f} min: {best}")

    quality = [sys.executable, str(Path(__file__).with_name("bench_quality.py")), "--sfx", str(args.sfx),
               "--work", str(args.work / "quality"), "--split", "test"]
    for name, extra in [("zero-shot default", []), ("fine-tuned", ["--model", str(best)])]:
        index_dir = args.work / ("index-" + ("ft" if extra else "zs"))
        cmd = [*quality, "--methods", "zero-shot", "--index-dir", str(index_dir), *extra]
        print(f"\n### {name}\n", flush=True)
        subprocess.run(cmd, check=True)
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
