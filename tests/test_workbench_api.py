"""The workbench API against a real server: formats, region cuts, downloads, collections, status, /docs."""

from __future__ import annotations

import csv
import io
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("AUDIOFIND_ASSETS", str(Path(__file__).resolve().parents[2] / "shared" / "assets"))

from test_server import CLIPS, LiveServer, assert_json_error, serve_threads, shared_model  # noqa: E402

from audiofind.library import Library  # noqa: E402
from audiofind.library.activity import UpdateActivity, read_activity  # noqa: E402
from audiofind.server.app import create_app  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _serve_threads() -> Iterator[None]:
    with serve_threads():
        yield


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, sfx_dir: Path, assets_dir: Path) -> dict[str, Any]:
    """A private library: a 48 kHz 24-bit stereo WAV made here, bell.wav and two oggs; its own index."""
    base = tmp_path_factory.mktemp("workbench")
    lib_dir, index_dir = base / "lib", base / "index"
    (lib_dir / "made").mkdir(parents=True)
    (lib_dir / "sfx").mkdir()
    rng = np.random.default_rng(7)
    t = np.arange(48_000 * 3) / 48_000
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 440 * t), 0.3 * rng.standard_normal(t.size).clip(-1, 1)], 1)
    sf.write(lib_dir / "made" / "tone_noise.wav", stereo, 48_000, subtype="PCM_24")
    for rel in (CLIPS[7], CLIPS[0], CLIPS[12]):  # bell.wav, explosion.ogg (48k stereo), horse_11.ogg
        shutil.copyfile(sfx_dir / rel, lib_dir / "sfx" / Path(rel).name)
    with Library.open(index_dir, model=shared_model(), create=True) as lib:
        lib.update([lib_dir], workers=0, progress=False)
    return {"lib": lib_dir, "index": index_dir}


@pytest.fixture(scope="module")
def live(small: dict[str, Any]) -> Iterator[LiveServer]:
    with LiveServer(create_app(small["index"], model=shared_model(), warm_up=False)) as server:
        yield server


@pytest.fixture
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=60) as c:
        yield c


def clip_id(client: httpx.Client, name: str) -> int:
    hits = client.get("/api/search", params={"q": "sound", "k": 50}).json()["results"]
    return next(h["id"] for h in hits if h["name"] == name)


def test_results_carry_format_and_filter_by_it(client: httpx.Client) -> None:
    hits = client.get("/api/search", params={"q": "a bell", "k": 10}).json()["results"]
    assert len(hits) == 4
    by_name = {h["name"]: (h["sample_rate"], h["channels"]) for h in hits}
    assert by_name["tone_noise.wav"] == (48_000, 2) and by_name["bell.wav"] == (44_100, 1)
    only = client.get("/api/search", params={"q": "a bell", "sample_rate": 48_000}).json()["results"]
    assert {h["name"] for h in only} == {"tone_noise.wav", "explosion.ogg"}
    stereo = client.get("/api/search", params={"q": "a bell", "channels": 2, "sample_rate": 44_100}).json()
    assert stereo["results"] == []
    like = client.post("/api/similar", json={"id": clip_id(client, "bell.wav"), "channels": 2}).json()
    assert {h["name"] for h in like["results"]} == {"tone_noise.wav", "explosion.ogg"}
    facets = client.get("/api/formats").json()
    assert {"value": 48_000, "clips": 2} in facets["sample_rates"]
    assert {"value": 1, "clips": 2} in facets["channels"]


@pytest.mark.parametrize("name", ["tone_noise.wav", "bell.wav", "explosion.ogg"])
def test_region_is_cut_sample_accurately(client: httpx.Client, small: dict[str, Any], name: str) -> None:
    source = next(small["lib"].rglob(name))
    original, rate = sf.read(source, dtype="float32", always_2d=True)
    start, end = 0.1234, 1.5
    r = client.get(f"/api/clips/{clip_id(client, name)}/region.wav", params={"start": start, "end": end})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav" and "attachment" in r.headers["content-disposition"]
    assert int(r.headers["content-length"]) == len(r.content)
    cut, cut_rate = sf.read(io.BytesIO(r.content), dtype="float32", always_2d=True)
    first, last = round(start * rate), round(end * rate)
    assert cut_rate == rate and cut.shape == (last - first, original.shape[1])
    tolerance = 1e-6 if name.endswith(".wav") else 1e-4  # lossy: one decode, written as float
    np.testing.assert_allclose(cut, original[first:last], atol=tolerance)
    info = sf.info(io.BytesIO(r.content))
    if name == "tone_noise.wav":
        assert info.subtype == "PCM_24"


def test_region_bounds_are_checked(client: httpx.Client) -> None:
    cid = clip_id(client, "bell.wav")
    bad = [({"start": 1, "end": 0.5}, 400), ({"start": 30, "end": 31}, 400), ({"start": 0, "end": 700}, 400),
           ({"start": -1, "end": 1}, 422), ({"start": 0}, 422)]
    for params, status in bad:
        assert_json_error(client.get(f"/api/clips/{cid}/region.wav", params=params), status)
    assert_json_error(client.get("/api/clips/999999/region.wav", params={"start": 0, "end": 1}), 404)
    tail = client.get(f"/api/clips/{cid}/region.wav", params={"start": 2.0, "end": 9})  # cut at the end
    assert tail.status_code == 200 and 0 < sf.info(io.BytesIO(tail.content)).frames < 44_100


def test_download_is_an_attachment(client: httpx.Client, small: dict[str, Any]) -> None:
    r = client.get(f"/api/clips/{clip_id(client, 'bell.wav')}/download")
    assert r.status_code == 200 and r.headers["content-disposition"].startswith("attachment;")
    assert r.content == (small["lib"] / "sfx" / "bell.wav").read_bytes()


def test_collections_api(client: httpx.Client, small: dict[str, Any]) -> None:
    names = [c["name"] for c in client.get("/api/collections").json()["collections"]]
    assert names[0] == "favourites"
    bell, horse = clip_id(client, "bell.wav"), clip_id(client, "horse_11.ogg")
    assert client.post("/api/collections", json={"name": "Door hits"}).status_code == 201
    assert client.post("/api/collections/Door hits/clips", json={"ids": [bell, horse]}).json()["added"] == 2
    assert client.post("/api/collections/Door hits/clips", json={"ids": [bell]}).json()["added"] == 0
    got = client.get("/api/collections/Door hits").json()
    assert [r["name"] for r in got["results"]] == ["bell.wav", "horse_11.ogg"]
    assert got["results"][0]["audio_url"] == f"/api/clips/{bell}/audio" and got["results"][0]["sample_rate"]

    rows = list(csv.DictReader(io.StringIO(client.get("/api/collections/Door hits/export.csv").text)))
    assert [Path(r["path"]).name for r in rows] == ["bell.wav", "horse_11.ogg"]
    assert rows[0]["clip_id"] == str(bell)
    z = client.get("/api/collections/Door hits/export.zip")
    assert z.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
        assert zf.namelist() == ["bell.wav", "horse_11.ogg"]
        assert zf.read("bell.wav") == (small["lib"] / "sfx" / "bell.wav").read_bytes()

    assert client.delete(f"/api/collections/Door hits/clips/{horse}").json()["removed"] == 1
    assert client.delete("/api/collections/Door hits").status_code == 200
    assert_json_error(client.get("/api/collections/Door hits"), 404)
    assert_json_error(client.delete("/api/collections/favourites"), 400)
    assert_json_error(client.post("/api/collections", json={"name": "a/b"}), 400)
    assert_json_error(client.post("/api/collections", content=b"name=x",
                                  headers={"content-type": "application/x-www-form-urlencoded"}), 415)
    assert_json_error(client.post("/api/collections/favourites/clips", json={"ids": [999999]}), 404)
    assert_json_error(client.post("/api/collections/favourites/clips", json={"ids": "1"}), 400)
    assert_json_error(client.post("/api/collections/nope/clips", json={"ids": [bell]}), 404)
    made = client.post("/api/collections/new one/clips", json={"ids": [bell], "create": True})
    assert made.json()["added"] == 1


def test_collection_items_survive_a_move_and_a_reindex(tmp_path: Path, small: dict[str, Any]) -> None:
    lib_dir, index_dir = tmp_path / "lib", tmp_path / "index"
    shutil.copytree(small["lib"] / "sfx", lib_dir / "a")
    with Library.open(index_dir, model=shared_model(), create=True) as lib:
        lib.update([lib_dir], workers=0, progress=False)
        bell = next(h.id for h in lib.search("bell", k=5) if h.path.endswith("bell.wav"))
        lib.collections.add("favourites", [bell])
        (lib_dir / "b").mkdir()
        os.replace(lib_dir / "a" / "bell.wav", lib_dir / "b" / "bell.wav")
        report = lib.update([lib_dir], workers=0, progress=False)
        assert report.moved == 1 and report.embedded == 0
    with Library.open(index_dir) as lib:  # reopened: the tables persist in library.sqlite
        (item,) = lib.collections.items("favourites")
        assert item.clip_id is not None and item.path == str(lib_dir / "b" / "bell.wav")
        assert lib.collections.containing([item.clip_id]) == {item.clip_id: ["favourites"]}
        assert lib.collections.remove("favourites", [item.clip_id]) == 1


def test_status_reports_roots_and_a_run_in_progress(client: httpx.Client, small: dict[str, Any]) -> None:
    status = client.get("/api/status").json()
    assert status["roots"] == [str(small["lib"])] and status["clips"] == 4
    assert status["indexing"]["running"] is False and status["built_at"]
    with UpdateActivity(small["index"]) as activity:  # what Library.update holds while it runs
        activity.wrap(False)({"done": 3, "total": 10, "embedded": 2})
        running = client.get("/api/status").json()["indexing"]
        assert running["running"] is True and running["pid"] == os.getpid()
        assert running["progress"]["done"] == 3 and running["progress"]["total"] == 10
    assert read_activity(small["index"])["running"] is False


def test_update_holds_the_activity_lock(tmp_path: Path, small: dict[str, Any]) -> None:
    seen: list[dict[str, Any]] = []
    index_dir = tmp_path / "index"
    with Library.open(index_dir, model=shared_model(), create=True) as lib:
        lib.update([small["lib"] / "sfx"], workers=0,
                   progress=lambda event: seen.append(read_activity(index_dir)))
    assert seen and all(s["running"] for s in seen) and seen[-1]["progress"]["total"] == 3
    assert read_activity(index_dir)["running"] is False


def test_docs_are_served_locally(client: httpx.Client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert "/docs/swagger-ui-bundle.js" in page.text and "https://" not in page.text
    bundle = client.get("/docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
    assert client.get("/docs/swagger-ui.css").status_code == 200
    assert_json_error(client.get("/docs/other.js"), 404)
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/collections", "/api/clips/{clip_id}/region.wav", "/api/formats"} <= set(paths)
