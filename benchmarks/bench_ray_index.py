"""Indexing sfx-dev on a Ray cluster against the single-process path, and the per-worker throughput.

Three measurements, each into a fresh index (name vectors included: the driver's work either way):

* **single process**: `Library.update` as `audiofind index` runs it (default workers: one decoding
  process beside one model thread), model load included;
* **Ray, cold**: a local cluster of `--workers` CPUs started in-process (its start-up timed apart), then
  `Library.update(ray=...)`: actors started, each loading its own model, hashing, decoding, embedding;
* **Ray, warm**: the same actors again (models loaded), decoding + embedding only, through
  `RayExecutor.embed_map`: the throughput a cluster multiplies, divided by the workers for the
  per-worker figure.

On a 2-core machine no gain is expected: the local path already uses both cores, and the Ray path
adds the raylet, the object store and a driver beside them. Prints a markdown table and its command.

    python benchmarks/bench_ray_index.py --sfx ../shared/data/sfx-dev --workers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from audiofind.audio import AUDIO_EXTENSIONS
from audiofind.library import Library
from audiofind.library.ray_executor import RayExecutor


def index_once(sfx: Path, **update: object) -> dict:
    """Index `sfx` into a fresh index; wall time and the report."""
    index_dir = Path(tempfile.mkdtemp(prefix="af-bench-ray-"))
    try:
        t0 = time.perf_counter()
        with Library.open(index_dir, create=True) as lib:
            report = lib.update([sfx], progress=False, **update)
            clips = len(lib)
        return {"wall": time.perf_counter() - t0, "clips": clips, "audio_s": report.audio_seconds,
                "embedded": report.embedded}
    finally:
        shutil.rmtree(index_dir, ignore_errors=True)


def warm_throughput(executor: RayExecutor, sfx: Path) -> dict:
    """Decode + embed every file on the already-started actors (no hashing, no writes)."""
    paths = sorted(str(p) for p in sfx.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    t0 = time.perf_counter()
    results = list(executor.embed_map(paths, None))
    wall = time.perf_counter() - t0
    ok = [r for _, (good, r) in results if good]
    return {"wall": wall, "clips": len(ok), "audio_s": sum(r[4] for r in ok), "embedded": len(ok)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sfx", type=Path, default=Path("../shared/data/sfx-dev"))
    ap.add_argument("--workers", type=int, default=2, help="Ray workers (and the local cluster's CPUs)")
    args = ap.parse_args()
    import ray

    single = index_once(args.sfx)
    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    cluster_start = time.perf_counter() - t0
    executor = RayExecutor(workers=args.workers)
    try:
        cold = index_once(args.sfx, ray=executor)
        warm = warm_throughput(executor, args.sfx)
    finally:
        executor.close()
        ray.shutdown()
    print(f"machine: {os.cpu_count()} cores; sfx-dev; Ray {ray.__version__}, {args.workers} workers on a "
          f"local cluster (start-up {cluster_start:.1f} s, not in the rows)\n")
    print("| path | clips embedded | wall s | x real time | files/s | per worker: x real time | files/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r, n in [("single process (`audiofind index`)", single, 1),
                       (f"Ray, {args.workers} workers, cold (actors start, models load)", cold, args.workers),
                       (f"Ray, {args.workers} workers, warm (decode + embed only)", warm, args.workers)]:
        rt, fps = r["audio_s"] / r["wall"], r["embedded"] / r["wall"]
        print(f"| {name} | {r['embedded']} | {r['wall']:.1f} | {rt:.0f} | {fps:.1f} | {rt / n:.0f} | "
              f"{fps / n:.1f} |")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
