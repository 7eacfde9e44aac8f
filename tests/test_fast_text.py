"""The torch-free text path (`NumpyTextEncoder`, `text_backend="numpy"`) gives today's vectors and results."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audiofind.models import load_model, sentence_encoder
from audiofind.models.encoders.minilm import NumpyTextEncoder, read_safetensors, resolve_text_model
from audiofind.models.encoders.text import TextEncoder

ROOT = Path(__file__).resolve().parents[1]

QUERIES = [
    "a dog barking", "rain falling on a tin roof", "footsteps on gravel, then a door slams",
    "Sheep bleating in a field", "an electric guitar solo", "glass breaking", "sword attack",
    "café ambience with clinking cups", "ÉLECTRIQUE buzz", "日本語のテキスト", "a laser 🙂 zap",
    "x", "  leading and trailing blanks  ", "a very long description of a sound " * 12,
    "cattle_05", "male death 3", "UI click soft",
]


@pytest.fixture(scope="module")
def encoders() -> tuple[NumpyTextEncoder, TextEncoder]:
    return NumpyTextEncoder(), TextEncoder()


def sfx_names(sfx_dir: Path, n: int = 40) -> list[str]:
    """Real clip-name texts (the words name vectors are computed from) from the sfx-dev manifest."""
    with open(sfx_dir / "manifest.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [f"{r['path_label']} {r['dir_context'].replace('/', ' ')}".strip() for r in rows[::len(rows) // n]]


def test_the_numpy_sentence_vectors_equal_the_torch_ones(encoders, sfx_dir):
    fast, torch_path = encoders
    texts = QUERIES + sfx_names(sfx_dir)
    got, want = fast.encode(texts), torch_path.encode(texts)
    assert got.shape == want.shape == (len(texts), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(fast.encode(texts[:1]), got[:1], atol=1e-6)  # batching changes nothing
    assert fast.encode([]).shape == (0, 384)


def test_the_tokens_are_the_transformers_tokens(encoders):
    fast, torch_path = encoders
    want = torch_path.tokenizer(QUERIES, truncation=True, max_length=64)["input_ids"]
    assert [e.ids for e in fast.tokenizer.encode_batch(QUERIES)] == want


def test_the_zero_shot_query_vectors_equal_the_torch_ones(sfx_dir):
    fast, torch_path = load_model(text_backend="numpy"), load_model()
    texts = QUERIES + sfx_names(sfx_dir, 20)
    # the class phrases themselves, encoded each way (the query side below shares one cached copy)
    phrases = [t for p in fast.vocab.texts(fast.config.label_style) for t in p][:200]
    np.testing.assert_allclose(fast.text_encoder.encode(phrases), torch_path.text_encoder.encode(phrases),
                               atol=1e-4)
    got, want = fast.encode_text(texts), torch_path.encode_text(texts)
    assert got.shape == want.shape == (len(texts), 527)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert isinstance(sentence_encoder(fast), NumpyTextEncoder)  # one MiniLM serves both search sides
    assert "tagger" not in vars(fast)  # a text query never loads the tagger


def test_the_numpy_encoder_refuses_other_models(tmp_path):
    with pytest.raises(ValueError, match="only all-MiniLM-L6-v2"):
        NumpyTextEncoder("bert-base-uncased")
    with pytest.raises(ValueError, match="text_backend"):
        load_model(text_backend="jax")


def test_safetensors_are_read_without_copying():
    tensors = read_safetensors(Path(resolve_text_model("all-MiniLM-L6-v2")) / "model.safetensors")
    words = tensors["embeddings.word_embeddings.weight"]
    assert words.shape == (30522, 384) and words.dtype == np.float32 and not words.flags.writeable


def _run_without_torch(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`audiofind ARGS` in a fresh interpreter; also returns which heavy modules it had imported."""
    probe = ("import atexit, json, sys\n"
             "heavy = ('torch', 'transformers', 'numpy', 'faiss')\n"
             "atexit.register(lambda: print('MODULES=' + json.dumps([m for m in heavy if m in sys.modules]),"
             " file=sys.stderr))\n"
             "sys.argv = ['probe', *sys.argv[1:]]\n"  # not 'audiofind': that ends with os._exit, no atexit
             "from audiofind.cli.main import main\n"
             "main()\n")
    proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    line = [x for x in proc.stderr.splitlines() if x.startswith("MODULES=")]
    assert line, proc.stderr
    return proc, json.loads(line[-1].removeprefix("MODULES="))


def test_help_imports_nothing_heavy():
    proc, modules = _run_without_torch("--help")
    assert proc.returncode == 0 and "search" in proc.stdout
    assert modules == []


def test_a_cold_cli_search_never_imports_torch_and_finds_what_the_api_finds(sfx_dir, tmp_path):
    from audiofind.library import Library

    sounds = tmp_path / "sounds"
    for rel in ["widelands/data/sound/farm/sheep_00.ogg", "widelands/data/sound/animals/bird1_00.ogg",
                "0ad/audio/actor/fauna/animal/chicken_10.ogg", "0ad/audio/attack/weapon/sword_attack_03.ogg",
                "minetest/games/minetest_game/mods/default/sounds/default_break_glass.1.ogg",
                "0ad/audio/actor/human/movement/Footsteps/Footstep_Gravel_Walking.ogg"]:
        (sounds / Path(rel).name).parent.mkdir(parents=True, exist_ok=True)
        (sounds / Path(rel).name).write_bytes((sfx_dir / rel).read_bytes())
    index = tmp_path / "index"
    queries = ["sheep bleating", "birds singing", "glass breaking", "a sword fight", "walking on gravel"]
    with Library.open(index, create=True) as lib:  # the torch path, as the Python API runs it
        lib.update([sounds], workers=0, progress=False)
        expected = {mode: [lib.search(q, k=4, mode=mode) for q in queries] for mode in ("hybrid", "audio")}
    listing = tmp_path / "queries.txt"
    listing.write_text("\n".join(queries), encoding="utf-8")
    for mode, want in expected.items():
        proc, modules = _run_without_torch("search", "--queries", str(listing), "--index", str(index),
                                           "--json", "-k", "4", "--mode", mode)
        assert proc.returncode == 0, proc.stderr
        assert "torch" not in modules and "transformers" not in modules
        got = [json.loads(line)["results"] for line in proc.stdout.splitlines()]
        assert [[r["id"] for r in g] for g in got] == [[r.id for r in w] for w in want]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose([r["score"] for r in g], [r.score for r in w], atol=1e-4)
