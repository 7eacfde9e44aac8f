"""Training throughput of the CPU recipe (mn04 + MiniLM) on synthetic 30 s clips, extrapolated to Clotho.

Writes N synthetic 30 s clips (44.1 kHz WAV, as Clotho ships them) with a captions CSV, trains
`configs/clotho_mn04_minilm.yaml` on them for two epochs without validation, and reports the second
epoch (the first keeps the audio backbone frozen, as the recipe does): clips per second through decoding,
cropping, both towers forward and backward, and the optimizer, and the time one epoch of Clotho
development (3,839 clips; x5 items when every caption is an item) would take at that rate.

    python benchmarks/bench_train.py [--clips 64] [--threads N] [key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audiofind.research.train import load_config, train

CLOTHO_DEV_CLIPS = 3_839
CAPTIONS_PER_CLIP = 5
REPO = Path(__file__).resolve().parents[1]


def write_clips(folder: Path, n: int, seconds: float, rate: int = 44_100) -> Path:
    """n distinct noisy tones of `seconds` each, plus `audio_path,caption` rows (five per clip)."""
    rng = np.random.default_rng(0)
    t = np.arange(round(seconds * rate)) / rate
    rows = []
    for i in range(n):
        tone = np.sin(2 * np.pi * (200 + 40 * i) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * (1 + i % 4) * t))
        wave = 0.3 * tone + 0.05 * rng.standard_normal(t.size)
        path = folder / f"clip_{i:04d}.wav"
        sf.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
        rows += [
            (path.name, f"sound number {i} variant {k} with a pulsing tone") for k in range(CAPTIONS_PER_CLIP)
        ]
    table = folder / "captions.csv"
    with open(table, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["audio_path", "caption"])
        writer.writerows(rows)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=64, help="synthetic clips (one epoch = this many items)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch intra-op threads; on a busy machine 1 can be far faster (idle threads spin)",
    )
    ap.add_argument("--config", default=str(REPO / "configs" / "clotho_mn04_minilm.yaml"))
    ap.add_argument("overrides", nargs="*", help="extra key=value training overrides")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        folder = Path(tmp)
        table = write_clips(folder, args.clips, args.seconds)
        cfg = load_config(
            args.config,
            [
                f"data.train_csv={table}",
                "data.val_csv=null",
                "data.val_split=null",
                "data.clotho_root=null",
                f"run_dir={folder / 'run'}",
                "epochs=2",
                "resume=false",
                "log_every=0",
                *args.overrides,
            ],
        )
        start = time.perf_counter()
        train(cfg)
        total = time.perf_counter() - start
        history = torch.load(folder / "run" / "last.pt", map_location="cpu", weights_only=True)["train"][
            "history"
        ]
    epoch = history[-1]
    rate = epoch["clips_per_s"]
    dev_epoch = CLOTHO_DEV_CLIPS / rate
    items = "captions" if cfg.data.items == "captions" else "clips"
    print(
        "\n| recipe | audio | batch (x accum) | workers | threads | clips/s | s/epoch here | "
        "Clotho dev epoch, one item per clip | Clotho dev epoch, every caption |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {Path(args.config).stem} ({cfg.model.audio_backbone} + {cfg.model.text_backbone}, "
        f"items={items}) | {args.clips} x {args.seconds:g} s, crops of {cfg.model.window_s:g} s | "
        f"{cfg.data.batch_size} (x{cfg.optim.grad_accum}) | {cfg.data.num_workers} | {args.threads} | "
        f"{rate:.2f} | {epoch['epoch_s']:.1f} | {dev_epoch / 60:.1f} min | "
        f"{CAPTIONS_PER_CLIP * dev_epoch / 60:.1f} min |"
    )
    print(
        f"\nwhole run (model loading, 2 epochs, checkpoints): {total:.0f} s; "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}, torch {torch.__version__}"
    )
    print(f"command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
