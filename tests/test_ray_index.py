"""Indexing on a Ray cluster: the same rows and vectors as the local path, incremental re-runs, lost workers.

The test starts its own local cluster (`ray.init(num_cpus=2)`, no dashboard, ports picked by Ray) once for
the module and shuts it down afterwards. Files are real sfx-dev clips copied into tmp_path; the model is
the default one, loaded by name on each Ray worker. A worker is held inside a task by a hook that blocks
on its victim file until the test has killed the worker's process (a condition, never a sleep).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sfx_clips import EIGHT_CLIPS, SFX

from audiofind.library import Library, core
from audiofind.library.ray_executor import LOST, RayExecutor

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
CLIPS = EIGHT_CLIPS[:6]
WAIT_SECONDS = 120.0  # generous bound on waiting for a condition; passing runs take a fraction of it

pytestmark = pytest.mark.skipif(not SFX.is_dir(), reason=f"needs the shared sound effects in {SFX}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayExecutor]:
    """A 2-CPU local Ray cluster for this module, and an executor whose 2 actors the tests share."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hooks below run on the actors
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    executor = RayExecutor(workers=2, task_files=2, before_task=functools.partial(_hook, HOOK_DIR))
    try:
        yield executor
    finally:
        executor.close()
        ray.shutdown()


HOOK_DIR = Path(os.environ.get("TMPDIR", "/tmp")) / f"audiofind-ray-hook-{os.getpid()}"


def _hook(hook_dir: Path, method: str, paths: list[str]) -> None:
    """On the actor: a 'victim' file holds its worker (once) until the test kills it; a 'killer' file
    kills its worker every time, like a file that crashes the decoder."""
    names = [os.path.basename(p) for p in paths]
    if method != "embed":
        return
    if any(n.startswith("killer") for n in names):
        os.kill(os.getpid(), signal.SIGKILL)
    if any("victim" in n for n in names):
        try:
            fd = os.open(hook_dir / "held", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # the retry, on another worker: let it through
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        threading.Event().wait()  # until killed


@pytest.fixture(autouse=True)
def _hook_dir() -> Iterator[Path]:
    HOOK_DIR.mkdir(parents=True, exist_ok=True)
    yield HOOK_DIR
    shutil.rmtree(HOOK_DIR, ignore_errors=True)


@pytest.fixture
def sounds(tmp_path: Path) -> Path:
    folder = tmp_path / "sounds"
    folder.mkdir()
    for rel in CLIPS:
        shutil.copy(SFX / rel, folder / os.path.basename(rel))
    return folder


@pytest.fixture(autouse=True)
def _no_name_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Name vectors are the driver's work on both paths and not under test here."""
    monkeypatch.setattr(core, "fill_name_vectors", lambda *a, **k: 0)


def rows(lib: Library) -> dict[str, tuple]:
    """file name -> (size, mtime, hash, duration, rate, channels, model, words, tags, vector)."""
    out = {}
    for (cid,) in lib._conn.execute("SELECT id FROM files").fetchall():
        c = lib.clip(cid)
        out[os.path.basename(c.path)] = (c.size, c.mtime_ns, c.content_hash, round(c.duration, 6),
                                         c.sample_rate, c.channels, c.model_id, c.words, dict(c.tags),
                                         c.vector)
    return out


def failures(lib: Library) -> dict[str, str]:
    return {os.path.basename(os.fsdecode(bytes(p))): r
            for p, r in lib._conn.execute("SELECT path_bytes, reason FROM failures")}


def test_ray_path_writes_the_rows_and_vectors_of_the_local_path_and_reruns_incrementally(
        tmp_path: Path, sounds: Path, cluster: RayExecutor) -> None:
    with Library.open(tmp_path / "local", create=True) as lib:
        lib.update([sounds], workers=0, progress=False)
        local = rows(lib)
    with Library.open(tmp_path / "ray", create=True) as lib:
        report = lib.update([sounds], progress=False, ray=cluster)
        assert (report.added, report.embedded, report.skipped) == (len(CLIPS), len(CLIPS), [])
        remote = rows(lib)
        assert remote.keys() == local.keys() and len(remote) == len(CLIPS)
        for name, row in remote.items():
            assert row[:-2] == local[name][:-2], name
            tags, local_tags = row[-2], local[name][-2]
            assert tags.keys() == local_tags.keys(), name
            np.testing.assert_allclose([tags[t] for t in tags], [local_tags[t] for t in tags], atol=1e-5)
            np.testing.assert_allclose(row[-1], local[name][-1], atol=1e-5, rtol=2e-3,  # float16: 1 ulp
                                       err_msg=name)
        assert lib.search("a sheep bleating", k=1)[0].path.endswith("sheep_00.ogg")

        (sounds / "sheep_00.ogg").rename(sounds / "moved_sheep.ogg")  # a move: same hash, no model run
        os.utime(sounds / "bird1_00.ogg")  # a touch: hashed on a worker, found unchanged
        again = lib.update([sounds], progress=False, ray=cluster)
        assert (again.embedded, again.added, again.moved, again.unchanged) == (0, 0, 1, len(CLIPS) - 1)
        assert rows(lib)["moved_sheep.ogg"][2] == remote["sheep_00.ogg"][2]


def _kill_when_held(errors: list[str]) -> None:
    """Wait for a worker to hold the victim, then kill -9 it."""
    deadline = time.monotonic() + WAIT_SECONDS
    held = HOOK_DIR / "held"
    while not (held.exists() and held.read_text()):
        if time.monotonic() > deadline:
            errors.append("no worker held the victim file")
            return
        time.sleep(0.02)  # polling a condition, not waiting out a guess
    os.kill(int(held.read_text()), signal.SIGKILL)


def test_a_killed_worker_costs_only_its_files_in_flight(tmp_path: Path, sounds: Path,
                                                         cluster: RayExecutor) -> None:
    # the first file (the first task): its worker is kill -9ed once, mid-task; the retry goes through
    shutil.copy(SFX / CLIPS[0], sounds / "a_victim.ogg")
    shutil.copy(SFX / "0ad/audio/ambient/weather/thunder_10.ogg", sounds / "killer.ogg")  # kills every time
    errors: list[str] = []
    killer = threading.Thread(target=_kill_when_held, args=(errors,), daemon=True)
    killer.start()
    with Library.open(tmp_path / "ray", create=True) as lib:
        report = lib.update([sounds], progress=False, ray=cluster)
        killer.join(WAIT_SECONDS)
        assert not errors
        indexed = {os.path.basename(c) for c in rows(lib)}
        assert indexed == {os.path.basename(c) for c in CLIPS} | {"a_victim.ogg"}  # retried elsewhere
        assert [(os.path.basename(p), r) for p, r in report.skipped] == [("killer.ogg", LOST)]
        assert failures(lib) == {"killer.ogg": LOST}
        assert report.added == len(CLIPS) + 1
        again = lib.update([sounds], progress=False, ray=cluster)  # known bad and unchanged: not retried
        assert (again.embedded, again.unchanged, len(again.skipped)) == (0, len(CLIPS) + 1, 1)
    pids = set(cluster.pids())  # the lost workers were replaced: two live, the killed one not among them
    assert len(pids) == 2 and int((HOOK_DIR / "held").read_text()) not in pids


def test_cli_index_with_ray_address(tmp_path: Path, sounds: Path, cluster: RayExecutor) -> None:
    cluster.close()  # its actors hold both CPUs: the CLI's workers need them (it restarts on next use)
    address = ray.get_runtime_context().gcs_address
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "audiofind.cli", "index", str(sounds), "--index", str(tmp_path / "idx"),
           "--ray", address, "-j", "1", "--json", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=WAIT_SECONDS)
    assert proc.returncode == 0, proc.stderr
    assert f'"embedded": {len(CLIPS)}' in proc.stdout


def test_cli_names_an_unreachable_cluster_in_one_line(tmp_path: Path, sounds: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "audiofind.cli", "index", str(sounds), "--index", str(tmp_path / "idx"),
           "--ray", f"127.0.0.1:{port}", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=WAIT_SECONDS)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"audiofind: no Ray cluster at 127.0.0.1:{port}: cannot reach 127.0.0.1:{port}: Connection refused "
        "(start one with: ray start --head)"]
