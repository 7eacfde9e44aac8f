"""Hybrid search on real files: names, folders and embedded tags found by search, kept in step with the
vectors through edits, kills and old indexes; hash-named libraries rank exactly as audio-only."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from index_checks import text_and_vectors_in_step as in_step
from mutagen.oggvorbis import OggVorbis
from riff_fixtures import bext_chunk, chunk, riff_file, wav_fmt_and_data

from audiofind.library import DB_NAME, Library
from audiofind.library.fusion import (
    DEFAULT_FUSION,
    FusionParams,
    fit_logistic,
    fuse,
    is_weak,
    match_strength,
    reciprocal_rank_fusion,
    saturate,
)
from audiofind.library.hybrid import match_expression, query_terms

# real sfx-dev clips, copied under neutral names so that only what a test writes can match
AUDIO = {
    "rain": "0ad/audio/ambient/weather/rain_11.ogg",
    "cattle": "0ad/audio/actor/fauna/animal/cattle_05.ogg",
    "sheep": "0ad/audio/actor/fauna/animal/sheep_10.ogg",
    "glass": "minetest/games/minetest_game/mods/default/sounds/default_break_glass.1.ogg",
    "door": "minetest/games/minetest_game/mods/doors/sounds/doors_door_close.ogg",
    "gravel": "0ad/audio/actor/singlesteps/fs_gravel3.ogg",
}
WAV_SOURCE = "wesnoth/usr/share/games/wesnoth/1.16/data/core/sounds/hatchet.wav"


@pytest.fixture(scope="module")
def model(assets_dir):
    from audiofind.models import load_model

    return load_model()


def copy_clip(sfx: Path, key: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sfx / AUDIO[key], dest)
    return dest


def hex_library(sfx: Path, folder: Path) -> list[Path]:
    """Every clip of AUDIO under a meaningless hex name, in one flat folder."""
    return [copy_clip(sfx, key, folder / f"{i:02x}{hash(key) & 0xFFFFFFFF:08x}.ogg")
            for i, key in enumerate(sorted(AUDIO))]


def write_vorbis(path: Path, **tags: str) -> None:
    f = OggVorbis(path)
    f.delete()
    for key, value in tags.items():
        f[key] = value
    f.save()


# ---------------------------------------------------------------- pure functions


def test_fusion_functions():
    assert np.allclose(saturate(np.array([0.0, 4.0, -1.0, 1e9]), 4.0), [0.0, 0.5, 0.0, 1.0])
    a, t, n = np.array([0.3, 0.5, 0.1]), np.array([0.0, 0.0, 0.9]), np.array([0.0, 0.2, 0.0])
    params = FusionParams(text_weight=1.0, name_weight=0.5)
    assert np.allclose(fuse(a, t, n, "audio", params), a)
    assert np.allclose(fuse(a, t, n, "text", params), t + 0.5 * n)
    assert np.allclose(fuse(a, t, n, "hybrid", params), a + t + 0.5 * n)
    with pytest.raises(ValueError, match="mode"):
        fuse(a, t, n, "both", params)
    # no text and no name evidence: hybrid is audio, exactly
    zeros = np.zeros(3)
    assert np.array_equal(fuse(a, zeros, zeros, "hybrid"), a)
    rrf = reciprocal_rank_fusion(np.array([0.9, 0.1]), np.array([0.0, 5.0]))
    assert rrf[0] == pytest.approx(1 / 61) and rrf[1] == pytest.approx(1 / 62 + 1 / 61)
    strength = match_strength(np.linspace(0, 1, 11), zeros.repeat(4)[:11], zeros.repeat(4)[:11])
    assert np.all(np.diff(strength) > 0) and np.all((strength > 0) & (strength < 1))
    weak = DEFAULT_FUSION.weak_below
    assert is_weak(None) and is_weak(weak - 1e-6) and not is_weak(weak)


def test_logistic_fit_recovers_known_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 2))
    true = np.array([-1.0, 2.0, -0.5])
    p = 1 / (1 + np.exp(-(true[0] + x @ true[1:])))
    w = fit_logistic(x, rng.random(len(p)) < p, l2=0.0)
    assert np.allclose(w, true, atol=0.1)


def test_query_terms_and_a_safe_fts_expression():
    terms = query_terms("The sound of footsteps on GRAVEL, walking slowly")
    assert [word for _, word in terms] == ["footsteps", "GRAVEL", "walking", "slowly"]
    assert ("footstep", "footsteps") in terms
    assert query_terms("a the of") == [] and match_expression([]) is None
    # FTS5 syntax in a query is only ever words: quotes, stars, NEAR, colons and minus signs
    hostile = query_terms('door" OR * NEAR(x y) -slam col:name ^start')
    assert all(f'"{stem}"' in match_expression(hostile) for stem, _ in hostile)
    assert '"sword" OR "sword"*' in match_expression(query_terms("sword"))  # compounds: "swordhit"
    assert match_expression(query_terms("ox")) == '"ox"'  # short stems match whole words only


# ---------------------------------------------------------------- real files


def test_embedded_metadata_is_found_and_follows_edits(sfx_dir, model, tmp_path):
    sounds = tmp_path / "sounds"
    hex_library(sfx_dir, sounds)
    tagged = copy_clip(sfx_dir, "rain", sounds / "ZOOM0001.ogg")  # a recorder name: no words in it
    write_vorbis(tagged, title="Hailstorm on a tin roof", genre="Weather")
    fmt, data = wav_fmt_and_data(sfx_dir / WAV_SOURCE)
    bwf = sounds / "STE-004.wav"
    bwf.write_bytes(riff_file(chunk(b"fmt ", fmt), bext_chunk(b"Blacksmith hammering an anvil"),
                              chunk(b"data", data)))

    lib = Library.open(tmp_path / "index", model, create=True)
    lib.update([sounds], workers=0, progress=False)
    [hit] = lib.search("hailstorm", k=1, mode="text")
    assert Path(hit.path) == tagged and hit.why["words"] == ["hailstorm"]
    assert lib.search("a hailstorm on a roof", k=1)[0].id == hit.id  # hybrid finds it too
    [anvil] = lib.search("anvil", k=1, mode="text")
    assert Path(anvil.path) == bwf
    assert lib.find(tagged).words["metadata"]["title"] == "Hailstorm on a tin roof"
    in_step(lib.index_dir)

    write_vorbis(tagged, title="Seagulls over the harbour")  # edit the tags, index again
    report = lib.update([sounds], workers=0, progress=False)
    assert report.updated == 1
    assert lib.search("hailstorm", k=3, mode="text") == []
    [gull] = lib.search("seagulls", k=1, mode="text")
    assert Path(gull.path) == tagged and gull.id == lib.find(tagged).id
    assert "Seagulls" in json.dumps(lib.find(tagged).to_dict())
    in_step(lib.index_dir)

    moved = sounds / "Birds" / "harbour_ambience.ogg"  # a move keeps the vector and renews the text
    moved.parent.mkdir()
    tagged.rename(moved)
    assert lib.update([sounds], workers=0, progress=False).moved == 1
    assert {Path(h.path) for h in lib.search("birds harbour", k=3, mode="text")} >= {moved}
    in_step(lib.index_dir)
    lib.close()


def test_names_and_folders_count(sfx_dir, model, tmp_path):
    sounds = tmp_path / "Library"
    copy_clip(sfx_dir, "gravel", sounds / "Foley" / "Footsteps" / "fs_gravel_3.ogg")
    copy_clip(sfx_dir, "door", sounds / "doors_door_close.ogg")
    copy_clip(sfx_dir, "cattle", sounds / "cattle_05.ogg")
    copy_clip(sfx_dir, "glass", sounds / "GLASBreak_Window Shatter_ACME_01.ogg")  # a UCS name
    copy_clip(sfx_dir, "rain", sounds / "windleaves_10.ogg")  # a compound: no word of it is a prefix match
    with Library.open(tmp_path / "index", model, create=True) as lib:
        lib.update([sounds], workers=0, progress=False)
        first = {q: Path(lib.search(q, k=1)[0].path).name for q in
                 ("footsteps on gravel", "a door closing", "a cow mooing", "window glass shattering")}
        assert first == {"footsteps on gravel": "fs_gravel_3.ogg", "a door closing": "doors_door_close.ogg",
                         "a cow mooing": "cattle_05.ogg",
                         "window glass shattering": "GLASBreak_Window Shatter_ACME_01.ogg"}
        record = lib.find(sounds / "Foley" / "Footsteps" / "fs_gravel_3.ogg").words
        assert record["name"] == "fs gravel" and record["folders"] == "foley footsteps"
        ucs = lib.find(sounds / "GLASBreak_Window Shatter_ACME_01.ogg").words
        assert "glass" in ucs["ucs_category"].lower() and "window shatter" in ucs["name"]
        leaves = lib.search("leaves rustling", k=1, mode="text")[0]
        assert Path(leaves.path).name == "windleaves_10.ogg" and leaves.why["words"] == ["leaves"]
        assert lib.search('door" OR * NEAR(x y) -slam col:name ^start', k=1, mode="text")  # words, not syntax
        hit = lib.search("footsteps on gravel", k=1)[0]
        assert set(hit.why["words"]) == {"footsteps", "gravel"} and hit.why["tags"]
        assert 0 < hit.match <= 1 and hit.text_score > 0 and hit.name_score > 0


def test_hash_named_library_ranks_exactly_as_audio_only(sfx_dir, model, tmp_path):
    sounds = tmp_path / "anon"
    hex_library(sfx_dir, sounds)
    with Library.open(tmp_path / "index", model, create=True) as lib:
        lib.update([sounds], workers=0, progress=False)
        for query in ("rain falling", "a cow mooing", "glass breaking", "footsteps on gravel", "sheep"):
            hybrid = lib.search(query, k=len(AUDIO))
            audio = lib.search(query, k=len(AUDIO), mode="audio")
            assert [h.id for h in hybrid] == [h.id for h in audio]
            assert [h.score for h in hybrid] == pytest.approx([h.audio_score for h in audio], abs=1e-6)
            assert all(h.text_score == 0 and h.name_score == 0 and h.why["words"] == [] for h in hybrid)
            assert lib.search(query, k=5, mode="text") == []


def test_no_good_match_and_min_score_in_the_cli(sfx_dir, model, tmp_path):
    from typer.testing import CliRunner

    from audiofind.cli.main import app
    from audiofind.library import core

    sounds = tmp_path / "sounds"
    copy_clip(sfx_dir, "cattle", sounds / "cattle_05.ogg")
    copy_clip(sfx_dir, "sheep", sounds / "sheep_10.ogg")
    index = tmp_path / "index"
    with Library.open(index, model, create=True) as lib:
        lib.update([sounds], workers=0, progress=False)
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core, "_load_model", lambda name, *_: model)
        strong = runner.invoke(app, ["search", "a cow mooing", "--index", str(index), "-k", "2"])
        weak = runner.invoke(app, ["search", "an electric guitar solo", "--index", str(index), "-k", "2"])
        none = runner.invoke(app, ["search", "an electric guitar solo", "--index", str(index), "--min-score",
                                   "0.9", "--json"])
        text = runner.invoke(app, ["search", "sheep", "--index", str(index), "--mode", "text", "--json"])
        bad = runner.invoke(app, ["search", "sheep", "--index", str(index), "--mode", "loud"])
        info = runner.invoke(app, ["info", str(sounds / "cattle_05.ogg"), "--index", str(index), "--json"])
    assert strong.exit_code == 0 and "matches well" not in strong.stdout
    assert strong.stdout.splitlines()[0].split() == ["rank", "match", "dur(s)", "why", "path"]
    assert weak.exit_code == 0 and weak.stdout.startswith("nothing in this library matches well")
    assert json.loads(none.stdout) == [] and "matches well" in none.stderr
    sheep, *others = json.loads(text.stdout)  # cattle may follow on its name's likeness, never first
    assert Path(sheep["path"]).name == "sheep_10.ogg" and sheep["why"]["words"] == ["sheep"]
    assert all(o["why"]["words"] == [] and o["score"] < sheep["score"] for o in others)
    assert bad.exit_code == 2
    assert json.loads(info.stdout)["words"]["name"] == "cattle"


def test_an_index_from_before_text_records_is_completed_on_update(sfx_dir, model, tmp_path):
    sounds = tmp_path / "sounds"
    copy_clip(sfx_dir, "door", sounds / "doors_door_close.ogg")
    copy_clip(sfx_dir, "sheep", sounds / "sheep_10.ogg")
    index = tmp_path / "index"
    with Library.open(index, model, create=True) as lib:
        lib.update([sounds], workers=0, progress=False)
        ids = sorted(h.id for h in lib.search("door", k=5, mode="audio"))
    with sqlite3.connect(index / DB_NAME) as conn:  # make it look like a version-1 index
        for trigger in ("files_text_insert", "files_text_update", "files_text_delete"):
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE clip_text")
        conn.execute("ALTER TABLE files DROP COLUMN text")
        conn.execute("ALTER TABLE files DROP COLUMN name_vector")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        conn.executemany("UPDATE files SET vector = ? WHERE id = ?", [  # version 1 stored float32
            (np.frombuffer(blob, "<f2").astype("<f4").tobytes(), clip_id)
            for clip_id, blob in conn.execute("SELECT id, vector FROM files").fetchall()])
    with Library.open(index, model) as lib:
        assert sorted(h.id for h in lib.search("door", k=5, mode="audio")) == ids  # searchable as it was
        report = lib.update([sounds], workers=0, progress=False)
        assert report.unchanged == 2 and report.embedded == 0  # no audio work: only the text is built
        [door] = lib.search("door closing", k=1, mode="text")
        assert Path(door.path).name == "doors_door_close.ogg"
    in_step(index)


def test_records_from_older_word_rules_are_rebuilt_without_decoding(sfx_dir, model, tmp_path):
    sounds = tmp_path / "sounds"
    copy_clip(sfx_dir, "rain", sounds / "windleaves_10.ogg")
    index = tmp_path / "index"
    with Library.open(index, model, create=True) as lib:
        lib.update([sounds], workers=0, progress=False)
    with sqlite3.connect(index / DB_NAME) as conn:  # a record written before compounds were split
        [(text,)] = conn.execute("SELECT text FROM files").fetchall()
        old = json.loads(text)
        del old["version"]
        old["words"]["name"], old["fts"]["name"] = "windleaves", "windleav"
        conn.execute("UPDATE files SET text = ?", (json.dumps(old),))
    with Library.open(index, model) as lib:
        assert not lib.search("leaves", k=1, mode="text")
        report = lib.update([sounds], workers=0, progress=False)
        assert report.unchanged == 1 and report.embedded == 0
        [hit] = lib.search("leaves", k=1, mode="text")
        assert lib.find(hit.path).words["name"] == "windleaves wind leaves" and hit.name_score > 0
    in_step(index)
