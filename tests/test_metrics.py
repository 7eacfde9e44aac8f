"""Tests for audiofind.research.metrics: hand-worked cases, a literal brute-force reference on the real
DCASE 2025 annotation file, and the challenge score/annotation file readers."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np
import pytest

from audiofind.research.metrics import (
    average_precision_at_k,
    evaluate_score_file,
    mean_average_precision_at_k,
    read_relevance,
    read_score_file,
    recall_at_k,
    relevant_ranks,
    retrieval_metrics,
)

shared_dir = Path(__file__).resolve().parents[1].parent / "shared"
clotho_dir = shared_dir / "data" / "clotho"
MULTI_POSITIVES = clotho_dir / "dcase2025_eval_multiple_positives.csv"
EVAL_CAPTIONS = clotho_dir / "clotho_captions_evaluation.csv"
DEV_CAPTIONS = clotho_dir / "clotho_captions_development.csv"

needs_clotho = pytest.mark.skipif(
    not (MULTI_POSITIVES.is_file() and EVAL_CAPTIONS.is_file()), reason="shared Clotho files not present"
)


# ---------------------------------------------------------------------------------------------
# literal reference implementation: sort, walk the list
# ---------------------------------------------------------------------------------------------


def ref_ranking(row: np.ndarray) -> list[int]:
    """Candidates in ranked order: descending score, ties by column order (Python's sort is stable)."""
    values = [float(v) for v in row]
    return sorted(range(len(values)), key=lambda j: -values[j])


def ref_ap(ranking: list[int], relevant: set[int], k: int) -> float:
    """Walk the top k, adding precision at every relevant hit; divide by all relevant items."""
    hits = 0
    total = 0.0
    for position, candidate in enumerate(ranking[:k], start=1):
        if candidate in relevant:
            hits += 1
            total += hits / position
    return total / len(relevant)


def ref_hit(ranking: list[int], relevant: set[int], k: int) -> bool:
    """Is any relevant item among the first k?"""
    return any(candidate in relevant for candidate in ranking[:k])


def ref_metrics(scores: np.ndarray, relevant: list[list[int]]) -> tuple[dict[str, float], list[list[int]]]:
    """Literal R@1/5/10, mAP@10/16 and the relevant ranks, one query at a time."""
    sums = dict.fromkeys(["R@1", "R@5", "R@10", "mAP@10", "mAP@16"], 0.0)
    all_ranks = []
    for row, rel in zip(scores, relevant, strict=True):
        ranking = ref_ranking(row)
        rel_set = set(rel)
        all_ranks.append([pos for pos, c in enumerate(ranking, start=1) if c in rel_set])
        for k in (1, 5, 10):
            sums[f"R@{k}"] += ref_hit(ranking, rel_set, k)
        for k in (10, 16):
            sums[f"mAP@{k}"] += ref_ap(ranking, rel_set, k)
    return {key: value / len(relevant) for key, value in sums.items()}, all_ranks


# ---------------------------------------------------------------------------------------------
# hand-computed cases
# ---------------------------------------------------------------------------------------------


def test_ap_three_relevant_at_ranks_1_3_6():
    ranks = np.array([1, 3, 6])
    assert average_precision_at_k(ranks, 3, 10) == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)
    assert average_precision_at_k(ranks, 3, 5) == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision_at_k(ranks, 3, 1) == pytest.approx(1 / 3)
    # the normaliser is |relevant|, not min(k, |relevant|): k=1 does not give 1.0
    assert average_precision_at_k(np.array([1, 2]), 2, 1) == pytest.approx(0.5)


def test_ap_normaliser_counts_relevant_items_outside_given_ranks():
    # 4 relevant items, only 2 of them listed (the others ranked beyond anything we looked at)
    assert average_precision_at_k(np.array([2, 4]), 4, 10) == pytest.approx((1 / 2 + 2 / 4) / 4)


def test_relevant_at_rank_11_scores_zero_at_10():
    scores = np.array([[float(20 - j) for j in range(15)]])  # column j has rank j+1
    ranks = relevant_ranks(scores, [[10]])
    assert ranks[0].tolist() == [11]
    assert average_precision_at_k(ranks[0], 1, 10) == 0.0
    assert average_precision_at_k(ranks[0], 1, 11) == pytest.approx(1 / 11)
    assert recall_at_k(ranks, 10) == 0.0
    assert recall_at_k(ranks, 11) == 1.0
    m = retrieval_metrics(scores, [[10]])
    assert m == {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "mAP@10": 0.0, "mAP@16": pytest.approx(1 / 11)}


def test_relevant_ranks_from_scores_match_hand_ranking():
    # descending order of scores: col 4 (0.9), col 1 (0.8), col 3 (0.5), col 0 (0.3), col 2 (0.1)
    scores = np.array([[0.3, 0.8, 0.1, 0.5, 0.9]])
    ranks = relevant_ranks(scores, [{0, 1, 4}])
    assert ranks[0].tolist() == [1, 2, 4]
    m = retrieval_metrics(scores, [{0, 1, 4}], recall_ks=(1,), map_ks=(3, 5))
    assert m["R@1"] == 1.0
    assert m["mAP@3"] == pytest.approx((1 + 1) / 3)
    assert m["mAP@5"] == pytest.approx((1 + 1 + 3 / 4) / 3)


def test_ties_broken_by_column_order():
    scores = np.array(
        [
            [0.5, 0.5, 0.5, 0.5],  # all tied: rank = column + 1
            [0.1, 0.7, 0.7, 0.2],  # col 1 before col 2
            [0.7, 0.1, 0.7, 0.7],  # cols 0, 2, 3 tied at the top
        ]
    )
    ranks = relevant_ranks(scores, [[2], [2], [3, 1]])
    assert [r.tolist() for r in ranks] == [[3], [2], [3, 4]]
    # float32 input gives the same ties as float64 (no spurious tie-breaking by conversion)
    ranks32 = relevant_ranks(scores.astype(np.float32), [[2], [2], [3, 1]])
    assert [r.tolist() for r in ranks32] == [[3], [2], [3, 4]]
    # a tie at the k boundary: col 0 ties col 1 at the top but comes first, so col 1 is rank 2
    tied = np.array([[1.0, 1.0, 0.0]])
    assert retrieval_metrics(tied, [[1]], recall_ks=(1, 2), map_ks=(1,)) == {
        "R@1": 0.0,
        "R@2": 1.0,
        "mAP@1": 0.0,
    }


def test_single_positive_protocol():
    # 2 clips x 2 captions each; caption i belongs to clip i // 2
    scores = np.array(
        [
            [0.9, 0.1],  # clip 0 at rank 1
            [0.2, 0.4],  # clip 0 at rank 2
            [0.3, 0.3],  # tie: clip 1 at rank 2
            [0.0, 0.8],  # clip 1 at rank 1
        ]
    )
    relevant = [[0], [0], [1], [1]]
    m = retrieval_metrics(scores, relevant, recall_ks=(1, 2), map_ks=(1, 10))
    assert m["R@1"] == pytest.approx(0.5)
    assert m["R@2"] == 1.0
    assert m["mAP@1"] == pytest.approx(0.5)
    assert m["mAP@10"] == pytest.approx((1 + 1 / 2 + 1 / 2 + 1) / 4)  # single positive: mAP = MRR within k


def test_recall_counts_queries_not_items():
    # query 0: relevant at ranks 2 and 3 -> one hit at K=3, counts once; query 1: rank 4 only
    ranks = [np.array([2, 3]), np.array([4])]
    assert recall_at_k(ranks, 1) == 0.0
    assert recall_at_k(ranks, 2) == 0.5
    assert recall_at_k(ranks, 3) == 0.5
    assert recall_at_k(ranks, 4) == 1.0
    assert recall_at_k([np.array([], dtype=int), np.array([1])], 5) == 0.5  # empty list = miss
    assert mean_average_precision_at_k(ranks, [2, 1], 4) == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 / 4) / 2)


def test_invalid_inputs_are_refused():
    scores = np.zeros((3, 4))
    with pytest.raises(ValueError, match="query 1 has no relevant item"):
        retrieval_metrics(scores, [[0], [], [2]])
    with pytest.raises(ValueError, match="query 2: relevant index 4 is out of range"):
        retrieval_metrics(scores, [[0], [1], [4]])
    with pytest.raises(ValueError, match="query 0: relevant index -1"):
        relevant_ranks(scores, [[-1], [1], [2]])
    with pytest.raises(ValueError, match="3 queries"):
        relevant_ranks(scores, [[0], [1]])
    nan_scores = scores.copy()
    nan_scores[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN.*query 2"):
        retrieval_metrics(nan_scores, [[0], [1], [2]])
    with pytest.raises(ValueError, match="2-D"):
        relevant_ranks(np.zeros(4), [[0]])
    with pytest.raises(ValueError, match="k must be a positive"):
        average_precision_at_k(np.array([1]), 1, 0)
    with pytest.raises(ValueError, match="share a rank"):
        average_precision_at_k(np.array([2, 2]), 2, 5)
    with pytest.raises(ValueError, match="n_relevant is 1"):
        average_precision_at_k(np.array([1, 2]), 1, 5)
    with pytest.raises(ValueError, match="1-based"):
        average_precision_at_k(np.array([0]), 1, 5)


def test_perfect_and_reversed_scorers_on_synthetic_data():
    rng = np.random.default_rng(3)
    n_q, n_c = 40, 60
    relevant = [
        sorted(rng.choice(n_c, size=int(rng.integers(1, 6)), replace=False).tolist()) for _ in range(n_q)
    ]
    truth = np.zeros((n_q, n_c))
    for i, rel in enumerate(relevant):
        truth[i, rel] = 1.0
    noise = rng.random((n_q, n_c)) * 0.1
    perfect = retrieval_metrics(truth + noise, relevant)
    assert perfect == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "mAP@10": 1.0, "mAP@16": 1.0}
    reversed_ = retrieval_metrics(-(truth + noise), relevant)
    assert reversed_["R@10"] == 0.0 and reversed_["mAP@16"] == 0.0
    random_ = retrieval_metrics(noise, relevant)
    assert 0.0 < random_["mAP@16"] < 1.0


# ---------------------------------------------------------------------------------------------
# real DCASE 2025 annotation file vs the brute-force reference
# ---------------------------------------------------------------------------------------------


def _eval_file_names() -> list[str]:
    with open(EVAL_CAPTIONS, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "file_name"
    return [r[0] for r in rows[1:]]


def _literal_multi_positives() -> list[tuple[str, list[str]]]:
    with open(MULTI_POSITIVES, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["query", "audio_filenames"]
    return [(q, ast.literal_eval(files)) for q, files in rows[1:]]


@pytest.fixture(scope="module")
def real_multi_positive():
    files = _eval_file_names()
    entries = _literal_multi_positives()
    queries = [q for q, _ in entries]
    relevant = read_relevance(MULTI_POSITIVES, queries, files)
    return queries, files, entries, relevant


@needs_clotho
def test_real_annotation_counts(real_multi_positive):
    queries, files, entries, relevant = real_multi_positive
    assert len(files) == len(set(files)) == 1045
    assert len(queries) == len(relevant) == 1037
    assert sum(len(r) for r in relevant) == 3116
    assert min(len(r) for r in relevant) == 1 and max(len(r) for r in relevant) == 12
    for (_, names), cols in zip(entries, relevant, strict=True):
        assert sorted(files[c] for c in cols) == sorted(names)


@needs_clotho
@pytest.mark.parametrize("decimals", [None, 2, 1, 0])
def test_vectorised_matches_brute_force_on_real_annotations(real_multi_positive, decimals):
    _, files, _, relevant = real_multi_positive
    rng = np.random.default_rng(2025)
    scores = rng.normal(size=(len(relevant), len(files)))
    if decimals is not None:
        scores = np.round(scores, decimals)  # many ties; decimals=0 leaves only ~7 distinct values
    if decimals == 0:
        assert len(np.unique(scores[0])) < 10
    expected, expected_ranks = ref_metrics(scores, relevant)
    got_ranks = relevant_ranks(scores, relevant)
    assert [r.tolist() for r in got_ranks] == expected_ranks
    got = retrieval_metrics(scores, relevant)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    # a mildly informative scorer so that the metrics are not all near zero
    informed = scores.astype(np.float64).copy()
    for i, rel in enumerate(relevant):
        informed[i, rel] += 2.0
    expected, _ = ref_metrics(informed, relevant)
    got = retrieval_metrics(informed, relevant)
    assert expected["mAP@16"] > 0.1  # random scores give ~0.005
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key


@needs_clotho
def test_single_positive_protocol_on_real_eval_split_matches_brute_force():
    files = _eval_file_names()
    with open(EVAL_CAPTIONS, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    captions = [c for r in rows for c in r[1:]]
    relevant = read_relevance(EVAL_CAPTIONS, captions, files)
    assert len(captions) == 5225
    assert relevant == [[i // 5] for i in range(5225)]
    rng = np.random.default_rng(6)
    scores = np.round(rng.random((5225, 1045)), 1)  # heavy ties
    scores[np.arange(5225), [r[0] for r in relevant]] += 0.25
    expected, expected_ranks = ref_metrics(scores, relevant)
    assert [r.tolist() for r in relevant_ranks(scores, relevant)] == expected_ranks
    got = retrieval_metrics(scores, relevant)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key


@needs_clotho
def test_perfect_and_reversed_scorers_on_real_annotations(real_multi_positive):
    _, files, _, relevant = real_multi_positive
    truth = np.zeros((len(relevant), len(files)))
    for i, rel in enumerate(relevant):
        truth[i, rel] = 1.0
    perfect = retrieval_metrics(truth, relevant)
    assert perfect["R@1"] == 1.0 and perfect["R@10"] == 1.0
    assert perfect["mAP@16"] == 1.0  # every query has at most 12 relevant clips
    # mAP@10 < 1 exactly for the queries with more than 10 relevant clips (AP@10 = 10/n there)
    assert perfect["mAP@10"] == pytest.approx(np.mean([min(len(r), 10) / len(r) for r in relevant]))
    assert perfect["mAP@10"] < 1.0
    worst = retrieval_metrics(-truth, relevant)
    assert worst == {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "mAP@10": 0.0, "mAP@16": 0.0}


@pytest.mark.skipif(not DEV_CAPTIONS.is_file(), reason="shared Clotho files not present")
def test_caption_shared_by_two_clips_makes_both_relevant():
    with open(DEV_CAPTIONS, newline="", encoding="utf-8") as f:
        files = [r[0] for r in list(csv.reader(f))[1:]]
    caption = "Crickets chirp in the background as a soft wind blows."
    (cols,) = read_relevance(DEV_CAPTIONS, [caption], files)
    assert sorted(files[c] for c in cols) == [
        "Ambience Night crickets.wav",
        "Crickets calling at night, UK.wav",
    ]


# ---------------------------------------------------------------------------------------------
# score files and annotation files
# ---------------------------------------------------------------------------------------------

FILES = ["a,b.wav", "Scops owl&#39;s call.wav", "plain.wav", 'quote "q".wav']
CAPTIONS = [
    'A dog barks, then "someone" shouts.',
    "Rain falls on a roof, steadily.",
    "Birds sing  while a car passes. ",  # double space and trailing space, as in real Clotho captions
]
SCORES = np.array(
    [
        [0.9, 0.1, 0.5, 0.2],  # relevant {0, 3}: ranks 1, 3
        [0.2, 0.3, 0.4, 0.1],  # relevant {1}: rank 2
        [0.0, 0.0, 0.0, 0.0],  # relevant {2, 3}: all tied -> ranks 3, 4
    ]
)
RELEVANT_NAMES = [["a,b.wav", 'quote "q".wav'], ["Scops owl&#39;s call.wav"], ["plain.wav", 'quote "q".wav']]


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def write_scores(path: Path, captions=CAPTIONS, files=FILES, scores=SCORES) -> Path:
    rows = [["caption", *files]] + [
        [c, *(repr(float(v)) for v in row)] for c, row in zip(captions, scores, strict=True)
    ]
    return write_csv(path, rows)


def expected_small_metrics() -> dict[str, float]:
    return {
        "R@1": 1 / 3,
        "R@5": 1.0,
        "R@10": 1.0,
        "mAP@10": ((1 + 2 / 3) / 2 + 1 / 2 + (1 / 3 + 2 / 4) / 2) / 3,
        "mAP@16": ((1 + 2 / 3) / 2 + 1 / 2 + (1 / 3 + 2 / 4) / 2) / 3,
    }


def test_score_file_round_trip(tmp_path):
    path = write_scores(tmp_path / "scores.csv")
    captions, files, scores = read_score_file(path)
    assert captions == CAPTIONS
    assert files == FILES
    np.testing.assert_array_equal(scores, SCORES)
    assert scores.dtype == np.float64


def test_evaluate_with_multi_positive_annotations(tmp_path):
    scores = write_scores(tmp_path / "scores.csv")
    # the annotation file stores the captions whitespace-normalised; the score file has the raw caption
    ann = write_csv(
        tmp_path / "ann.csv",
        [["query", "audio_filenames"]]
        + [[" ".join(c.split()), repr(names)] for c, names in zip(CAPTIONS, RELEVANT_NAMES, strict=True)],
    )
    assert read_relevance(ann, CAPTIONS, FILES) == [[0, 3], [1], [2, 3]]
    got = evaluate_score_file(scores, ann)
    assert got == pytest.approx(expected_small_metrics())


def test_evaluate_with_clotho_caption_annotations(tmp_path):
    # single positive per caption, plus a caption given for two clips (both become relevant)
    ann = write_csv(
        tmp_path / "clotho.csv",
        [
            ["file_name", "caption_1", "caption_2"],
            ["a,b.wav", CAPTIONS[0], "unused caption one"],
            ["Scops owl&#39;s call.wav", "unused caption two", CAPTIONS[1]],
            ["plain.wav", CAPTIONS[2], "shared caption"],
            ['quote "q".wav', "shared caption", "unused caption three"],
        ],
    )
    captions = [*CAPTIONS, "shared caption"]
    scores = np.vstack([SCORES, [[0.1, 0.2, 0.3, 0.4]]])  # shared caption: relevant {2, 3} at ranks 1, 2
    path = write_scores(tmp_path / "scores.csv", captions=captions, scores=scores)
    assert read_relevance(ann, captions, FILES) == [[0], [1], [2], [2, 3]]
    got = evaluate_score_file(path, ann)
    assert got == pytest.approx(
        {
            "R@1": 2 / 4,
            "R@5": 1.0,
            "R@10": 1.0,
            "mAP@10": (1 + 1 / 2 + 1 / 3 + 1) / 4,
            "mAP@16": (1 + 1 / 2 + 1 / 3 + 1) / 4,
        }
    )


def test_relevance_matches_unescaped_file_names(tmp_path):
    # the score file names the clip with a plain apostrophe; the annotations keep Clotho's "&#39;"
    ann = write_csv(
        tmp_path / "ann.csv", [["query", "audio_filenames"], ["owl", "['Scops owl&#39;s call.wav']"]]
    )
    assert read_relevance(ann, ["owl"], ["x.wav", "Scops owl's call.wav"]) == [[1]]


def test_relevance_errors(tmp_path):
    ann = write_csv(
        tmp_path / "ann.csv",
        [["query", "audio_filenames"], ["q one", "['plain.wav']"], ["q two", "['gone.wav', 'plain.wav']"]],
    )
    with pytest.raises(ValueError, match=r"1 of 2 query captions.*query 1: 'not annotated'"):
        read_relevance(ann, ["q one", "not annotated"], FILES)
    with pytest.raises(ValueError, match=r"ann\.csv: line 3: relevant file 'gone\.wav'.*q two"):
        read_relevance(ann, ["q two"], FILES)
    bad_list = write_csv(tmp_path / "bad_list.csv", [["query", "audio_filenames"], ["q", "plain.wav"]])
    with pytest.raises(ValueError, match=r"bad_list\.csv: line 2, field 'audio_filenames'"):
        read_relevance(bad_list, ["q"], FILES)
    bad_header = write_csv(tmp_path / "bad_header.csv", [["text", "files"], ["q", "['plain.wav']"]])
    with pytest.raises(ValueError, match=r"bad_header\.csv: line 1: unrecognised annotation header"):
        read_relevance(bad_header, ["q"], FILES)


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        ([["query", "a.wav"], ["c", "1"]], r"line 1, column 1: header must start with 'caption'"),
        (
            [["caption", "a.wav", "b.wav"], ["c", "1", "2"], ["d", "1"]],
            r"line 3: 2 fields but the header has 3",
        ),
        (
            [["caption", "a.wav", "b.wav"], ["c", "1", "high"]],
            r"line 2, column 3 \(file 'b\.wav'\): score 'high'",
        ),
        (
            [["caption", "a.wav", "b.wav"], ["c", "nan", "1"]],
            r"line 2, column 2 \(file 'a\.wav'\): score 'nan'",
        ),
        (
            [["caption", "a.wav", "b.wav", "a.wav"], ["c", "1", "2", "3"]],
            r"line 1, column 4: duplicate file name 'a\.wav' \(also column 2\)",
        ),
        ([["caption", "a.wav"]], r"no query rows"),
        ([["caption"], ["c"]], r"line 1: header names no candidate files"),
    ],
)
def test_malformed_score_files(tmp_path, rows, pattern):
    path = write_csv(tmp_path / "broken.csv", rows)
    with pytest.raises(ValueError, match=r"broken\.csv: " + pattern):
        read_score_file(path)


def test_empty_score_file_and_multiline_caption_line_numbers(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv: empty file"):
        read_score_file(empty)
    # a quoted caption spanning two lines: the error names the line the bad record starts on
    path = write_csv(
        tmp_path / "multi.csv",
        [["caption", "a.wav"], ["first\nsecond line", "0.5"], ["ok", "x"]],
    )
    with pytest.raises(ValueError, match=r"multi\.csv: line 4, column 2 \(file 'a\.wav'\): score 'x'"):
        read_score_file(path)


def test_score_file_with_pandas_index_header_reads(tmp_path):
    """The official 2025 baseline writes its table with pandas: first header cell 'index'."""
    path = tmp_path / "baseline.csv"
    path.write_text("index,a.wav,b.wav\nsome caption,0.1,0.9\n", encoding="utf-8")
    captions, files, scores = read_score_file(path)
    assert captions == ["some caption"] and files == ["a.wav", "b.wav"]
    assert scores.tolist() == [[0.1, 0.9]]
