"""The `audiofind` command line through real subprocesses: exit codes, clean stdout, one-line errors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from index_checks import text_and_vectors_in_step

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SFX = SHARED / "data" / "sfx-dev"
os.environ.setdefault("AUDIOFIND_ASSETS", str(SHARED / "assets"))

from audiofind.library import DB_NAME, Library  # noqa: E402

SR = 32_000
CLIPS = [
    "widelands/data/sound/farm/sheep_00.ogg",
    "widelands/data/sound/farm/sheep_01.ogg",
    "widelands/data/sound/animals/bird1_00.ogg",
    "widelands/data/sound/animals/bird2_00.ogg",
    "0ad/audio/actor/fauna/animal/chicken_10.ogg",
    "0ad/audio/actor/human/movement/Footsteps/Footstep_Gravel_Walking.ogg",
    "minetest/games/minetest_game/mods/default/sounds/default_break_glass.1.ogg",
    "0ad/audio/attack/weapon/sword_attack_03.ogg",
]

pytestmark = pytest.mark.skipif(not SFX.is_dir(), reason=f"needs the shared sound effects in {SFX}")


def cli(*args: object, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run `python -m audiofind.cli ARGS` the way a user would (own process, own model load)."""
    env = dict(os.environ, AUDIOFIND_INDEX=str(ROOT / "test-artifacts" / "no-default-index"))
    return subprocess.run([sys.executable, "-m", "audiofind.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


def one_line_error(proc: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("audiofind:")]
    assert len(lines) == 1 and text in lines[0], proc.stderr


def write_wav(path: Path, wave: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, SR)
    return path


def tone(freq: float, seconds: float) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A small library built by `audiofind index --json`, shared by the read-only tests."""
    base = tmp_path_factory.mktemp("cli")
    sounds = base / "sounds"
    sounds.mkdir()
    for rel in CLIPS:
        shutil.copyfile(SFX / rel, sounds / Path(rel).name)
    write_wav(sounds / "sine.wav", tone(440, 2.0))
    write_wav(sounds / "noise.wav", 0.3 * np.random.default_rng(0).standard_normal(2 * SR))
    (sounds / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt " + bytes(range(256)))
    proc = cli("index", sounds, "--index", base / "index", "--json", "--quiet", "--workers", "2")
    return base, sounds, base / "index", proc


def test_index_prints_a_json_report_and_skips_bad_files(indexed):
    _, _, _, proc = indexed
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # stdout holds only the JSON
    assert report["added"] == report["embedded"] == len(CLIPS) + 2
    assert [s["path"].endswith("corrupt.wav") for s in report["skipped"]] == [True]
    assert report["index"]["clips"] == len(CLIPS) + 2
    assert "skipped" in proc.stderr and "corrupt.wav" in proc.stderr


def test_index_again_prints_a_summary(indexed):
    _, sounds, index, _ = indexed
    proc = cli("index", sounds, "--index", index, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert f"0 added, 0 updated, {len(CLIPS) + 2} unchanged" in proc.stdout
    assert "x real time" in proc.stdout and "corrupt.wav" in proc.stderr


def test_search_queries_file_prints_one_json_line_per_query(indexed, tmp_path):
    _, _, index, _ = indexed
    queries = tmp_path / "queries.txt"
    queries.write_text("sheep bleating\n\n  a sine tone  \n   \nbirds singing\n", encoding="utf-8")
    proc = cli("search", "--queries", queries, "--index", index, "--json", "-k", "2", "--max-duration", "2.5")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [x["query"] for x in lines] == ["sheep bleating", "a sine tone", "birds singing"]
    assert all(len(x["results"]) == 2 and {"path", "score"} <= set(x["results"][0]) for x in lines)
    assert Path(lines[1]["results"][0]["path"]).name == "sine.wav"
    assert Path(lines[0]["results"][0]["path"]).name.startswith("sheep")
    assert all(r["duration"] <= 2.5 for x in lines for r in x["results"])


def test_similar_table_and_json_leave_out_the_query(indexed):
    _, sounds, index, _ = indexed
    query = sounds / "sheep_00.ogg"
    table = cli("similar", query, "--index", index, "-k", "3")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:4] == ["rank", "score", "dur(s)", "tags"] and len(rows) == 3
    assert str(query) not in table.stdout
    as_json = cli("similar", query, "--index", index, "-k", "2", "--json", "--path-prefix", sounds)
    hits = json.loads(as_json.stdout)
    assert len(hits) == 2 and str(query) not in [h["path"] for h in hits]


def test_tags_and_info(indexed):
    _, sounds, index, _ = indexed
    proc = cli("tags", sounds / "sine.wav", "--json", "-k", "5")
    assert proc.returncode == 0, proc.stderr
    tags = json.loads(proc.stdout)
    assert len(tags) <= 5 and tags[0]["label"] == "Sine wave" and tags[0]["prob"] > 0.3
    info = cli("info", "--index", index, "--json")
    stats = json.loads(info.stdout)
    assert stats["clips"] == len(CLIPS) + 2 and stats["model_id"].startswith("zeroshot")
    plain = cli("info", "--index", index)
    assert plain.returncode == 0 and "audio_hours" in plain.stdout


def test_errors_are_one_line(indexed, tmp_path):
    base, sounds, index, _ = indexed
    one_line_error(cli("search", "dogs", "--index", tmp_path / "none"), 1, "no audiofind index")
    one_line_error(cli("info", "--index", tmp_path / "none"), 1, "no audiofind index")
    one_line_error(cli("index", tmp_path / "missing", "--index", index), 2, "no such file or folder")
    one_line_error(cli("search", "--index", index), 2, "give either a QUERY or --queries FILE")
    missing_queries = cli("search", "--queries", tmp_path / "q.txt", "--index", index)
    one_line_error(missing_queries, 2, "no such queries file")
    one_line_error(cli("tags", sounds / "corrupt.wav"), 1, "cannot decode audio file")
    other = base / "other-index"
    shutil.copytree(index, other)
    with sqlite3.connect(other / DB_NAME) as conn:
        conn.execute("UPDATE meta SET value = 'other-model-v0' WHERE key IN ('model_id', 'audio_model_id')")
    one_line_error(cli("index", sounds, "--index", other, "--model", "default", "-q"), 1,
                   "built with model other-model-v0")


def test_kill_9_midway_then_resume(tmp_path):
    """A SIGKILL while indexing leaves an index that opens; re-running completes it with no duplicates."""
    rows = [line.split("\t") for line in (SFX / "manifest.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    short = [r[0] for r in rows if float(r[5]) < 3.0][::40][:24]
    sounds, index = tmp_path / "sounds", tmp_path / "index"
    sounds.mkdir()
    for i, rel in enumerate(short):
        shutil.copyfile(SFX / rel, sounds / f"clip_{i:03d}{Path(rel).suffix}")
    # The indexer stops itself inside a write transaction (rows written, not committed) once at least 4 files
    # are committed, and says so in `ready`; the kill lands there, whatever the machine's speed.
    ready = tmp_path / "ready"
    driver = (
        "import sys, threading, audiofind.library as L, audiofind.library.store as store\n"
        "store.COMMIT_EVERY_FILES = 2\n"
        "bump, committed = store.bump_generation, [0]\n"
        "def bump_then_wait_midway(conn):\n"
        "    bump(conn)\n"
        "    n = conn.execute('SELECT COUNT(*) FROM files').fetchone()[0]\n"
        "    if committed[0] >= 4 and n > committed[0]:\n"
        "        open(sys.argv[3] + '.tmp', 'w').write(str(committed[0]))\n"
        "        store.os.replace(sys.argv[3] + '.tmp', sys.argv[3])\n"
        "        threading.Event().wait()  # until killed, with this transaction open\n"
        "    committed[0] = n\n"
        "store.bump_generation = bump_then_wait_midway\n"
        "lib = L.Library.open(sys.argv[1], create=True)\n"
        "lib.update([sys.argv[2]], workers=1, batch_size=2, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", driver, str(index), str(sounds), str(ready)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while not ready.exists():
            assert proc.poll() is None, f"the indexer ended before it could be killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "the indexer never got 4 files in"
            time.sleep(0.05)  # poll interval: the loop waits for `ready`
        committed = int(ready.read_text())
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its decoding worker, if still there
        proc.wait(30)
        proc.stderr.close()

    text_and_vectors_in_step(index)  # names and tags are written in the same transactions as the vectors
    with Library.open(index) as lib:
        partial = len(lib)
        assert 4 <= partial < len(short)
        assert partial == committed  # what was committed survives; the open transaction is gone
        vec = lib.clip(lib.search_vector(np.ones(lib.stats()["dim"], np.float32), k=1)[0].id).vector
        assert len(lib.search_vector(vec, k=3)) == 3

    resumed = cli("index", sounds, "--index", index, "--json", "-q")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["unchanged"] >= partial and report["added"] == len(short) - report["unchanged"]
    with sqlite3.connect(index / DB_NAME) as conn:
        paths = [os.fsdecode(bytes(p)) for (p,) in conn.execute("SELECT path_bytes FROM files")]
    assert sorted(paths) == sorted(str(p) for p in sounds.iterdir())
    text_and_vectors_in_step(index)
    with sqlite3.connect(index / DB_NAME) as conn:  # the names the killed run had not embedded are done now
        assert conn.execute("SELECT COUNT(*) FROM files WHERE name_vector IS NULL").fetchone()[0] == 0
    with Library.open(index) as lib:
        assert len(lib) == len(short)
        assert lib.similar(str(sounds / "clip_000.ogg"), k=5)
