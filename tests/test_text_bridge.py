"""The trained text bridge: the shipped file, its rankings with the real MiniLM, its rebuild, its ids."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from audiofind import assets
from audiofind.assets import ASSETS, Asset, AssetChecksumError, AssetNotFoundError, resolve_asset
from audiofind.download import file_digest
from audiofind.library import Library, ModelMismatchError
from audiofind.library.store import DB_NAME
from audiofind.models import load_model
from audiofind.models.tagging import AudioSetVocabulary
from audiofind.models.text_bridge import DEFAULT_TEXT_BRIDGE, TextBridge
from audiofind.models.zeroshot import ZeroShotConfig, ZeroShotModel

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vocab() -> AudioSetVocabulary:
    return AudioSetVocabulary.default()


@pytest.fixture(scope="module")
def model() -> ZeroShotModel:
    return ZeroShotModel()


def test_shipped_file_is_registered_verified_and_small(vocab):
    asset = ASSETS[DEFAULT_TEXT_BRIDGE]
    assert asset.url is None and "AudioCaps" in asset.licence and "CC BY 4.0" in asset.licence
    path = resolve_asset(DEFAULT_TEXT_BRIDGE)
    assert path.parent == Path(assets.__file__).resolve().parent / "models"  # in the package, not downloaded
    assert file_digest(path) == asset.sha256
    assert path.stat().st_size < 1_500_000
    bridge = TextBridge.load(path)
    assert bridge.meta["mids"] == [c.mid for c in vocab.classes] and bridge.num_classes == len(vocab) == 527
    assert bridge.meta["text_model"] == ZeroShotConfig().text_model and bridge.dim == 384
    assert "Kim et al." in bridge.meta["licence"]


def test_default_model_uses_the_trained_bridge(model):
    assert model.config.text_bridge == DEFAULT_TEXT_BRIDGE and model.text_bridge is not None
    vectors = model.encode_text(["a dog barking", "rain on a tin roof"])
    assert vectors.shape == (2, 527) and (vectors >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert ((vectors > 0).sum(1) <= model.text_bridge.top).all()
    assert ZeroShotModel(ZeroShotConfig(text_bridge="")).text_bridge is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("a dog barking", {"Dog", "Bark", "Bow-wow"}),
        ("electric guitar solo", {"Electric guitar", "Guitar"}),  # AudioCaps never labels guitars
        ("a cow mooing in a field", {"Cattle, bovinae", "Moo"}),  # nor cattle
        ("a man speaks while cars drive past", {"Male speech, man speaking", "Speech", "Car"}),
    ],
)
def test_rankings(model, query, expected):
    scores = model.encode_text([query])[0]
    top = {model.vocab.names[i] for i in np.argsort(-scores)[:2]}
    assert top & expected, f"{query!r} -> {top}"


def test_unseen_classes_keep_the_zero_shot_score(model):
    bridge = model.text_bridge
    guitar = model.vocab.names.index("Electric guitar")
    dog = model.vocab.names.index("Dog")
    assert not bridge.weight[guitar].any() and bridge.weight[dog].any()
    assert bridge.meta["fitted_classes"] == int(bridge.weight.any(axis=1).sum())


def test_applying_the_bridge_needs_no_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from audiofind.assets import resolve_asset\n"
            "from audiofind.models.text_bridge import DEFAULT_TEXT_BRIDGE, TextBridge\n"
            "b = TextBridge.load(resolve_asset(DEFAULT_TEXT_BRIDGE))\n"
            "v = np.random.default_rng(0).standard_normal((3, b.dim)).astype(np.float32)\n"
            "print(b.query_vectors(v / np.linalg.norm(v, axis=1, keepdims=True)).shape)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(3, 527)"


def test_rebuild_on_a_subset_is_deterministic(tmp_path, shared_dir, monkeypatch):
    audiocaps = shared_dir / "data" / "audiocaps"
    if not (audiocaps / "train.tsv").is_file():
        pytest.skip(f"AudioCaps captions not found in {audiocaps}")
    script = REPO / "scripts" / "build_text_bridge.py"
    spec = importlib.util.spec_from_file_location("build_text_bridge", script)
    build = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, build)  # its dataclass looks itself up there
    spec.loader.exec_module(build)
    outs = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for out in outs:
        build.main(["--audiocaps", str(audiocaps), "--limit", "200", "--epochs", "2", "--out", str(out)])
    assert outs[0].read_bytes() == outs[1].read_bytes()
    bridge = TextBridge.load(outs[0])
    assert bridge.meta["data"]["captions"] == 200 and bridge.meta["settings"]["epochs"] == 2


def test_audio_model_id_ignores_the_query_side():
    base = ZeroShotConfig()
    for query_side in ({"text_bridge": ""}, {"query_temperature": 0.2, "query_top": 0},
                       {"label_style": "name", "text_model": "other"}):
        other = ZeroShotConfig(**query_side)
        assert other.audio_model_id == base.audio_model_id and other.model_id != base.model_id
    for audio_side in ({"pad_to_s": 10.0}, {"pooling": "mean"}, {"audio_power": 0.5}, {"space": "text"}):
        assert ZeroShotConfig(**audio_side).audio_model_id != base.audio_model_id
    # in the text space clips are projected onto the class texts, so those shape the clip vectors too
    text = ZeroShotConfig(space="text")
    assert ZeroShotConfig(space="text", label_style="name").audio_model_id != text.audio_model_id
    # the similarity bridge keeps the model ids it had before the text_bridge knob existed
    assert ZeroShotConfig(text_bridge="").model_id == "zeroshot-mn04-all-MiniLM-L6-v2-ea15fd7a"
    assert ZeroShotConfig(text_bridge="", pad_to_s=10.0).model_id == "zeroshot-mn04-all-MiniLM-L6-v2-68f0125c"


def test_packaged_assets_resolve_from_the_package_and_are_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "package_asset_dir", lambda: tmp_path)
    good = b"shipped bytes"
    (tmp_path / "shipped.bin").write_bytes(good)
    asset = Asset("shipped.bin", None, hashlib.sha256(good).hexdigest(), "CC0")
    monkeypatch.setitem(ASSETS, "shipped.bin", asset)
    assert resolve_asset("shipped.bin", download=False) == tmp_path / "shipped.bin"
    (tmp_path / "shipped.bin").write_bytes(b"tampered bytes")
    with pytest.raises(AssetChecksumError, match="Reinstall"):
        resolve_asset("shipped.bin")
    (tmp_path / "shipped.bin").unlink()
    with pytest.raises(AssetNotFoundError, match="reinstall"):
        resolve_asset("shipped.bin")


def _rows_and_meta(index: Path, forget_audio_id: bool = False) -> tuple[dict, dict]:
    """Each file's (vector, indexed_at) and the meta table, read straight from SQLite."""
    with closing(sqlite3.connect(index / DB_NAME)) as conn, conn:
        if forget_audio_id:  # as in indexes written before `audio_model_id` existed
            conn.execute("DELETE FROM meta WHERE key = 'audio_model_id'")
        rows = {bytes(p): (v, t)
                for p, v, t in conn.execute("SELECT path_bytes, vector, indexed_at FROM files")}
        return rows, dict(conn.execute("SELECT key, value FROM meta").fetchall())


def test_an_index_from_the_similarity_bridge_opens_with_the_default_model(tmp_path, sfx_dir):
    """Clip vectors depend only on the audio side, so the new default searches an old index as it is."""
    sounds, index = tmp_path / "sounds", tmp_path / "index"
    sounds.mkdir()
    for rel in ("widelands/data/sound/farm/sheep_00.ogg", "widelands/data/sound/animals/bird1_00.ogg",
                "widelands/data/sound/animals/frog.ogg"):
        shutil.copyfile(sfx_dir / rel, sounds / Path(rel).name)
    old = ZeroShotModel(ZeroShotConfig(text_bridge=""), source="default")  # what "default" used to be
    with Library.open(index, old, create=True) as lib:
        lib.update([sounds], workers=0, progress=False)
    before, meta = _rows_and_meta(index, forget_audio_id=True)
    assert meta["model_id"] == old.model_id and len(before) == 3
    default = load_model()
    assert default.model_id != old.model_id and default.audio_model_id == old.audio_model_id
    with Library.open(index, default, read_only=True) as lib:  # searches, writes nothing, keeps its model
        assert Path(lib.search("a sheep bleating", k=3, mode="audio")[0].path).name == "sheep_00.ogg"
        assert not lib.refresh() and lib.model is default
    assert _rows_and_meta(index) == (before, meta)
    with Library.open(index) as lib:  # loads the model the index names: "default"
        assert lib.model.model_id == default.model_id == lib.model_id
        report = lib.update([sounds], workers=0, progress=False)
        assert (report.unchanged, report.embedded, report.added) == (3, 0, 0)
        assert Path(lib.search("a sheep bleating", k=3, mode="audio")[0].path).name == "sheep_00.ogg"
    after, meta = _rows_and_meta(index)
    assert after == before  # no file re-embedded
    assert meta["model_id"] == default.model_id and meta["audio_model_id"] == default.audio_model_id
    with pytest.raises(ModelMismatchError, match=f"built with model {default.model_id}.*--rebuild"):
        Library.open(index, ZeroShotModel(ZeroShotConfig(pad_to_s=10.0)))  # another audio side
