"""A library that stays right: hostile headers, dying workers, long files, FIFOs, flaky folders, empty clips.

Every test indexes real sound effects (copied from sfx-dev into tmp_path) next to the crafted case. The
model is a cheap spectrum stand-in: what is under test is the indexer around the model, and name vectors
(a sentence encoder) are switched off for speed. Tests run as root, where chmod 000 does not block
reads, so unreadable folders and files are simulated in-process by making `os.scandir` / the open call
raise the PermissionError a real unreadable folder or file raises.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sfx_clips import EIGHT_CLIPS, SFX, SpectrumModel, copy_clip

from audiofind import audio
from audiofind.library import DB_NAME, Library, core, updater, workers

ROOT = Path(__file__).resolve().parents[1]
SR = 32_000

CLIPS = EIGHT_CLIPS
# the sfx-dev files that decode to under 0.05 s (per manifest.tsv): nothing for a tagger to hear
SHORT = [
    "wesnoth/usr/share/games/wesnoth/1.16/sounds/checkbox.wav",
    "wesnoth/usr/share/games/wesnoth/1.16/sounds/select-unit.wav",
    *[f"hedgewars/usr/share/games/hedgewars/Data/Sounds/custom{i}.ogg" for i in range(1, 9)],
]

pytestmark = pytest.mark.skipif(not SFX.is_dir(), reason=f"needs the shared sound effects in {SFX}")


@pytest.fixture(autouse=True)
def _no_name_vectors(monkeypatch):
    monkeypatch.setattr(core, "fill_name_vectors", lambda *a, **k: 0)


def open_lib(tmp_path: Path) -> Library:
    return Library.open(tmp_path / "index", SpectrumModel(), create=True)


def skipped(report) -> dict[str, str]:
    return {Path(p).name: r for p, r in report.skipped}


def failures(lib: Library) -> dict[str, str]:
    with sqlite3.connect(lib.index_dir / DB_NAME) as conn:
        return {Path(os.fsdecode(bytes(p))).name: r for p, r in conn.execute("SELECT path_bytes, reason "
                                                                              "FROM failures")}


def indexed(lib: Library) -> set[str]:
    with sqlite3.connect(lib.index_dir / DB_NAME) as conn:
        return {Path(os.fsdecode(p)).name for (p,) in conn.execute("SELECT path_bytes FROM files")}


def finishes(fn, timeout: float = 120.0):
    """Run fn in a thread; fail (instead of hanging the suite) if it does not return in time."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} blocked for {timeout} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def crafted_wav(rate: int, channels: int, bits: int, data_len: int) -> bytes:
    """A PCM WAV whose header says what we like, with `data_len` bytes of noise after it."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_len)
            + np.random.default_rng(data_len).integers(0, 256, data_len, dtype=np.uint8).tobytes())
    return b"RIFF" + struct.pack("<I", len(body)) + body


# ---------------------------------------------------------------- 1. decoding bounded by what a file claims


def test_crafted_headers_are_refused_before_allocating(tmp_path):
    sounds = tmp_path / "sounds"
    for rel in CLIPS[:2]:
        copy_clip(rel, sounds)
    (sounds / "one_hz_20k.wav").write_bytes(crafted_wav(1, 1, 8, 20_000))  # "5.5 hours"
    (sounds / "one_hz_200k.wav").write_bytes(crafted_wav(1, 1, 8, 200_000))  # "55 hours"
    (sounds / "channels.wav").write_bytes(crafted_wav(8_000, 1_000, 8, 200_000))
    with open_lib(tmp_path) as lib:
        report = lib.update([sounds], workers=0, progress=False)
        assert indexed(lib) == {Path(r).name for r in CLIPS[:2]}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # everything imported by now
    start = time.monotonic()
    for name in ("one_hz_20k.wav", "one_hz_200k.wav", "channels.wav"):
        with pytest.raises(audio.AudioDecodeError, match="implausible"):
            audio.load_audio(sounds / name)
    assert time.monotonic() - start < 5  # was 198 s and 9.5 GB of peak RSS for the 20 KB file
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    why = skipped(report)
    assert "implausible sample rate 1 Hz" in why["one_hz_20k.wav"]
    assert "implausible sample rate 1 Hz" in why["one_hz_200k.wav"]
    assert "implausible channel count 1000" in why["channels.wav"]
    assert set(failures(lib)) == {"one_hz_20k.wav", "one_hz_200k.wav", "channels.wav"}  # not retried


def test_decoding_stops_at_the_per_file_cap_and_says_so(tmp_path, monkeypatch):
    sounds = tmp_path / "sounds"
    thunder = copy_clip("0ad/audio/ambient/weather/thunder_10.ogg", sounds)
    whole = sf.info(str(thunder)).duration
    monkeypatch.setattr(audio, "MAX_DECODE_SECONDS", 1.0)
    wave, info = audio.load_audio(thunder)
    assert len(wave) == SR and info.duration == pytest.approx(whole, abs=0.01)
    assert "decoded only the first 1 s" in info.truncated
    wave, info = audio.load_audio(thunder, max_duration=float("inf"))  # asked for all of it
    assert len(wave) == pytest.approx(whole * SR, abs=SR * 0.01) and info.truncated is None
    with open_lib(tmp_path) as lib:
        report = lib.update([sounds], workers=0, progress=False)
        assert report.added == 1 and report.audio_seconds == pytest.approx(1.0)
        [(path, why)] = report.truncated
        assert path.endswith("thunder_10.ogg") and "first 1 s" in why
        assert report.to_dict()["truncated"][0]["reason"] == why
        assert lib.clip(lib.search_vector(np.ones(8, np.float32), k=1)[0].id).duration == pytest.approx(whole)


# ---------------------------------------------------------------- 2. a dead worker costs one file


def _dying_decode(task):
    """decode_file, except that 'killer' files kill their worker every time and 'flaky' ones once."""
    path = task[0]
    if "killer" in path:
        os.kill(os.getpid(), signal.SIGKILL)
    if "flaky" in path and not os.path.exists(path + ".died"):
        Path(path + ".died").touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return workers.decode_file(task)


def test_a_worker_that_dies_costs_one_file_not_the_run(tmp_path, monkeypatch):
    sounds = tmp_path / "sounds"
    for rel in CLIPS[:6]:
        copy_clip(rel, sounds)
    copy_clip(CLIPS[6], sounds, "killer.ogg")  # kills its decoder, like a file that segfaults libsndfile
    copy_clip(CLIPS[7], sounds, "flaky.ogg")  # its decoder is kill -9ed once (an OOM kill), then it decodes
    monkeypatch.setattr(updater, "decode_file", _dying_decode)
    with open_lib(tmp_path) as lib:
        report = finishes(lambda: lib.update([sounds], workers=2, progress=False))
        assert report.added == 7 and len(lib) == 7
        assert skipped(report) == {"killer.ogg": workers.DIED}
        assert "flaky.ogg" in indexed(lib)
        assert failures(lib) == {"killer.ogg": workers.DIED}

        def no_decoding(task):
            raise AssertionError(f"{task[0]} decoded again")

        monkeypatch.setattr(updater, "decode_file", no_decoding)
        again = lib.update([sounds], workers=2, progress=False)  # re-runs no longer die on it
        assert (again.unchanged, again.added, skipped(again)) == (7, 0, {"killer.ogg": workers.DIED})


_ORPHAN_SCRIPT = """
import os, signal, sys
from audiofind.library import workers
if sys.argv[1] == "watchdog":  # no prctl: only the parent-pid watchdog can notice
    import ctypes
    def no_prctl(*a, **k):
        raise OSError("prctl disabled for this test")
    ctypes.CDLL = no_prctl
    workers.PARENT_POLL_SECONDS = 0.05
pool = workers.process_pool(1)
print(pool.submit(os.getpid).result(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie has let go of its files
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["prctl", "watchdog"])
def test_decoding_workers_die_with_their_parent(tmp_path, how):
    env = dict(os.environ, PYTHONPATH=str(Path(audio.__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-c", _ORPHAN_SCRIPT, how], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    child = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 30
    while not _gone(child):  # waits on the condition; 30 s is only the give-up point
        assert time.monotonic() < deadline, f"decoding worker {child} outlived its parent"
        threading.Event().wait(0.02)


# ---------------------------------------------------------------- 3. memory stays flat with long files


def test_memory_stays_flat_with_sixteen_one_hour_files(tmp_path):
    """16 one-hour files (1 kHz WAVs, each 14 MB of float32 once decoded) cost the indexer about what one
    does: the decoded audio in flight is bounded by seconds, not by a count of files. With the old count
    window (`--queue unbounded`) the 16-file run grows ~200 MB more than the 1-file run on this machine,
    with the bound ~30 MB; BENCHMARKS.md has the 32 kHz numbers."""
    bench = ROOT / "benchmarks" / "bench_index_memory.py"
    out = subprocess.run([sys.executable, str(bench), "--counts", "1", "16", "--rate", "1000",
                          "--file-rate", "1000", "--model-passes", "3", "--queue", "bounded", "--json",
                          "--work", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=True)
    one, sixteen = (json.loads(line) for line in out.stdout.strip().splitlines()[-2:])
    wave_mb = 3600 * 1000 * 4 / 2**20
    assert sixteen["files"] == 16 and sixteen["audio_hours"] == pytest.approx(16) and not sixteen["skipped"]
    assert one["files"] == 1
    assert sixteen["growth_mb"] - one["growth_mb"] < 6 * wave_mb, (one, sixteen)


# ---------------------------------------------------------------- 4. FIFOs and special files


def test_fifos_are_skipped_with_a_reason_never_opened_blocking(tmp_path, monkeypatch):
    sounds = tmp_path / "sounds"
    clips = [copy_clip(rel, sounds) for rel in CLIPS[:5]]
    os.mkfifo(sounds / "pipe.wav")  # there from the start: no writer will ever come
    swapped_at_hash, swapped_at_decode = clips[0], clips[1]
    real_scan, real_hash = updater.scan_roots, updater.hash_file

    def scan_then_swap(roots, report, *rest):
        found = real_scan(roots, report, *rest)
        swapped_at_hash.unlink()
        os.mkfifo(swapped_at_hash)  # a FIFO swapped in after the listing
        return found

    def hash_then_swap(path):
        result = real_hash(path)
        if path == str(swapped_at_decode):
            os.unlink(path)
            os.mkfifo(path)  # ... and one swapped in between hashing and decoding
        return result

    monkeypatch.setattr(updater, "scan_roots", scan_then_swap)
    monkeypatch.setattr(updater, "hash_file", hash_then_swap)
    with open_lib(tmp_path) as lib:
        report = finishes(lambda: lib.update([sounds], workers=0, progress=False))
        why = skipped(report)
        fifo = "not a regular file: a FIFO (named pipe)"
        assert why == {"pipe.wav": fifo, swapped_at_hash.name: fifo, swapped_at_decode.name: fifo}
        assert indexed(lib) == {c.name for c in clips[2:]}
        with pytest.raises(audio.AudioDecodeError, match="FIFO"):  # `audiofind similar <fifo>`
            finishes(lambda: lib.similar(sounds / "pipe.wav"))
    with pytest.raises(audio.AudioDecodeError, match="FIFO"):
        finishes(lambda: audio.probe(sounds / "pipe.wav"))


# ---------------------------------------------------------------- 6. transient errors never delete


def test_a_folder_that_cannot_be_listed_once_keeps_its_records(tmp_path, monkeypatch):
    sounds = tmp_path / "sounds"
    for rel in CLIPS[:2]:
        copy_clip(rel, sounds)
    for rel in CLIPS[2:6]:
        copy_clip(rel, sounds / "share")
    with open_lib(tmp_path) as lib:
        assert lib.update([sounds], workers=0, progress=False).added == 6
        real_scandir = os.scandir

        def flaky_scandir(path="."):  # what a permission change or a dropped network share raises
            if os.fspath(path) == str(sounds / "share"):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", flaky_scandir)
        blind = lib.update([sounds], workers=0, progress=False)
        monkeypatch.undo()
        assert (blind.removed, blind.unchanged, len(lib)) == (0, 6, 6)
        assert "cannot list folder: Permission denied" in skipped(blind)["share"]
        back = lib.update([sounds], workers=0, progress=False)
        assert (back.removed, back.unchanged, back.skipped) == (0, 6, [])
        shutil.rmtree(sounds / "share")  # really gone: its records go
        assert lib.update([sounds], workers=0, progress=False).removed == 4 and len(lib) == 2


def test_a_read_error_is_retried_not_blacklisted(tmp_path, monkeypatch):
    sounds = tmp_path / "sounds"
    clips = [copy_clip(rel, sounds) for rel in CLIPS[:3]]
    real_open = audio.open_regular

    def unreadable(path):
        if os.fspath(path) == str(clips[0]):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path)

    with open_lib(tmp_path) as lib:
        monkeypatch.setattr(audio, "open_regular", unreadable)  # hashing passed, decoding cannot open it
        first = lib.update([sounds], workers=0, progress=False)
        monkeypatch.undo()
        assert skipped(first) == {clips[0].name: "Permission denied"} and failures(lib) == {}
        second = lib.update([sounds], workers=0, progress=False)  # readable again: indexed
        assert (second.added, second.skipped) == (1, [])

        os.utime(clips[1], ns=(10**18, 10**18))  # changed on disk, then an I/O error while hashing it
        monkeypatch.setattr(workers, "open_regular", lambda p: (_ for _ in ()).throw(
            OSError(errno.EIO, "Input/output error", p)))
        flaky = lib.update([sounds], workers=0, progress=False)
        monkeypatch.undo()
        assert "Input/output error" in skipped(flaky)[clips[1].name]
        assert flaky.removed == 0 and len(lib) == 3 and failures(lib) == {}  # the record stays
        assert lib.update([sounds], workers=0, progress=False).skipped == []

        st = clips[2].stat()  # an older index stored a permission error as a failure: retried, not trusted
        with sqlite3.connect(lib.index_dir / DB_NAME) as conn:
            conn.execute("DELETE FROM files WHERE path_bytes = ?", (os.fsencode(clips[2]),))
            conn.execute("INSERT INTO failures VALUES (?, ?, ?, ?)",
                         (os.fsencode(clips[2]), st.st_size, st.st_mtime_ns, "Permission denied"))
        assert lib.update([sounds], workers=0, progress=False).added == 1 and failures(lib) == {}


# ---------------------------------------------------------------- 7. empty/silent clips, symlinked folders


def test_empty_and_silent_clips_are_skipped_not_ranked(tmp_path, monkeypatch):
    sounds = tmp_path / "sounds"
    for rel in CLIPS[:2]:
        copy_clip(rel, sounds)
    for i, rel in enumerate(SHORT):
        copy_clip(rel, sounds, f"{i}_{Path(rel).name}")
    sf.write(sounds / "silence.wav", np.zeros(SR, np.float32), SR)
    with open_lib(tmp_path) as lib:
        report = lib.update([sounds], workers=2, progress=False)
        assert indexed(lib) == {Path(r).name for r in CLIPS[:2]}
        why = skipped(report)
        assert len(why) == 11
        assert all("too short to tell what it is" in why[f"{i}_{Path(r).name}"] for i, r in enumerate(SHORT))
        assert why["silence.wav"] == "silent: loudest sample digital silence (under -80 dBFS)"
        assert len(lib.search_vector(np.ones(8, np.float32), k=20)) == 2
        monkeypatch.setattr(updater, "decode_file", lambda t: pytest.fail(f"{t[0]} decoded again"))
        assert len(lib.update([sounds], workers=0, progress=False).skipped) == 11  # remembered


def test_short_clips_indexed_by_an_older_version_are_taken_out(tmp_path, monkeypatch):
    sounds = tmp_path / "sounds"
    copy_clip(CLIPS[0], sounds)
    for rel in SHORT[:3]:
        copy_clip(rel, sounds)
    with open_lib(tmp_path) as lib:
        monkeypatch.setattr(workers, "MIN_CLIP_SECONDS", 0.0)  # as before: short clips got rows and tags
        assert lib.update([sounds], workers=0, progress=False).added == 4
        monkeypatch.undo()
        report = lib.update([sounds], workers=0, progress=False)
        assert report.removed == 3 and len(lib) == 1
        assert all("too short" in r for r in skipped(report).values()) and len(skipped(report)) == 3
        assert len(failures(lib)) == 3 and len(lib.update([sounds], workers=0, progress=False).skipped) == 3


def test_symlinked_folders_are_followed_once_never_silently(tmp_path):
    sounds, outside = tmp_path / "sounds", tmp_path / "outside"
    copy_clip(CLIPS[0], sounds / "farm")
    copy_clip(CLIPS[1], outside)
    (sounds / "linked").symlink_to(outside, target_is_directory=True)  # followed
    (sounds / "loop").symlink_to(sounds, target_is_directory=True)  # back up: skipped
    (sounds / "farm again").symlink_to(sounds / "farm", target_is_directory=True)  # a second way in
    with open_lib(tmp_path) as lib:
        report = finishes(lambda: lib.update([sounds], workers=0, progress=False))
        assert lib.find(sounds / "linked" / Path(CLIPS[1]).name) is not None
        assert lib.find(sounds / "farm" / Path(CLIPS[0]).name) is not None and len(lib) == 2
        why = skipped(report)
        assert set(why) == {"loop", "farm again"}
        assert all(r.startswith("symlinked folder not followed") for r in why.values())


def test_a_wave_the_model_refuses_costs_only_itself_not_its_batch():
    class Picky(SpectrumModel):
        def embed_audio(self, waves):
            if any(len(w) < 100 for w in waves):
                raise ValueError("too short for this model")
            return super().embed_audio(waves)

    model = Picky()
    results = workers.embed_each(model, [np.ones(1000, np.float32), np.ones(10, np.float32),
                                         np.ones(2000, np.float32)])
    assert results[1] == "model failed: ValueError: too short for this model"
    assert [len(r[0]) for r in (results[0], results[2])] == [8, 8] and results[0][1] == [("Sound", 1.0)]
    assert model.embedded == 2  # the batch failed whole, then each wave alone: two embedded
    assert workers.embed_each(model, []) == []
