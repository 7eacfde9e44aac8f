"""Pretrained files the models need: where to look for them, how to check them, and how to fetch them."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import platformdirs

from .download import fetch_resumable, file_digest, offline
from .paths import printable_path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent first downloads just race
    fcntl = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Asset:
    """One downloadable (or package-shipped) file, with what is needed to check and credit it."""

    name: str  # file name, e.g. "mn04_as_mAP_432.pt"
    url: str | None  # official download URL; None: shipped inside the package (see `package_asset_dir`)
    sha256: str | None  # None only where no checksum is known to us; such a file is used unverified
    licence: str
    size: int | None = None  # bytes, when known


_EFFICIENTAT = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"
_MIT = "MIT"

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "mn04_as_mAP_432.pt",
            _EFFICIENTAT + "mn04_as_mAP_432.pt",
            "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c",
            _MIT,
            4_066_513,
        ),
        Asset(
            "class_labels_indices.csv",
            "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/class_labels_indices.csv",
            "cdd1049833c4b86127c2773ac0d14a2754b6a6d0d1798002ed5c66e699708429",
            "CC BY 4.0 (AudioSet)",
            14_675,
        ),
        Asset(
            "ontology.json",
            "https://raw.githubusercontent.com/audioset/ontology/master/ontology.json",
            "9c685f4403eecc3ca9be37fd7285cf212feaaea6ff7229d3e7ca89e0d1f2d15d",
            "CC BY-SA 4.0 (AudioSet ontology)",
            342_780,
        ),
        # ---- shipped inside the package (no URL): models/text_bridge.py, scripts/build_text_bridge.py
        Asset(
            "text_bridge_audiocaps_v1.npz",
            None,
            "099657fa99b3b1043b8761a22a2eb862a7800810d53d458ebc1038e1ba07ffa2",
            "derived data: trained on AudioCaps captions (github.com/cdjkim/audiocaps; MIT licence file, "
            "academic use requested; cite Kim et al., AudioCaps: Generating Captions for Audios in the Wild, "
            "NAACL-HLT 2019) with their clips' AudioSet labels (CC BY 4.0; Gemmeke et al., ICASSP 2017); "
            "holds all-MiniLM-L6-v2 (Apache-2.0) vectors of the AudioSet class names",
        ),
        # Other EfficientAT AudioSet widths: same release, but no checksum has been recorded here yet.
        *(
            Asset(f, _EFFICIENTAT + f, None, _MIT)
            for f in (
                "mn01_as_mAP_298.pt",
                "mn02_as_mAP_378.pt",
                "mn05_as_mAP_443.pt",
                "mn10_as_mAP_471.pt",
                "mn20_as_mAP_478.pt",
                "mn30_as_mAP_482.pt",
                "mn40_as_mAP_484.pt",
            )
        ),
    ]
}

_RECORDS = "verified.json"  # in the cache dir: path -> size, mtime and sha256 of files already hashed


class AssetNotFoundError(FileNotFoundError):
    """A needed file is missing and could not be downloaded; the message says what to put where."""


class AssetChecksumError(ValueError):
    """A file with an asset's name is not that asset (wrong or damaged download)."""


class UnverifiedAssetWarning(UserWarning):
    """An asset is used although no checksum is known for it."""


# ---------------------------------------------------------------- where to look


def asset_cache_dir() -> Path:
    """Where downloads go: $AUDIOFIND_CACHE/assets, else the per-user cache."""
    root = os.environ.get("AUDIOFIND_CACHE") or platformdirs.user_cache_dir("audiofind")
    return Path(root).expanduser().absolute() / "assets"


def asset_dirs() -> list[Path]:
    """Folders searched in order: each of $AUDIOFIND_ASSETS (os.pathsep-separated), then the cache."""
    env = os.environ.get("AUDIOFIND_ASSETS", "")
    dirs = [Path(p).expanduser().absolute() for p in env.split(os.pathsep) if p.strip()]
    return [*dirs, asset_cache_dir()]


def package_asset_dir() -> Path:
    """Where the assets without a URL live: the installed package's `models/` folder (package data)."""
    return Path(__file__).resolve().parent / "models"


def resolve_asset(name: str, download: bool | None = None) -> Path:
    """Path to a verified copy of asset `name`, downloading it into the cache when allowed and needed.

    `download=None` allows downloading unless $AUDIOFIND_OFFLINE is set to 1. An asset without a URL
    is part of the package and is only looked for (and checked) in `package_asset_dir()`.
    """
    asset = ASSETS.get(name)
    if asset is None:
        raise ValueError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}")
    if asset.url is None:
        return _resolve_packaged(asset)
    cache = asset_cache_dir()
    for folder in asset_dirs():
        path = folder / name
        if not path.is_file():
            continue
        problem = _problem(asset, path)
        if problem is None:
            return path
        if folder != cache:
            raise AssetChecksumError(
                f"'{printable_path(path)}' is not the expected {name}: {problem}. "
                f"Replace it with the file from {asset.url} or remove it."
            )
        path.unlink(missing_ok=True)  # our own copy went bad: fetch it again
    if download is None and offline():
        raise AssetNotFoundError(_instructions(asset, "downloading is switched off (AUDIOFIND_OFFLINE=1)"))
    if download is False:
        raise AssetNotFoundError(_instructions(asset, "downloading is switched off (download=False)"))
    return _download(asset, cache)


def _resolve_packaged(asset: Asset) -> Path:
    path = package_asset_dir() / asset.name
    if not path.is_file():
        raise AssetNotFoundError(
            f"{asset.name} ships with audiofind but is missing from '{printable_path(path.parent)}': "
            "reinstall the package (a source checkout has it under src/audiofind/models/)."
        )
    problem = _problem(asset, path)
    if problem is not None:
        raise AssetChecksumError(
            f"'{printable_path(path)}' is not the {asset.name} this version of audiofind ships: {problem}. "
            "Reinstall the package, or restore the file from version control."
        )
    return path


# ---------------------------------------------------------------- checking


def _records_path() -> Path:
    return asset_cache_dir() / _RECORDS


def _load_records() -> dict[str, dict]:
    """Earlier hashing results; a missing or damaged record file just means hashing again."""
    try:
        data = json.loads(_records_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(path: Path, digest: str) -> None:
    """Record a file's hash by (size, mtime) so the next run skips re-hashing; best effort."""
    st = path.stat()
    records = _load_records()
    records[os.fsdecode(path.resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    target = _records_path()
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".verified-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(records, f)
        os.replace(tmp, target)
    except OSError:  # a read-only cache only costs re-hashing next time
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _digest(path: Path) -> str:
    """sha256 of a file, taken from the records while its size and mtime are unchanged."""
    st = path.stat()
    rec = _load_records().get(os.fsdecode(path.resolve()))
    if isinstance(rec, dict) and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
        return str(rec["sha256"])
    digest = file_digest(path)
    _remember(path, digest)
    return digest


def _problem(asset: Asset, path: Path) -> str | None:
    """Why `path` is not `asset`, or None when it is (or cannot be checked, with a warning)."""
    size = path.stat().st_size
    if asset.size is not None and size != asset.size:
        return f"it has {size:,} bytes, expected {asset.size:,}"
    digest = _digest(path)
    if asset.sha256 is None:
        warnings.warn(
            f"'{printable_path(path)}' is used unverified: no sha256 is known for {asset.name} "
            f"(this file's sha256 is {digest})",
            UnverifiedAssetWarning,
            stacklevel=3,
        )
        return None
    if digest != asset.sha256.lower():
        return f"its sha256 is {digest}, expected {asset.sha256}"
    return None


def _instructions(asset: Asset, why: str) -> str:
    """Tell the user exactly which file to put where."""
    dirs = asset_dirs()
    check = f"sha256 {asset.sha256}" if asset.sha256 else "no sha256 known"
    size = f", {asset.size:,} bytes" if asset.size else ""
    return "\n".join(
        [
            f"{asset.name} is needed but was not found, and {why}.",
            "Searched:",
            *(f"  {printable_path(d)}" for d in dirs),
            f"Download it from {asset.url} ({check}{size}; licence {asset.licence})",
            f"and put it in {printable_path(dirs[-1])},",
            "or in a folder named by the environment variable AUDIOFIND_ASSETS"
            f" (several folders: separate them with '{os.pathsep}').",
        ]
    )


# ---------------------------------------------------------------- downloading


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock so two processes do not download the same file into one .part."""
    if fcntl is None:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _download(asset: Asset, cache: Path) -> Path:
    """Fetch into <cache>/<name>.part (resuming it if present), verify, then rename into place."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AssetNotFoundError(_instructions(asset, f"the cache folder cannot be created: {e}")) from e
    final = cache / asset.name
    part = cache / (asset.name + ".part")
    with _locked(cache / (asset.name + ".lock")):
        if final.is_file() and _problem(asset, final) is None:  # another process just finished it
            return final
        try:
            fetch_resumable(asset.url, part, expected_size=asset.size, desc=asset.name)
        except (OSError, HTTPException) as e:  # URLError, HTTPError and timeouts are OSErrors
            raise AssetNotFoundError(_instructions(asset, f"downloading it failed: {e}")) from e
        digest = file_digest(part)
        if asset.sha256 is not None and digest != asset.sha256.lower():
            part.unlink(missing_ok=True)
            raise AssetChecksumError(
                f"the download of {asset.name} from {asset.url} is corrupt or has changed upstream: "
                f"sha256 {digest}, expected {asset.sha256}. The partial file was deleted; try again, "
                f"or put a good copy in {printable_path(cache)} or a folder named by AUDIOFIND_ASSETS."
            )
        os.replace(part, final)
        _remember(final, digest)
    if asset.sha256 is None:
        _problem(asset, final)  # warns that the file is unverified
    return final
