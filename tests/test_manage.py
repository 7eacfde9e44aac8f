"""Library management on real files: refreshing every root, removing roots and folders, pruning vanished
roots, identical files as one result, symlinked roots, and `similar` leaving out copies of its query.

Most tests use a cheap stand-in model over copies of sfx-dev clips (they are about bookkeeping, not about
sound); the grouping of sfx-dev's identical files in text search uses the real default model."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from sfx_clips import EIGHT_CLIPS, SFX, SpectrumModel, copy_clip
from typer.testing import CliRunner

from audiofind.cli.main import app
from audiofind.library import DB_NAME, FAISS_NAME, Library, LibraryError, core
from audiofind.library.vector_index import read_faiss_file

CLIPS = EIGHT_CLIPS
# groups of byte-identical files in sfx-dev (same blake2b), each stored under its own name
IDENTICAL = [
    ["0ad/audio/actor/fauna/animal/horse_death1.ogg", "0ad/audio/actor/fauna/death/death_horse_12.ogg"],
    ["0ad/audio/actor/fauna/death/death_horse_10.ogg", "0ad/audio/actor/mounted/death/death_horse_10.ogg"],
    ["widelands/data/sound/barbarians/taverns/tavern_00.ogg",
     "widelands/data/sound/empire/taverns/ration_01.ogg"],
    ["freedesktop/usr/share/sounds/freedesktop/stereo/dialog-error.oga",
     "freedesktop/usr/share/sounds/freedesktop/stereo/dialog-warning.oga",
     "freedesktop/usr/share/sounds/freedesktop/stereo/window-attention.oga",
     "freedesktop/usr/share/sounds/freedesktop/stereo/window-question.oga"],
    ["freedesktop/usr/share/sounds/freedesktop/stereo/camera-shutter.oga",
     "freedesktop/usr/share/sounds/freedesktop/stereo/screen-capture.oga"],
]

pytestmark = pytest.mark.skipif(not SFX.is_dir(), reason=f"needs the shared sound effects in {SFX}")


@pytest.fixture
def fake(monkeypatch) -> SpectrumModel:
    """The stand-in model, also for the CLI (which loads the index's model by name)."""
    model = SpectrumModel()
    monkeypatch.setattr(core, "fill_name_vectors", lambda *a, **k: 0)  # no sentence encoder for names
    monkeypatch.setattr(core, "_load_model", lambda name, *_: model)
    return model


def paths(lib: Library) -> set[str]:
    with sqlite3.connect(lib.index_dir / DB_NAME) as conn:
        return {os.fsdecode(bytes(p)) for (p,) in conn.execute("SELECT path_bytes FROM files")}


def everything(lib: Library, **filters) -> list:
    """Every clip a vector search can return (k larger than the library)."""
    return lib.search_vector(np.ones(8, np.float32) / np.sqrt(8), k=100, **filters)


def cli(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        result.exception
    return result


# ---------------------------------------------------------------- (a) refresh every known root


def test_index_with_no_paths_refreshes_every_known_root(tmp_path, fake):
    a, b = tmp_path / "a", tmp_path / "b"
    copy_clip(CLIPS[0], a), copy_clip(CLIPS[1], a), copy_clip(CLIPS[2], b)
    index = tmp_path / "index"
    with Library.open(index, fake, create=True) as lib:
        lib.update([a], workers=0, progress=False)
        lib.update([b], workers=0, progress=False)
        assert lib.roots() == [str(a), str(b)]
        (a / Path(CLIPS[0]).name).unlink()
        copy_clip(CLIPS[3], b)
        report = lib.update(workers=0, progress=False)  # no roots: all of them
        assert (report.added, report.removed, report.missing_roots) == (1, 1, [])
        assert {Path(p).name for p in paths(lib)} == {Path(r).name for r in CLIPS[1:4]}
    copy_clip(CLIPS[4], a)
    out = cli("index", "--index", index, "--json", "-q")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["added"] == 1 and json.loads(out.stdout)["index"]["clips"] == 4


def test_index_with_no_paths_needs_known_roots(tmp_path, fake):
    nowhere = tmp_path / "no-index"
    out = cli("index", "--index", nowhere)
    assert out.exit_code == 1 and "no audiofind index" in out.stderr and not nowhere.exists()
    Library.open(tmp_path / "empty", fake, create=True).close()
    out = cli("index", "--index", tmp_path / "empty")
    assert out.exit_code == 1 and out.stderr.strip().endswith("give one, e.g. audiofind index PATH")
    assert len(out.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- (b) remove roots, folders, files


def test_remove_a_root_drops_its_clips_vectors_and_root(tmp_path, fake):
    a, b = tmp_path / "a", tmp_path / "b"
    for rel in CLIPS[:3]:
        copy_clip(rel, a)
    for rel in CLIPS[3:6]:
        copy_clip(rel, b)
    with Library.open(tmp_path / "index", fake, create=True) as lib:
        lib.update([a, b], workers=0, progress=False)
        assert len(everything(lib)) == 6
        generation = lib.generation
        report = lib.remove([b])
        assert (report.clips, report.roots, report.excluded) == (3, [str(b)], [])
        assert lib.roots() == [str(a)] and lib.generation > generation
        assert {Path(r.path).parent for r in everything(lib)} == {a}
        header, faiss_index = read_faiss_file(lib.index_dir / FAISS_NAME)
        assert header["generation"] == lib.generation and faiss_index.ntotal == 3
        assert lib.update(workers=0, progress=False).added == 0  # b is not refreshed any more
    with Library.open(tmp_path / "index") as reader:  # another process sees the same
        assert len(everything(reader)) == 3


def test_remove_a_folder_inside_a_root_keeps_it_out_of_refreshes(tmp_path, fake):
    root = tmp_path / "sounds"
    for rel in CLIPS[:2]:
        copy_clip(rel, root / "keep")
    for rel in CLIPS[2:5]:
        copy_clip(rel, root / "drop")
    single = copy_clip(CLIPS[5], root)
    with Library.open(tmp_path / "index", fake, create=True) as lib:
        lib.update([root], workers=0, progress=False)
        report = lib.remove([root / "drop", single])
        assert (report.clips, report.roots) == (4, [])
        assert report.excluded == [str(root / "drop"), str(single)] == lib.exclusions()
        assert lib.roots() == [str(root)]
        again = lib.update(workers=0, progress=False)
        assert (again.added, again.unchanged, len(lib)) == (0, 2, 2)
        assert lib.update([root], workers=0, progress=False).added == 0  # the root by name: still out
        back = lib.update([root / "drop"], workers=0, progress=False)  # the folder by name: back in
        assert back.added == 3 and lib.exclusions() == [str(single)]
        assert lib.update(workers=0, progress=False).removed == 0 and len(lib) == 5


def test_remove_refuses_unknown_paths_and_changes_nothing(tmp_path, fake):
    root = tmp_path / "sounds"
    copy_clip(CLIPS[0], root), copy_clip(CLIPS[1], root / "sub")
    index = tmp_path / "index"
    with Library.open(index, fake, create=True) as lib:
        lib.update([root], workers=0, progress=False)
        generation = lib.generation
        with pytest.raises(LibraryError, match="elsewhere is not in the index"):
            lib.remove([root / "sub", tmp_path / "elsewhere"])
        with pytest.raises(LibraryError, match="typo is not in the index"):
            lib.remove([root / "typo"])  # inside a root, but neither indexed nor on disk
        assert len(lib) == 2 and lib.generation == generation and lib.exclusions() == []
    out = cli("remove", "--index", index, tmp_path / "elsewhere")
    assert out.exit_code == 1 and "not in the index" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert cli("remove", "--index", index).exit_code == 2
    out = cli("remove", "--index", index, root / "sub")
    assert out.exit_code == 0 and out.stdout.splitlines() == [f"kept out of refreshes: {root / 'sub'}",
                                                              "removed 1 clips; 1 left"]
    out = cli("remove", "--index", index, root, "--json")
    assert json.loads(out.stdout) == {"removed": 1, "clips_left": 0, "roots": [str(root)], "excluded": []}


# ---------------------------------------------------------------- (c) roots that are gone


def test_a_root_that_is_gone_is_reported_then_pruned(tmp_path, fake):
    a, b = tmp_path / "a", tmp_path / "b"
    copy_clip(CLIPS[0], a), copy_clip(CLIPS[1], b), copy_clip(CLIPS[2], b)
    index = tmp_path / "index"
    with Library.open(index, fake, create=True) as lib:
        lib.update([a, b], workers=0, progress=False)
    b.rename(tmp_path / "b-renamed")
    out = cli("index", "--index", index, "-q")
    assert out.exit_code == 0, out.output
    assert [line for line in out.stderr.splitlines() if line.startswith("gone")] == [
        f"gone: {b} no longer exists; its clips are kept until: audiofind index --prune"]
    with Library.open(index) as lib:
        assert len(lib) == 3 and lib.update(workers=0, progress=False).missing_roots == [str(b)]
    out = cli("index", "--index", index, "--prune", "--json", "-q")
    assert out.exit_code == 0, out.output
    body = json.loads(out.stdout)
    assert body["pruned"] == {"clips": 2, "roots": [str(b)], "excluded": []} and body["missing_roots"] == []
    with Library.open(index) as lib:
        assert lib.roots() == [str(a)] and [Path(r.path).parent for r in everything(lib)] == [a]


def test_remove_missing_prunes_too(tmp_path, fake):
    a = tmp_path / "a"
    copy_clip(CLIPS[0], a)
    index = tmp_path / "index"
    with Library.open(index, fake, create=True) as lib:
        lib.update([a], workers=0, progress=False)
    shutil.rmtree(a)
    out = cli("remove", "--index", index, "--missing")
    assert out.exit_code == 0
    assert out.stdout.splitlines() == [f"no longer indexed: {a}", "removed 1 clips; 0 left"]


# ---------------------------------------------------------------- (e)(f) symlinked roots


def test_a_root_given_through_a_symlink_is_stored_once_and_filters_both_ways(tmp_path, fake):
    real = tmp_path / "library" / "sounds"
    for rel in CLIPS[:3]:
        copy_clip(rel, real / "farm")
    copy_clip(CLIPS[3], real / "weather")
    alias = tmp_path / "alias"
    alias.symlink_to(tmp_path / "library", target_is_directory=True)
    with Library.open(tmp_path / "index", fake, create=True) as lib:
        first = lib.update([alias / "sounds"], workers=0, progress=False)
        assert first.added == 4 and lib.roots() == [str(real)]
        assert all(p.startswith(str(real) + os.sep) for p in paths(lib))
        again = lib.update([real], workers=0, progress=False)  # the same folder by its real path
        assert (again.added, again.removed, again.unchanged, len(lib)) == (0, 0, 4, 4)
        assert lib.roots() == [str(real)]
        for prefix in (alias / "sounds" / "farm", real / "farm", f"{alias}/sounds/farm/"):
            assert len(everything(lib, path_prefix=prefix)) == 3, prefix
        assert len(everything(lib, path_prefix=alias / "sounds" / "wea")) == 1  # a prefix, not a folder
        assert lib.find(alias / "sounds" / "weather" / Path(CLIPS[3]).name) is not None
        assert lib.remove([alias / "sounds" / "weather"]).clips == 1  # removable by the given path too


def test_a_link_from_one_root_into_another_is_not_walked_twice(tmp_path, fake):
    a, b = tmp_path / "a", tmp_path / "b"
    copy_clip(CLIPS[0], a), copy_clip(CLIPS[1], b), copy_clip(CLIPS[2], b / "sub")
    (a / "to-b").symlink_to(b, target_is_directory=True)
    (a / "to-b-sub").symlink_to(b / "sub", target_is_directory=True)
    with Library.open(tmp_path / "index", fake, create=True) as lib:
        report = lib.update([a, b], workers=0, progress=False)
        assert report.added == 3 and all(not p.startswith(str(a / "to-b")) for p in paths(lib)), paths(lib)
        why = {Path(p).name: r for p, r in report.skipped}
        assert set(why) == {"to-b", "to-b-sub"}
        assert why["to-b"] == f"symlinked folder not followed: it leads to {b}, already indexed"
        refreshed = lib.update(workers=0, progress=False)
        assert (refreshed.added, refreshed.removed, refreshed.unchanged) == (0, 0, 3)


# ---------------------------------------------------------------- (d)(g) identical files


@pytest.fixture
def copies(tmp_path, fake) -> tuple[Library, Path, list[Path]]:
    """Three distinct clips, one of them stored under three names in two folders."""
    root = tmp_path / "sounds"
    distinct = [copy_clip(rel, root / "a") for rel in CLIPS[:3]]
    dupes = [copy_clip(CLIPS[0], root / "a", "sheep_copy.ogg"),
             copy_clip(CLIPS[0], root / "b", "sheep_again.ogg")]
    lib = Library.open(tmp_path / "index", fake, create=True)
    report = lib.update([root], workers=0, progress=False)
    assert report.added == 5
    yield lib, root, [*distinct, *dupes]
    lib.close()


def test_identical_files_are_one_result_with_several_paths(copies):
    lib, root, files = copies
    sheep, *_, copy_a, copy_b = files
    results = everything(lib)
    assert len(results) == 3 == len({lib.clip(r.id).content_hash for r in results})
    [grouped] = [r for r in results if r.duplicates]
    assert sorted(grouped.paths) == sorted(map(str, (sheep, copy_a, copy_b)))
    assert grouped.path == grouped.paths[0]
    assert grouped.to_dict()["duplicates"] == 2 and grouped.to_dict()["paths"] == grouped.paths
    assert len(lib.search_vector(lib.clip(grouped.id).vector, k=2)) == 2  # k results: k distinct contents
    [in_b] = everything(lib, path_prefix=root / "b")  # a filter picks the copy it allows
    assert in_b.path == str(copy_b) and sorted(in_b.duplicates) == sorted(map(str, (sheep, copy_a)))


def test_similar_leaves_out_the_file_and_its_identical_copies(copies, tmp_path):
    lib, root, files = copies
    sheep, bird, chicken, copy_a, copy_b = files
    for query in (sheep, copy_b, lib.find(copy_a).id):
        found = lib.similar(query, k=10)
        assert {r.path for r in found} == {str(bird), str(chicken)}, query
    outside = copy_clip(CLIPS[0], tmp_path / "outside")  # not indexed: known by its bytes
    embedded = lib.model.embedded
    assert {r.path for r in lib.similar(outside, k=10)} == {str(bird), str(chicken)}
    assert lib.model.embedded == embedded  # the stored vector of those bytes served, no model run
    out = cli("similar", "--index", lib.index_dir, copy_a, "--json")
    assert out.exit_code == 0, out.output
    assert {h["path"] for h in json.loads(out.stdout)} == {str(bird), str(chicken)}


# ---------------------------------------------------------------- (d) with the real model: sfx-dev's copies


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """sfx-dev's identical files under their own names and folders, plus a few other clips, real model."""
    from test_server import shared_model

    base = tmp_path_factory.mktemp("identical")
    for rel in [*(r for group in IDENTICAL for r in group), *CLIPS[:4]]:
        copy_clip(rel, base / "sounds" / Path(rel).parent)
    lib = Library.open(base / "index", shared_model(), create=True)
    report = lib.update([base / "sounds"], workers=0, progress=False)
    assert report.added == sum(map(len, IDENTICAL)) + 4, report.to_dict()
    yield lib, base / "sounds"
    lib.close()


def test_sfx_dev_copies_are_grouped_in_every_search_mode(real):
    lib, sounds = real
    contents = len(IDENTICAL) + 4
    for mode in ("hybrid", "audio", "text"):
        for query in ("a horse dies", "tavern", "error beep"):
            found = lib.search(query, k=contents, mode=mode)
            hashes = [lib.clip(r.id).content_hash for r in found]
            assert len(hashes) == len(set(hashes)), (mode, query)
            for r in found:
                group = next((g for g in IDENTICAL if Path(r.path).name in {Path(p).name for p in g}), [r])
                assert len(r.paths) == len(group), (mode, query, r.paths)
    everything_found = lib.search("a horse dies", k=contents, mode="audio")
    assert len(everything_found) == contents
    assert sum(len(r.paths) for r in everything_found) == len(paths(lib))
    [warning] = [r for r in lib.search("error beep", k=contents, mode="text") if "dialog" in r.path
                 or "window" in r.path]
    assert {Path(p).name for p in warning.paths} == {Path(p).name for p in IDENTICAL[3]}


def test_copies_reach_the_cli_and_the_api(real, monkeypatch):
    import httpx
    from test_server import LiveServer

    from audiofind.server.app import create_app

    lib, sounds = real
    monkeypatch.setattr(core, "_load_model", lambda name, *_: lib.model)
    out = cli("search", "tavern", "--index", lib.index_dir, "--mode", "text", "--json")
    hits = json.loads(out.stdout)
    tavern = next(h for h in hits if h["duplicates"])
    assert sorted(Path(p).name for p in tavern["paths"]) == ["ration_01.ogg", "tavern_00.ogg"]
    table = cli("search", "tavern", "--index", lib.index_dir, "--mode", "text")
    assert "(+1 identical copy)" in table.stdout
    with LiveServer(create_app(lib.index_dir, model=lib.model)) as live:
        body = httpx.get(f"{live.url}/api/search", params={"q": "tavern", "mode": "text"}, timeout=60).json()
    tavern = next(h for h in body["results"] if h["duplicates"])
    assert tavern["duplicates"] == 1 and tavern["path"] == tavern["paths"][0] and len(tavern["paths"]) == 2


def test_remove_and_prune_take_the_write_lock(tmp_path, fake):
    from audiofind.library.activity import UpdateActivity
    from audiofind.library.records import IndexBusyError

    a = tmp_path / "a"
    copy_clip(CLIPS[0], a)
    with Library.open(tmp_path / "index", fake, create=True) as lib:
        lib.update([a], workers=0, progress=False)
        with UpdateActivity(lib.index_dir):  # another writer's run in progress
            with pytest.raises(IndexBusyError):
                lib.remove([a], wait=False)
            with pytest.raises(IndexBusyError):
                lib.prune_missing(wait=False)
            assert len(lib) == 1 and lib.roots() == [str(a)]
        assert lib.remove([a], wait=False).clips == 1 and len(lib) == 0
