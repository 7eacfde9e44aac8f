"""The API keeps its contract, and the CLI, the Python API and the server keep the same rules.

Against a real uvicorn on loopback (started with the same `server_config` as `audiofind serve`) over a small
real index of sfx-dev clips, and the real `audiofind` command in a subprocess:

- crafted requests never get a 500 (ids past 64 bits, `Range: bytes=²-`, deeply nested JSON);
- schemathesis with all checks finds nothing (bounded: a few dozen examples per operation);
- blank queries, k < 1, negative or inverted durations are refused alike by Library, CLI and server;
- names printed to a terminal are escaped; `--device`, `--version` and `--help` behave;
- pyproject's extras keep the user's torch, and PyAV is a default dependency.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomllib
from test_server import LiveServer

from audiofind.library import Library
from audiofind.library.queries import MAX_ID, QueryError, check_filters, check_k, check_query
from audiofind.server.app import create_app
from audiofind.server.streaming import parse_range

REPO = Path(__file__).resolve().parents[1]
CLIPS = [
    "wesnoth/usr/share/games/wesnoth/1.16/data/core/sounds/explosion.ogg",
    "widelands/data/sound/animals/bird1_01.ogg",
    "wesnoth/usr/share/games/wesnoth/1.16/sounds/bell.wav",
    "minetest/games/minetest_game/mods/doors/sounds/doors_door_close.ogg",
    "0ad/audio/actor/fauna/animal/horse_11.ogg",
]
# a name that would clear the screen and break the table if printed as it is
CRAFTED_NAME = "door\x1b[2J\nslam\u202e.ogg"
SCHEMATHESIS_EXAMPLES = 25  # per operation; ~20 operations, so the run stays well under a minute or two


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def small_index(tmp_path_factory: pytest.TempPathFactory, sfx_dir: Path, assets_dir: Path) -> dict[str, Path]:
    """Five real clips (one under a crafted name), indexed once for this module."""
    import torch

    from audiofind.models import load_model

    base = tmp_path_factory.mktemp("contract")
    lib_dir, index_dir = base / "lib", base / "index"
    for rel in CLIPS:
        dest = lib_dir / rel.split("/")[0] / Path(rel).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sfx_dir / rel, dest)
    crafted = lib_dir / "minetest" / CRAFTED_NAME
    os.replace(lib_dir / "minetest" / "doors_door_close.ogg", crafted)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Library.open(index_dir, model=load_model(), create=True) as lib:
            report = lib.update([lib_dir], workers=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert report.added == len(CLIPS), report.skipped
    return {"lib": lib_dir, "index": index_dir, "crafted": crafted}


@pytest.fixture(scope="module")
def server(small_index: dict[str, Path]) -> Iterator[LiveServer]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with LiveServer(create_app(small_index["index"])) as s:
            yield s
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def clip_id(client: httpx.Client) -> int:
    return client.get("/api/search", params={"q": "bell", "k": 1}).json()["results"][0]["id"]


def assert_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body["error"], str) and "detail" in body
    return body


def run_cli(*args: str, index: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real `audiofind` command (this checkout's package), in a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "100"}
    if index is not None:
        env["AUDIOFIND_INDEX"] = str(index)
    return subprocess.run([sys.executable, "-m", "audiofind.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def assert_usage_error(p: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit status 2, one line on stderr that names the problem, no traceback."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


# ---------------------------------------------------------------- 9: no 500 for crafted requests


@pytest.mark.parametrize("big", [2**63 + 1, 2**64, MAX_ID + 1, 10**30, -1, 0])
def test_ids_out_of_range_are_422_not_500(client: httpx.Client, big: int) -> None:
    for path in ("", "/audio", "/waveform", "/download", "/region.wav?start=0&end=1"):
        assert_error(client.get(f"/api/clips/{big}{path}"), 422)
    assert_error(client.delete(f"/api/collections/favourites/clips/{big}"), 422)
    assert_error(client.post("/api/similar", json={"id": big}), 422)
    assert_error(client.post("/api/collections/favourites/clips", json={"ids": [big]}), 400)


def test_pages_docs_and_hidden_routes_never_500(client: httpx.Client, clip_id: int) -> None:
    """What the OpenAPI document leaves out (the page, /docs, HEAD on audio) is held to the same rule."""
    assert client.get("/docs").status_code == 200
    assert client.get("/docs/swagger-ui.css").status_code == 200
    for path in ("/docs/..%2F..%2Fetc%2Fpasswd", "/docs/%1b[2J", "/docs/" + "x" * 5000, "/static/%00",
                 "/api/nope", "/api/clips/1%2F2"):
        r = client.get(path)
        assert 400 <= r.status_code < 500, (path, r.status_code)
    assert client.head(f"/api/clips/{clip_id}/audio").status_code == 200
    for big in (2**63 + 1, 2**64):
        assert client.head(f"/api/clips/{big}/audio").status_code == 422
    r = client.head(f"/api/clips/{clip_id}/audio", headers={"Range": b"bytes=\xb2-"})  # type: ignore[dict-item]
    assert r.status_code == 416


def test_unknown_id_in_range_is_404(client: httpx.Client) -> None:
    assert_error(client.get(f"/api/clips/{MAX_ID}/audio"), 404)
    assert_error(client.post("/api/similar", json={"id": MAX_ID}), 404)


@pytest.mark.parametrize("spec", ["bytes=²-", "bytes=0-²", "bytes=-²", "bytes=٣-", "bytes=１-", "bytes=0x1-"])
def test_non_ascii_digits_in_range_are_416(client: httpx.Client, clip_id: int, spec: str) -> None:
    for path in ("audio", "download"):
        try:  # as one byte where latin-1 has the character (servers decode headers as latin-1)
            raw = spec.encode("latin-1")
        except UnicodeEncodeError:
            raw = spec.encode()
        r = client.get(f"/api/clips/{clip_id}/{path}", headers={"Range": raw})  # type: ignore[dict-item]
        assert_error(r, 416)
    with pytest.raises(Exception) as e:
        parse_range(spec, 1000)
    assert getattr(e.value, "status", None) == 416


def test_deeply_nested_json_is_refused_not_500(client: httpx.Client) -> None:
    # json.loads raises RecursionError on this, and it fits under the 64 KB body limit
    nested = ('{"id": ' + "[" * 30_000 + "]" * 30_000 + "}").encode()
    headers = {"Content-Type": "application/json"}
    assert_error(client.post("/api/similar", content=nested, headers=headers), 422)
    assert_error(client.post("/api/collections", content=nested, headers=headers), 400)
    assert_error(client.post("/api/collections/favourites/clips", content=nested, headers=headers), 400)


def test_long_path_prefix_at_the_documented_limit_is_served(client: httpx.Client) -> None:
    """The longest documented path_prefix and query, in 4-byte characters, still fit the request line."""
    prefix = "/" + "𝄞" * 1023
    r = client.get("/api/search", params={"q": "𝄞" * 512, "path_prefix": prefix, "k": 200})
    assert r.status_code == 200, r.text[:300]
    assert r.json()["count"] == 0
    assert_error(client.get("/api/search", params={"q": "bell", "path_prefix": prefix + "x"}), 422)


def test_similar_with_neither_id_nor_file_is_documented(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/similar"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["required"] == ["id"]
    assert {"required": ["file"]} in body["multipart/form-data"]["schema"]["oneOf"]
    assert_error(client.post("/api/similar", json={"k": 3}), 400)  # refused, as the schema says


def test_every_operation_documents_its_errors(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for new in ("/api/collections", "/api/clips/{clip_id}/region.wav", "/api/clips/{clip_id}/download",
                "/api/formats", "/api/collections/{name}/export.zip"):
        assert new in paths, new
    for path, ops in paths.items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert {"401", "421", "503"} <= codes, (method, path, codes)
            if "{" in path or (method in ("post", "delete") and path != "/api/session"):
                assert "422" in codes or "400" in codes, (method, path, codes)
            if method == "post" and path != "/api/session":
                assert {"413", "415"} <= codes, (method, path, codes)
            if "{clip_id}" in path:
                assert "404" in codes, (method, path)
                param = next(p for p in op["parameters"] if p["name"] == "clip_id")["schema"]
                assert param["maximum"] == MAX_ID and param["minimum"] == 1
    assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["error"]


def test_405_names_every_method_of_the_path(client: httpx.Client) -> None:
    r = client.request("OPTIONS", "/api/collections")
    assert_error(r, 405)
    assert set(r.headers["allow"].split(", ")) == {"GET", "POST"}


# ---------------------------------------------------------------- 10: schemathesis, all checks


def test_schemathesis_finds_nothing(server: LiveServer, tmp_path: Path) -> None:
    """`st run URL/openapi.json --checks all`, bounded by examples per operation; fails on any finding."""
    try:
        import schemathesis  # noqa: F401
    except ImportError:  # a dev dependency: CI installs it, so a missing one is a failure, not a skip
        pytest.fail("schemathesis is not installed: pip install -e '.[dev]'")
    config = REPO / "tests" / "schemathesis.toml"
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run",
           f"{server.url}/openapi.json", "--checks", "all", "--max-examples", str(SCHEMATHESIS_EXAMPLES),
           "--seed", "20261201", "--workers", "1", "--request-timeout", "60", "--no-shrink",
           "--report", "junit", "--report-dir", str(tmp_path)]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(proxy, None)  # loopback only
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    summary = p.stdout[p.stdout.find("SUMMARY"):] if "SUMMARY" in p.stdout else p.stdout[-4000:]
    print(summary)  # warnings (e.g. an operation whose random uploads are mostly not audio) are no failures
    assert p.returncode == 0, p.stdout[-12000:] + p.stderr[-2000:]
    assert "Failures:" not in summary and "Errors:" not in summary, p.stdout[-12000:]
    assert " passed" in summary and "Tested: " in summary, summary


# ---------------------------------------------------------------- 12: one set of rules


def test_the_rules_themselves() -> None:
    assert check_query("  door  ") == "door"
    for bad in ("", "   ", "\t\n", "\x1c"):
        with pytest.raises(QueryError, match="empty"):
            check_query(bad)
    for bad_k in (0, -3, 1.5, True):
        with pytest.raises(QueryError, match="k"):
            check_k(bad_k)  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="larger than"):
        check_filters(5, 1)
    with pytest.raises(QueryError, match="negative"):
        check_filters(-1, None)
    with pytest.raises(QueryError, match="number"):
        check_filters(None, float("nan"))
    assert issubclass(QueryError, ValueError)


def test_library_refuses_what_the_api_refuses(small_index: dict[str, Path]) -> None:
    with Library.open(small_index["index"]) as lib:
        for call in (lambda: lib.search("   "), lambda: lib.search_many(["bell", ""]),
                     lambda: lib.search("bell", k=0),
                     lambda: lib.search("bell", min_duration=5, max_duration=1),
                     lambda: lib.search("bell", min_duration=-1), lambda: lib.similar(1, k=0),
                     lambda: lib.similar(1, min_duration=3, max_duration=2)):
            with pytest.raises(ValueError):
                call()


def test_server_refuses_the_same(client: httpx.Client, clip_id: int) -> None:
    assert_error(client.get("/api/search", params={"q": ""}), 422)
    for q in ("   ", "\t", "\x1c"):
        assert_error(client.get("/api/search", params={"q": q}), 400)
    assert_error(client.get("/api/search", params={"q": "bell", "path_prefix": "relative/dir"}), 400)
    assert client.get("/api/search", params={"q": "\x00bell\x11"}).status_code == 200  # found by schemathesis
    assert_error(client.get("/api/search", params={"q": "bell", "k": 0}), 422)
    assert_error(client.get("/api/search", params={"q": "bell", "min_duration": -1}), 422)
    inverted = {"q": "bell", "min_duration": 5, "max_duration": 1}
    body = assert_error(client.get("/api/search", params=inverted), 400)
    assert "larger than" in body["error"]
    assert_error(client.post("/api/similar", json={"id": clip_id, "min_duration": 5, "max_duration": 1}), 400)
    assert_error(client.post("/api/similar", json={"id": clip_id, "k": 0}), 422)
    assert_error(client.post("/api/similar", json={"id": clip_id, "max_duration": False}), 422)
    assert_error(client.post("/api/similar", json={"id": str(clip_id)}), 422)
    assert client.post("/api/similar", json={"id": float(clip_id), "k": 2.0}).status_code == 200


def test_cli_refuses_the_same_as_usage_errors(small_index: dict[str, Path]) -> None:
    index = small_index["index"]
    assert_usage_error(run_cli("search", "", index=index), "empty")
    assert_usage_error(run_cli("search", "   ", index=index), "empty")
    assert_usage_error(run_cli("search", "bell", "--min-duration", "5", "--max-duration", "1", index=index),
                       "--min-duration", "--max-duration")
    assert_usage_error(run_cli("search", "bell", "--min-duration", "-1", index=index), "negative")
    assert_usage_error(run_cli("similar", str(small_index["crafted"]), "--max-duration", "-2", index=index),
                       "negative")
    p = run_cli("search", "bell", "-k", "0", index=index)
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_cli_version_and_help(small_index: dict[str, Path]) -> None:
    from audiofind import __version__

    p = run_cli("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"audiofind {__version__}"
    top = run_cli("--help").stdout
    assert "--version" in top and "AUDIOFIND_ASSETS" in top and "~/.bashrc" in top
    env_free = {k: v for k, v in os.environ.items() if k != "AUDIOFIND_INDEX"}
    import platformdirs

    real_default = str(Path(platformdirs.user_data_dir("audiofind")) / "index")
    shown = real_default.replace(str(Path.home()), "~", 1)
    for cmd in ("search", "index", "serve", "similar"):
        out = subprocess.run([sys.executable, "-m", "audiofind.cli.main", cmd, "--help"], capture_output=True,
                             text=True, env={**env_free, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "80"},
                             timeout=120).stdout
        flat = " ".join(out.split())
        assert shown in flat, (cmd, out)
        assert "--json <bool>" not in out and "--json BOOLEAN" not in out, out
        assert "--device auto|cpu|cuda|mps" in out, out
        assert "…" not in out, out  # nothing cut off
    assert "[default: 10; x>=1]" in " ".join(run_cli("search", "--help").stdout.split())
    readme = (REPO / "README.md").read_text()
    assert shown in readme and "AUDIOFIND_ASSETS" in readme and "--version" in readme


def test_terminal_output_escapes_crafted_names(small_index: dict[str, Path]) -> None:
    """A name with ESC[2J, a newline and a bidi override prints as one escaped line of the table."""
    p = run_cli("search", "door", "--device", "cpu", "-k", "5", index=small_index["index"])
    assert p.returncode == 0, p.stderr
    assert "\x1b" not in p.stdout and "\u202e" not in p.stdout
    rows = [line for line in p.stdout.splitlines() if "door" in line and "slam" in line]
    assert len(rows) == 1 and "door\\x1b[2J\\nslam\\u202e.ogg" in rows[0], p.stdout
    info = run_cli("info", str(small_index["crafted"]), index=small_index["index"])
    assert info.returncode == 0 and "\x1b" not in info.stdout and "\\x1b[2J" in info.stdout, info.stdout
    as_json = run_cli("info", str(small_index["crafted"]), "--json", index=small_index["index"])
    assert json.loads(as_json.stdout)["path"].endswith(CRAFTED_NAME)  # JSON keeps the real name


# ---------------------------------------------------------------- 13: --device


def test_device_option(small_index: dict[str, Path]) -> None:
    import torch

    from audiofind.cli.options import _mps_available, resolve_device

    assert resolve_device("cpu") == "cpu"
    expected_auto = "cuda" if torch.cuda.is_available() else "mps" if _mps_available(torch) else "cpu"
    assert resolve_device("auto") == expected_auto
    with pytest.raises(ValueError, match="--device must be one of"):
        resolve_device("tpu")
    index = small_index["index"]
    if not torch.cuda.is_available():
        for cmd in (["search", "bell"], ["similar", str(small_index["crafted"])],
                    ["index", str(small_index["lib"])],
                    ["serve"], ["evaluate", "--clotho-root", "/nonexistent"],
                    ["predict", "--out", "/tmp/x.csv", "--queries", "q", "--audio-dir", "a"],
                    ["ensemble", "--out", "/tmp/x.csv", "--models", "default"]):
            p = run_cli(*cmd, "--device", "cuda", index=index)
            assert p.returncode == 2, (cmd, p.returncode, p.stderr)
            line = p.stderr.strip().splitlines()[-1]
            assert "--device cuda" in line and "no CUDA GPU" in line and "Traceback" not in p.stderr, p.stderr
    with Library.open(index, device=resolve_device("auto")) as lib:
        assert lib.search("bell", k=1)


# ---------------------------------------------------------------- 14: installs keep the user's torch


def test_extras_keep_torch_and_av_is_default() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def name(req: str) -> str:
        return req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("~")[0] \
            .split("!")[0].strip().lower()

    defaults = {name(r) for r in project["dependencies"]}
    assert "av" in defaults
    for extra, reqs in project["optional-dependencies"].items():
        names = {name(r) for r in reqs}
        assert not names & {"torch", "torchaudio", "torchvision", "hear21passt", "timm"}, (extra, names)
    assert "schemathesis" in {name(r) for r in project["optional-dependencies"]["dev"]}


def test_not_audio_gets_no_pyav_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audiofind.audio import AudioDecodeError, load_audio

    notes = tmp_path / "notes.wav"
    notes.write_bytes(b"just some text, not audio at all\n" * 10)
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were missing: the hint is for m4a/aac only
    with pytest.raises(AudioDecodeError) as e:
        load_audio(notes)
    assert "PyAV" not in str(e.value) and "pip install" not in str(e.value)
    m4a = tmp_path / "song.m4a"
    m4a.write_bytes(b"\0\0\0\x18ftypM4A " + b"\0" * 100)
    with pytest.raises(AudioDecodeError) as e:
        load_audio(m4a)
    assert "pip install av" in str(e.value)
