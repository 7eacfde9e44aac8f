"""Challenge evaluation: the `evaluate --scores` contract, predict/ensemble score files, both protocols."""

from __future__ import annotations

import ast
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from clotho_fixtures import make_clotho_tree, write_multi_positive_csv
from typer.testing import CliRunner

from audiofind.cli import evaluate as cli_eval
from audiofind.models import AudioEmbeddings
from audiofind.research import evaluation as ev
from audiofind.research.metrics import evaluate_score_file, read_score_file

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("AUDIOFIND_ASSETS", str(REPO_ROOT.parent / "shared" / "assets"))

CONTRACT_KEYS = {"mAP@16", "mAP@10", "R@1", "R@5", "R@10"}
runner = CliRunner()


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clotho_dir(shared_dir: Path) -> Path:
    """The real Clotho CSVs and the DCASE 2025 multi-positive file."""
    folder = shared_dir / "data" / "clotho"
    if not (folder / "dcase2025_eval_multiple_positives.csv").is_file():
        pytest.skip(f"Clotho annotation files not found in {folder}")
    return folder


@pytest.fixture(scope="module")
def real_eval(clotho_dir: Path) -> tuple[list[str], list[str], list[list[str]]]:
    """(1,037 queries, 1,045 evaluation file names, relevant names per query) from the real files."""
    with open(clotho_dir / "clotho_captions_evaluation.csv", newline="", encoding="utf-8") as f:
        files = [row["file_name"] for row in csv.DictReader(f)]
    with open(clotho_dir / "dcase2025_eval_multiple_positives.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["query"] for r in rows], files, [ast.literal_eval(r["audio_filenames"]) for r in rows]


@pytest.fixture(scope="module")
def model(assets_dir: Path):
    """The real default model, loaded once for the module."""
    from audiofind.models import load_model

    return load_model()


@pytest.fixture
def cli_model(model, monkeypatch: pytest.MonkeyPatch):
    """Make the CLI reuse the loaded default model instead of loading it per command."""

    def load(name: str):
        assert name == "default", name
        return model

    monkeypatch.setattr(cli_eval, "_load_model", load)
    return model


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory):
    """A 4-clip synthetic Clotho evaluation split with real names and captions."""
    root = tmp_path_factory.mktemp("clotho") / "clotho"
    return make_clotho_tree(root, 4, splits=("evaluation",), seconds=(0.5, 1.5))


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    """Run `python -m audiofind.cli.evaluate ...` as an outside check would."""
    return subprocess.run(
        [sys.executable, "-m", "audiofind.cli.evaluate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def invoke(*args: str | Path):
    """Run a command in-process through the Typer app."""
    return runner.invoke(cli_eval.app, [str(a) for a in args])


def one_json_object(stdout: str) -> dict:
    """Parse stdout, which must be exactly one JSON object."""
    obj, end = json.JSONDecoder().raw_decode(stdout.strip())
    assert end == len(stdout.strip()), f"trailing output after the JSON object: {stdout[end:]!r}"
    assert isinstance(obj, dict)
    return obj


# ---------------------------------------------------------------------------------------------
# the outside contract: evaluate --scores --annotations --json
# ---------------------------------------------------------------------------------------------


def test_contract_random_scores_multi_positive_and_clotho(
    tmp_path: Path, clotho_dir: Path, real_eval
) -> None:
    queries, files, _ = real_eval
    assert (len(queries), len(files)) == (1037, 1045)
    scores = np.random.default_rng(0).random((len(queries), len(files))).astype(np.float32)
    path = tmp_path / "random.csv"
    ev.write_score_file(path, queries, files, scores)
    for ann in ("dcase2025_eval_multiple_positives.csv", "clotho_captions_evaluation.csv"):
        proc = run_cli("evaluate", "--scores", path, "--annotations", clotho_dir / ann, "--json")
        assert proc.returncode == 0, proc.stderr
        got = one_json_object(proc.stdout)
        assert set(got) == CONTRACT_KEYS
        assert all(isinstance(v, float) for v in got.values())
        assert got == pytest.approx(evaluate_score_file(path, clotho_dir / ann), abs=1e-12)
        assert 0 <= got["mAP@16"] < 0.05  # random ranking


def test_contract_perfect_scores(tmp_path: Path, clotho_dir: Path, real_eval) -> None:
    queries, files, relevant = real_eval
    col = {name: j for j, name in enumerate(files)}
    scores = np.zeros((len(queries), len(files)), dtype=np.float32)
    for i, names in enumerate(relevant):
        scores[i, [col[n] for n in names]] = 1.0
    path = tmp_path / "perfect.csv"
    ev.write_score_file(path, queries, files, scores)
    proc = run_cli(
        "evaluate",
        "--scores",
        path,
        "--annotations",
        clotho_dir / "dcase2025_eval_multiple_positives.csv",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    got = one_json_object(proc.stdout)
    assert got["mAP@16"] == 1.0
    assert got["R@1"] == got["R@5"] == got["R@10"] == 1.0


def test_contract_perfect_single_positive_with_clotho_captions(
    tmp_path: Path, clotho_dir: Path, real_eval
) -> None:
    _, files, _ = real_eval
    with open(clotho_dir / "clotho_captions_evaluation.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:60]
    captions = [r[f"caption_{k}"] for r in rows for k in (1, 3)]
    scores = np.zeros((len(captions), len(files)), dtype=np.float32)
    for i in range(len(captions)):
        scores[i, files.index(rows[i // 2]["file_name"])] = 1.0
    path = tmp_path / "perfect_single.csv"
    ev.write_score_file(path, captions, files, scores)
    result = invoke(
        "evaluate", "--scores", path, "--annotations", clotho_dir / "clotho_captions_evaluation.csv", "--json"
    )
    assert result.exit_code == 0, result.stderr
    assert one_json_object(result.stdout) == {k: 1.0 for k in CONTRACT_KEYS}


def test_contract_errors_are_one_line_exit_2(tmp_path: Path, clotho_dir: Path, real_eval) -> None:
    ann = clotho_dir / "dcase2025_eval_multiple_positives.csv"
    queries, files, _ = real_eval
    bad = tmp_path / "bad.csv"
    bad.write_text("caption,a.wav,b.wav\n" + f'"{queries[0]}",0.5,oops\n', encoding="utf-8")
    proc = run_cli("evaluate", "--scores", bad, "--annotations", ann, "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.csv" in lines[0] and "oops" in lines[0]

    cases = {
        "missing.csv": (None, "missing.csv"),
        "header.csv": ("query,a.wav\nx,1\n", "header must start with 'caption'"),
        "unknown.csv": ("caption,a.wav\nnot a real query,1\n", "not in the annotations"),
        "ragged.csv": ("caption,a.wav,b.wav\nx,1\n", "fields but the header has 3"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text, encoding="utf-8")
        result = invoke("evaluate", "--scores", path, "--annotations", ann, "--json")
        assert result.exit_code == 2, (name, result.stdout)
        assert result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, result.stderr

    # a relevant file the score file lacks is named
    partial = tmp_path / "partial.csv"
    ev.write_score_file(partial, queries[:3], files[:5], np.zeros((3, 5), np.float32))
    result = invoke("evaluate", "--scores", partial, "--annotations", ann, "--json")
    assert result.exit_code == 2 and "is not a column of the score file" in result.stderr

    result = invoke("evaluate", "--scores", partial, "--json")
    assert result.exit_code == 2 and "--annotations" in result.stderr
    result = invoke("evaluate", "--scores", partial, "--annotations", ann, "--clotho-root", tmp_path)
    assert result.exit_code == 2 and "drop --model and --clotho-root" in result.stderr


def test_table_lists_each_protocol() -> None:
    table = cli_eval._format_table({"single_positive": {"R@1": 0.5, "mAP@10": 0.25}, "multi_positive": None})
    assert "single-positive" in table and "multi-positive" not in table
    assert "50.00" in table and "25.00" in table and "mAP@16" not in table


def test_evaluate_scores_prints_a_table_without_json(tmp_path: Path, clotho_dir: Path, real_eval) -> None:
    queries, files, _ = real_eval
    path = tmp_path / "s.csv"
    ev.write_score_file(path, queries[:2], files, np.random.default_rng(1).random((2, len(files))))
    result = invoke(
        "evaluate", "--scores", path, "--annotations", clotho_dir / "dcase2025_eval_multiple_positives.csv"
    )
    assert result.exit_code == 0, result.stderr
    assert "mAP@16" in result.stdout and "R@10" in result.stdout and "{" not in result.stdout


# ---------------------------------------------------------------------------------------------
# score and ranking files
# ---------------------------------------------------------------------------------------------


def test_score_file_round_trips_exactly_with_awkward_captions(tmp_path: Path) -> None:
    captions = ['A dog barks, then "woof" again', "semi;colon and 'quote'", "line\nbreak", "  spaced  "]
    files = ["a,b.wav", "Pensol - le Moulin cours d&#39;eau.wav", 'q"uote.wav']
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        scores = rng.standard_normal((4, 3)).astype(dtype)
        ev.write_score_file(tmp_path / "s.csv", captions, files, scores)
        got_captions, got_files, got = read_score_file(tmp_path / "s.csv")
        assert got_captions == captions and got_files == files
        np.testing.assert_array_equal(got.astype(dtype), scores)  # same float32 / float64 back


def test_score_file_refuses_what_cannot_be_read_back(tmp_path: Path) -> None:
    out = tmp_path / "x.csv"
    with pytest.raises(ValueError, match="duplicate caption 'a'"):
        ev.write_score_file(out, ["a", "a"], ["f.wav"], np.zeros((2, 1)))
    with pytest.raises(ValueError, match="duplicate file name"):
        ev.write_score_file(out, ["a"], ["f.wav", "f.wav"], np.zeros((1, 2)))
    with pytest.raises(ValueError, match="shape"):
        ev.write_score_file(out, ["a"], ["f.wav"], np.zeros((2, 1)))
    with pytest.raises(ValueError, match="not all finite"):
        ev.write_score_file(out, ["a", "b"], ["f.wav"], np.array([[0.0], [np.nan]]))
    assert not out.exists()


def test_ranking_breaks_ties_by_column_like_the_metrics(tmp_path: Path) -> None:
    scores = np.array([[0.1, 0.9, 0.9, 0.5], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(ev.rank_candidates(scores, 3), [[1, 2, 3], [0, 1, 2]])
    assert ev.rank_candidates(scores, 10).shape == (2, 4)
    ev.write_ranking(tmp_path / "r.csv", ["q1", "q,2"], ["a.wav", "b.wav", "c.wav", "d.wav"], scores, top_k=2)
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["caption", "file_name_1", "file_name_2"],
        ["q1", "b.wav", "c.wav"],
        ["q,2", "a.wav", "b.wav"],
    ]
    with pytest.raises(ValueError, match="top_k"):
        ev.rank_candidates(scores, 0)


def test_read_queries_formats(tmp_path: Path, clotho_dir: Path) -> None:
    (tmp_path / "q.csv").write_text('id,caption\n1,"a, b"\n2,c\n3,c\n', encoding="utf-8")
    assert ev.read_queries(tmp_path / "q.csv") == ["a, b", "c"]
    assert len(ev.read_queries(clotho_dir / "dcase2025_eval_multiple_positives.csv")) == 1037
    assert len(ev.read_queries(clotho_dir / "clotho_captions_evaluation.csv")) == 5225
    (tmp_path / "q.txt").write_text("dog barking\n\n  rain on a roof \n", encoding="utf-8")
    assert ev.read_queries(tmp_path / "q.txt") == ["dog barking", "rain on a roof"]
    (tmp_path / "bad.csv").write_text("text,x\nhello,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.csv: line 1: .*no 'caption' or 'query' column"):
        ev.read_queries(tmp_path / "bad.csv")
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no queries"):
        ev.read_queries(tmp_path / "empty.txt")


# ---------------------------------------------------------------------------------------------
# ensembles
# ---------------------------------------------------------------------------------------------


def test_combine_scores_by_hand() -> None:
    a = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])
    b = np.array([[3.0, 2.0, 1.0], [0.0, 0.0, 6.0]])
    np.testing.assert_allclose(ev.combine_scores([a, b], "mean"), [[2, 2, 2], [1, 1, 4]])
    # [1,2,3] -> z [-1.2247, 0, 1.2247] and [3,2,1] mirrors it; flat [2,2,2] -> 0;
    # [0,0,6] -> [-.7071, -.7071, 1.4142]
    z = ev.combine_scores([a, b], "zscore")
    np.testing.assert_allclose(z, [[0, 0, 0], [-0.35355339, -0.35355339, 0.70710678]], atol=1e-8)
    # z-scoring forgets each model's scale and offset per query
    np.testing.assert_allclose(ev.combine_scores([a, 10 * b + 3], "zscore"), z, atol=1e-12)
    np.testing.assert_array_equal(ev.combine_scores([a], "mean"), a)


def test_combine_scores_errors() -> None:
    a = np.zeros((2, 3))
    with pytest.raises(ValueError, match="unknown combine method 'max'"):
        ev.combine_scores([a, a], "max")
    with pytest.raises(ValueError, match="no score matrices"):
        ev.combine_scores([], "mean")
    with pytest.raises(ValueError, match=r"matrix 1 has shape \(3, 2\)"):
        ev.combine_scores([a, np.zeros((3, 2))], "mean")
    with pytest.raises(ValueError, match="matrix 1 contains non-finite"):
        ev.combine_scores([a, np.full((2, 3), np.inf)], "zscore")


def test_ensemble_cli_aligns_and_combines_score_files(tmp_path: Path) -> None:
    captions, files = ["q one", "q, two", 'q "three"'], ["a.wav", "b.wav", "c.wav", "d.wav"]
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    ev.write_score_file(tmp_path / "a.csv", captions, files, a)
    rows, cols = [2, 0, 1], [3, 1, 0, 2]  # b.csv lists the same table in another order
    ev.write_score_file(
        tmp_path / "b.csv", [captions[i] for i in rows], [files[j] for j in cols], b[np.ix_(rows, cols)]
    )
    for method in ("mean", "zscore"):
        out = tmp_path / f"{method}.csv"
        result = invoke(
            "ensemble", "--scores", tmp_path / "a.csv", tmp_path / "b.csv", "--method", method, "--out", out
        )
        assert result.exit_code == 0, result.stderr
        got_captions, got_files, got = read_score_file(out)
        assert (got_captions, got_files) == (captions, files)
        np.testing.assert_allclose(got, ev.combine_scores([a, b], method), rtol=0, atol=1e-15)

    ev.write_score_file(tmp_path / "c.csv", captions, ["a.wav", "b.wav", "c.wav", "x.wav"], a)
    result = invoke(
        "ensemble", "--scores", tmp_path / "a.csv", tmp_path / "c.csv", "--out", tmp_path / "o.csv"
    )
    assert result.exit_code == 2
    assert "column 'x.wav' of" in result.stderr and "c.csv" in result.stderr and "a.csv" in result.stderr
    ev.write_score_file(tmp_path / "d.csv", captions[:2] + ["other"], files, a)
    result = invoke(
        "ensemble", "--scores", tmp_path / "a.csv", tmp_path / "d.csv", "--out", tmp_path / "o.csv"
    )
    assert result.exit_code == 2 and "caption 'other' of" in result.stderr
    result = invoke(
        "ensemble", "--scores", tmp_path / "a.csv", "--method", "max", "--out", tmp_path / "o.csv"
    )
    assert result.exit_code == 2 and "--method must be one of mean, zscore" in result.stderr
    result = invoke("ensemble", "--out", tmp_path / "o.csv")
    assert result.exit_code == 2 and "exactly one" in result.stderr


# ---------------------------------------------------------------------------------------------
# any EmbeddingModel: a toy one pins down batching, resampling and the protocols exactly
# ---------------------------------------------------------------------------------------------


class ToyModel:
    """A tiny EmbeddingModel: a clip is its length in seconds on a circle; a query names a length."""

    model_id, source, dim, sample_rate = "toy", "toy", 2, 16_000

    def __init__(self) -> None:
        self.batches: list[int] = []

    @staticmethod
    def _point(seconds: np.ndarray) -> np.ndarray:
        angle = np.asarray(seconds, dtype=np.float64) * 0.5
        return np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)

    def embed_audio(self, waves: list[np.ndarray]) -> AudioEmbeddings:
        self.batches.append(len(waves))
        vectors = self._point(np.array([len(w) / self.sample_rate for w in waves]))
        return AudioEmbeddings(vectors=vectors, tags=[[] for _ in waves])

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return self._point(np.array([float(t.split()[0]) for t in texts]))


def test_toy_model_embeddings_similarities_and_protocols(tmp_path: Path, tone_file) -> None:
    from audiofind.research.data import CaptionedClip

    lengths = [1.0, 2.0, 3.0, 4.0, 5.0]
    clips = [
        CaptionedClip(
            tone_file(f"c{i}.wav", duration=s, sample_rate=44_100), f"c{i}.wav", [f"{s} s", f"{s} sec"], "t"
        )
        for i, s in enumerate(lengths)
    ]
    toy = ToyModel()
    audio = ev.embed_clips(toy, clips, batch_size=2, progress=False)
    assert toy.batches == [2, 2, 1] and audio.shape == (5, 2)
    np.testing.assert_allclose(audio, ToyModel._point(lengths), atol=1e-3)  # resampled to 16 kHz
    sims = ev.similarity_matrix(toy, ["3.0 s", "1.0 s"], [c.audio_path for c in clips], progress=False)
    assert sims.shape == (2, 5) and list(sims.argmax(axis=1)) == [2, 0]

    queries, relevant = ev.clotho_queries(clips)
    assert queries[:3] == ["1.0 s", "1.0 sec", "2.0 s"] and relevant[:3] == [[0], [0], [1]]
    ann = tmp_path / "mp.csv"
    ann.write_text("query,audio_filenames\n2.0 s,\"['c1.wav', 'c4.wav']\"\n", encoding="utf-8")
    result = ev.evaluate_model(toy, clips, ann, progress=False)
    assert result["single_positive"] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "mAP@10": 1.0}
    # query "2.0 s": c1 ranks 1st, c4 (5 s) ranks 5th -> AP = (1/1 + 2/5) / 2
    assert result["multi_positive"] == pytest.approx(
        {"mAP@16": 0.7, "mAP@10": 0.7, "R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
    )

    ann.write_text("query,audio_filenames\n2.0 s,\"['c1.wav', 'elsewhere.wav']\"\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match="1 relevant files are not among the 5 candidate clips.*elsewhere.wav"
    ):
        ev.evaluate_model(toy, clips, ann, progress=False)


# ---------------------------------------------------------------------------------------------
# the real default model on a synthetic Clotho tree
# ---------------------------------------------------------------------------------------------


def test_predict_clotho_split_writes_a_readable_score_file(tmp_path: Path, tree, cli_model) -> None:
    out, ranking = tmp_path / "scores.csv", tmp_path / "ranking.csv"
    result = invoke(
        "predict", "--clotho-root", tree.root, "--split", "evaluation", "--out", out,
        "--ranking", ranking, "--top-k", "3", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    files = tree.files("evaluation")
    captions = [c for clip in tree.clips for c in clip.captions]
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", *files]  # the baseline's header; columns as the captions CSV spells them
    assert [r[0] for r in rows[1:]] == captions  # every caption, verbatim, in CSV order
    assert any("," in c for c in captions) and any("&#39;" in f or "&amp;" in f for f in files)
    got_captions, got_files, scores = read_score_file(out)
    assert (got_captions, got_files, scores.shape) == (captions, files, (len(captions), len(files)))
    assert np.all(np.abs(scores) <= 1.0 + 1e-5)
    expected = ev.similarity_matrix(cli_model, captions, [c.audio_path for c in tree.clips], progress=False)
    np.testing.assert_allclose(scores, expected, atol=1e-5)

    with open(ranking, newline="", encoding="utf-8") as f:
        ranked = list(csv.reader(f))
    assert ranked[0] == ["caption", "file_name_1", "file_name_2", "file_name_3"]
    best = scores.argmax(axis=1)
    assert [r[1] for r in ranked[1:]] == [files[j] for j in best]

    result = invoke(
        "evaluate", "--scores", out, "--annotations", tree.root / "clotho_captions_evaluation.csv", "--json"
    )
    assert result.exit_code == 0, result.stderr
    metrics = one_json_object(result.stdout)
    assert set(metrics) == CONTRACT_KEYS and metrics["R@5"] == 1.0  # 4 candidates


def test_predict_and_evaluate_multi_positive_on_tree(tmp_path: Path, tree, cli_model) -> None:
    ann = write_multi_positive_csv(tree, tmp_path / "mp.csv")
    with open(ann, newline="", encoding="utf-8") as f:
        queries = [r["query"] for r in csv.DictReader(f)]
    if not queries:
        pytest.skip("the tree holds no complete multi-positive relevance list")
    out = tmp_path / "mp_scores.csv"
    result = invoke("predict", "--clotho-root", tree.root, "--annotations", ann, "--out", out, "-q")
    assert result.exit_code == 0, result.stderr
    assert read_score_file(out)[0] == queries
    from_file = evaluate_score_file(out, ann)

    result = invoke("evaluate", "--clotho-root", tree.root, "--annotations", ann, "--json", "-q")
    assert result.exit_code == 0, result.stderr
    both = one_json_object(result.stdout)
    assert set(both) == {"single_positive", "multi_positive"}
    assert set(both["single_positive"]) == {"R@1", "R@5", "R@10", "mAP@10"}
    assert both["multi_positive"] == pytest.approx(from_file, abs=1e-6)

    # the full annotation file needs clips the tree does not have
    result = invoke(
        "evaluate",
        "--clotho-root",
        tree.root,
        "--annotations",
        tree.shared / "dcase2025_eval_multiple_positives.csv",
    )
    assert result.exit_code == 2 and "not among the 4 candidate clips" in result.stderr


def test_predict_queries_and_audio_dir_and_model_ensemble(tmp_path: Path, tree, cli_model) -> None:
    queries = tmp_path / "queries.csv"
    captions = ['A dog barks, then "woof" again', "rain on a tin roof", "a bell rings; twice"]
    with open(queries, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["caption"], *([c] for c in captions)])
    out = tmp_path / "q_scores.csv"
    audio_dir = tree.root / "evaluation"
    result = invoke("predict", "--queries", queries, "--audio-dir", audio_dir, "--out", out, "-q")
    assert result.exit_code == 0, result.stderr
    got_captions, got_files, scores = read_score_file(out)
    assert got_captions == captions
    assert got_files == sorted(p.name for p in audio_dir.glob("*.wav"))

    combined = tmp_path / "ens.csv"
    result = invoke(
        "ensemble", "--models", "default", "default", "--method", "zscore",
        "--queries", queries, "--audio-dir", audio_dir, "--out", combined, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    np.testing.assert_allclose(read_score_file(combined)[2], ev.combine_scores([scores], "zscore"), atol=1e-5)

    for args, expected in [
        (("--queries", queries), "--audio-dir"),
        (("--queries", queries, "--audio-dir", audio_dir, "--clotho-root", tree.root), "not both"),
        (("--queries", queries, "--audio-dir", tmp_path / "nowhere"), "does not exist"),
        (("--queries", tmp_path / "none.csv", "--audio-dir", audio_dir), "none.csv"),
        (("--clotho-root", tmp_path / "no-clotho"), "not found"),
    ]:
        result = invoke("predict", *args, "--out", tmp_path / "x.csv", "-q")
        assert result.exit_code == 2, (args, result.stdout)
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_register_adds_the_three_commands() -> None:
    app = typer.Typer()

    @app.command()
    def other() -> None:
        """Another command of the main CLI."""

    cli_eval.register(app)
    names = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert {"evaluate", "predict", "ensemble", "other"} <= names
