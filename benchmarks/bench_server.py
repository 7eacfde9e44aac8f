"""Load test for `audiofind serve`: many concurrent clients on loopback, then a markdown table.

    python benchmarks/bench_server.py --sfx ../shared/data/sfx-dev   # builds bench-out/server-index once
    python benchmarks/bench_server.py --index DIR --clients 200 --duration 30

starts `audiofind serve` as a subprocess on a free port, runs `--clients` asyncio clients (httpx, one
connection each) for `--duration` seconds against a mix of requests (text search with the sfx-dev
queries, search with filters, more-like-this by id, clip records, waveforms, byte-range audio and
status), then prints requests/s, p50/p99 latency per request kind, errors (which must be zero) and the
server's resident memory, followed by the command line. The run stops by itself; `--json` saves it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_SFX = REPO.parent / "shared" / "data" / "sfx-dev"
DEFAULT_INDEX = REPO / "bench-out" / "server-index"
# request kind -> weight; text search dominates, as it does for a person typing
MIX = {
    "search": 55,
    "search_filtered": 10,
    "similar": 10,
    "clip": 5,
    "waveform": 5,
    "audio_range": 10,
    "status": 5,
}


def load_queries() -> list[str]:
    """The hand-written sfx-dev queries, plus prefixes of them (what search-as-you-type sends)."""
    lines = (HERE / "sfxdev_queries.tsv").read_text().splitlines()[1:]
    queries = [line.split("\t")[0] for line in lines if line.strip()]
    prefixes = [q[:n] for q in queries for n in (4, 8) if len(q) > n]
    return queries + prefixes


def build_index(index_dir: Path, sfx_dir: Path, workers: int) -> None:
    """Index sfx-dev into `index_dir` (only new or changed files are embedded on a re-run)."""
    from audiofind.library import Library

    print(f"indexing {sfx_dir} into {index_dir} (once; later runs re-use it) ...", file=sys.stderr)
    with Library.open(index_dir, create=True) as lib:
        report = lib.update([sfx_dir], workers=workers, progress=True)
    print(f"indexed: {report.to_dict()}", file=sys.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(index_dir: Path, port: int, extra: Sequence[str] = ()) -> list[str]:
    """`audiofind serve`, or the stand-alone module while the main CLI does not mount it yet."""
    probe = (
        subprocess.run(["audiofind", "serve", "--help"], capture_output=True, text=True, check=False)
        if _on_path("audiofind")
        else None
    )
    base = (
        ["audiofind"]
        if probe is not None and probe.returncode == 0
        else [sys.executable, "-m", "audiofind.cli.serve"]
    )
    return [*base, "serve", "--index", str(index_dir), "--host", "127.0.0.1", "--port", str(port), *extra]


def wait_listening(
    proc: subprocess.Popen, url: str, log: IO[str], marker: str | None, timeout: float = 600
) -> None:
    """Until `marker` shows in the process's log (if given) and `url` answers; raise if it dies first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"server exited with {proc.returncode}:\n{log.read()[-2000:]}")
        log.seek(0)
        if marker is None or marker in log.read():
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/api/status", timeout=5).status_code == 200:
                    return
        if time.monotonic() > deadline:
            raise SystemExit(f"server did not start within {timeout:.0f} s")
        time.sleep(0.2)


BASELINE_APP = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.get("/api/status")
async def status():
    return {"status": "ok"}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


@contextlib.contextmanager
def running(cmd: list[str], url: str, marker: str | None, timeout: float = 600) -> Iterator[subprocess.Popen]:
    """A server subprocess, its output in a temp file (a full pipe would stall it), stopped on exit."""
    env = {**os.environ, "AUDIOFIND_OFFLINE": os.environ.get("AUDIOFIND_OFFLINE", "1")}
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            wait_listening(proc, url, log, marker, timeout)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def baseline(clients: int, duration: float) -> dict[str, float]:
    """The same client against a bare FastAPI endpoint: the ceiling this machine and client allow."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-c", BASELINE_APP, str(port)], url, None, timeout=60):
        result = asyncio.run(run_load(url, clients, duration, [], [], [], 0, {"status": 1}))
    lat = result["latencies"]["status"]
    return {
        "rps": (len(lat) + len(result["errors"]["status"])) / result["wall"],
        "p50_ms": 1000 * percentile(lat, 50),
    }


def _on_path(name: str) -> bool:
    from shutil import which

    return which(name) is not None


def rss_bytes(pid: int) -> int:
    """Resident memory of the server process and its children."""
    try:
        import psutil

        proc = psutil.Process(pid)
        return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
    except ImportError:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except Exception:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the server process has used so far."""
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except ImportError:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def run_load(
    url: str,
    clients: int,
    duration: float,
    queries: list[str],
    ids: list[int],
    folders: list[str],
    seed: int,
    mix: dict[str, float],
) -> dict[str, dict[str, list]]:
    """`clients` loops of requests until the deadline; latencies and errors per request kind."""
    kinds, weights = zip(*mix.items(), strict=True)
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, list[str]] = defaultdict(list)
    deadline = time.monotonic() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(60.0)) as client:

        async def one_client(n: int) -> None:
            rnd = random.Random(seed + n)
            while time.monotonic() < deadline:
                kind = rnd.choices(kinds, weights)[0]
                start = time.perf_counter()
                try:
                    if kind == "search":
                        r = await client.get("/api/search", params={"q": rnd.choice(queries), "k": 20})
                    elif kind == "search_filtered":
                        r = await client.get(
                            "/api/search",
                            params={
                                "q": rnd.choice(queries),
                                "k": 50,
                                "max_duration": rnd.choice([1, 2, 5]),
                                "path_prefix": rnd.choice(folders),
                            },
                        )
                    elif kind == "similar":
                        r = await client.post("/api/similar", json={"id": rnd.choice(ids), "k": 20})
                    elif kind == "clip":
                        r = await client.get(f"/api/clips/{rnd.choice(ids)}")
                    elif kind == "waveform":
                        r = await client.get(f"/api/clips/{rnd.choice(ids)}/waveform", params={"points": 400})
                    elif kind == "audio_range":
                        r = await client.get(
                            f"/api/clips/{rnd.choice(ids)}/audio", headers={"Range": "bytes=0-65535"}
                        )
                    else:
                        r = await client.get("/api/status")
                    ok = r.status_code in (200, 206)
                    if not ok:
                        errors[kind].append(f"{r.status_code} {r.text[:120]}")
                except httpx.HTTPError as e:
                    ok = False
                    errors[kind].append(f"{type(e).__name__}: {e}")
                if ok:
                    latencies[kind].append(time.perf_counter() - start)

        start = time.monotonic()
        await asyncio.gather(*(one_client(n) for n in range(clients)))
        wall = time.monotonic() - start
    return {"latencies": latencies, "errors": errors, "wall": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--index", type=Path, help=f"existing index (default: build {DEFAULT_INDEX} from --sfx)"
    )
    parser.add_argument(
        "--sfx", type=Path, default=DEFAULT_SFX, help="sfx-dev folder to index when --index is absent"
    )
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of load before measuring (not counted)"
    )
    parser.add_argument("--workers", type=int, default=2, help="decoding processes when building the index")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--mix",
        help="request weights, e.g. 'search=1,status=1' (default: "
        + ",".join(f"{k}={v}" for k, v in MIX.items())
        + ")",
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the bare-FastAPI calibration run (same client, 10 s)"
    )
    parser.add_argument(
        "--serve-args", default="", help="more `audiofind serve` options, e.g. '--torch-threads 2'"
    )
    parser.add_argument("--build-only", action="store_true", help="build the default index and stop")
    args = parser.parse_args(argv)

    index_dir = args.index
    if index_dir is None:
        index_dir = DEFAULT_INDEX
        if not (index_dir / "ready").exists():
            build_index(index_dir, args.sfx, args.workers)
            (index_dir / "ready").touch()
    if args.build_only:
        return 0
    mix = MIX
    if args.mix:
        mix = {k: float(v) for k, v in (item.split("=") for item in args.mix.split(","))}
        unknown = set(mix) - set(MIX)
        if unknown:
            parser.error(f"unknown request kinds {sorted(unknown)}; known: {sorted(MIX)}")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = serve_command(index_dir, port, shlex.split(args.serve_args))
    ready = time.monotonic()
    with running(cmd, url, "Open http") as server:  # `serve` prints the URL once the model is loaded
        with httpx.Client(base_url=url, timeout=60) as c:
            status = c.get("/api/status").json()
            folders = [f["path"] + "/" for f in c.get("/api/folders").json()["folders"]]
            hits = c.get("/api/search", params={"q": "sound", "k": 200}).json()["results"]
        startup_s = time.monotonic() - ready
        ids = [h["id"] for h in hits]
        queries = load_queries()
        rss_idle = rss_bytes(server.pid)
        if args.warmup > 0:
            asyncio.run(
                run_load(url, min(args.clients, 20), args.warmup, queries, ids, folders, args.seed + 999, mix)
            )
        peak = [rss_bytes(server.pid)]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak.append(rss_bytes(server.pid))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu_before = cpu_seconds(server.pid)
        result = asyncio.run(
            run_load(url, args.clients, args.duration, queries, ids, folders, args.seed, mix)
        )
        wall = result["wall"]  # includes the requests still in flight at the deadline
        server_cpu = cpu_seconds(server.pid) - cpu_before
        stop.set()
        sampler.join(2)
        rss_after = rss_bytes(server.pid)
    base = None if args.no_baseline else baseline(args.clients, min(10.0, args.duration))

    lat, errs = result["latencies"], result["errors"]
    all_lat = [x for v in lat.values() for x in v]
    n_err = sum(len(v) for v in errs.values())
    rows = []
    for kind in list(mix) + ["all"]:
        values = all_lat if kind == "all" else lat.get(kind, [])
        e = n_err if kind == "all" else len(errs.get(kind, []))
        rows.append(
            {
                "kind": kind,
                "requests": len(values) + e,
                "rps": (len(values) + e) / wall,
                "p50_ms": 1000 * percentile(values, 50),
                "p99_ms": 1000 * percentile(values, 99),
                "errors": e,
            }
        )
    out = {
        "clients": args.clients,
        "duration_s": round(wall, 2),
        "clips": status["clips"],
        "audio_hours": status["audio_hours"],
        "model_id": status["model_id"],
        "startup_s": round(startup_s, 1),
        "rss_idle_mb": round(rss_idle / 2**20, 1),
        "rss_peak_mb": round(max(peak) / 2**20, 1),
        "rss_after_mb": round(rss_after / 2**20, 1),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, len(all_lat) + n_err), 2),
        "rows": rows,
        "cpu_count": os.cpu_count(),
        "error_samples": {k: v[:3] for k, v in errs.items() if v},
        "baseline": base,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "server": shlex.join(cmd),
    }
    print(
        f"\n{args.clients} concurrent clients for {wall:.1f} s against `audiofind serve` on loopback "
        f"({status['clips']:,} clips, {status['audio_hours']:.2f} h of audio, {os.cpu_count()} CPUs)\n"
    )
    print("| request | requests | req/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        name = f"**{r['kind']}**" if r["kind"] == "all" else r["kind"]
        cells = [
            name,
            f"{r['requests']:,}",
            f"{r['rps']:.1f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            r["errors"],
        ]
        print("| " + " | ".join(map(str, cells)) + " |")
    print(
        f"\nserver RSS: {out['rss_idle_mb']:.0f} MB idle, {out['rss_peak_mb']:.0f} MB peak under load, "
        f"{out['rss_after_mb']:.0f} MB after; model loaded and listening in {out['startup_s']:.1f} s"
    )
    print(
        f"server CPU: {out['server_cpu_s']:.1f} s over the run, "
        f"{out['server_cpu_ms_per_request']:.2f} ms per request (req/s above is bounded by "
        f"{os.cpu_count()} CPUs shared with the client)"
    )
    if base is not None:
        print(
            f"calibration: the same client against a bare FastAPI endpoint on this machine: "
            f"{base['rps']:.1f} req/s, p50 {base['p50_ms']:.1f} ms"
        )
    if out["error_samples"]:
        print(f"errors: {json.dumps(out['error_samples'])[:1000]}")
    print(f"\ncommand: {out['command']}\nserver:  {out['server']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 1 if n_err else 0


if __name__ == "__main__":
    sys.exit(main())
