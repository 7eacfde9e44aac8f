"""The index's single-writer lock, which also says that an index run is in progress and how far it got.

`index_dir/.update.lock` is held with `fcntl.flock(LOCK_EX)` for the whole update and carries a JSON
heartbeat (pid, command line, start time, progress counts) rewritten in place as files are done. A reader
(the server's /api/status) asks for the lock without blocking: granted means no run is in progress (the
file's content is then only the last run's leftover); refused means one is, and the JSON says how far it
got. The kernel drops the lock when the process dies, so a `kill -9` never leaves a run that looks alive.

One writer at a time: a second `update` that finds the lock held waits for it, after one line on stderr
("waiting for the index lock held by pid N (audiofind index ...)"), or with `wait=False` raises
`IndexBusyError` at once (`audiofind index --no-wait` exits with code 75). Readers never take it: SQLite's
WAL gives them consistent snapshots while a writer runs. Whoever holds the lock also clears what a killed
run left behind (`clean_leftovers`). Where `fcntl` is missing (Windows) there is no lock and nothing is
reported; a read-only index folder has no lock either (nothing can write there).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .records import IndexBusyError, Progress

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".update.lock"
STAGING_NAME = ".rebuild"  # the folder a model-change rebuild fills before it is swapped in
HEARTBEAT_EVERY_S = 0.5  # at most this often is the heartbeat rewritten


class UpdateActivity:
    """The write lock, held around an update; `wrap(progress)` forwards progress and records it.

    `wait`: True blocks until the holder is done (after one line on stderr), False raises IndexBusyError.
    """

    def __init__(self, index_dir: str | os.PathLike[str], wait: bool = True) -> None:
        self.path = Path(index_dir) / LOCK_NAME
        self.wait = wait
        self._fd: int | None = None
        self._state: dict[str, Any] = {}
        self._last_write = 0.0
        self._bar: _Bar | None = None

    def __enter__(self) -> UpdateActivity:
        if fcntl is None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return self  # a read-only index folder: nothing can write there, so nothing to lock
        try:
            _take(fd, self.path, self.wait)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._state = {"pid": os.getpid(), "command": _command_line(), "started_at": time.time(),
                       "progress": {}}
        self._write(force=True)
        clean_leftovers(self.path.parent)
        return self

    def __exit__(self, *_: Any) -> None:
        if self._fd is None:
            return
        if self._bar is not None:
            self._bar.close()
        self._state["finished_at"] = time.time()
        self._write(force=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def wrap(self, progress: bool | Progress) -> bool | Progress:
        """A progress argument for the updater that also feeds the heartbeat (unchanged when no lock is held).

        A callback is wrapped; True (the updater's tqdm bar) becomes a callback drawing the same bar.
        """
        if self._fd is None:
            return progress
        if progress is False:
            return self._record
        inner = progress if callable(progress) else None
        bar = _Bar() if progress is True else None

        def record(event: dict[str, Any]) -> None:
            self._record(event)
            if bar is not None:
                bar.update(event)
            if inner is not None:
                inner(event)

        self._bar = bar
        return record

    def _record(self, event: dict[str, Any]) -> None:
        first = not self._state.get("progress")
        self._state["progress"] = {k: v for k, v in event.items() if isinstance(v, (int, float))}
        self._write(force=first or event.get("done") == event.get("total"))

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._fd is None or (not force and now - self._last_write < HEARTBEAT_EVERY_S):
            return
        self._last_write = now
        self._state["heartbeat_at"] = time.time()
        data = json.dumps(self._state).encode()
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError:
            pass  # a full disk must not stop the update over a status line


def _take(fd: int, path: Path, wait: bool) -> None:
    """flock(LOCK_EX) on `fd`: at once if free, else wait (saying for whom) or raise IndexBusyError."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except OSError:
        pass
    holder = _holder(path)
    if not wait:
        raise IndexBusyError(f"the index {path.parent} is being written by {holder}; wait for it to finish, "
                             "or run again without --no-wait to wait for it")
    print(f"audiofind: waiting for the index lock held by {holder}", file=sys.stderr, flush=True)
    fcntl.flock(fd, fcntl.LOCK_EX)


def _holder(path: Path) -> str:
    """'pid N (audiofind index ..., since HH:MM:SS)' from the holder's heartbeat, as far as it is written."""
    state = read_activity(path.parent)
    if not state.get("running") or "pid" not in state:
        return "another process"
    since = time.strftime("%H:%M:%S", time.localtime(state["started_at"])) if "started_at" in state else "?"
    command = state.get("command") or "audiofind"
    return f"pid {state['pid']} ({command[:200]}, since {since})"


def _command_line() -> str:
    """How the writer was started, for the message a waiting writer prints."""
    args = list(sys.argv)
    if args and args[0].endswith(("__main__.py", "main.py")) or args[:1] == ["-m"]:
        args[0] = "audiofind"
    elif args:
        args[0] = os.path.basename(args[0])
    return " ".join(args)


def clean_leftovers(index_dir: str | os.PathLike[str], locked: bool = True) -> None:
    """Remove what a killed process left: FAISS temp files and an unfinished rebuild, if their owner is gone.

    A temp file's name carries its writer's pid (a live server writes its own), the staging folder a
    `pid` file; holding the write lock (`locked`), the staging folder is a dead run's whatever it says.
    """
    folder = Path(index_dir)
    staging = folder / STAGING_NAME
    if staging.is_dir() and (locked or not _owner_alive(staging / "pid")):
        shutil.rmtree(staging, ignore_errors=True)
    for tmp in folder.glob(".*.faiss.*.tmp"):
        parts = tmp.name.split(".")  # ['', 'vectors', 'faiss', PID, UUID, 'tmp']
        if len(parts) >= 6 and parts[3].isdigit() and not pid_alive(int(parts[3])):
            tmp.unlink(missing_ok=True)


def _owner_alive(pid_file: Path) -> bool:
    try:
        return pid_alive(int(pid_file.read_text()))
    except (OSError, ValueError):
        return False  # never written: the run died right after making the folder


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class _Bar:
    """The tqdm bar the updater draws for progress=True, driven from its progress events."""

    def __init__(self) -> None:
        self.bar: Any = None

    def update(self, event: dict[str, Any]) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=event.get("total"), unit="file", file=sys.stderr, dynamic_ncols=True,
                            desc="indexing")
        self.bar.update(event.get("done", 0) - self.bar.n)
        elapsed = max(float(event.get("elapsed", 0)), 1e-9)
        self.bar.set_postfix(audio_h_per_s=f"{event.get('audio_seconds', 0) / 3600 / elapsed:.3f}",
                             refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_activity(index_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """{"running": bool, ...}: the live run's pid, start time, heartbeat and progress counts when running."""
    path = Path(index_dir) / LOCK_NAME
    if fcntl is None:
        return {"running": False, "supported": False}
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return {"running": False}
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            running = True
        else:
            running = False
            fcntl.flock(fd, fcntl.LOCK_UN)
        raw = os.pread(fd, 64 * 1024, 0)
    finally:
        os.close(fd)
    try:
        state = json.loads(raw) if raw else {}
    except ValueError:
        state = {}  # caught between truncate and write
    if not isinstance(state, dict):
        state = {}
    if not running:
        last = {k: state[k] for k in ("started_at", "finished_at") if k in state}
        return {"running": False, "last_run": last}
    keys = ("pid", "command", "started_at", "heartbeat_at", "progress")
    return {"running": True, **{k: state[k] for k in keys if k in state}}
