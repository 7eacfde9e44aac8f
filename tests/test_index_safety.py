"""An index that stays right: one writer at a time, an atomic model rebuild, and damaged or odd index
folders that fail in one line. Real `audiofind` processes, real SQLite files, a real server.

A writer is held at a chosen point by a driver that wraps one library function: on reaching it, the driver
says so in a `ready` file and blocks reading a FIFO until the test opens it, so every "while" below is a
condition, never a sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from index_checks import text_and_vectors_in_step
from mutagen.oggvorbis import OggVorbis
from test_server import LiveServer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SFX = SHARED / "data" / "sfx-dev"
os.environ.setdefault("AUDIOFIND_ASSETS", str(SHARED / "assets"))

from audiofind.library import DB_NAME, Library, LibraryError  # noqa: E402
from audiofind.library.activity import STAGING_NAME, read_activity  # noqa: E402
from audiofind.server.app import create_app  # noqa: E402
from audiofind.server.service import UPLOAD_PREFIX  # noqa: E402

CLIPS = {  # short clips (< 10 s, so the full-window model's padding changes their vectors)
    "a/sheep_00.ogg": "widelands/data/sound/farm/sheep_00.ogg",
    "a/bird1_00.ogg": "widelands/data/sound/animals/bird1_00.ogg",
    "a/chicken_10.ogg": "0ad/audio/actor/fauna/animal/chicken_10.ogg",
    "b/glass.ogg": "minetest/games/minetest_game/mods/default/sounds/default_break_glass.1.ogg",
    "b/sword.ogg": "0ad/audio/attack/weapon/sword_attack_03.ogg",
    "b/footstep.ogg": "0ad/audio/actor/human/movement/Footsteps/Footstep_Gravel_Walking.ogg",
}
DEADLINE_S = 300

pytestmark = [
    pytest.mark.skipif(not SFX.is_dir(), reason=f"needs the shared sound effects in {SFX}"),
    pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="the pause driver needs a FIFO (POSIX)"),
]

# Wraps `sys.argv[1]`:`sys.argv[2]` (module, dotted attribute) so that reaching it writes `ready` and waits
# for the FIFO, then runs the real command line `audiofind ARGS...`.
DRIVER = """
import importlib, os, sys
module, attr, fifo, ready = sys.argv[1:5]
owner = importlib.import_module(module)
*outer, name = attr.split(".")
for part in outer:
    owner = getattr(owner, part)
original = getattr(owner, name)
def paused(*args, **kwargs):
    open(ready + ".tmp", "w").close()
    os.replace(ready + ".tmp", ready)
    with open(fifo) as f:
        f.read()
    return original(*args, **kwargs)
setattr(owner, name, paused)
sys.argv = ["audiofind", *sys.argv[5:]]
from audiofind.cli.main import main
main()
"""


def env() -> dict[str, str]:
    return dict(os.environ, AUDIOFIND_INDEX=str(ROOT / "test-artifacts" / "no-default-index"),
                PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))


def cli(*args: object, timeout: float = DEADLINE_S) -> subprocess.CompletedProcess:
    """The real `audiofind` command in its own process."""
    return subprocess.run([sys.executable, "-m", "audiofind.cli", *map(str, args)], capture_output=True,
                          text=True, env=env(), timeout=timeout, cwd=ROOT)


def one_line_error(proc: subprocess.CompletedProcess, code: int, *texts: str) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("audiofind:")]
    assert len(lines) == 1 and all(t in lines[0] for t in texts), proc.stderr
    return lines[0]


class Paused:
    """An `audiofind` run held where `hook` ("module:Attr.name") is reached, until `release()`."""

    def __init__(self, tmp_path: Path, hook: str, *args: object) -> None:
        self.fifo, self.ready = tmp_path / f"fifo-{id(self)}", tmp_path / f"ready-{id(self)}"
        os.mkfifo(self.fifo)
        module, attr = hook.split(":")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, module, attr, str(self.fifo), str(self.ready), *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT,
            start_new_session=True)

    def wait_paused(self) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not self.ready.exists():
            assert self.proc.poll() is None, f"the run ended before its pause: {self.proc.communicate()}"
            assert time.monotonic() < deadline, "the run never reached its pause"
            time.sleep(0.05)  # poll interval; the loop waits for `ready`

    def release(self) -> None:
        os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO if the run is not reading it

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=DEADLINE_S)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate(timeout=60)


@contextlib.contextmanager
def paused(tmp_path: Path, hook: str, *args: object) -> Iterator[Paused]:
    run = Paused(tmp_path, hook, *args)
    try:
        run.wait_paused()
        yield run
    finally:
        if run.proc.poll() is None and run.proc.returncode is None:
            with contextlib.suppress(OSError):
                run.release()
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.proc.wait(DEADLINE_S)
        if run.proc.returncode is None:
            run.kill()


def rows(index: Path) -> list[tuple[str, str]]:
    """(path, model_id) of every row, read-only, in path order."""
    with sqlite3.connect(f"file:{index / DB_NAME}?mode=ro", uri=True) as conn:
        return [(os.fsdecode(bytes(p)), m)
                for p, m in conn.execute("SELECT path_bytes, model_id FROM files ORDER BY path_bytes")]


@pytest.fixture(scope="module")
def sounds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sounds")
    for rel, src in CLIPS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SFX / src, root / rel)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, sounds: Path) -> Path:
    """An index of `sounds` with the default model, made by the real command; tests copy it."""
    index = tmp_path_factory.mktemp("built") / "index"
    done = cli("index", sounds, "--index", index, "-q", "--json")
    assert done.returncode == 0, done.stderr
    return index


def copy_of(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(built, copy)
    return copy


# ---------------------------------------------------------------- item 5: one writer at a time


def test_second_writer_waits_for_the_first_and_redoes_nothing(tmp_path, sounds):
    """Two `index` runs with overlapping roots: the second waits (saying for whom), then finds everything
    unchanged; `--no-wait` exits 75 at once; no IntegrityError, one row per file."""
    index = tmp_path / "index"
    with paused(tmp_path, "audiofind.library.updater:Updater.run",
                "index", sounds, "--index", index, "-q", "--json") as first:
        assert read_activity(index)["running"]  # the pause is inside the write lock
        second = subprocess.Popen([sys.executable, "-m", "audiofind.cli", "index", sounds / "a", sounds,
                                   "--index", index, "-q", "--json"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
        try:
            seen = []
            for line in second.stderr:  # until the second run says it waits
                seen.append(line)
                if "waiting for the index lock" in line:
                    break
            assert seen and f"held by pid {first.proc.pid} (audiofind index" in seen[-1], "".join(seen)
            assert second.poll() is None
            busy = cli("index", sounds, "--index", index, "-q", "--no-wait")
            one_line_error(busy, 75, f"is being written by pid {first.proc.pid}", "--no-wait")
            first.release()
            code, out, err = first.finish()
            assert code == 0, err
            assert json.loads(out)["added"] == len(CLIPS)
            rest_out, rest_err = second.communicate(timeout=DEADLINE_S)
        finally:
            if second.poll() is None:
                second.kill()
                second.communicate()
    assert second.returncode == 0, rest_err
    report = json.loads(rest_out)
    assert report["added"] == report["embedded"] == 0 and report["unchanged"] == len(CLIPS)  # no double work
    assert "IntegrityError" not in rest_err + err and "Traceback" not in rest_err + err
    assert [p for p, _ in rows(index)] == sorted(str(sounds / rel) for rel in CLIPS)
    text_and_vectors_in_step(index)


def test_model_rebuild_swaps_in_whole_while_readers_search(tmp_path, built, sounds):
    """`--rebuild --model full-window`: killed before its swap, the old index is intact and the staging
    folder goes at the next start; completed, a running server serves the old index, whole, until the
    swap, then the new one, whole, with the new model loaded (an uploaded indexed clip scores 1)."""
    index = copy_of(built, tmp_path)
    old = rows(index)
    default_id = old[0][1]
    rebuild = ("index", sounds, "--index", index, "--rebuild", "--model", "full-window", "-q", "--json")
    with paused(tmp_path, "audiofind.library.core:replace_rows", *rebuild) as killed:
        assert (index / STAGING_NAME / DB_NAME).exists()
        killed.kill()
    assert rows(index) == old
    with Library.open(index) as lib:  # the next start: a dead run's staging folder is cleaned
        assert not (index / STAGING_NAME).exists() and len(lib) == len(CLIPS)

    app = create_app(index, model="default", warm_up=True)
    probe = tmp_path / "sheep_00_tagged.ogg"  # the same audio as an indexed clip, other bytes: not left out
    shutil.copyfile(sounds / "a" / "sheep_00.ogg", probe)
    tagged = OggVorbis(probe)
    tagged["comment"] = "a copy with one more tag"
    tagged.save()
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=120) as client:
        def upload_top() -> dict:
            with open(probe, "rb") as f:
                r = client.post("/api/similar", files={"file": ("q.ogg", f, "audio/ogg")}, data={"k": "1"})
            assert r.status_code == 200, r.text
            return r.json()["results"][0]

        before = client.get("/api/status").json()
        with paused(tmp_path, "audiofind.library.core:replace_rows", *rebuild) as run:
            with sqlite3.connect(index / STAGING_NAME / DB_NAME) as staging:  # the new index is complete ...
                new_id = staging.execute("SELECT value FROM meta WHERE key = 'model_id'").fetchone()[0]
                assert staging.execute("SELECT COUNT(*) FROM files WHERE model_id = ?",
                                       (new_id,)).fetchone()[0] == len(CLIPS)
            status = client.get("/api/status").json()  # ... and readers still see the old one, untouched
            assert (status["clips"], status["model_id"], status["generation"]) == \
                (len(CLIPS), default_id, before["generation"])
            assert rows(index) == old and new_id != default_id
            assert upload_top()["score"] > 0.999
            run.release()
            code, out, err = run.finish()
        assert code == 0, err
        assert json.loads(out)["added"] == len(CLIPS)
        assert {m for _, m in rows(index)} == {new_id} and len(rows(index)) == len(CLIPS)
        assert not (index / STAGING_NAME).exists()
        text_and_vectors_in_step(index)
        deadline = time.monotonic() + DEADLINE_S
        while (status := client.get("/api/status").json())["model_id"] != new_id:  # a refresh a second
            assert time.monotonic() < deadline
            time.sleep(0.1)  # poll interval; the loop waits for the server's refresh
        assert status["clips"] == len(CLIPS)
        top = upload_top()  # embedded by the reloaded model: the stored full-window vector itself
        assert Path(top["path"]).name == "sheep_00.ogg" and top["score"] > 0.999
    indexed = sounds / "a" / "sheep_00.ogg"
    with Library.open(index) as lib:  # and the vectors did change: the old model would score it lower
        rec = lib.find(indexed)
        assert rec is not None and rec.model_id == new_id
    with Library.open(built) as old_lib:
        old_rec = old_lib.find(indexed)  # `built` indexed the same `sounds` folder
    assert old_rec is not None and float(np.dot(old_rec.vector, rec.vector)) < 0.999


# ---------------------------------------------------------------- item 8: damaged or odd folders


@pytest.mark.parametrize("first_damaged", [0.0, 0.7], ids=["schema-pages", "data-pages"])
def test_malformed_pages_are_one_line(tmp_path, built, first_damaged):
    """Damaged pages give one line naming the fix, whether opening finds them (the schema) or a query."""
    index = copy_of(built, tmp_path)
    db = index / DB_NAME
    data = bytearray(db.read_bytes())
    page, pages = 4096, len(data) // 4096
    rng = np.random.default_rng(0)
    for start in range(max(2, int(pages * first_damaged)) * page, len(data), page):  # page 1: the header
        data[start:start + page] = rng.integers(0, 256, page, dtype=np.uint8).tobytes()
    db.write_bytes(bytes(data))
    line = one_line_error(cli("search", "sheep", "--index", index), 1, "--index NEW_FOLDER")
    assert "malformed" in line or "damaged" in line, line
    assert len(line) < 400


def test_read_only_index_searches(tmp_path, built, sounds):
    """Opened read-only (explicitly, or because the folder is not writable), an index searches and writes
    nothing; indexing into it is one clear line."""
    index = copy_of(built, tmp_path)

    def contents() -> dict[str, bytes]:  # SQLite's own -wal/-shm side files aside
        return {p.name: p.read_bytes() for p in index.iterdir() if not p.name.endswith(("-wal", "-shm"))}

    listing = contents()
    with Library.open(index, read_only=True) as lib:
        assert lib.read_only
        hits = lib.search_vector(lib.clip(1).vector, k=3)
        assert len(hits) == 3 and hits[0].id == 1
        with pytest.raises(LibraryError, match="read-only"):
            lib.update([sounds], progress=False)
    assert contents() == listing
    for path in [index, *index.iterdir()]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        found = cli("search", "a sheep bleats", "--index", index, "--json", "-k", "3")
        assert found.returncode == 0, found.stderr
        assert len(json.loads(found.stdout)) == 3 and "Traceback" not in found.stderr
        if os.geteuid() != 0:  # root writes through any mode bits, so only others see the folder read-only
            one_line_error(cli("index", sounds, "--index", index, "-q"), 1, "read-only")
            assert contents() == listing
    finally:
        for path in [index, *index.iterdir()]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_index_option_at_a_file_or_an_impossible_place(tmp_path, sounds):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not an index")
    one_line_error(cli("search", "dog", "--index", a_file), 1, "is a file, not an index folder")
    one_line_error(cli("index", sounds, "--index", a_file, "-q"), 1, "is a file, not an index folder")
    one_line_error(cli("index", sounds, "--index", a_file / "sub", "-q"), 1, "cannot create the index folder")
    assert a_file.read_text() == "not an index"


def test_index_folder_deleted_while_indexing_fails_loudly(tmp_path, sounds):
    index = tmp_path / "index"
    with paused(tmp_path, "audiofind.library.updater:Updater.run",
                "index", sounds, "--index", index, "-q") as run:
        shutil.rmtree(index)
        run.release()
        code, out, err = run.finish()
    assert code == 1 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("audiofind:")]
    assert len(lines) == 1 and "was deleted or replaced while indexing" in lines[0], err


def test_server_reports_an_index_folder_deleted_under_it(tmp_path, built):
    index = copy_of(built, tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = Path(tempfile.gettempdir()) / f"{UPLOAD_PREFIX}{int(dead.stdout)}-killed.ogg"
    live_own = Path(tempfile.gettempdir()) / f"{UPLOAD_PREFIX}{os.getpid()}-mine.ogg"
    stale.write_bytes(b"left by a killed server")
    live_own.write_bytes(b"in use")
    try:
        app = create_app(index, warm_up=False)
        assert not stale.exists() and live_own.exists()  # a dead server's upload copy went at start
        with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as client:
            assert client.get("/api/status").status_code == 200
            shutil.rmtree(index)
            deadline = time.monotonic() + DEADLINE_S
            while (r := client.get("/api/status")).status_code == 200:  # the next refresh notices
                assert time.monotonic() < deadline
                time.sleep(0.1)  # poll interval; the loop waits for the server's refresh
            assert r.status_code == 503 and "deleted" in r.json()["detail"], r.text
            again = client.get("/api/clips/1")
            assert again.status_code == 503 and "deleted" in again.json()["detail"], again.text
    finally:
        stale.unlink(missing_ok=True)
        live_own.unlink(missing_ok=True)


def test_temp_files_of_a_killed_run_go_at_the_next_start(tmp_path, built):
    index = copy_of(built, tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    stale = index / f".vectors.faiss.{pid}.0badf00d.tmp"
    names = index / f".names.faiss.{pid}.0badf00d.tmp"
    mine = index / f".vectors.faiss.{os.getpid()}.cafecafe.tmp"  # a live writer's: kept
    for path in (stale, names, mine):
        path.write_bytes(b"half a faiss file")
    (index / STAGING_NAME).mkdir()
    (index / STAGING_NAME / "pid").write_text(str(pid))
    with Library.open(index) as lib:
        assert len(lib) == len(CLIPS)
    assert not stale.exists() and not names.exists() and not (index / STAGING_NAME).exists()
    assert mine.exists()
