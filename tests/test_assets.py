"""Finding, verifying and downloading pretrained files, against the real shared assets and a local server."""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import platformdirs
import pytest
from http_fixtures import RangeServer, serve

from audiofind import assets
from audiofind.assets import (
    ASSETS,
    Asset,
    AssetChecksumError,
    AssetNotFoundError,
    UnverifiedAssetWarning,
    asset_cache_dir,
    asset_dirs,
    resolve_asset,
)

SHARED_FILES = ["mn04_as_mAP_432.pt", "class_labels_indices.csv", "ontology.json"]
PAYLOAD = bytes(range(256)) * 4_000  # 1 MB: several read chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    """Empty asset folder, private cache, downloads allowed; returns the cache's assets folder."""
    empty = tmp_path / "no-assets"
    empty.mkdir()
    monkeypatch.setenv("AUDIOFIND_ASSETS", str(empty))
    monkeypatch.setenv("AUDIOFIND_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AUDIOFIND_OFFLINE", raising=False)
    return tmp_path / "cache" / "assets"


# ---------------------------------------------------------------- a local server with Range support


@pytest.fixture
def server() -> Iterator[RangeServer]:
    with serve(RangeServer()) as state:
        yield state


@pytest.fixture
def served(server, monkeypatch) -> Asset:
    """A registry entry 'test.bin' pointing at the local server."""
    server.files["/test.bin"] = PAYLOAD
    asset = Asset("test.bin", server.url + "/test.bin", PAYLOAD_SHA, "CC0", len(PAYLOAD))
    monkeypatch.setitem(ASSETS, asset.name, asset)
    return asset


# ---------------------------------------------------------------- registry and search path


def test_registry_entries_are_consistent():
    for name, asset in ASSETS.items():
        if asset.url is None:  # shipped inside the package, always with a checksum
            assert asset.name == name and asset.sha256 and (assets.package_asset_dir() / name).is_file()
            continue
        assert asset.name == name == asset.url.rsplit("/", 1)[-1]
        assert asset.url.startswith(("https://", "http://"))
        assert asset.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", asset.sha256)
        assert asset.licence
    mn04 = ASSETS["mn04_as_mAP_432.pt"]
    assert mn04.sha256 == "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c"
    widths = ["01_as_mAP_298", "02_as_mAP_378", "04_as_mAP_432", "05_as_mAP_443", "10_as_mAP_471"]
    widths += ["20_as_mAP_478", "30_as_mAP_482", "40_as_mAP_484"]
    for w in widths:
        asset = ASSETS[f"mn{w}.pt"]
        assert asset.url == f"https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/mn{w}.pt"
        assert asset.licence.startswith("MIT")
    assert {ASSETS[n].sha256 is not None for n in SHARED_FILES} == {True}


def test_asset_dirs_order(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("AUDIOFIND_ASSETS", f"{a}{os.pathsep}{os.pathsep}{b}")
    monkeypatch.setenv("AUDIOFIND_CACHE", str(tmp_path / "c"))
    assert asset_dirs() == [a, b, tmp_path / "c" / "assets"]
    assert asset_cache_dir() == tmp_path / "c" / "assets"
    monkeypatch.delenv("AUDIOFIND_ASSETS")
    monkeypatch.delenv("AUDIOFIND_CACHE")
    default = Path(platformdirs.user_cache_dir("audiofind")).absolute() / "assets"
    assert asset_dirs() == [default]


@pytest.mark.parametrize("name", SHARED_FILES)
def test_resolves_the_real_shared_assets(assets_dir, env, monkeypatch, name):
    monkeypatch.setenv("AUDIOFIND_ASSETS", str(assets_dir))
    monkeypatch.setenv("AUDIOFIND_OFFLINE", "1")
    assert resolve_asset(name) == assets_dir / name


def test_searches_every_folder_in_the_variable(assets_dir, env, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOFIND_ASSETS", os.pathsep.join([str(tmp_path / "missing"), str(assets_dir)]))
    assert resolve_asset("ontology.json", download=False) == assets_dir / "ontology.json"


def test_verification_is_cached_by_size_and_mtime(assets_dir, env, monkeypatch):
    monkeypatch.setenv("AUDIOFIND_ASSETS", str(assets_dir))
    hashed: list[Path] = []
    real = assets.file_digest
    monkeypatch.setattr(assets, "file_digest", lambda p, *a: hashed.append(p) or real(p, *a))
    name = "class_labels_indices.csv"
    resolve_asset(name, download=False)
    assert hashed == [assets_dir / name]
    resolve_asset(name, download=False)
    resolve_asset(name, download=False)
    assert len(hashed) == 1  # remembered in the cache's record file
    assert (env / "verified.json").is_file()


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown asset 'nope.pt'.*mn04_as_mAP_432.pt"):
        resolve_asset("nope.pt")


# ---------------------------------------------------------------- missing files


def test_missing_file_error_says_what_to_put_where(env, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOFIND_OFFLINE", "1")
    with pytest.raises(AssetNotFoundError) as caught:
        resolve_asset("mn04_as_mAP_432.pt")
    msg = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    for needle in [
        "mn04_as_mAP_432.pt",
        str(tmp_path / "no-assets"),  # every folder searched
        str(env),
        "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/mn04_as_mAP_432.pt",
        "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c",
        "AUDIOFIND_ASSETS",
        "AUDIOFIND_OFFLINE",
    ]:
        assert needle in msg
    assert not env.exists() or not any(env.iterdir())  # nothing was written


def test_download_false_wins_even_online(env, served):
    with pytest.raises(AssetNotFoundError, match="switched off"):
        resolve_asset("test.bin", download=False)


def test_network_failure_gives_instructions(env, monkeypatch):
    import socket

    # a port nobody listens on: bound (so no other process can take it) but never listening, it refuses
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        asset = Asset("gone.bin", f"http://127.0.0.1:{port}/gone.bin", PAYLOAD_SHA, "CC0")
        monkeypatch.setitem(ASSETS, asset.name, asset)
        with pytest.raises(AssetNotFoundError, match="downloading it failed") as caught:
            resolve_asset("gone.bin")
    assert asset.url in str(caught.value)
    assert not (env / "gone.bin").exists()


def test_http_404_gives_instructions(env, served, server, monkeypatch):
    missing = Asset("test.bin", server.url + "/missing.bin", PAYLOAD_SHA, "CC0")
    monkeypatch.setitem(ASSETS, "test.bin", missing)
    with pytest.raises(AssetNotFoundError, match="404"):
        resolve_asset("test.bin")


# ---------------------------------------------------------------- downloading


def test_downloads_into_the_cache(env, served, server):
    path = resolve_asset("test.bin")
    assert path == env / "test.bin"
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/test.bin", None)]
    assert not (env / "test.bin.part").exists()
    assert resolve_asset("test.bin") == path  # found in the cache: no second request
    assert len(server.requests) == 1


def test_checksum_mismatch_deletes_the_download(env, served, monkeypatch):
    wrong = Asset("test.bin", served.url, "0" * 64, "CC0")
    monkeypatch.setitem(ASSETS, "test.bin", wrong)
    with pytest.raises(AssetChecksumError, match=f"sha256 {PAYLOAD_SHA}, expected 0000") as caught:
        resolve_asset("test.bin")
    assert served.url in str(caught.value)
    assert not (env / "test.bin").exists()
    assert not (env / "test.bin.part").exists()


def test_resumes_a_partial_download_with_range(env, served, server):
    env.mkdir(parents=True)
    (env / "test.bin.part").write_bytes(PAYLOAD[:300_000])
    path = resolve_asset("test.bin")
    assert server.requests == [("/test.bin", "bytes=300000-")]
    assert path.read_bytes() == PAYLOAD
    assert not (env / "test.bin.part").exists()


def test_restarts_when_the_server_ignores_range(env, served, server):
    server.honour_range = False
    env.mkdir(parents=True)
    (env / "test.bin.part").write_bytes(b"x" * 1000)
    assert resolve_asset("test.bin").read_bytes() == PAYLOAD
    assert server.requests == [("/test.bin", "bytes=1000-")]


def test_complete_part_of_unknown_size_is_finished_after_416(env, served, server, monkeypatch):
    monkeypatch.setitem(ASSETS, "test.bin", Asset("test.bin", served.url, PAYLOAD_SHA, "CC0", size=None))
    env.mkdir(parents=True)
    (env / "test.bin.part").write_bytes(PAYLOAD)
    assert resolve_asset("test.bin").read_bytes() == PAYLOAD
    assert server.requests == [("/test.bin", f"bytes={len(PAYLOAD)}-")]


def test_complete_part_of_known_size_needs_no_request(env, served, server):
    env.mkdir(parents=True)
    (env / "test.bin.part").write_bytes(PAYLOAD)
    assert resolve_asset("test.bin").read_bytes() == PAYLOAD
    assert server.requests == []


def test_interrupted_download_is_atomic_and_resumable(env, served, server):
    server.cut["/test.bin"] = 400_000  # once
    with pytest.raises(AssetNotFoundError, match="connection closed after 400,000 of 1,024,000 bytes"):
        resolve_asset("test.bin")
    assert not (env / "test.bin").exists()  # never a half file under the real name
    assert (env / "test.bin.part").read_bytes() == PAYLOAD[:400_000]
    assert resolve_asset("test.bin").read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/test.bin", "bytes=400000-")


def test_offline_variable_blocks_downloads(env, served, server, monkeypatch):
    monkeypatch.setenv("AUDIOFIND_OFFLINE", "1")
    with pytest.raises(AssetNotFoundError):
        resolve_asset("test.bin")
    assert server.requests == []
    assert resolve_asset("test.bin", download=True).read_bytes() == PAYLOAD  # explicit wins


# ---------------------------------------------------------------- wrong files


def test_wrong_file_in_assets_folder_is_a_clear_error(env, served, tmp_path, server):
    bad = tmp_path / "no-assets" / "test.bin"
    bad.write_bytes(b"\0" * len(PAYLOAD))  # right size, wrong content
    with pytest.raises(AssetChecksumError, match="sha256") as caught:
        resolve_asset("test.bin")
    assert str(bad) in str(caught.value)
    assert bad.exists() and server.requests == []  # the user's file is left alone
    bad.write_bytes(b"short")
    with pytest.raises(AssetChecksumError, match="5 bytes, expected 1,024,000"):
        resolve_asset("test.bin")


def test_damaged_cached_file_is_fetched_again(env, served, server):
    path = resolve_asset("test.bin")
    damaged = bytearray(PAYLOAD)
    damaged[123] ^= 0xFF
    path.write_bytes(bytes(damaged))
    os.utime(path, ns=(1, 1))  # a different mtime invalidates the remembered hash
    assert resolve_asset("test.bin").read_bytes() == PAYLOAD
    assert len(server.requests) == 2


def test_damaged_cached_file_offline(env, served, monkeypatch):
    path = resolve_asset("test.bin")
    path.write_bytes(b"\0" * len(PAYLOAD))
    os.utime(path, ns=(1, 1))
    monkeypatch.setenv("AUDIOFIND_OFFLINE", "1")
    with pytest.raises(AssetNotFoundError):
        resolve_asset("test.bin")
    assert not path.exists()


def test_asset_without_checksum_is_used_with_a_warning(env, served, monkeypatch):
    monkeypatch.setitem(ASSETS, "test.bin", Asset("test.bin", served.url, None, "CC0"))
    with pytest.warns(UnverifiedAssetWarning, match=f"unverified.*{PAYLOAD_SHA}"):
        path = resolve_asset("test.bin")
    assert path.read_bytes() == PAYLOAD
    with pytest.warns(UnverifiedAssetWarning):
        assert resolve_asset("test.bin") == path


def test_verified_asset_raises_no_warning(env, served):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_asset("test.bin")
        resolve_asset("test.bin")
