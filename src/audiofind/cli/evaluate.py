"""`audiofind evaluate | predict | ensemble`: challenge scoring, submission files and score fusion.

`register(app)` adds the commands to the main CLI; `python -m audiofind.cli.evaluate` runs them alone.
Errors print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from .options import DEVICE_HELP, DEVICE_METAVAR, resolve_device

_MODEL_HELP = "'default' (zero-shot) or a checkpoint written by `audiofind train`"
_QUIET_HELP = "Do not show progress bars."
_METRIC_ORDER = ("mAP@16", "mAP@10", "R@1", "R@5", "R@10")


class UsageError(ValueError):
    """A wrong combination of options; reported like any other error."""


@contextmanager
def _errors() -> Iterator[None]:
    """Turn expected failures into one line on stderr and exit status 2, instead of a traceback."""
    try:
        yield
    except (ValueError, OSError) as exc:  # data, format and file errors all name their file
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(2) from None


def _load_model(name: str, device: str = "cpu") -> Any:
    """Load a model lazily, so `evaluate --scores` never imports torch."""
    from ..models import load_model

    return load_model(name, device=device)


def _model_on(name: str, device: str) -> Any:
    """`_load_model`, with the name alone for the CPU (tests swap in one-argument stand-ins)."""
    return _load_model(name) if device == "cpu" else _load_model(name, device)


def _device_option() -> Any:
    return typer.Option("auto", "--device", metavar=DEVICE_METAVAR, help=DEVICE_HELP)


# ---------------------------------------------------------------------------------------------
# where queries and candidates come from
# ---------------------------------------------------------------------------------------------


def _query_source(
    clotho_root: Path | None,
    split: str,
    queries: Path | None,
    audio_dir: Path | None,
    annotations: Path | None,
) -> tuple[list[str], list[Any], list[str]]:
    """(queries, clips, column names) from a Clotho split or from a query file plus an audio folder."""
    from ..research import evaluation as ev

    if clotho_root is not None and (queries is not None or audio_dir is not None):
        raise UsageError("give either --clotho-root/--split or --queries/--audio-dir, not both")
    if clotho_root is not None:
        from ..research.data import load_clotho

        clips: list[Any] = load_clotho(clotho_root, split)
        names = [c.file_name for c in clips]
        if annotations is not None:
            captions = ev.multi_positive_queries(annotations, names)[0]
        else:
            captions = ev.clotho_queries(clips)[0]
        return captions, clips, names
    if queries is None or audio_dir is None:
        raise UsageError("say what to rank: --clotho-root DIR [--split S], or --queries FILE --audio-dir DIR")
    if annotations is not None:
        raise UsageError("--annotations picks the queries of a Clotho split; with --queries, drop it")
    candidates = ev.audio_dir_candidates(audio_dir)
    return ev.read_queries(queries), list(candidates), [c.file_name for c in candidates]


def _format_table(sections: dict[str, dict[str, float] | None]) -> str:
    """Metrics as a small aligned table, one column per protocol, in percent like the leaderboard."""
    shown = {name: m for name, m in sections.items() if m is not None}
    keys = [k for k in _METRIC_ORDER if any(k in m for m in shown.values())]
    width = max(len(n) for n in shown) + 2
    lines = ["metric  " + "".join(n.replace("_", "-").rjust(width) for n in shown)]
    for key in keys:
        cells = "".join((f"{100 * m[key]:.2f}" if key in m else "-").rjust(width) for m in shown.values())
        lines.append(key.ljust(8) + cells)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------


def evaluate(
    model: str | None = typer.Option(
        None, "--model", "-m", help=_MODEL_HELP + " (default: the zero-shot model)"
    ),
    clotho_root: Path | None = typer.Option(
        None, "--clotho-root", help="Clotho folder (captions CSVs + audio)."
    ),
    split: str = typer.Option("evaluation", "--split", help="Clotho split to evaluate on."),
    annotations: Path | None = typer.Option(
        None,
        "--annotations",
        help="Relevance: the DCASE 2025 multi-positive CSV; with --scores also a Clotho captions CSV.",
    ),
    scores: Path | None = typer.Option(None, "--scores", help="Score a ready score file instead of a model."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Clips per audio batch."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_QUIET_HELP),
    device: str = _device_option(),
) -> None:
    """Score a model on Clotho (single- and multi-positive protocols) or a score file against annotations."""
    from ..research import evaluation as ev

    with _errors():
        if scores is not None:
            if annotations is None:
                raise UsageError("--scores needs --annotations (multi-positive file or Clotho captions file)")
            if model is not None or clotho_root is not None:
                raise UsageError("--scores evaluates a ready file; drop --model and --clotho-root")
            from ..research.metrics import evaluate_score_file

            result = evaluate_score_file(scores, annotations)
            typer.echo(json.dumps(result) if as_json else _format_table({"score_file": result}))
            return
        if clotho_root is None:
            raise UsageError("give --clotho-root DIR (to score a model) or --scores FILE --annotations FILE")
        from ..research.data import load_clotho

        dev = resolve_device(device)
        clips = load_clotho(clotho_root, split)
        loaded = _model_on(model or "default", dev)
        sections = ev.evaluate_model(loaded, clips, annotations, batch_size=batch_size, progress=not quiet)
        typer.echo(json.dumps(sections) if as_json else _format_table(sections))


def predict(
    out: Path = typer.Option(..., "--out", "-o", help="Score file to write (index,<file1>,...)."),
    model: str = typer.Option("default", "--model", "-m", help=_MODEL_HELP),
    clotho_root: Path | None = typer.Option(
        None, "--clotho-root", help="Clotho folder: rank a split's clips."
    ),
    split: str = typer.Option("evaluation", "--split", help="Clotho split whose clips are ranked."),
    annotations: Path | None = typer.Option(
        None, "--annotations", help="Use this multi-positive file's queries instead of all split captions."
    ),
    queries: Path | None = typer.Option(
        None, "--queries", help="CSV with a caption/query column, or text lines."
    ),
    audio_dir: Path | None = typer.Option(
        None, "--audio-dir", help="Folder whose audio files are the candidates."
    ),
    top_k: int = typer.Option(10, "--top-k", min=1, help="Length of each ranked list in --ranking."),
    ranking: Path | None = typer.Option(
        None, "--ranking", help="Also write caption,file_name_1..file_name_k."
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Clips per audio batch."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_QUIET_HELP),
    device: str = _device_option(),
) -> None:
    """Write the challenge score file (one row per query, one column per candidate) and a top-k ranking."""
    from ..research import evaluation as ev

    with _errors():
        dev = resolve_device(device)
        captions, clips, names = _query_source(clotho_root, split, queries, audio_dir, annotations)
        loaded = _model_on(model, dev)
        scores = ev.similarity_matrix(loaded, captions, clips, batch_size=batch_size, progress=not quiet)
        _write_outputs(out, ranking, top_k, captions, names, scores)


def ensemble(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="Combined score file to write."),
    scores: list[Path] | None = typer.Option(
        None, "--scores", help="Score files to combine (space-separated)."
    ),
    models: list[str] | None = typer.Option(
        None, "--models", help="Models whose similarity matrices to combine."
    ),
    method: str = typer.Option("mean", "--method", help="mean | zscore (mean of per-query z-scores)."),
    clotho_root: Path | None = typer.Option(
        None, "--clotho-root", help="With --models: rank a Clotho split."
    ),
    split: str = typer.Option("evaluation", "--split", help="With --models: the Clotho split."),
    annotations: Path | None = typer.Option(
        None, "--annotations", help="With --models: multi-positive queries."
    ),
    queries: Path | None = typer.Option(None, "--queries", help="With --models: query file."),
    audio_dir: Path | None = typer.Option(None, "--audio-dir", help="With --models: candidate audio folder."),
    top_k: int = typer.Option(10, "--top-k", min=1, help="Length of each ranked list in --ranking."),
    ranking: Path | None = typer.Option(None, "--ranking", help="Also write the combined top-k ranking."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Clips per audio batch."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_QUIET_HELP),
    device: str = _device_option(),
) -> None:
    """Fuse several score files, or several models' similarities, into one score file."""
    from ..research import evaluation as ev

    with _errors():
        if method not in ev.COMBINE_METHODS:
            raise UsageError(f"--method must be one of {', '.join(ev.COMBINE_METHODS)}, got {method!r}")
        extra = list(ctx.args)  # `--scores a.csv b.csv`: click keeps b.csv as an extra argument
        if bool(scores) == bool(models):
            raise UsageError("give either --scores FILE... or --models MODEL..., exactly one of them")
        if scores:
            tables = [ev.read_score_table(p) for p in [*scores, *map(Path, extra)]]
            matrices = ev.align_score_tables(tables)
            captions, names = tables[0].captions, tables[0].file_names
        else:
            dev = resolve_device(device)
            captions, clips, names = _query_source(clotho_root, split, queries, audio_dir, annotations)
            matrices = [
                ev.similarity_matrix(_model_on(m, dev), captions, clips, batch_size, progress=not quiet)
                for m in [*models, *extra]
            ]
        if len(matrices) < 2:
            typer.echo("warning: only one input; the output is a copy of it", err=True)
        _write_outputs(out, ranking, top_k, captions, names, ev.combine_scores(matrices, method))


def _write_outputs(
    out: Path, ranking: Path | None, top_k: int, captions: Sequence[str], names: Sequence[str], scores: Any
) -> None:
    """Write the score file (and ranking), then say where, on stderr so stdout stays clean."""
    from ..research import evaluation as ev

    ev.write_score_file(out, captions, names, scores)
    if ranking is not None:
        ev.write_ranking(ranking, captions, names, scores, top_k)
    where = f"{out}" + (f" and {ranking}" if ranking is not None else "")
    typer.echo(f"wrote {len(captions)} queries x {len(names)} candidates to {where}", err=True)


_EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": False}
COMMANDS: dict[str, tuple[Callable[..., None], dict[str, Any]]] = {
    "evaluate": (evaluate, {}),
    "predict": (predict, {}),
    "ensemble": (ensemble, {"context_settings": _EXTRA_ARGS}),
}


def register(app: typer.Typer) -> None:
    """Add `evaluate`, `predict` and `ensemble` to a Typer app."""
    for name, (fn, settings) in COMMANDS.items():
        app.command(name, **settings)(fn)


app = typer.Typer(help="Challenge evaluation: evaluate, predict, ensemble.", no_args_is_help=True)
register(app)


def main() -> None:
    """Entry point for `python -m audiofind.cli.evaluate`."""
    app()


if __name__ == "__main__":
    main()
