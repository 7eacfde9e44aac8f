"""The `audiofind` command line: a thin layer over `audiofind.library`.

Results go to stdout (pure JSON with --json); progress bars, summaries of problems and errors go to
stderr. Expected failures print one line and exit with status 1 (a missing index, a model mismatch, an
undecodable file) or 2 (bad usage: a missing path, conflicting options), never a traceback.
More commands (serve, train, evaluate, ...) register on `app` as functions or `app.add_typer` sub-apps.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import __version__
from ..paths import display_path, terminal_text
from .failures import UsageError, errors, exit_quickly, fail
from .manage import IndexPathsArg, PruneOpt, path_text, print_index_notes
from .options import DeviceOpt, RayOpt, default_index_help, resolve_device

if TYPE_CHECKING:  # imported inside the commands: `audiofind --help` loads no numpy, FAISS or SQLite code
    from ..library import SearchResult, UpdateReport

app = typer.Typer(
    name="audiofind",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: flags without a value placeholder, nothing cut off
)

QUERY_BATCH = 64  # queries per text-encoder batch for --queries


IndexOpt = Annotated[
    Path | None,
    typer.Option("--index", help=f"Index folder (default: $AUDIOFIND_INDEX, else {default_index_help()}).",
                 show_default=False),
]
TopKOpt = Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many results.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")]
MinDurOpt = Annotated[float | None, typer.Option("--min-duration", help="Only clips at least this long (s).")]
MaxDurOpt = Annotated[float | None, typer.Option("--max-duration", help="Only clips at most this long (s).")]
PrefixOpt = Annotated[
    str | None, typer.Option("--path-prefix", help="Only clips whose absolute path starts with this.")
]
ModeOpt = Annotated[
    str,
    typer.Option("--mode", help="hybrid: by sound and by name/metadata words; audio: by sound only; "
                 "text: by words only."),
]
MinScoreOpt = Annotated[
    float | None,
    typer.Option("--min-score", min=0.0, max=1.0,
                 help="Only results whose match strength (0-1, calibrated: 0.5 = about one in two right) is "
                 "at least this."),
]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="'default' or 'full-window' (zero-shot), or a trained checkpoint."),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"audiofind {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Find sounds by describing them: index your sound folders, then search by text or by example.

    Pretrained model files are looked up in $AUDIOFIND_ASSETS (folders, separated by ':'), then the user
    cache, then downloaded; put `export AUDIOFIND_ASSETS=/path/to/assets` in your shell profile (~/.bashrc)
    so new shells find them. $AUDIOFIND_INDEX sets the default index folder.
    """


def _filters(min_duration: float | None, max_duration: float | None,
             path_prefix: str | None) -> dict[str, Any]:
    """The filters, checked by the same rules as the Python API and the server (a bad one: exit 2)."""
    from ..library.queries import QueryError, check_filters

    try:
        return check_filters(min_duration, max_duration, path_prefix)
    except QueryError as e:
        raise fail(str(e).replace("min_duration", "--min-duration").replace("max_duration", "--max-duration")
                   .replace("path_prefix", "--path-prefix"), 2) from None


def _device(device: str) -> str:
    try:
        return resolve_device(device)
    except ValueError as e:
        raise fail(str(e), 2) from None


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False))


def _tags_text(tags: Sequence[tuple[str, float]], n: int = 3, width: int = 40) -> str:
    text = ", ".join(label for label, _ in tags[:n])
    return text if len(text) <= width else text[: width - 1] + "…"


def _why_text(r: SearchResult, width: int = 40) -> str:
    """Query words found in the clip's name or tags (quoted), then the audio classes behind its score."""
    why = r.why or {}
    parts = [f'"{w}"' for w in why.get("words", [])] + list(why.get("tags", []))
    text = ", ".join(parts) or "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def print_results(results: list[SearchResult]) -> None:
    """An aligned table: rank, score, duration, top tags, path (for results by example)."""
    if not results:
        typer.echo("no results")
        return
    typer.echo(f"{'rank':>4}  {'score':>6}  {'dur(s)':>7}  {'tags':<40}  path")
    for rank, r in enumerate(results, 1):
        tags_col = _tags_text(r.tags)
        typer.echo(f"{rank:>4}  {r.score:>6.3f}  {r.duration:>7.2f}  {tags_col:<40}  {path_text(r)}")


def print_matches(results: list[SearchResult], weak: str | None = None) -> None:
    """An aligned table for text searches: rank, match strength, duration, why it matched, path."""
    if weak:
        typer.echo(weak + (": the closest sounds are" if results else ""))
    if not results:
        typer.echo("no results")
        return
    typer.echo(f"{'rank':>4}  {'match':>5}  {'dur(s)':>7}  {'why':<40}  path")
    for rank, r in enumerate(results, 1):
        why = terminal_text(_why_text(r))
        typer.echo(f"{rank:>4}  {r.match or 0:>5.2f}  {r.duration:>7.2f}  {why:<40}  {path_text(r)}")


def weak_match_note(found: list[SearchResult]) -> str | None:
    """The "nothing in this library matches well" line, when the best result is weak (else None)."""
    from ..library.fusion import is_weak

    best = found[0].match if found else None
    if not is_weak(best):
        return None
    return f"nothing in this library matches well (best match {best or 0:.2f})"


def _show_results(results: list[SearchResult], json_out: bool) -> None:
    """One query's results by example: a JSON list with --json, else the table."""
    if json_out:
        _print_json([r.to_dict() for r in results])
    else:
        print_results(results)


def _above(results: list[SearchResult], min_score: float | None) -> list[SearchResult]:
    return results if min_score is None else [r for r in results if (r.match or 0.0) >= min_score]


def _summary(report: UpdateReport, stats: dict[str, Any]) -> str:
    r = report
    lines = [
        f"{r.added} added, {r.updated} updated, {r.unchanged} unchanged, {r.moved} moved, "
        f"{r.removed} removed, {len(r.skipped)} skipped",
        f"embedded {r.embedded} files ({r.audio_seconds / 3600:.3f} audio hours) in {r.wall_seconds:.1f} s, "
        f"{r.realtime_factor:.1f}x real time",
        f"index {terminal_text(stats['index_dir'])}: {stats['clips']} clips, "
        f"{stats['audio_hours']:.2f} hours, model {stats['model_id']}",
    ]
    return "\n".join(lines)


@app.command("index")
def index_cmd(
    paths: IndexPathsArg = None,
    index: IndexOpt = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-j", min=0, help="Decoding processes (0: none; default: half the cores)."),
    ] = None,
    model: ModelOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Forget all clips and re-embed PATHS (after a model change).")
    ] = False,
    prune: PruneOpt = False,
    json_out: JsonOpt = False,
    device: DeviceOpt = "auto",
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Exit (code 75) instead of waiting while another run writes the "
                           "index.")
    ] = False,
    ray: RayOpt = None,
) -> None:
    """Add new and changed audio files under PATHS to the index; drop the ones that are gone. With no
    PATHS, refresh every folder indexed before (one that is gone is reported; --prune drops it).
    One run writes an index at a time: a second waits for the first unless --no-wait."""
    paths = paths or []
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise fail(f"no such file or folder: {', '.join(terminal_text(display_path(p)) for p in missing)}", 2)
    from ..library import Library

    dev = _device(device)
    with errors(), Library.open(index, model=model, create=bool(paths), rebuild=rebuild, device=dev) as lib:
        pruned = lib.prune_missing(wait=not no_wait) if prune else None
        report = lib.update(paths, workers=workers, progress=not quiet, wait=not no_wait, ray=ray)
        stats = lib.stats()
    if json_out:
        _print_json(report.to_dict() | {"index": stats} | ({"pruned": pruned.to_dict()} if pruned else {}))
    else:
        typer.echo(_summary(report, stats))
    print_index_notes(report, pruned)


@app.command()
def search(
    query: Annotated[
        str | None, typer.Argument(help="What to look for, e.g. 'a dog barks then a door slams'.")
    ] = None,
    queries: Annotated[
        Path | None, typer.Option("--queries", help="A text file, one query per line (blank lines skipped).")
    ] = None,
    index: IndexOpt = None,
    top_k: TopKOpt = 10,
    json_out: JsonOpt = False,
    mode: ModeOpt = "hybrid",
    min_score: MinScoreOpt = None,
    min_duration: MinDurOpt = None,
    max_duration: MaxDurOpt = None,
    path_prefix: PrefixOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Search the index by description. --json: a list of results (with --queries: one JSON line per
    query, with "no_good_match"); a weak best match is reported as "nothing in this library matches well".
    Queries are encoded on the CPU (for the zero-shot models without torch: quick to start) unless
    --device names a GPU."""
    from ..library import Library
    from ..library.fusion import MODES
    from ..library.queries import check_query

    filters = _filters(min_duration, max_duration, path_prefix)
    with errors():
        if (query is None) == (queries is None):
            raise UsageError("give either a QUERY or --queries FILE")
        if mode not in MODES:
            raise UsageError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
        texts = [check_query(query)] if query is not None else _read_queries(queries)
        if not texts:
            raise UsageError(f"{queries} holds no queries (blank lines are skipped)")
        dev = "cpu" if device.strip().lower() in ("auto", "cpu") else _device(device)
        with Library.open(index, device=dev, text_backend="numpy" if dev == "cpu" else "torch") as lib:
            for start in range(0, len(texts), QUERY_BATCH):
                batch = texts[start:start + QUERY_BATCH]
                for text, found in zip(batch, lib.search_many(batch, top_k, mode, **filters), strict=True):
                    results, weak = _above(found, min_score), weak_match_note(found)
                    if query is not None and json_out:
                        _print_json([r.to_dict() for r in results])
                        if weak:
                            typer.echo(f"audiofind: {weak}", err=True)
                    elif json_out:
                        _print_json({"query": text, "no_good_match": weak is not None,
                                     "results": [r.to_dict() for r in results]})
                    else:
                        if query is None:
                            typer.echo(f"\nquery: {terminal_text(text)}")
                        print_matches(results, weak)
    exit_quickly()  # the index is closed and every line written


def _read_queries(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"no such queries file: {path}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


@app.command()
def similar(
    file: Annotated[str, typer.Argument(help="An audio file: an indexed clip, or any file (gets embedded).")],
    index: IndexOpt = None,
    top_k: TopKOpt = 10,
    json_out: JsonOpt = False,
    min_duration: MinDurOpt = None,
    max_duration: MaxDurOpt = None,
    path_prefix: PrefixOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Find clips that sound like FILE (FILE itself is left out)."""
    if not os.path.exists(file):
        raise fail(f"no such file: {terminal_text(display_path(file))}", 2)
    from ..library import Library

    filters = _filters(min_duration, max_duration, path_prefix)
    with errors(), Library.open(index, device=_device(device)) as lib:
        results = lib.similar(file, top_k, **filters)
    _show_results(results, json_out)


@app.command()
def tags(
    file: Annotated[str, typer.Argument(help="An audio file.")],
    top_k: TopKOpt = 10,
    json_out: JsonOpt = False,
    model: ModelOpt = None,
) -> None:
    """Print the AudioSet tags the model hears in FILE, with probabilities (no index needed)."""
    if not os.path.exists(file):
        raise fail(f"no such file: {terminal_text(display_path(file))}", 2)
    with errors():
        from ..audio import SAMPLE_RATE, load_audio
        from ..models import load_model

        wave, _ = load_audio(file, sample_rate=SAMPLE_RATE)  # before the model loads: bad files fail fast
        if wave.size == 0:
            raise ValueError(f"{display_path(file)} holds no audio samples")
        m = load_model(model)
        if m.sample_rate != SAMPLE_RATE:
            wave, _ = load_audio(file, sample_rate=m.sample_rate)
        found = m.embed_audio([wave]).tags[0][:top_k]
    if json_out:
        _print_json([{"label": label, "prob": round(float(prob), 4)} for label, prob in found])
    else:
        for label, prob in found:
            typer.echo(f"{prob:6.3f}  {label}")


@app.command()
def info(
    file: Annotated[str | None, typer.Argument(help="An indexed audio file.")] = None,
    index: IndexOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show what the index holds (clips, audio hours, model, build time), or what it knows of FILE:
    its record, tags and the words its name, folders and embedded metadata give for text search."""
    from ..library import Library

    with errors(), Library.open(index) as lib:
        if file is None:
            shown = lib.stats()
        else:
            record = lib.find(file)
            if record is None:
                raise KeyError(f"{display_path(file)} is not in the index {lib.index_dir}")
            shown = record.to_dict()
    if json_out:
        _print_json(shown)
    else:
        width = max(map(len, shown))
        for key, value in shown.items():
            text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value
            typer.echo(f"{key:<{width}}  {terminal_text(str(text))}")


def _register_subcommands() -> None:
    """The research and serving commands live in their own modules, each importing its heavy deps lazily."""
    from .data import data_app
    from .evaluate import register as register_eval
    from .manage import register as register_manage
    from .serve import register as register_serve
    from .train import register as register_train

    app.add_typer(data_app, name="data")
    register_eval(app)
    register_manage(app)
    register_train(app)
    register_serve(app)


_register_subcommands()


def main() -> None:
    """Console entry point (the same as `app()`)."""
    app(prog_name="audiofind")


if __name__ == "__main__":
    sys.exit(main())
