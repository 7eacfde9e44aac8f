"""The HTTP API against a real uvicorn server on loopback, over a small index of real sound effects."""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("AUDIOFIND_ASSETS", str(Path(__file__).resolve().parents[2] / "shared" / "assets"))

from audiofind.library import DB_NAME, FAISS_NAME, Library  # noqa: E402
from audiofind.server.app import Limits, create_app, server_config  # noqa: E402
from audiofind.server.security import check_bind, is_loopback  # noqa: E402
from audiofind.server.streaming import parse_range  # noqa: E402

# 20 short, clearly labelled clips from sfx-dev (relative to it), copied to <lib>/<source>/<name>.
CLIPS = [
    "wesnoth/usr/share/games/wesnoth/1.16/data/core/sounds/explosion.ogg",
    "hedgewars/usr/share/games/hedgewars/Data/Sounds/explosion.ogg",
    "widelands/data/sound/animals/bird1_01.ogg",
    "widelands/data/sound/animals/bird1_00.ogg",
    "hedgewars/usr/share/games/hedgewars/Data/Sounds/splash.ogg",
    "minetest/games/minetest_game/mods/default/sounds/default_water_footstep.1.ogg",
    "0ad/audio/actor/human/movement/Footsteps/Foorstep_Sand_Walking.ogg",
    "wesnoth/usr/share/games/wesnoth/1.16/sounds/bell.wav",
    "minetest/games/minetest_game/mods/doors/sounds/doors_door_close.ogg",
    "minetest/games/minetest_game/mods/doors/sounds/doors_door_open.ogg",
    "0ad/audio/attack/weapon/sword_attack_01.ogg",
    "0ad/audio/attack/weapon/sword_attack_02.ogg",
    "0ad/audio/actor/fauna/animal/horse_11.ogg",
    "0ad/audio/actor/fauna/animal/cattle_01.ogg",
    "minetest/games/minetest_game/mods/default/sounds/default_break_glass.1.ogg",
    "0ad/audio/ambient/weather/windgust_11.ogg",
    "wesnoth/usr/share/games/wesnoth/1.16/data/core/sounds/gunshot.wav",
    "0ad/audio/actor/fauna/animal/chicken_10.ogg",
    "wesnoth/usr/share/games/wesnoth/1.16/data/core/sounds/wolf-die-1.ogg",
    "0ad/audio/actor/fauna/animal/sheep_10.ogg",
]
UPLOAD_LIMIT = 1024 * 1024  # the test servers take 1 MB uploads, so the 413 test sends little
TOKEN = "test-token-0123456789"
CORS_ORIGIN = "http://app.example"


# ---------------------------------------------------------------- helpers shared with test_web.py


@functools.cache
def shared_model() -> Any:
    """One model per test process: the index builder and every server share it (loading is slow)."""
    from audiofind.models import load_model

    return load_model()


@contextlib.contextmanager
def serve_threads() -> Iterator[None]:
    """Torch on one intra-op thread, as `audiofind serve` runs it (and many times faster on a busy CPU)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_library(tmp_path_factory: pytest.TempPathFactory, sfx_dir: Path) -> tuple[Path, Path]:
    """(audio folder, index folder) built once per pytest session, read-only for its users."""
    base = tmp_path_factory.getbasetemp() / "audiofind-server-library"
    lib_dir, index_dir = base / "lib", base / "index"
    if (base / "ready").exists():
        return lib_dir, index_dir
    shutil.rmtree(base, ignore_errors=True)
    for rel in CLIPS:
        dest = lib_dir / rel.split("/")[0] / Path(rel).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sfx_dir / rel, dest)
    with Library.open(index_dir, model=shared_model(), create=True) as lib:
        report = lib.update([lib_dir], workers=0, progress=False)
    assert report.added == len(CLIPS), report.skipped
    (base / "ready").touch()
    return lib_dir, index_dir


def copy_index(index_dir: Path, dest: Path) -> Path:
    """A private copy of an index (same audio paths) that a test may modify."""
    dest.mkdir(parents=True)
    for name in (DB_NAME, FAISS_NAME):
        if (index_dir / name).exists():
            shutil.copyfile(index_dir / name, dest / name)
    return dest


class LiveServer:
    """`audiofind serve`'s uvicorn configuration serving `app` from a thread, on a loopback socket this
    test owns (bound to port 0 before the server starts); a context manager."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(server_config(app, "127.0.0.1", self.port))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 180
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def raw_get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET `path` byte for byte (httpx would normalise '..' segments away before sending)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        headers = {"Host": f"{host}:{port}", **(headers or {})}
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def assert_json_error(r: httpx.Response, status: int) -> dict[str, Any]:
    """The response has `status` and the API's error shape."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert "detail" in body
    return body


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _serve_threads() -> Iterator[None]:
    with serve_threads():
        yield


@pytest.fixture(scope="module")
def library_files(
    tmp_path_factory: pytest.TempPathFactory, sfx_dir: Path, assets_dir: Path
) -> tuple[Path, Path]:
    return build_library(tmp_path_factory, sfx_dir)


@pytest.fixture(scope="module")
def lib_dir(library_files: tuple[Path, Path]) -> Path:
    return library_files[0]


@pytest.fixture(scope="module")
def extra(tmp_path_factory: pytest.TempPathFactory, lib_dir: Path) -> dict[str, Path]:
    """A second indexed root with: a symlink escaping the roots, one staying inside, a file deleted later."""
    base = tmp_path_factory.mktemp("extra")
    root, outside = base / "extra", base / "outside"
    root.mkdir()
    outside.mkdir()
    secret = outside / "secret.ogg"
    shutil.copyfile(lib_dir / "0ad" / "sheep_10.ogg", secret)
    (root / "escape.ogg").symlink_to(secret)
    (root / "inside.ogg").symlink_to(lib_dir / "0ad" / "horse_11.ogg")
    shutil.copyfile(lib_dir / "0ad" / "chicken_10.ogg", root / "gone.ogg")
    return {"root": root, "outside": outside, "secret": secret}


@pytest.fixture(scope="module")
def index_dir(
    library_files: tuple[Path, Path], extra: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """This module's own copy of the index, plus the `extra` root; gone.ogg is deleted after indexing."""
    index = copy_index(library_files[1], tmp_path_factory.mktemp("server") / "index")
    with Library.open(index, model=shared_model()) as lib:
        report = lib.update([extra["root"]], workers=0, progress=False)
    assert report.added == 3, report.to_dict()
    (extra["root"] / "gone.ogg").unlink()
    return index


@pytest.fixture(scope="module")
def server(index_dir: Path) -> Iterator[LiveServer]:
    app = create_app(index_dir, model=shared_model(), limits=Limits(max_upload_bytes=UPLOAD_LIMIT))
    with LiveServer(app) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def token_server(index_dir: Path) -> Iterator[LiveServer]:
    app = create_app(index_dir, model=shared_model(), token=TOKEN, cors_origins=(CORS_ORIGIN,))
    with LiveServer(app) as live:
        yield live


def ids_by_name(client: httpx.Client, folder: Path) -> dict[str, int]:
    """Every clip under `folder`, by file name (a search restricted to the folder lists them)."""
    r = client.get("/api/search", params={"q": "sound", "k": 200, "path_prefix": f"{folder}/"})
    assert r.status_code == 200, r.text
    return {hit["name"]: hit["id"] for hit in r.json()["results"]}


# ---------------------------------------------------------------- status, schema, page


def test_status_reports_the_index(client: httpx.Client) -> None:
    body = client.get("/api/status").json()
    assert body["clips"] == len(CLIPS) + 3
    assert body["audio_hours"] > 0.005
    assert body["model_id"].startswith("zeroshot-")
    assert body["built_at"] and body["build_seconds"] > 0
    assert body["limits"]["max_k"] == 200 and body["auth"] is False


def test_openapi_schema_is_served_and_docs_need_no_cdn(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    for path in (
        "/api/search",
        "/api/similar",
        "/api/clips/{clip_id}",
        "/api/clips/{clip_id}/audio",
        "/api/clips/{clip_id}/waveform",
        "/api/status",
    ):
        assert path in schema["paths"], path
    assert "multipart/form-data" in schema["paths"]["/api/similar"]["post"]["requestBody"]["content"]
    docs = client.get("/docs")  # Swagger UI from this server, never a CDN (test_workbench_api checks more)
    assert docs.status_code == 200 and "https://" not in docs.text
    assert_json_error(client.get("/redoc"), 404)


def test_page_and_static_files(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="q"' in page.text and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http://www.w3.org/2000/svg", "")  # nothing from elsewhere
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert client.get("/static/style.css").status_code == 200
    assert_json_error(client.get("/static/server.py"), 404)


# ---------------------------------------------------------------- search


def test_search_ranks_relevant_clips_first(client: httpx.Client) -> None:
    for query, word in [
        ("an explosion", "explosion"),
        ("glass breaking", "glass"),
        ("birds chirping", "bird"),
    ]:
        r = client.get("/api/search", params={"q": query, "k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        hits = body["results"]
        assert body["count"] == len(hits) == 5
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert any(word in h["name"] for h in hits[:3]), (query, [h["name"] for h in hits])
        first = hits[0]
        assert set(first) >= {"id", "path", "name", "folder", "score", "duration", "tags", "audio_url"}
        assert first["audio_url"] == f"/api/clips/{first['id']}/audio"
        assert first["tags"] and {"label", "prob"} <= set(first["tags"][0])


def test_search_modes_match_strength_and_why(client: httpx.Client) -> None:
    bodies = {mode: client.get("/api/search", params={"q": "glass breaking", "k": 5, "mode": mode}).json()
              for mode in ("hybrid", "audio", "text")}
    assert {b["mode"] for b in bodies.values()} == {"hybrid", "audio", "text"}
    first = bodies["hybrid"]["results"][0]
    assert "glass" in first["name"] and "glass" in first["why"]["words"] and first["why"]["tags"]
    assert 0 < first["match"] <= 1 and not bodies["hybrid"]["no_good_match"]
    assert all(r["why"]["words"] == [] and "text_score" not in r for r in bodies["audio"]["results"])
    assert all(r["why"]["words"] or r["name_score"] > 0.3 for r in bodies["text"]["results"])
    record = client.get(f"/api/clips/{first['id']}").json()
    assert "glass" in record["words"]["name"]  # what the file says about itself
    strict = client.get("/api/search", params={"q": "glass breaking", "min_score": 0.999}).json()
    assert strict["results"] == [] and strict["count"] == 0
    weak = client.get("/api/search", params={"q": "an electric guitar solo", "k": 3}).json()
    assert weak["no_good_match"] and len(weak["results"]) == 3  # the closest sounds, flagged as weak
    assert client.get("/api/search", params={"q": "glass", "mode": "loud"}).status_code in (400, 422)


def test_search_filters(client: httpx.Client, lib_dir: Path) -> None:
    r = client.get("/api/search", params={"q": "animal", "k": 50, "min_duration": 1.0, "max_duration": 2.2})
    hits = r.json()["results"]
    assert hits and all(1.0 <= h["duration"] <= 2.2 for h in hits)
    r = client.get("/api/search", params={"q": "animal", "k": 50, "path_prefix": f"{lib_dir / '0ad'}/"})
    hits = r.json()["results"]
    assert len(hits) == sum(c.startswith("0ad/") for c in CLIPS)
    assert all(h["folder"] == str(lib_dir / "0ad") for h in hits)
    assert client.get("/api/search", params={"q": "x", "k": 3}).json()["count"] == 3
    assert_json_error(client.get("/api/search", params={"q": "x", "min_duration": 3, "max_duration": 1}), 400)
    assert_json_error(client.get("/api/search", params={"q": "x", "path_prefix": "relative/dir"}), 400)


@pytest.mark.parametrize(
    "params",
    [
        {"k": 5},
        {"q": "a" * 513},
        {"q": ""},
        {"q": "x", "k": 0},
        {"q": "x", "k": 201},
        {"q": "x", "k": "ten"},
        {"q": "x", "min_duration": "long"},
        {"q": "x", "min_duration": -1},
    ],
)
def test_search_rejects_bad_parameters_as_json(client: httpx.Client, params: dict[str, Any]) -> None:
    body = assert_json_error(client.get("/api/search", params=params), 422)
    assert isinstance(body["detail"], list) and body["detail"][0]["loc"][0] == "query"


def test_search_limits(client: httpx.Client) -> None:
    assert client.get("/api/search", params={"q": "a" * 512, "k": 200}).status_code == 200
    assert_json_error(client.get("/api/search", params={"q": "   "}), 400)


def test_unknown_routes_and_methods_are_json(client: httpx.Client) -> None:
    assert_json_error(client.get("/api/nope"), 404)
    assert_json_error(client.get("/api/clips/1/nope"), 404)
    assert_json_error(client.post("/api/search"), 405)
    assert_json_error(client.get("/nope"), 404)


# ---------------------------------------------------------------- clips and audio


def test_clip_record(client: httpx.Client, lib_dir: Path) -> None:
    hit = client.get("/api/search", params={"q": "a bell ringing", "k": 1}).json()["results"][0]
    rec = client.get(f"/api/clips/{hit['id']}").json()
    assert rec["id"] == hit["id"] and rec["path"] == hit["path"]
    assert Path(rec["path"]).is_relative_to(lib_dir)
    assert rec["duration"] > 0 and rec["sample_rate"] > 0 and rec["tags"] and "vector" not in rec
    assert rec["size"] == Path(rec["path"]).stat().st_size
    assert_json_error(client.get("/api/clips/999999"), 404)
    assert_json_error(client.get("/api/clips/abc"), 422)


def _some_clip(client: httpx.Client, lib_dir: Path, name: str) -> tuple[int, bytes]:
    ids = ids_by_name(client, lib_dir / name.split("/")[0])
    path = lib_dir / name
    return ids[path.name], path.read_bytes()


def test_audio_whole_file(client: httpx.Client, lib_dir: Path) -> None:
    for name, ctype in [("wesnoth/bell.wav", "audio/wav"), ("0ad/horse_11.ogg", "audio/ogg")]:
        clip_id, data = _some_clip(client, lib_dir, name)
        r = client.get(f"/api/clips/{clip_id}/audio")
        assert r.status_code == 200
        assert r.content == data
        assert r.headers["content-type"] == ctype
        assert r.headers["accept-ranges"] == "bytes"
        assert int(r.headers["content-length"]) == len(data)
        head = client.head(f"/api/clips/{clip_id}/audio")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == len(data)


def test_audio_range_requests(client: httpx.Client, lib_dir: Path) -> None:
    clip_id, data = _some_clip(client, lib_dir, "wesnoth/bell.wav")
    size = len(data)
    url = f"/api/clips/{clip_id}/audio"

    def get(spec: str, **headers: str) -> httpx.Response:
        return client.get(url, headers={"Range": spec, **headers})

    r = get("bytes=0-99")
    assert r.status_code == 206 and r.content == data[:100]
    assert r.headers["content-range"] == f"bytes 0-99/{size}" and r.headers["content-length"] == "100"
    r = get("bytes=-100")
    assert r.status_code == 206 and r.content == data[-100:]
    assert r.headers["content-range"] == f"bytes {size - 100}-{size - 1}/{size}"
    r = get("bytes=1000-")
    assert r.status_code == 206 and r.content == data[1000:]
    r = get(f"bytes={size - 10}-{size + 5000}")  # an end past the file is cut to it
    assert r.status_code == 206 and r.content == data[-10:]
    r = get("bytes=7-7")
    assert r.status_code == 206 and r.content == data[7:8]
    r = get(f"bytes=-{size + 100}")
    assert r.status_code == 206 and r.content == data
    r = get("bytes=0-9,20-29")  # several ranges: the whole file (allowed by RFC 9110)
    assert r.status_code == 200 and r.content == data
    r = get("bytes=0-99", **{"If-Range": '"stale-etag"'})  # the file changed since: whole file
    assert r.status_code == 200 and r.content == data
    etag = client.head(url).headers["etag"]
    assert get("bytes=0-99", **{"If-Range": etag}).status_code == 206
    for bad in [
        "bytes=abc",
        "bytes=10-5",
        f"bytes={size}-",
        "bytes=-0",
        "bytes=-",
        "bytes=1-2-3",
        "bytes=x-10",
    ]:
        r = get(bad)
        assert_json_error(r, 416)
        assert r.headers["content-range"] == f"bytes */{size}", bad


def test_parse_range_unit() -> None:
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("BYTES = 2-", 10) == (2, 9)
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=-3", 10) == (7, 9)
    with pytest.raises(Exception, match="range"):
        parse_range("bytes=0-0", 0)


@pytest.mark.parametrize(
    "path",
    [
        "/api/clips/../../etc/passwd",
        "/api/clips/../../../../../../etc/passwd/audio",
        "/api/clips/%2e%2e%2f%2e%2e%2fetc%2fpasswd/audio",
        "/api/clips/%2e%2e/%2e%2e/etc/passwd",
        "/api/clips/..%2f..%2f..%2fetc%2fpasswd/audio",
        "/api/clips//etc/passwd/audio",
        "/api/clips/%2Fetc%2Fpasswd/audio",
        "/api/clips/1/audio/../../../../etc/passwd",
        "/api/clips/1.5/audio",
        "/api/clips/-1/audio",
        "/api/clips/0x1/audio",
        "/api/clips/1%00/audio",
        "/static/../server.py",
        "/static/..%2f..%2fserver.py",
        "/static/%2e%2e%2fserver.py",
        "/..%2f..%2f..%2fetc%2fpasswd",
    ],
)
def test_path_traversal_is_refused(server: LiveServer, path: str) -> None:
    status, headers, body = raw_get(server.url, path)
    assert status in (400, 403, 404, 422), (path, status)
    assert headers["content-type"].startswith("application/json")
    assert b"root:" not in body and b"def create_app" not in body


def test_symlink_outside_the_indexed_folders_is_refused(
    client: httpx.Client, extra: dict[str, Path], lib_dir: Path
) -> None:
    ids = ids_by_name(client, extra["root"])
    assert set(ids) == {"escape.ogg", "inside.ogg", "gone.ogg"}  # gone.ogg's record outlives the file
    body = assert_json_error(client.get(f"/api/clips/{ids['escape.ogg']}/audio"), 403)
    assert "outside" in body["error"]
    assert_json_error(
        client.get(f"/api/clips/{ids['escape.ogg']}/audio", headers={"Range": "bytes=0-9"}), 403
    )
    assert_json_error(client.get(f"/api/clips/{ids['escape.ogg']}/waveform"), 403)
    # a link to a file inside an indexed folder is fine
    r = client.get(f"/api/clips/{ids['inside.ogg']}/audio")
    assert r.status_code == 200 and r.content == (lib_dir / "0ad" / "horse_11.ogg").read_bytes()


def test_deleted_file_is_404(client: httpx.Client, extra: dict[str, Path]) -> None:
    # gone.ogg is a copy of an indexed chicken clip: one result, which the prefix makes gone.ogg
    r = client.get("/api/search", params={"q": "chicken", "k": 200, "path_prefix": f"{extra['root']}/"})
    gone = [h for h in r.json()["results"] if h["name"] == "gone.ogg"]
    assert len(gone) == 1  # until the folder is indexed again
    assert_json_error(client.get(f"/api/clips/{gone[0]['id']}/audio"), 404)


def test_waveform(client: httpx.Client, lib_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip_id, _ = _some_clip(client, lib_dir, "wesnoth/explosion.ogg")
    w = client.get(f"/api/clips/{clip_id}/waveform", params={"points": 50}).json()
    assert w["id"] == clip_id and w["points"] == 50 and len(w["min"]) == len(w["max"]) == 50
    assert all(-1.0 <= lo <= hi <= 1.0 for lo, hi in zip(w["min"], w["max"], strict=True))
    assert w["peak"] > 0.05 and abs(w["duration"] - 2.012) < 0.05
    from audiofind.server import service as service_module

    def no_decoding(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the waveform was decoded again")

    with monkeypatch.context() as mp:  # the server runs in this process: a second decode would fail
        mp.setattr(service_module, "load_audio", no_decoding)
        assert client.get(f"/api/clips/{clip_id}/waveform", params={"points": 50}).json() == w  # cached
    assert len(client.get(f"/api/clips/{clip_id}/waveform").json()["min"]) == 400
    assert_json_error(client.get(f"/api/clips/{clip_id}/waveform", params={"points": 0}), 422)
    assert_json_error(client.get(f"/api/clips/{clip_id}/waveform", params={"points": 10**6}), 422)
    assert_json_error(client.get("/api/clips/999999/waveform"), 404)


# ---------------------------------------------------------------- similar


def test_similar_by_id(client: httpx.Client, lib_dir: Path) -> None:
    clip_id, _ = _some_clip(client, lib_dir, "0ad/sword_attack_01.ogg")
    r = client.post("/api/similar", json={"id": clip_id, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    hits = body["results"]
    assert body["source"] == {"id": clip_id} and len(hits) == 5
    assert clip_id not in [h["id"] for h in hits]  # itself left out
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    as_form = client.post("/api/similar", data={"id": str(clip_id), "k": "5"}).json()["results"]
    assert [h["id"] for h in as_form] == [h["id"] for h in hits]
    filtered = client.post("/api/similar", json={"id": clip_id, "k": 50, "max_duration": 1.0}).json()[
        "results"
    ]
    assert filtered and all(h["duration"] <= 1.0 for h in filtered)
    assert_json_error(client.post("/api/similar", json={"id": 999999}), 404)


def test_similar_by_upload(client: httpx.Client, lib_dir: Path, sfx_dir: Path) -> None:
    source = sfx_dir / CLIPS[14]  # break_glass, uploaded from outside the library
    clip_id, _ = _some_clip(client, lib_dir, "minetest/default_break_glass.1.ogg")
    with open(source, "rb") as f:
        r = client.post("/api/similar", files={"file": ("query.ogg", f, "audio/ogg")}, data={"k": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == {"upload": "query.ogg"} and len(body["results"]) == 3
    ids = [hit["id"] for hit in body["results"]]
    assert clip_id not in ids  # the same file (by content) is not a result of itself
    by_id = client.post("/api/similar", json={"id": clip_id, "k": 3}).json()["results"]
    assert [hit["id"] for hit in by_id] == ids  # the upload embeds to the indexed clip's own neighbours
    # no usable extension, but an audio content type
    r = client.post("/api/similar", files={"file": ("blob", source.read_bytes(), "audio/ogg")})
    assert r.status_code == 200 and [hit["id"] for hit in r.json()["results"]][:3] == ids


def test_similar_rejects_bad_requests(client: httpx.Client, lib_dir: Path) -> None:
    clip_id, data = _some_clip(client, lib_dir, "0ad/horse_11.ogg")
    headers = {"Content-Type": "application/json"}
    body = assert_json_error(client.post("/api/similar", content=b'{"id": 1,', headers=headers), 422)
    assert body["detail"][0]["type"] == "json_invalid"
    assert_json_error(client.post("/api/similar", content=b"[1, 2]", headers=headers), 422)
    assert_json_error(client.post("/api/similar", json={"id": "one"}), 422)
    assert_json_error(client.post("/api/similar", json={"id": clip_id, "k": 500}), 422)
    assert_json_error(client.post("/api/similar", json={"id": clip_id, "bogus": 1}), 422)
    assert_json_error(client.post("/api/similar", json={}), 400)
    assert_json_error(
        client.post("/api/similar", json={"id": clip_id, "min_duration": 5, "max_duration": 1}), 400
    )
    assert_json_error(
        client.post("/api/similar", content=b"id=1", headers={"Content-Type": "text/plain"}), 415
    )
    assert_json_error(client.post("/api/similar", files={"file": ("notes.txt", b"hello", "text/plain")}), 415)
    assert_json_error(
        client.post("/api/similar", files={"file": ("fake.wav", b"RIFF not audio" * 50, "audio/wav")}), 415
    )
    assert_json_error(client.post("/api/similar", files={"file": ("empty.ogg", b"", "audio/ogg")}), 400)
    assert_json_error(
        client.post("/api/similar", files={"file": ("a.ogg", data, "audio/ogg")}, data={"id": str(clip_id)}),
        400,
    )


def test_oversized_upload_is_413(client: httpx.Client) -> None:
    big = b"\0" * (UPLOAD_LIMIT + 1)
    body = assert_json_error(client.post("/api/similar", files={"file": ("big.wav", big, "audio/wav")}), 413)
    assert body["detail"]["limit_bytes"] == UPLOAD_LIMIT

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        boundary = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
        yield boundary
        for _ in range(20):
            yield b"\0" * (UPLOAD_LIMIT // 10)
        yield b"\r\n--xyz--\r\n"

    r = client.post(
        "/api/similar", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=xyz"}
    )
    assert_json_error(r, 413)
    assert client.get("/api/status").status_code == 200  # the server is fine afterwards


# ---------------------------------------------------------------- safety: auth, CORS, hosts, binding


def test_cors_is_off_by_default(client: httpx.Client) -> None:
    r = client.get("/api/status", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = client.options(
        "/api/search", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in r.headers


def test_foreign_host_header_is_refused(server: LiveServer) -> None:
    status, _, body = raw_get(server.url, "/api/status", {"Host": "evil.example"})  # DNS rebinding
    assert status == 421 and b"host" in body
    status, _, _ = raw_get(server.url, "/api/status", {"Host": f"localhost:{server.port}"})
    assert status == 200


def test_token_is_required_when_set(token_server: LiveServer, lib_dir: Path) -> None:
    with httpx.Client(base_url=token_server.url, timeout=60) as c:
        r = c.get("/api/status")
        assert_json_error(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert_json_error(c.get("/api/status", headers={"Authorization": "Bearer wrong-token"}), 401)
        assert_json_error(c.get("/api/clips/1/audio"), 401)
        assert_json_error(c.get("/api/nope"), 401)
        assert_json_error(c.post("/api/similar", files={"file": ("big.wav", b"\0" * 100, "audio/wav")}), 401)
        assert c.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/api/status", headers={"X-Audiofind-Token": TOKEN}).status_code == 200
        assert c.get("/").status_code == 200  # the page holds no data; it asks for the token
        # the page trades the token for a cookie so <audio src> requests (which send no headers) work
        assert_json_error(c.post("/api/session"), 401)
        r = c.post("/api/session", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and "httponly" in r.headers["set-cookie"].lower()
        assert TOKEN not in r.headers["set-cookie"]
        hit = c.get("/api/search", params={"q": "horse"}).json()["results"][0]  # cookie only
        assert c.get(hit["audio_url"], headers={"Range": "bytes=0-3"}).status_code == 206
        c.cookies.clear()
        assert_json_error(c.get(hit["audio_url"]), 401)


def test_cors_when_enabled(token_server: LiveServer) -> None:
    with httpx.Client(base_url=token_server.url, timeout=60) as c:
        pre = c.options(
            "/api/search",
            headers={
                "Origin": CORS_ORIGIN,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == CORS_ORIGIN
        r = c.get("/api/status", headers={"Origin": CORS_ORIGIN, "Authorization": f"Bearer {TOKEN}"})
        assert r.headers["access-control-allow-origin"] == CORS_ORIGIN
        r = c.get(
            "/api/status", headers={"Origin": "http://evil.example", "Authorization": f"Bearer {TOKEN}"}
        )
        assert "access-control-allow-origin" not in r.headers


def test_binding_rules() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert is_loopback(host)
        check_bind(host, None, False)
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        assert not is_loopback(host)
        with pytest.raises(ValueError, match="token"):
            check_bind(host, None, False)
        check_bind(host, TOKEN, False)
        check_bind(host, None, True)
    with pytest.raises(ValueError):
        check_bind("0.0.0.0", TOKEN, True)
    with pytest.raises(ValueError, match="8 characters"):
        check_bind("0.0.0.0", "short", False)


def test_serve_command_refuses_public_address_without_token(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from audiofind.cli.serve import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        """Test app."""

    r = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--index", str(tmp_path)])
    assert r.exit_code == 2 and "token" in r.output
    r = CliRunner().invoke(app, ["serve", "--index", str(tmp_path / "none"), "--port", "1"])
    assert r.exit_code == 1 and "no audiofind index" in r.output


# ---------------------------------------------------------------- re-indexing while serving


NEW_CLIPS = [
    "cattle_02.ogg",
    "sheep_11.ogg",
    "chicken_11.ogg",
    "horse_idle1.ogg",
    "pig_10.ogg",
    "elephant_select1.ogg",
    "lion_attack1.ogg",
    "flamingo_10.ogg",
]  # not in the library: the model runs


@pytest.fixture
def own_server(
    library_files: tuple[Path, Path], tmp_path: Path
) -> Iterator[tuple[LiveServer, Path, httpx.Client]]:
    """A server over a private copy of the index, for a test that changes it (the module's stays as it is)."""
    index = copy_index(library_files[1], tmp_path / "own-index")
    live = LiveServer(create_app(index, model=shared_model()))
    with live, httpx.Client(base_url=live.url, timeout=60) as c:
        yield live, index, c


def test_index_updated_while_serving(
    own_server: tuple[LiveServer, Path, httpx.Client], sfx_dir: Path, tmp_path: Path
) -> None:
    server, index_dir, client = own_server
    new_root = tmp_path / "new"
    new_root.mkdir()
    for name in NEW_CLIPS:
        shutil.copyfile(sfx_dir / "0ad/audio/actor/fauna/animal" / name, new_root / f"new_{name}")
    status_before = client.get("/api/status").json()
    before = status_before["clips"]
    errors: list[str] = []
    updating, done = threading.Event(), threading.Event()
    answered = threading.Condition()
    during = [0, 0, 0, 0]  # requests answered (200) while the update ran, per thread
    pauses: list[dict[str, Any]] = []

    def hammer(i: int) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                n = 0
                while not done.is_set() or n < 3:
                    q = ["a sheep", "cow mooing", "bird song", "footsteps", "chicken"][(i + n) % 5]
                    for r in (c.get("/api/search", params={"q": q, "k": 10}), c.get("/api/status")):
                        if r.status_code != 200:
                            errors.append(f"{r.status_code} {r.text[:200]}")
                        elif updating.is_set() and not done.is_set():
                            with answered:
                                during[i] += 1
                                answered.notify_all()
                    n += 1
        except Exception as e:  # noqa: BLE001 - reported below, and wakes the writer
            errors.append(f"thread {i}: {type(e).__name__}: {e}")
        finally:
            with answered:
                answered.notify_all()

    def every_thread_answers(progress: dict[str, Any]) -> None:
        """Called by the update as it goes: hold it there until each thread has had an answer since."""
        pauses.append(progress)
        with answered:
            updating.set()
            target = [d + 1 for d in during]

            def everyone_answered() -> bool:
                return all(d >= t for d, t in zip(during, target, strict=True))

            answered.wait_for(
                lambda: everyone_answered() or errors or not all(t.is_alive() for t in threads), timeout=180
            )
            assert everyone_answered() and not errors, (during, target, errors[:5])

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        # another connection writing the same index, as `audiofind index` would from another process
        with Library.open(index_dir, model=shared_model()) as writer:
            report = writer.update([new_root], workers=0, progress=every_thread_answers)
        assert report.added == len(NEW_CLIPS)
    finally:
        done.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:5]
    assert not any(t.is_alive() for t in threads)
    assert pauses and pauses[-1]["done"] == len(NEW_CLIPS)
    assert all(d >= len(pauses) for d in during), (during, len(pauses))  # served at every step of the update
    assert sum(during) >= 4, during
    status = client.get("/api/status").json()
    assert status["generation"] > status_before["generation"]
    assert status["clips"] == before + len(NEW_CLIPS)
    # the server checks for a new index at most once a second: wait (generously) until it has picked it up
    deadline = time.monotonic() + 180
    while True:
        hits = client.get("/api/search", params={"q": "sheep", "k": 20, "path_prefix": f"{new_root}/"}).json()
        if hits["count"] == len(NEW_CLIPS):
            break
        assert time.monotonic() < deadline, f"the server never picked up the new index: {hits}"
        time.sleep(0.1)  # poll interval, not synchronisation: the loop waits for the condition above
    assert sorted(h["name"] for h in hits["results"]) == sorted(f"new_{n}" for n in NEW_CLIPS)
    assert "new_sheep_11.ogg" in [h["name"] for h in hits["results"][:3]]
    assert client.get("/api/status").json()["clips"] == before + len(NEW_CLIPS)
    assert client.get(hits["results"][0]["audio_url"], headers={"Range": "bytes=0-3"}).content == b"OggS"
