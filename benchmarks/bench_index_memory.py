"""Peak memory of `Library.update` over folders of long recordings: 1, 8 and 16 one-hour files.

Each measurement runs the indexer in a fresh child process and reports that process's peak RSS
(ru_maxrss), its growth during `update` (the baseline taken after indexing one short warm-up file, so
imports, thread pools and SQLite are in it), and the largest decoding worker's peak. The files are
one hour of quiet noise each (8-bit 8 kHz WAV: cheap to write, 29 MB on disk, 0.46 GB of float32 at
32 kHz once decoded), each with its own first block so content hashing does not fold them together.
The model is a cheap stand-in (a spectrum of the wave) at the model rate, so the numbers are about the
decoding queue and the indexer, not the tagger; `--queue unbounded` restores the old count-only window
(up to 36 decoded files in flight) for comparison.

    python benchmarks/bench_index_memory.py --work bench-out/memory            # the table
    python benchmarks/bench_index_memory.py --counts 16 --json --work DIR      # one row as JSON (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HOUR = 3600
FILE_RATE = 8_000


def make_long_files(folder: Path, n: int, seconds: int = HOUR, rate: int = FILE_RATE) -> list[Path]:
    """`n` WAVs of `seconds` quiet noise: one written in blocks, copies with their own first block."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    first = folder / "long_00.wav"
    info = sf.info(str(first)) if first.exists() else None
    if info is None or (info.duration, info.samplerate) != (seconds, rate):
        rng = np.random.default_rng(0)
        with sf.SoundFile(first, "w", samplerate=rate, channels=1, subtype="PCM_U8", format="WAV") as f:
            for _ in range(0, seconds, 60):
                f.write((rng.integers(-3, 4, 60 * rate) / 128).astype(np.float32))
        for old in folder.glob("long_*.wav"):
            if old != first:
                old.unlink()
    paths = [first]
    for i in range(1, n):
        path = folder / f"long_{i:02d}.wav"
        if not path.exists() or path.stat().st_size != first.stat().st_size:
            shutil.copyfile(first, path)
            with open(path, "r+b") as f:  # a different first block: different bytes, different hash
                f.seek(1024)
                f.write(bytes(128 + (i + k) % 5 for k in range(256)))
        paths.append(path)
    for extra in sorted(folder.glob("long_*.wav"))[n:]:
        extra.unlink()
    return paths


class SpectrumModel:
    """A cheap stand-in for the tagger: what is measured is the indexer around it."""

    model_id = "bench-spectrum-v1"
    source = "bench"
    dim = 8

    def __init__(self, sample_rate: int, passes: int) -> None:
        self.sample_rate = sample_rate
        self.passes = passes  # FFT passes over each 10 s window: the tagger's cost, so decoded files queue up

    def embed_audio(self, waves):
        from audiofind.models import AudioEmbeddings

        win = 10 * self.sample_rate
        for w in waves:
            for _ in range(self.passes):
                for start in range(0, len(w), win):  # window by window, as the tagger goes
                    np.fft.rfft(w[start:start + win])
        vecs = np.stack([np.abs(np.fft.rfft(w[:1 << 16], 14))[:8] + 1e-3 for w in waves]).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        return AudioEmbeddings(vectors=vecs, tags=[[("Noise", 1.0)] for _ in waves])

    def encode_text(self, texts):
        return np.ones((len(texts), self.dim), np.float32) / np.sqrt(self.dim)


def child(folder: str, index: str, rate: int, workers: int, passes: int, queue: str) -> None:
    """Index `folder` in this process and print one JSON line of memory figures."""
    from audiofind.library import Library, core
    from audiofind.library import workers as workers_mod

    core.fill_name_vectors = lambda *a, **k: 0  # name vectors (a sentence encoder) are not what is measured
    if queue == "unbounded":
        workers_mod.DECODE_QUEUE_SECONDS = float("inf")
    import soundfile as sf

    warmup = Path(index).parent / "warmup"
    warmup.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(1).uniform(-0.1, 0.1, rate).astype(np.float32)
    sf.write(warmup / "warmup.wav", noise, rate)
    with Library.open(index, SpectrumModel(rate, passes), create=True) as lib:
        lib.update([warmup], workers=0, progress=False)  # imports, thread pools, SQLite: all in the baseline
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.monotonic()
        report = lib.update([folder], workers=workers, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"files": report.embedded, "skipped": report.skipped, "base_mb": base / 1024,
                      "peak_mb": peak / 1024, "growth_mb": (peak - base) / 1024,
                      "worker_peak_mb": kids / 1024, "seconds": time.monotonic() - start,
                      "audio_hours": report.audio_seconds / 3600}))


def measure(folder: Path, index: Path, rate: int, workers: int, passes: int, queue: str) -> dict:
    shutil.rmtree(index, ignore_errors=True)
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, __file__, "--child", str(folder), str(index), str(rate), str(workers), str(passes),
           queue]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("bench-out/memory"))
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--rate", type=int, default=32_000, help="the stand-in model's sample rate")
    ap.add_argument("--file-rate", type=int, default=FILE_RATE, help="sample rate of the generated files")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--queue", nargs="+", default=["bounded", "unbounded"], choices=["bounded", "unbounded"])
    ap.add_argument("--json", action="store_true", help="print one JSON object per row")
    ap.add_argument("--model-passes", type=int, default=4,
                    help="FFT passes over each 10 s window in the stand-in model (its cost)")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        folder, index, rate, workers, passes, queue = args.child
        child(folder, index, int(rate), int(workers), int(passes), queue)
        return
    rows = []
    for n in args.counts:
        folder = args.work / "sounds"
        make_long_files(folder, n, rate=args.file_rate)
        for queue in args.queue:
            row = {"count": n, "queue": queue, **measure(folder, args.work / "index", args.rate, args.workers,
                                                         args.model_passes, queue)}
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if args.json:
        return
    print(f"`python benchmarks/bench_index_memory.py {' '.join(sys.argv[1:])}` (files at "
          f"{args.file_rate} Hz, model rate {args.rate} Hz, {args.workers} decoding workers)\n")
    print("| one-hour files | decoding queue | peak RSS of the indexer | growth during update "
          "| largest worker peak | wall |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['count']} | {r['queue']} | {r['peak_mb'] / 1024:.2f} GB "
              f"| {r['growth_mb'] / 1024:.2f} GB | {r['worker_peak_mb'] / 1024:.2f} GB "
              f"| {r['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
