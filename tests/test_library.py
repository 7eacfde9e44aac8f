"""The library index end to end: real sound effects on disk, real decoding, the real default model."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
os.environ.setdefault("AUDIOFIND_ASSETS", str(SHARED / "assets"))

from sfx_clips import copy_clip  # noqa: E402

from audiofind import library as libmod  # noqa: E402
from audiofind.library import (  # noqa: E402
    FAISS_NAME,
    IndexNotFoundError,
    Library,
    ModelMismatchError,
    core,
    updater,
)
from audiofind.library.vector_index import (  # noqa: E402
    build_faiss_index,
    choose_index_kind,
    faiss_index_kind,
    search_faiss,
)
from audiofind.models import AudioEmbeddings, load_model  # noqa: E402

SFX = SHARED / "data" / "sfx-dev"
SR = 32_000

# (relative path in sfx-dev, what it is): short clips whose sound the tagger knows
CLIPS = {
    "widelands/data/sound/farm/sheep_00.ogg": "sheep",
    "widelands/data/sound/farm/sheep_01.ogg": "sheep",
    "0ad/audio/actor/fauna/animal/sheep_10.ogg": "sheep",
    "widelands/data/sound/animals/bird1_00.ogg": "bird",
    "widelands/data/sound/animals/bird2_00.ogg": "bird",
    "widelands/data/sound/animals/bird3_00.ogg": "bird",
    "widelands/data/sound/animals/bird5_00.ogg": "bird",
    "0ad/audio/actor/fauna/animal/chicken_10.ogg": "chicken",
    "0ad/audio/actor/fauna/animal/chicken_11.ogg": "chicken",
    "0ad/audio/actor/fauna/animal/cattle_01.ogg": "cattle",
    "0ad/audio/actor/fauna/animal/cattle_02.ogg": "cattle",
    "widelands/data/sound/farm/horse_00.ogg": "horse",
    "0ad/audio/actor/human/movement/Footsteps/Footstep_Gravel_Walking.ogg": "footsteps",
    "0ad/audio/actor/human/movement/Footsteps/Footstep_Wood_Walking.ogg": "footsteps",
    "minetest/games/minetest_game/mods/default/sounds/default_break_glass.1.ogg": "glass",
    "minetest/games/minetest_game/mods/default/sounds/default_break_glass.2.ogg": "glass",
    "0ad/audio/ambient/weather/thunder_10.ogg": "thunder",
    "0ad/audio/attack/weapon/sword_attack_03.ogg": "sword",
    "0ad/audio/actor/human/death/male_death_01.ogg": "scream",
    "0ad/audio/resource/construction/con_saw_04.ogg": "saw",
}

pytestmark = pytest.mark.skipif(not SFX.is_dir(), reason=f"needs the shared sound effects in {SFX}")


# ---------------------------------------------------------------- helpers


def tone(freq: float, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, seed: int = 0, amp: float = 0.3) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def wav_bytes(wave: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_wav(path: Path, wave: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav_bytes(wave))
    return path


def names(results) -> list[str]:
    return [Path(r.path).name for r in results]


def db_rows(index_dir: Path) -> list[tuple]:
    with sqlite3.connect(index_dir / libmod.DB_NAME) as conn:
        return conn.execute("SELECT id, path_bytes, content_hash, mtime_ns FROM files ORDER BY id").fetchall()


class FakeModel:
    """Another model (another space): the index must refuse to mix it with the real one."""

    model_id = "fake-spectrum-v1"
    source = "fake"
    dim = 8
    sample_rate = SR

    def embed_audio(self, waves):
        vecs = np.stack([np.abs(np.fft.rfft(w, 14))[:8] + 1e-3 for w in waves]).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        return AudioEmbeddings(vectors=vecs, tags=[[("Fake", 1.0)] for _ in waves])

    def encode_text(self, texts):
        return np.ones((len(texts), self.dim), np.float32) / np.sqrt(self.dim)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def model():
    return load_model()


@pytest.fixture(scope="module")
def built(tmp_path_factory, model):
    """One library of ~24 real and synthetic clips shared by the read-only tests."""
    base = tmp_path_factory.mktemp("built")
    sounds = base / "sounds"
    for rel, kind in CLIPS.items():
        copy_clip(rel, sounds / kind)
    write_wav(sounds / "synth" / "sine_440.wav", tone(440, 2.0))
    write_wav(sounds / "synth" / "sine_1000.wav", tone(1000, 1.5))
    write_wav(sounds / "synth" / "white_noise.wav", noise(2.0))
    write_wav(sounds / "synth" / "long_hum.wav", tone(220, 25.0, 0.2) + noise(25.0, 1, 0.02))
    lib = Library.open(base / "index", model, create=True)
    report = lib.update([sounds], workers=2, progress=False)
    yield lib, report, sounds
    lib.close()


# ---------------------------------------------------------------- building and searching


def test_first_update_indexes_everything(built):
    lib, report, sounds = built
    n = len(CLIPS) + 4
    assert (report.added, report.embedded, report.skipped) == (n, n, [])
    assert report.audio_seconds > 50 and report.wall_seconds > 0
    stats = lib.stats()
    assert stats["clips"] == n == len(lib)
    assert stats["model_id"] == lib.model.model_id and stats["dim"] == lib.model.dim
    assert stats["index_kind"] == "flat" and stats["audio_hours"] > 0.01
    assert (lib.index_dir / FAISS_NAME).exists()
    assert lib.roots() == [str(sounds)]
    json.dumps(report.to_dict())


def test_records_hold_file_facts(built):
    lib, _, sounds = built
    [hit] = lib.search_vector(lib.model.embed_audio([tone(440, 2.0)]).vectors[0], k=1)
    rec = lib.clip(hit.id)
    assert rec.path == str(sounds / "synth" / "sine_440.wav")
    assert rec.duration == pytest.approx(2.0, abs=0.01) and rec.sample_rate == SR and rec.channels == 1
    assert rec.size == os.path.getsize(rec.path) and rec.model_id == lib.model.model_id
    assert rec.vector.shape == (lib.model.dim,) and np.linalg.norm(rec.vector) == pytest.approx(1, abs=1e-4)
    assert rec.tags and rec.tags[0][0] == "Sine wave"
    json.dumps(rec.to_dict())
    with pytest.raises(KeyError):
        lib.clip(10**9)


def test_text_search_finds_the_right_sounds(built):
    lib, _, _ = built
    sine = names(lib.search("a pure sine wave tone", k=3))
    assert sine[0].startswith("sine_")
    ranked = names(lib.search("a sine tone", k=len(lib)))
    assert ranked.index("sine_440.wav") < ranked.index("white_noise.wav")
    assert {"sheep_00.ogg", "sheep_01.ogg", "sheep_10.ogg"} & set(names(lib.search("sheep bleating", k=3)))
    birds = lib.search("birds chirping and singing", k=3)
    assert sum(Path(r.path).parent.name == "bird" for r in birds) >= 2
    scores = [r.score for r in lib.search("glass breaking", k=10)]
    assert scores == sorted(scores, reverse=True)


def test_search_many_is_search_in_one_batch(built):
    lib, _, _ = built
    queries = ["thunder rumbling", "footsteps on gravel", "a chicken clucks"]
    many = lib.search_many(queries, k=5)
    assert [[r.id for r in rs] for rs in many] == [[r.id for r in lib.search(q, k=5)] for q in queries]
    assert lib.search_many([], k=5) == []


def test_filters_return_k_matching_clips(built):
    lib, _, sounds = built
    q = lib.model.encode_text(["an animal"])[0]
    short = lib.search_vector(q, k=5, max_duration=1.2)
    assert len(short) == 5 and all(r.duration <= 1.2 for r in short)
    long = lib.search_vector(q, k=50, min_duration=10)
    assert {Path(r.path).name for r in long} == {"thunder_10.ogg", "long_hum.wav"}
    birds = lib.search_vector(q, k=10, path_prefix=sounds / "bird")
    assert len(birds) == 4 and all(Path(r.path).parent.name == "bird" for r in birds)
    assert lib.search_vector(q, k=10, path_prefix=str(sounds / "bird") + os.sep) == birds
    assert lib.search_vector(q, k=10, min_duration=1000) == []
    every = lib.search_vector(q, k=100)
    assert len(every) == len(lib)  # k larger than the library: everything, once


def test_similar_excludes_the_query_clip(built):
    lib, _, sounds = built
    path = sounds / "sheep" / "sheep_00.ogg"
    by_path = lib.similar(path, k=5)
    assert str(path) not in [r.path for r in by_path] and len(by_path) == 5
    own_id = lib.search_vector(lib.clip(by_path[0].id).vector, k=1)[0].id
    by_id = lib.similar(own_id, k=5)
    assert own_id not in [r.id for r in by_id]
    assert {"sheep", "chicken", "cattle", "horse"} & {Path(r.path).parent.name for r in by_path[:2]}


def test_similar_to_an_outside_file_embeds_it(built, tmp_path):
    lib, _, _ = built
    outside = write_wav(tmp_path / "query.wav", tone(445, 1.0))
    hits = lib.similar(outside, k=2)
    assert names(hits)[0].startswith("sine_")
    with pytest.raises(FileNotFoundError):
        lib.similar(tmp_path / "missing.wav")


def test_reopen_rebuilds_a_missing_or_stale_faiss_file(built, model, tmp_path):
    lib, _, _ = built
    vec = lib.model.encode_text(["a bird"])[0]
    expected = [r.id for r in lib.search_vector(vec, k=5)]
    index_dir = tmp_path / "index"  # a copy: the shared index is never left without (or with a bad) file
    shutil.copytree(lib.index_dir, index_dir)
    faiss_file = index_dir / FAISS_NAME
    assert faiss_file.exists()
    with Library.open(index_dir) as again:  # model not loaded: stored-vector search needs none
        assert [r.id for r in again.search_vector(vec, k=5)] == expected
        assert again._model is None
    faiss_file.unlink()
    with Library.open(index_dir) as again:
        assert [r.id for r in again.search_vector(vec, k=5)] == expected
    assert faiss_file.exists()
    faiss_file.write_bytes(b"garbage")
    with Library.open(index_dir, model) as again:
        assert [r.id for r in again.search_vector(vec, k=5)] == expected
    assert faiss_file.read_bytes().startswith(b"AUDIOFIND-FAISS")


def test_approximate_index_keeps_filtered_results_exact(built):
    lib, _, _ = built
    vec = lib.model.encode_text(["birds"])[0]
    exact = lib.search_vector(vec, k=3, path_prefix=lib.roots()[0] + "/bird")
    for kind in ("ivf", "ivfpq", "hnsw"):
        with Library.open(lib.index_dir, index_kind=kind, nprobe=1) as approx:
            assert approx.stats()["index_kind"] == kind
            got = approx.search_vector(vec, k=3, path_prefix=lib.roots()[0] + "/bird")
            assert [r.id for r in got] == [r.id for r in exact]
            assert len(approx.search_vector(vec, k=len(lib))) == len(lib)


def test_cli_search_table_and_json(built, monkeypatch):
    """The single-query CLI path, in-process with the already-loaded model (test_cli runs the rest)."""
    from typer.testing import CliRunner

    from audiofind.cli.main import app

    lib, _, sounds = built
    monkeypatch.setattr(core, "_load_model", lambda name, *_: lib.model)
    runner = CliRunner()
    table = runner.invoke(app, ["search", "a pure sine wave tone", "--index", str(lib.index_dir), "-k", "3"])
    assert table.exit_code == 0, table.output
    header, first, *rest = table.stdout.splitlines()
    assert header.split() == ["rank", "match", "dur(s)", "why", "path"] and len(rest) == 2
    assert first.split()[0] == "1" and Path(first.split()[-1]).name.startswith("sine_")
    as_json = runner.invoke(app, ["search", "birds", "--index", str(lib.index_dir), "--json",
                                  "--path-prefix", str(sounds / "bird"), "--top-k", "10"])
    hits = json.loads(as_json.stdout)
    assert len(hits) == 4 and all(Path(h["path"]).parent.name == "bird" for h in hits)
    assert {"id", "path", "score", "duration", "tags"} <= set(hits[0])


def test_model_mismatch_is_refused_until_a_rebuild(built, tmp_path):
    lib, _, sounds = built
    expected = f"built with model {lib.model.model_id}.*fake-spectrum-v1.*--rebuild"
    with pytest.raises(ModelMismatchError, match=expected):
        Library.open(lib.index_dir, FakeModel())
    copy = tmp_path / "index"
    shutil.copytree(lib.index_dir, copy)
    with Library.open(copy, FakeModel(), rebuild=True) as rebuilt:
        assert len(rebuilt) == len(lib) and rebuilt.model_id == lib.model_id  # the old index until the swap
        report = rebuilt.update([sounds / "sheep"], workers=0, progress=False)
        assert len(rebuilt) == 3 and rebuilt.model_id == "fake-spectrum-v1"
        assert report.added == report.embedded == 3
        assert rebuilt.stats()["dim"] == FakeModel.dim and len(rebuilt.search("anything", k=5)) == 3


def test_a_writer_after_a_rebuild_refuses_its_old_model(built, tmp_path):
    """A writer opened before another process rebuilt with a new model re-checks the model once it holds the
    write lock: it refuses instead of adding old-model rows, and a refresh shows it the new index."""
    lib, _, sounds = built
    copy = tmp_path / "index"
    shutil.copytree(lib.index_dir, copy)
    with Library.open(copy, lib.model) as stale, Library.open(copy, FakeModel(), rebuild=True) as other:
        other.update([sounds / "sheep"], workers=0, progress=False)
        with pytest.raises(ModelMismatchError, match="fake-spectrum-v1"):
            stale.update([sounds], workers=0, progress=False)
        assert stale.refresh() and stale.model_id == "fake-spectrum-v1" and len(stale) == 3
    with sqlite3.connect(copy / libmod.DB_NAME) as conn:
        assert conn.execute("SELECT DISTINCT model_id FROM files").fetchall() == [("fake-spectrum-v1",)]


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(IndexNotFoundError, match="audiofind index PATH"):
        Library.open(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / libmod.DB_NAME).write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(libmod.LibraryError, match="not a readable audiofind index"):
        Library.open(tmp_path / "bad")


# ---------------------------------------------------------------- incremental updates


def test_incremental_update(tmp_path, model, monkeypatch):
    sounds = tmp_path / "sounds"
    a = copy_clip("widelands/data/sound/farm/sheep_00.ogg", sounds)
    b = copy_clip("widelands/data/sound/animals/bird1_00.ogg", sounds)
    c = copy_clip("0ad/audio/actor/fauna/animal/chicken_10.ogg", sounds)
    d = write_wav(sounds / "sub" / "tone.wav", tone(500, 1.0))
    monkeypatch.setenv("AUDIOFIND_INDEX", str(tmp_path / "index"))
    lib = Library.open(model=model, create=True)  # the folder comes from $AUDIOFIND_INDEX
    events: list[dict] = []
    first = lib.update([sounds], workers=0, progress=events.append)
    assert (first.added, first.embedded) == (4, 4)
    assert events[-1]["done"] == events[-1]["total"] == 4 and events[-1]["audio_seconds"] > 0
    ids = {os.fsencode(p): i for i, p, *_ in db_rows(lib.index_dir)}

    again = lib.update([sounds], workers=0, progress=False)
    assert (again.unchanged, again.embedded, again.added) == (4, 0, 0)

    os.utime(a, ns=(1_000_000_000, 1_000_000_000))  # touched, same bytes
    touched = lib.update([sounds], workers=0, progress=False)
    assert (touched.unchanged, touched.embedded, touched.updated) == (4, 0, 0)
    assert {r[3] for r in db_rows(lib.index_dir) if r[1] == os.fsencode(a)} == {1_000_000_000}

    write_wav(d, tone(900, 1.0))  # same path, new content
    b.rename(sounds / "sub" / "renamed_bird.ogg")  # moved
    shutil.copyfile(a, sounds / "sheep_copy.ogg")  # a copy: new path, known bytes
    c.unlink()  # deleted
    rep = lib.update([sounds], workers=0, progress=False)
    assert (rep.updated, rep.moved, rep.added, rep.removed, rep.unchanged) == (1, 1, 1, 1, 1)
    assert rep.embedded == 1  # only the re-written tone went through the model
    rows = {bytes(p): i for i, p, *_ in db_rows(lib.index_dir)}
    assert len(rows) == 4
    assert rows[os.fsencode(sounds / "sub" / "renamed_bird.ogg")] == ids[os.fsencode(b)]
    assert rows[os.fsencode(d)] == ids[os.fsencode(d)]
    [top] = lib.search_vector(lib.model.embed_audio([tone(900, 1.0)]).vectors[0], k=1)
    assert top.path == str(d)

    # records outside the roots of an update are kept
    other = copy_clip("0ad/audio/actor/fauna/animal/cattle_01.ogg", tmp_path / "elsewhere")
    lib.update([other], workers=0, progress=False)
    partial = lib.update([sounds / "sub"], workers=0, progress=False)
    assert (partial.unchanged, partial.removed) == (2, 0)
    assert len(lib) == 5
    lib.close()


def test_refresh_sees_another_writer(tmp_path, model):
    sounds = tmp_path / "sounds"
    write_wav(sounds / "a.wav", tone(300, 1.0))
    writer = Library.open(tmp_path / "index", model, create=True)
    writer.update([sounds], workers=0, progress=False)
    reader = Library.open(tmp_path / "index")
    vec = writer.model.embed_audio([tone(700, 1.0)]).vectors[0]
    assert len(reader.search_vector(vec, k=5)) == 1
    assert reader.refresh() is False
    write_wav(sounds / "b.wav", tone(700, 1.0))
    writer.update([sounds], workers=0, progress=False)
    assert reader.refresh() is True
    assert Path(reader.search_vector(vec, k=5)[0].path).name == "b.wav"
    reader.close()
    writer.close()


# ---------------------------------------------------------------- bad input


def test_bad_files_are_skipped_with_reasons(tmp_path, model, monkeypatch):
    sounds = tmp_path / "sounds"
    write_wav(sounds / "fine.wav", tone(440, 1.0))
    write_wav(sounds / "name with spaces.wav", tone(660, 1.0))
    (sounds / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + os.urandom(200))
    (sounds / "empty.wav").write_bytes(b"")
    (sounds / "notes.wav").write_text("these are my notes, not audio\n")
    (sounds / "readme.txt").write_text("ignored: not an audio extension")
    raw_name = os.path.join(os.fsencode(sounds), b"caf\xe9 \xff.wav")
    fd = os.open(raw_name, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, wav_bytes(tone(880, 1.0)))
    os.close(fd)
    doomed = write_wav(sounds / "doomed.wav", tone(1200, 1.0))

    real_scan = updater.scan_roots

    def scan_then_delete(roots, report, *rest):
        found = real_scan(roots, report, *rest)
        doomed.unlink()  # vanishes between listing and reading
        return found

    monkeypatch.setattr(updater, "scan_roots", scan_then_delete)
    lib = Library.open(tmp_path / "index", model, create=True)
    report = lib.update([sounds], workers=2, progress=False)
    skipped = dict((Path(p).name, reason) for p, reason in report.skipped)
    assert set(skipped) == {"corrupt.wav", "empty.wav", "notes.wav", "doomed.wav"}
    assert "vanished" in skipped["doomed.wav"]
    assert all(skipped.values())
    assert report.added == 3 and len(lib) == 3

    rows = {bytes(p) for _, p, *_ in db_rows(lib.index_dir)}
    assert raw_name in rows and os.fsencode(sounds / "name with spaces.wav") in rows
    vec = lib.model.embed_audio([tone(880, 1.0)]).vectors[0]
    [hit] = lib.search_vector(vec, k=1)
    assert os.fsencode(hit.path) == raw_name  # opens the real file
    assert os.path.exists(hit.path)
    assert "\ufffd" in hit.to_dict()["path"]
    json.dumps(hit.to_dict())
    monkeypatch.undo()

    def no_decoding(task):
        raise AssertionError(f"{task[0]} was decoded again")

    monkeypatch.setattr(updater, "decode_file", no_decoding)
    rerun = lib.update([sounds], workers=0, progress=False)  # known-bad files are not retried
    assert rerun.unchanged == 3 and len(rerun.skipped) == 3 and len(lib) == 3
    assert dict(rerun.skipped) == {p: r for p, r in report.skipped if not p.endswith("doomed.wav")}
    monkeypatch.undo()
    write_wav(sounds / "corrupt.wav", tone(330, 1.0))  # repaired: indexed on the next run
    repaired = lib.update([sounds], workers=0, progress=False)
    assert repaired.added == 1 and len(repaired.skipped) == 2
    with pytest.raises(FileNotFoundError):
        lib.update([tmp_path / "no such folder"], progress=False)
    lib.close()


# ---------------------------------------------------------------- FAISS kinds on synthetic vectors


def test_faiss_kinds_agree_with_exact_search():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32))
    vectors = (centres[rng.integers(0, 40, 4000)] + 0.5 * rng.standard_normal((4000, 32))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(4000, dtype=np.int64) * 3 + 7
    queries = vectors[:20] + 0.1 * rng.standard_normal((20, 32)).astype(np.float32)
    truth = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
    allowed = ids[::5]
    for kind, min_recall in (("flat", 1.0), ("ivf", 0.85), ("hnsw", 0.9)):
        index = build_faiss_index(vectors, ids, kind, nprobe=16)
        _, got = search_faiss(index, queries, 10)
        recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth, strict=True)])
        assert recall >= min_recall, (kind, recall)
        _, sel = search_faiss(index, queries, 10, allowed_ids=allowed)
        assert set(sel[sel >= 0].tolist()) <= set(allowed.tolist())
        assert faiss_index_kind(index) == kind
        if kind == "ivf":  # a rebuild re-uses the trained lists: same answers, no k-means
            again = build_faiss_index(vectors[::-1], ids[::-1], kind, nprobe=16, trained=index)
            assert again.ntotal == len(ids) and (search_faiss(again, queries, 10)[1] == got).all()
    assert choose_index_kind(1000) == "flat" and choose_index_kind(10**5) == "ivf"
    empty = build_faiss_index(np.zeros((0, 8), np.float32), np.zeros(0, np.int64), "ivf")
    assert empty.ntotal == 0


def test_one_hour_recording_is_indexed_whole(tmp_path, model):
    """A long field recording is windowed end to end: a tone in its last minutes still tags and ranks it."""
    rate = 8_000
    hour = tmp_path / "sounds" / "field recording (one hour).wav"
    hour.parent.mkdir()
    with sf.SoundFile(hour, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        rng = np.random.default_rng(3)
        for minute in range(60):
            t = np.arange(60 * rate) / rate
            block = 0.01 * rng.standard_normal(60 * rate)  # quiet room tone ...
            if minute >= 55:  # ... then five minutes of a steady 440 Hz tone
                block += 0.5 * np.sin(2 * np.pi * 440 * t)
            f.write(block.astype(np.float32))
    birds = SHARED / "data" / "sfx-dev" / "widelands" / "data" / "sound" / "animals" / "bird1_00.ogg"
    shutil.copy(birds, tmp_path / "sounds" / "birds.ogg")

    with Library.open(tmp_path / "index", model, create=True) as lib:
        report = lib.update([hour.parent], workers=1, progress=False)
        assert report.added == 2 and not report.skipped
        rec = next(lib.clip(r.id) for r in lib.search("a steady pure tone", k=2, mode="audio"))
        assert rec.path == str(hour) and rec.duration == pytest.approx(3600.0)
        assert "Sine wave" in [label for label, _ in rec.tags[:3]]
