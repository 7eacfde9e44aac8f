"""Clotho download/adopt/load, the DCASE 2025 evaluation files, caption CSVs and `audiofind data clotho`."""

from __future__ import annotations

import csv
import hashlib
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from clotho_fixtures import ClothoTree, make_clotho_archives, make_clotho_tree, multi_positive_subset
from http_fixtures import RangeServer, serve
from typer.testing import CliRunner

from audiofind.cli.data import data_app
from audiofind.research import data, downloads
from audiofind.research.data import (
    CaptionedClip,
    DatasetError,
    filter_excluded,
    load_captions_csv,
    load_clotho,
    load_excluded_freesound_ids,
    load_multi_positive,
)
from audiofind.research.downloads import (
    ChecksumError,
    DownloadError,
    RemoteFile,
    adopt_clotho,
    download_clotho,
)

SHARED_CLOTHO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clotho"


# ---------------------------------------------------------------- a loopback "Zenodo"

_FILES = "/records/1/files"  # where the loopback server keeps the release


@dataclass
class FakeZenodo(RangeServer):
    """The loopback server as a Zenodo record: `files` by name under _FILES; requests and cuts by name."""

    wrong: dict[str, bytes] = field(default_factory=dict)  # name -> bytes served instead of the real ones

    def key(self, path: str) -> str:
        return path.rpartition("/")[2]

    def body(self, path: str) -> bytes | None:
        folder, _, name = path.rpartition("/")
        return self.wrong.get(name, self.files.get(name)) if folder == _FILES else None

    def reset(self) -> None:
        self.wrong.clear()
        self.cut.clear()
        self.honour_range = True
        self.requests.clear()

    def asked(self, name: str) -> list[str | None]:
        return [r for n, r in self.requests if n == name]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[ClothoTree, dict[str, bytes]]:
    """A two-clips-per-split tree and the nine release files built from it."""
    base = tmp_path_factory.mktemp("release")
    tree = make_clotho_tree(base / "tree", 2, seconds=(0.5, 1.0))
    files = make_clotho_archives(tree, base / "files")
    return tree, {name: path.read_bytes() for name, path in files.items()}


@pytest.fixture(scope="module")
def _server(release: tuple[ClothoTree, dict[str, bytes]]) -> Iterator[FakeZenodo]:
    with serve(FakeZenodo(files=release[1]), prefix=_FILES) as state:
        yield state


@pytest.fixture
def zenodo(_server: FakeZenodo, monkeypatch: pytest.MonkeyPatch) -> FakeZenodo:
    """The loopback server, with the registry pointing at its files' md5 sums and sizes."""
    _server.reset()
    registry = {
        name: RemoteFile(name, f"https://example.invalid/{name}", hashlib.md5(body).hexdigest(), len(body))
        for name, body in _server.files.items()
    }
    monkeypatch.setattr(downloads, "CLOTHO_V21_FILES", registry)
    monkeypatch.setattr(downloads, "_RETRY_DELAY_S", 0.0)
    return _server


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> ClothoTree:
    """The default fixture tree (4 clips per split), shared read-only by the loading tests."""
    return make_clotho_tree(tmp_path_factory.mktemp("clotho") / "clotho")


# ---------------------------------------------------------------- registry


def test_registry_lists_the_nine_release_files_with_md5s() -> None:
    files = downloads.CLOTHO_V21_FILES
    assert set(files) == {n for s in data.SPLITS for n in data.clotho_files(s).values()}
    for f in files.values():
        assert re.fullmatch(r"[0-9a-f]{32}", f.md5)
        assert f.url.startswith("https://zenodo.org/records/4783391/files/" + f.name)
    assert files["clotho_audio_development.7z"].md5 == "c8b05bc7acdb13895bb3c6a29608667e"


def test_offline_refuses_zenodo_but_not_a_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOFIND_OFFLINE", "1")
    with pytest.raises(DownloadError, match="AUDIOFIND_OFFLINE"):
        download_clotho(tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_unknown_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown Clotho split 'train'"):
        download_clotho(tmp_path, ["train"], base_url="http://127.0.0.1:9")


# ---------------------------------------------------------------- downloading


def test_download_extract_and_skip_on_rerun(zenodo: FakeZenodo, release, tmp_path: Path) -> None:
    tree, _ = release
    root = download_clotho(tmp_path / "clotho", base_url=zenodo.url, progress=False)
    for split in data.SPLITS:
        clips = load_clotho(root, split)
        assert [c.file_name for c in clips] == tree.files(split)
        assert all(c.audio_path.is_file() and c.audio_path.parent == root / split for c in clips)
        assert (root / split / downloads.MARKER_NAME).is_file()
    assert not list(root.glob("*.7z")) and not list(root.glob("*.part"))
    assert not list(root.glob(".*.extracting"))
    zenodo.requests.clear()
    download_clotho(root, base_url=zenodo.url, progress=False)
    assert zenodo.requests == []  # everything present and verified


def test_keep_archives(zenodo: FakeZenodo, tmp_path: Path) -> None:
    root = download_clotho(tmp_path, ["validation"], zenodo.url, progress=False, keep_archives=True)
    assert (root / "clotho_audio_validation.7z").is_file()
    assert not (root / "development").exists()


def test_md5_mismatch_deletes_the_download_and_names_both_sums(zenodo: FakeZenodo, tmp_path: Path) -> None:
    name = "clotho_captions_validation.csv"
    good = zenodo.files[name]
    zenodo.wrong[name] = bytes(b ^ 1 for b in good)  # same size, other content
    with pytest.raises(ChecksumError) as info:
        download_clotho(tmp_path, ["validation"], zenodo.url, progress=False)
    message = str(info.value)
    assert name in message
    assert hashlib.md5(good).hexdigest() in message
    assert hashlib.md5(zenodo.wrong[name]).hexdigest() in message
    assert not (tmp_path / name).exists() and not (tmp_path / (name + ".part")).exists()
    zenodo.wrong.clear()
    download_clotho(tmp_path, ["validation"], zenodo.url, progress=False)  # a re-run recovers
    assert (tmp_path / name).read_bytes() == good


def test_wrong_size_is_caught_before_hashing(zenodo: FakeZenodo, tmp_path: Path) -> None:
    zenodo.wrong["clotho_metadata_evaluation.csv"] = b"file_name\n"
    with pytest.raises(ChecksumError, match=r"clotho_metadata_evaluation\.csv .* has 10 bytes, expected"):
        download_clotho(tmp_path, ["evaluation"], zenodo.url, progress=False)


def test_interrupted_download_resumes_with_a_range_request(zenodo: FakeZenodo, tmp_path: Path) -> None:
    name = "clotho_audio_development.7z"
    body = zenodo.files[name]
    half = len(body) // 2
    zenodo.cut[name] = half
    with pytest.raises(DownloadError, match="run again to resume"):
        download_clotho(tmp_path, ["development"], zenodo.url, progress=False, retries=0)
    part = tmp_path / (name + ".part")
    assert part.stat().st_size == half
    assert not (tmp_path / name).exists()

    download_clotho(tmp_path, ["development"], zenodo.url, progress=False, retries=0)
    assert zenodo.asked(name) == [None, f"bytes={half}-"]
    assert not part.exists()
    assert len(load_clotho(tmp_path, "development")) == 2


def test_broken_connection_is_retried_within_one_call(zenodo: FakeZenodo, tmp_path: Path) -> None:
    name = "clotho_audio_evaluation.7z"
    zenodo.cut[name] = 1000
    download_clotho(tmp_path, ["evaluation"], zenodo.url, progress=False, retries=2)
    assert zenodo.asked(name) == [None, "bytes=1000-"]
    assert len(load_clotho(tmp_path, "evaluation")) == 2


def test_server_ignoring_range_restarts_cleanly(zenodo: FakeZenodo, tmp_path: Path) -> None:
    name = "clotho_audio_validation.7z"
    zenodo.cut[name] = 777
    zenodo.honour_range = False
    download_clotho(tmp_path, ["validation"], zenodo.url, progress=False, retries=1)
    assert zenodo.asked(name) == [None, "bytes=777-"]  # asked for a range, got the whole file, started over
    assert len(load_clotho(tmp_path, "validation")) == 2


def test_a_whole_part_file_is_finished_without_refetching(
    zenodo: FakeZenodo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "clotho_captions_evaluation.csv"
    registry = dict(downloads.CLOTHO_V21_FILES)
    registry[name] = RemoteFile(name, registry[name].url, registry[name].md5, None)  # size unknown
    monkeypatch.setattr(downloads, "CLOTHO_V21_FILES", registry)
    (tmp_path / (name + ".part")).write_bytes(zenodo.files[name])
    downloads.fetch_file(registry[name], tmp_path, zenodo.url, progress=False)
    assert zenodo.asked(name) == [f"bytes={len(zenodo.files[name])}-"]  # answered 416
    assert (tmp_path / name).read_bytes() == zenodo.files[name]


def test_no_disk_space_fails_before_downloading(
    zenodo: FakeZenodo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloads.shutil, "disk_usage", lambda _: SimpleNamespace(total=1, used=1, free=0))
    with pytest.raises(OSError, match=r"not enough disk space .* clotho_captions_validation\.csv"):
        download_clotho(tmp_path, ["validation"], zenodo.url, progress=False)
    assert zenodo.requests == []


def test_missing_file_on_the_server_fails_at_once(zenodo: FakeZenodo, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"clotho_captions_development\.csv .*404"):
        download_clotho(tmp_path, ["development"], zenodo.url + "/nowhere", progress=False, retries=5)
    assert len(zenodo.requests) == 1


def test_a_complete_layout_needs_no_archive(zenodo: FakeZenodo, tmp_path: Path) -> None:
    # same selection as the served release (2 per split), so its CSVs match the registry's md5 sums
    own = make_clotho_tree(tmp_path / "own", 2, splits=("validation",), seconds=(0.5, 0.5))
    download_clotho(own.root, ["validation"], zenodo.url, progress=False)
    assert zenodo.requests == []
    assert '"source": "existing"' in (own.root / "validation" / downloads.MARKER_NAME).read_text()


# ---------------------------------------------------------------- loading Clotho


def test_load_clotho_joins_captions_metadata_and_audio(tree: ClothoTree) -> None:
    for split in data.SPLITS:
        clips = load_clotho(tree.root, split)
        assert [c.file_name for c in clips] == tree.files(split)
        expected = {c.file_name: c for c in tree.clips if c.split == split}
        for clip in clips:
            assert clip.split == split
            assert clip.captions == expected[clip.file_name].captions  # verbatim
            assert clip.audio_path == expected[clip.file_name].audio_path
            assert isinstance(clip.meta["sound_id"], int)
            assert isinstance(clip.meta["keywords"], list) and clip.meta["keywords"]
            assert clip.meta["license"].startswith("http")


def test_escaped_names_find_unescaped_files_and_captions_keep_whitespace(tree: ClothoTree) -> None:
    dev = load_clotho(tree.root, "development")
    escaped = next(c for c in dev if "&amp;" in c.file_name or "&#39;" in c.file_name)
    assert escaped.audio_path.name == html.unescape(escaped.file_name)  # unescaped on disk in development
    evaluation = load_clotho(tree.root, "evaluation")
    escaped = next(c for c in evaluation if "&#39;" in c.file_name)
    assert escaped.audio_path.name == escaped.file_name  # verbatim on disk elsewhere
    assert any("," in c.file_name for c in dev)
    assert any(cap != cap.strip() for c in dev for cap in c.captions)


def test_fixture_can_use_plain_names(tmp_path: Path) -> None:
    own = make_clotho_tree(tmp_path / "c", 2, splits=("evaluation",), seconds=(0.5, 0.5), real_names=False)
    clips = load_clotho(own.root, "evaluation")
    assert [c.file_name for c in clips] == ["evaluation_0.wav", "evaluation_1.wav"]
    assert all(isinstance(c.meta["sound_id"], int) and len(c.captions) == 5 for c in clips)
    assert multi_positive_subset(own) == {}


def test_missing_audio_is_an_error_naming_files_unless_allowed(tmp_path: Path) -> None:
    own = make_clotho_tree(tmp_path / "c", 3, splits=("validation",), seconds=(0.5, 0.5))
    gone = own.clips[1]
    gone.audio_path.unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 3 audio files .* missing") as info:
        load_clotho(own.root, "validation")
    assert repr(gone.file_name) in str(info.value)
    with pytest.warns(UserWarning, match="skipping"):
        clips = load_clotho(own.root, "validation", allow_missing=True)
    assert [c.file_name for c in clips] == [own.clips[0].file_name, own.clips[2].file_name]


def test_load_clotho_explains_an_absent_split(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="audiofind data clotho"):
        load_clotho(tmp_path, "evaluation")


def test_adopt_accepts_the_layout_and_reports_problems(tmp_path: Path) -> None:
    own = make_clotho_tree(tmp_path / "c", 2, seconds=(0.5, 0.5))
    assert adopt_clotho(own.root) == own.root
    assert downloads.layout_complete(own.root)
    own.clips[0].audio_path.unlink()
    with pytest.warns(UserWarning, match=r"development: 1 of 2 audio files are missing"):
        adopt_clotho(own.root)
    assert not downloads.layout_complete(own.root)
    (own.root / "clotho_captions_validation.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"validation: captions file .* is missing"):
        adopt_clotho(own.root, ["validation", "evaluation"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        adopt_clotho(tmp_path / "nowhere")


def test_the_real_clotho_csvs_parse(tmp_path: Path) -> None:
    if not SHARED_CLOTHO.is_dir():
        pytest.skip(f"{SHARED_CLOTHO} not found")
    for split in data.SPLITS:
        for kind in ("captions", "metadata"):
            name = data.clotho_files(split)[kind]
            (tmp_path / name).symlink_to(SHARED_CLOTHO / name)
        (tmp_path / split).mkdir()
    report = downloads.clotho_report(tmp_path)
    assert {s: r.clips for s, r in report.items()} == {
        "development": 3839,
        "validation": 1045,
        "evaluation": 1045,
    }
    assert all(len(r.missing) == r.clips for r in report.values())
    meta = data._clotho_meta(tmp_path / "clotho_metadata_development.csv")
    assert meta[" Ambience Birds.wav"]["sound_id"] == 327673  # a leading space is part of the name
    assert meta["SpaceAmbient.wav"]["sound_id"] is None  # 'Not found'


# ---------------------------------------------------------------- DCASE 2025 files


def test_real_multi_positive_file_loads() -> None:
    path = SHARED_CLOTHO / "dcase2025_eval_multiple_positives.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open(SHARED_CLOTHO / "clotho_captions_evaluation.csv", encoding="utf-8", newline="") as fh:
        evaluation = [row["file_name"] for row in csv.DictReader(fh)]
    relevant = load_multi_positive(path, known_files=evaluation)
    assert len(relevant) == 1037
    assert sum(len(v) for v in relevant.values()) == 3116
    assert all(1 <= len(v) <= 12 for v in relevant.values())
    assert any("&#39;" in n for v in relevant.values() for n in v)  # names spelt as in the CSVs


def test_real_exclusion_list_loads() -> None:
    path = SHARED_CLOTHO / "dcase2025_task6_excluded_freesound_ids.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    ids = load_excluded_freesound_ids(path)
    assert len(ids) == 3079
    assert 354184 in ids


def test_fixture_multi_positive_subset_matches_the_tree(tree: ClothoTree) -> None:
    subset = multi_positive_subset(tree)
    assert subset
    relevant = load_multi_positive(SHARED_CLOTHO / "dcase2025_eval_multiple_positives.csv")
    assert all(relevant[q] == names for q, names in subset.items())


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("query,files\na,\"['x.wav']\"\n", r"line 1: missing column\(s\) audio_filenames"),
        ("query,audio_filenames\na,\"['x.wav'\"\n", r"line 2, field audio_filenames: not a Python list"),
        ("query,audio_filenames\na,[]\n", r"line 2, field audio_filenames: expected a non-empty list"),
        ('query,audio_filenames\na,"[1, 2]"\n', r"line 2, field audio_filenames: expected a non-empty list"),
        (
            "query,audio_filenames\na,\"['x.wav', 'x.wav']\"\n",
            r"line 2, field audio_filenames: .* listed twice",
        ),
        (
            "query,audio_filenames\na,\"['x.wav']\"\na,\"['y.wav']\"\n",
            r"line 3, field query: 'a' repeats line 2",
        ),
        ("query,audio_filenames\n ,\"['x.wav']\"\n", r"line 2, field query: empty"),
        (
            "query,audio_filenames\na,\"['zz.wav']\"\n",
            r"line 2, field audio_filenames: not evaluation files: 'zz",
        ),
        ("query,audio_filenames\n", r"no queries"),
    ],
)
def test_malformed_multi_positive_files(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "mp.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError, match=error) as info:
        load_multi_positive(path, known_files=["x.wav", "y.wav"])
    assert str(path) in str(info.value)


def test_malformed_exclusion_list(tmp_path: Path) -> None:
    path = tmp_path / "ex.csv"
    path.write_text("sound_id\n12\n\nabc\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"ex\.csv: line 4, field sound_id: 'abc'"):
        load_excluded_freesound_ids(path)
    path.write_text(
        "12\nNot found\n13\n", encoding="utf-8"
    )  # no header is fine; Clotho's placeholder is skipped
    assert load_excluded_freesound_ids(path) == {12, 13}


def test_filter_excluded_uses_sound_id_or_freesound_link(tmp_path: Path) -> None:
    def clip(**meta: object) -> CaptionedClip:
        return CaptionedClip(tmp_path / "a.wav", "a.wav", ["a sound"], "custom", dict(meta))

    clips = [
        clip(sound_id=1),
        clip(sound_id="2"),
        clip(freesound_id=3),
        clip(sound_link="https://freesound.org/people/x/sounds/4/"),
        clip(sound_id=5),
        clip(),
        clip(sound_id="Not found"),
    ]
    kept = filter_excluded(clips, {1, 2, 3, 4})
    assert [c.meta for c in kept] == [{"sound_id": 5}, {}, {"sound_id": "Not found"}]


# ---------------------------------------------------------------- generic caption CSVs


@pytest.fixture
def sounds(tmp_path: Path, tone_file) -> Path:
    """A folder with a.wav, b.wav and sub/c.wav."""
    for name, freq in (("a.wav", 300), ("b.wav", 600)):
        tone_file(name, freq=freq, duration=0.2)
    (tmp_path / "sub").mkdir()
    tone_file("sub/c.wav", freq=900, duration=0.2)
    return tmp_path


def test_captions_csv_groups_rows_per_file(sounds: Path) -> None:
    csv_path = sounds / "captions.csv"
    csv_path.write_text(
        "audio_path,caption,sound_id\n"
        "a.wav,a low hum ,12\n"
        'b.wav,"a beep, then silence",\n'
        "a.wav,another take on a,12\n"
        f"{sounds / 'sub' / 'c.wav'},absolute path,\n",
        encoding="utf-8",
    )
    clips = load_captions_csv(csv_path)
    assert [(c.file_name, c.captions) for c in clips] == [
        ("a.wav", ["a low hum ", "another take on a"]),
        ("b.wav", ["a beep, then silence"]),
        (str(sounds / "sub" / "c.wav"), ["absolute path"]),
    ]
    assert clips[0].audio_path == sounds / "a.wav"
    assert clips[0].meta == {"sound_id": "12"} and clips[1].meta == {}
    assert [c.file_name for c in filter_excluded(clips, {12})] == ["b.wav", str(sounds / "sub" / "c.wav")]


def test_captions_csv_alternative_header_and_audio_root(sounds: Path, tmp_path_factory) -> None:
    elsewhere = tmp_path_factory.mktemp("csvs") / "list.csv"
    elsewhere.write_text("file_name,caption\nsub/c.wav,a ring\n", encoding="utf-8-sig")
    (clip,) = load_captions_csv(elsewhere, audio_root=sounds, split="train")
    assert clip.audio_path == sounds / "sub" / "c.wav" and clip.split == "train"
    elsewhere.write_text("path,caption\nsub/c.wav,a ring\n", encoding="utf-8")
    assert load_captions_csv(elsewhere, sounds)[0].captions == ["a ring"]


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"audio_path,text\na.wav,x\n", r"line 1: missing column\(s\) caption"),
        (b"name,caption\na.wav,x\n", r"line 1: missing column\(s\) audio_path \(or path / file_name\)"),
        (b"audio_path,caption\na.wav,fine\nb.wav,  \n", r"line 3, field caption: empty caption for 'b.wav'"),
        (b"audio_path,caption\n,fine\n", r"line 2, field audio_path: empty"),
        (
            b"audio_path,caption\na.wav,ok\nnope.wav,x\nnope2.wav,y\n",
            r"line 3, field audio_path: .*nope\.wav",
        ),
        (b"audio_path,caption\na.wav,caf\xe9\n", r"line 2: not valid UTF-8"),
        (b"audio_path,caption\na.wav,x,extra\n", r"line 2: 3 fields, the header has 2"),
        (b"", r"empty file"),
        (b"audio_path,caption\n", r"no usable rows"),
    ],
)
def test_malformed_captions_csv(sounds: Path, content: bytes, error: str) -> None:
    path = sounds / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=error) as info:
        load_captions_csv(path)
    assert str(path) in str(info.value)


def test_captions_csv_can_skip_missing_audio(sounds: Path) -> None:
    path = sounds / "some.csv"
    path.write_text("audio_path,caption\na.wav,ok\nnope.wav,x\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="line 3"):
        clips = load_captions_csv(path, allow_missing=True)
    assert [c.file_name for c in clips] == ["a.wav"]


# ---------------------------------------------------------------- CLI


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(data_app, name="data")
    return app


def test_cli_adopts_a_complete_copy_without_downloading(tree: ClothoTree) -> None:
    # AUDIOFIND_OFFLINE is set for tests: a download attempt would fail, so success means it adopted
    result = CliRunner().invoke(_cli(), ["data", "clotho", "--root", str(tree.root), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "(adopted)" in result.output
    assert re.search(r"development\s+4\s+4\s+0", result.output)


def test_cli_downloads_from_a_mirror(zenodo: FakeZenodo, tmp_path: Path) -> None:
    args = ["data", "clotho", "--root", str(tmp_path), "--splits", "evaluation,validation"]
    result = CliRunner().invoke(_cli(), [*args, "--base-url", zenodo.url, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "(downloaded)" in result.output
    assert re.search(r"evaluation\s+2\s+2\s+0", result.output)
    assert "development" not in result.output


def test_cli_reports_missing_audio_and_errors(tmp_path: Path) -> None:
    own = make_clotho_tree(tmp_path / "c", 2, splits=("evaluation",), seconds=(0.5, 0.5))
    own.clips[0].audio_path.unlink()
    runner = CliRunner()
    args = ["data", "clotho", "--root", str(own.root), "--splits", "evaluation", "--adopt"]
    result = runner.invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    assert re.search(r"evaluation\s+2\s+1\s+1", result.output)
    assert repr(own.clips[0].file_name) in result.output

    result = runner.invoke(_cli(), ["data", "clotho", "--root", str(tmp_path / "empty"), "--adopt"])
    assert result.exit_code == 1
    assert "does not exist" in result.output

    result = runner.invoke(_cli(), ["data", "clotho", "--root", str(tmp_path), "--splits", "train"])
    assert result.exit_code == 2
    assert "unknown Clotho split" in result.output
