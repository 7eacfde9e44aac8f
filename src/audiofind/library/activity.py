"""Whether an index run is in progress: an advisory lock file that `Library.update` holds while it runs.

`index_dir/.update.lock` is held with `fcntl.flock(LOCK_EX)` for the whole update and carries a JSON
heartbeat (pid, start time, progress counts) rewritten in place as files are done. A reader (the server's
/api/status) asks for the lock without blocking: granted means no run is in progress (the file's content
is then only the last run's leftover); refused means one is, and the JSON says how far it got. The kernel
drops the lock when the process dies, so a `kill -9` never leaves a run that looks alive.

Today the lock is only a signal: a second `update` that finds it held runs anyway and reports nothing.
It is an flock-held file so that it can become the index's single-writer lock. Where `fcntl` is missing
(Windows) nothing is reported.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .records import Progress

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".update.lock"
HEARTBEAT_EVERY_S = 0.5  # at most this often is the heartbeat rewritten


class UpdateActivity:
    """Context manager held around an update; `wrap(progress)` forwards progress and records it."""

    def __init__(self, index_dir: str | os.PathLike[str]) -> None:
        self.path = Path(index_dir) / LOCK_NAME
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
            return self  # a read-only index folder: no signal, the update goes on
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # another run holds it and reports for both
            return self
        self._fd = fd
        self._state = {"pid": os.getpid(), "started_at": time.time(), "progress": {}}
        self._write(force=True)
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
    return {"running": True, **{k: state[k] for k in ("pid", "started_at", "heartbeat_at", "progress")
                                if k in state}}
