"""The same search behaviour on both stores: the embedded SQLite + FAISS one and Milvus (milvus-lite, a real
file in tmp_path). Names, folders and sound find the right clips, filters hold, an anonymised library ranks
as audio-only, remove and re-runs leave no duplicates, a sync killed with SIGKILL is finished by the next
open, and the server answers the same over either."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from audiofind.library import DB_NAME, Library  # noqa: E402

STORES = ("sqlite", "milvus-lite")
SRC = Path(__file__).resolve().parents[1] / "src"
# real sfx-dev clips, copied under descriptive names in descriptive folders
CLIPS = {
    "weather/rain_heavy.ogg": "0ad/audio/ambient/weather/rain_11.ogg",
    "animals/cow_moo.ogg": "0ad/audio/actor/fauna/animal/cattle_05.ogg",
    "animals/sheep_bleat.ogg": "0ad/audio/actor/fauna/animal/sheep_10.ogg",
    "house/glass_break.ogg": "minetest/games/minetest_game/mods/default/sounds/default_break_glass.1.ogg",
    "house/door_close.ogg": "minetest/games/minetest_game/mods/doors/sounds/doors_door_close.ogg",
    "steps/gravel_footstep.ogg": "0ad/audio/actor/singlesteps/fs_gravel3.ogg",
    "weapons/crossbow_fire.ogg": "wesnoth/usr/share/games/wesnoth/1.16/data/core/sounds/crossbow-fire.ogg",
    "weapons/hatchet_chop.wav": "wesnoth/usr/share/games/wesnoth/1.16/data/core/sounds/hatchet.wav",
}
QUERIES = ["door", "glass breaking", "sheep", "heavy rain", "footsteps on gravel", "a crossbow is fired",
           "weather", "an animal"]


def store_spec(kind: str, folder: Path) -> str:
    return "sqlite" if kind == "sqlite" else f"milvus-lite:{folder / 'clips.db'}"


def copy_clips(sfx: Path, root: Path, names: dict[str, str]) -> Path:
    for name, source in names.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sfx / source, root / name)
    return root


@pytest.fixture(scope="module")
def model(assets_dir):
    from audiofind.models import load_model

    return load_model()


@pytest.fixture(scope="module")
def clips(sfx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_clips(sfx_dir, tmp_path_factory.mktemp("stores") / "clips", CLIPS)


@pytest.fixture(scope="module")
def libs(clips: Path, model, tmp_path_factory: pytest.TempPathFactory):
    """One index of the clips per store."""
    opened = {}
    for kind in STORES:
        folder = tmp_path_factory.mktemp(kind)
        lib = Library.open(folder / "index", model=model, create=True, store=store_spec(kind, folder))
        lib.update([clips], workers=0, progress=False)
        opened[kind] = lib
    yield opened
    for lib in opened.values():
        lib.close()


@pytest.fixture(params=STORES)
def lib(request, libs) -> Library:
    return libs[request.param]


def names(results) -> list[str]:
    return [Path(r.path).name for r in results]


def test_index_records_its_store(lib: Library, clips: Path) -> None:
    assert len(lib) == len(CLIPS)
    stats = lib.stats()
    assert stats["store"] == lib.store and stats["clips"] == len(CLIPS)
    if lib.store != "sqlite":
        assert lib.store.startswith("milvus-lite:/") and stats["index_kind"] == "milvus FLAT"
        assert lib._store.count() == len(CLIPS)
        with Library.open(lib.index_dir) as again:  # no --store: the recorded one
            assert again.store == lib.store


@pytest.mark.parametrize(("query", "expected"), [
    ("door", "door_close.ogg"), ("glass", "glass_break.ogg"), ("sheep", "sheep_bleat.ogg"),
    ("crossbow", "crossbow_fire.ogg"), ("hatchet", "hatchet_chop.wav")])
def test_names_find_their_clip(lib: Library, query: str, expected: str) -> None:
    for mode in ("hybrid", "text"):
        found = lib.search(query, 3, mode)
        assert names(found)[0] == expected, (mode, names(found))
        assert query in found[0].why["words"]


def test_folder_words_count(lib: Library) -> None:
    assert set(names(lib.search("house", 2, "text"))) == {"glass_break.ogg", "door_close.ogg"}
    assert names(lib.search("weather", 1, "text")) == ["rain_heavy.ogg"]


def test_stores_agree(libs) -> None:
    """Every mode ranks the same clips in the same order with the same scores on both stores."""
    a, b = libs["sqlite"], libs["milvus-lite"]
    for mode in ("audio", "hybrid", "text"):
        for query, x, y in zip(QUERIES, a.search_many(QUERIES, 5, mode), b.search_many(QUERIES, 5, mode),
                               strict=True):
            assert names(x) == names(y), (mode, query)
            assert np.allclose([r.score for r in x], [r.score for r in y], atol=1e-4), (mode, query)
            assert [r.why for r in x] == [r.why for r in y]
    clip = a.find(b.search("door", 1)[0].path)
    assert names(a.similar(clip.id, 4)) == names(b.similar(b.find(clip.path).id, 4))
    assert clip.path not in [r.path for r in b.similar(b.find(clip.path).id, 4)]


def test_filters(lib: Library, clips: Path) -> None:
    durations = {Path(r.path).name: r.duration for r in lib.search("sound", len(CLIPS), "audio")}
    assert len(durations) == len(CLIPS)
    cut = float(np.median(list(durations.values())))
    every = "rain cow sheep glass door gravel crossbow hatchet"  # a word for every clip, for text mode
    for mode in ("audio", "hybrid", "text"):
        short = lib.search(every, len(CLIPS), mode, max_duration=cut)
        assert short and all(r.duration <= cut for r in short)
        long = lib.search(every, len(CLIPS), mode, min_duration=cut)
        assert long and all(r.duration >= cut for r in long)
        assert len(short) + len(long) >= len(CLIPS)
        animals = lib.search("sheep cow rain", len(CLIPS), mode, path_prefix=clips / "animals")
        assert animals and set(names(animals)) <= {"cow_moo.ogg", "sheep_bleat.ogg"}
    assert lib.search("door", 5, path_prefix=clips / "nowhere") == []
    vector = lib.clip(lib.find(clips / "house/door_close.ogg").id).vector
    near = lib.search_vector(vector, 3, path_prefix=f"{clips}/house/")
    assert names(near) == ["door_close.ogg", "glass_break.ogg"]


def test_anonymised_library_ranks_as_audio(sfx_dir: Path, model, tmp_path: Path) -> None:
    """Hex file names in one flat folder: hybrid is the audio ranking, on both stores."""
    hexed = {f"{i:02x}c0ffee{i:02x}.ogg": source for i, source in enumerate(CLIPS.values())
             if source.endswith(".ogg")}
    root = copy_clips(sfx_dir, tmp_path / "hex", hexed)
    for kind in STORES:
        with Library.open(tmp_path / kind, model=model, create=True, store=store_spec(kind, tmp_path)) as lib:
            lib.update([root], workers=0, progress=False)
            for query in QUERIES[:4]:
                hybrid, audio = lib.search(query, 5, "hybrid"), lib.search(query, 5, "audio")
                assert names(hybrid) == names(audio), (kind, query)
                assert np.allclose([r.score for r in hybrid], [r.score for r in audio])


def stored_ids(lib: Library) -> list[int]:
    """Every clip id the search side holds (Milvus: listed from the collection; duplicates would show)."""
    if lib._store is None:
        return sorted(int(i) for i in lib._vectors.all_vectors()[0])
    return sorted(int(r["id"]) for batch in lib._store._iterate(["id"]) for r in batch)


@pytest.mark.parametrize("kind", STORES)
def test_remove_and_rerun_leave_no_duplicates(kind: str, sfx_dir: Path, model, tmp_path: Path) -> None:
    three = dict(list(CLIPS.items())[2:5])  # sheep, glass, door
    root = copy_clips(sfx_dir, tmp_path / "clips", three)
    with Library.open(tmp_path / "index", model=model, create=True, store=store_spec(kind, tmp_path)) as lib:
        lib.update([root], workers=0, progress=False)
        first = stored_ids(lib)
        assert len(first) == len(lib) == 3
        report = lib.update([root], workers=0, progress=False)  # nothing changed
        assert report.added == 0 and stored_ids(lib) == first
        (root / "house/door_close.ogg").unlink()
        lib.update([root], workers=0, progress=False)
        assert len(lib) == 2 and len(stored_ids(lib)) == 2
        assert "door_close.ogg" not in names(lib.search("door", 5))
        shutil.copyfile(sfx_dir / CLIPS["house/door_close.ogg"], root / "house/door_close.ogg")
        lib.update([root], workers=0, progress=False)
        assert len(stored_ids(lib)) == len(set(stored_ids(lib))) == len(lib) == 3
        assert names(lib.search("door", 1)) == ["door_close.ogg"]


_KILLED_SYNC = """
import sys
from audiofind.library import Library, milvus_store
milvus_store.SYNC_BATCH = 1
lib = Library.open(sys.argv[1], store=sys.argv[2])
def stop(done, total):
    print(done, total, flush=True)
    sys.stdin.readline()  # wait here, mid-sync, until the test kills this process
lib._store.sync(progress=stop)
"""


def test_killed_sync_is_finished_by_the_next_open(libs, tmp_path: Path) -> None:
    """SIGKILL after the first upserted clip: the next open syncs the rest, with no duplicates."""
    index = tmp_path / "index"
    index.mkdir()
    with sqlite3.connect(libs["sqlite"].index_dir / DB_NAME) as src, sqlite3.connect(index / DB_NAME) as dst:
        src.backup(dst)
    spec = f"milvus-lite:{tmp_path / 'clips.db'}"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_SYNC, str(index), spec], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        assert child.stdout.readline().split() == ["1", str(len(CLIPS))]
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the child and the milvus-lite server it started
        child.wait()
    with Library.open(index) as lib:
        assert lib.store == spec and not lib._store.in_step()
        assert lib._store.count() <= len(CLIPS)
        assert names(lib.search("door", 1, "text")) == ["door_close.ogg"]  # a search finishes the sync
        assert lib._store.in_step() and stored_ids(lib) == sorted(set(stored_ids(lib)))
        assert len(stored_ids(lib)) == lib._store.count() == len(lib) == len(CLIPS)


def test_server_over_a_milvus_store(libs) -> None:
    from fastapi.testclient import TestClient

    from audiofind.server.app import create_app

    app = create_app(library=libs["milvus-lite"], warm_up=False)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        r = client.get("/api/search", params={"q": "glass breaking", "k": 3})
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert hits[0]["name"] == "glass_break.ogg"
        clip = client.get(f"/api/clips/{hits[0]['id']}")
        assert clip.status_code == 200 and clip.json()["path"].endswith("glass_break.ogg")
        audio = client.get(hits[0]["audio_url"])
        assert audio.status_code == 200 and audio.content[:4] == b"OggS"


def test_cli_store_option_is_recorded(libs, tmp_path: Path) -> None:
    """`search --store milvus-lite:...` syncs and records the store; the next search reopens it."""
    import json

    index = tmp_path / "index"
    index.mkdir()
    with sqlite3.connect(libs["sqlite"].index_dir / DB_NAME) as src, sqlite3.connect(index / DB_NAME) as dst:
        src.backup(dst)
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "audiofind.cli", *args], capture_output=True, text=True,
                              env=env, timeout=300)

    spec = f"milvus-lite:{tmp_path / 'clips.db'}"
    first = cli("search", "glass", "-k", "2", "--json", "--index", str(index), "--store", spec)
    assert first.returncode == 0, first.stderr
    again = cli("search", "glass", "-k", "2", "--json", "--index", str(index))
    assert again.returncode == 0, again.stderr
    assert json.loads(first.stdout) == json.loads(again.stdout)
    assert Path(json.loads(again.stdout)[0]["path"]).name == "glass_break.ogg"
    with Library.open(index, store=None) as lib:
        assert lib.store == spec
    bad = cli("search", "glass", "--index", str(index), "--store", "redis://x")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert [line for line in bad.stderr.splitlines() if line.startswith("audiofind:")] == [
        "audiofind: --store must be sqlite, milvus-lite:PATH.db or milvus://HOST:PORT, not 'redis://x'"]
