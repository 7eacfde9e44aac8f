"""Cold-start indexing speed: `audiofind index` on sfx-dev in a fresh process, into an empty index.

Reports audio duration / wall time (x real time), files/s and the peak resident memory of the whole
process tree (the indexer and its decoding workers, PSS), sampled every 250 ms. Prints a markdown table and
the command that produced it.

    python benchmarks/bench_index.py --sfx ../shared/data/sfx-dev --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def tree_memory(proc: psutil.Process) -> int:
    """Proportional set size (PSS) of a process and its children: forked workers share pages with their
    parent, which summed RSS would count twice."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        # the kernel's own per-process sum: cheap enough not to slow the run it measures
        with contextlib.suppress(OSError, psutil.Error), open(f"/proc/{p.pid}/smaps_rollup") as f:
            total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
    return total


def run_index(sfx: Path, index_dir: Path, workers: int | None) -> dict:
    cmd = [sys.executable, "-m", "audiofind.cli", "index", str(sfx), "--index", str(index_dir)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_memory(proc))
        time.sleep(0.25)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"audiofind index failed with exit code {proc.returncode}")
    info_cmd = [sys.executable, "-m", "audiofind.cli", "info", "--index", str(index_dir), "--json"]
    info = subprocess.run(info_cmd, capture_output=True, text=True, check=True)
    stats = json.loads(info.stdout)
    return {"wall": wall, "peak_mb": peak / 2**20, "stats": stats}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sfx", type=Path, default=Path("../shared/data/sfx-dev"))
    ap.add_argument("--workers", type=int, default=None, help="default: audiofind's own (half the cores)")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    rows = []
    for _ in range(args.repeats):
        index_dir = Path(tempfile.mkdtemp(prefix="af-bench-index-"))
        try:
            rows.append(run_index(args.sfx, index_dir, args.workers))
        finally:
            shutil.rmtree(index_dir, ignore_errors=True)
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
          f"workers={args.workers or 'default'}; cold start (new process, empty index)\n")
    print("| clips | audio h | wall s | x real time | files/s | peak memory (PSS) MB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        clips, hours = r["stats"]["clips"], r["stats"]["audio_hours"]
        print(f"| {clips} | {hours:.3f} | {r['wall']:.1f} | {hours * 3600 / r['wall']:.0f} | "
              f"{clips / r['wall']:.1f} | {r['peak_mb']:.0f} |")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
