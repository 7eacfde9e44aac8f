"""Cold start of the command line: `audiofind --help`, `audiofind search` (torch-free) and the torch path.

Every run is a fresh interpreter, as a user's command is; the runs of the cases are interleaved, so a
change in the machine's load hits every case alike. One unmeasured run of each case first writes the
bytecode caches (the child processes may write them even where PYTHONDONTWRITEBYTECODE is set, as an
installed package has them). "torch path" is today's Python API route (`Library.open(index)`, which
encodes the query with transformers on torch), printing the same table as the CLI. Prints a markdown
table (median, p90, min wall seconds), the load average around it and the command that produced it.

    python benchmarks/bench_cli_start.py --sounds ../shared/data/sfx-dev/widelands --work bench-out/cli
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TORCH_PATH = """
import sys
from audiofind import Library
from audiofind.cli.main import print_matches, weak_match_note
with Library.open(sys.argv[1]) as lib:
    found = lib.search(sys.argv[2], k=10)
print_matches(found, weak_match_note(found))
"""


def audiofind_command() -> list[str]:
    """The installed `audiofind` script next to this interpreter, else `python -m audiofind.cli`."""
    script = Path(sys.executable).with_name("audiofind")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "audiofind.cli"]


def run_once(cmd: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one fresh process, start to exit; a failure stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return wall


def ensure_index(index: Path, sounds: Path | None, env: dict[str, str]) -> None:
    if (index / "library.sqlite").is_file():
        return
    if sounds is None:
        raise SystemExit(f"no index at {index}: pass --sounds FOLDER to build one")
    subprocess.run([*audiofind_command(), "index", str(sounds), "--index", str(index), "--quiet"], env=env,
                   check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench-out/cli"), help="Holds the index.")
    parser.add_argument("--index", type=Path, help="An existing index (default: WORK/index).")
    parser.add_argument("--sounds", type=Path, help="Folder to index when the index does not exist yet.")
    parser.add_argument("--query", default="a dog barking")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    index = args.index or args.work / "index"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    ensure_index(index, args.sounds, env)
    cli = audiofind_command()
    cases = {
        "audiofind --help": [*cli, "--help"],
        "audiofind search (numpy text path)": [*cli, "search", args.query, "--index", str(index)],
        "torch path (Library API, transformers)": [sys.executable, "-c", TORCH_PATH, str(index), args.query],
    }
    for cmd in cases.values():
        run_once(cmd, env)  # bytecode caches, page cache
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.runs):
        for name, cmd in cases.items():
            times[name].append(run_once(cmd, env))
    load_after = os.getloadavg()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; load average (1 min) {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after; {args.runs} runs each, interleaved; query {args.query!r}, "
          f"index {index}")
    print()
    print("| command | median s | p90 s | min s |")
    print("|---|---:|---:|---:|")
    for name, walls in times.items():
        w = np.array(walls)
        print(f"| {name} | {np.median(w):.3f} | {np.percentile(w, 90):.3f} | {w.min():.3f} |")
    print()
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
