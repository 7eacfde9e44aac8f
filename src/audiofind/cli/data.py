"""`audiofind data ...`: get the datasets training and evaluation need (mounted by audiofind.cli)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from ..research import data  # standard library only; `downloads` (tqdm, HTTP) loads on use

_ALL = ",".join(data.SPLITS)

data_app = typer.Typer(help="Get datasets", no_args_is_help=True)


def _parse_splits(value: str) -> tuple[str, ...]:
    """'development,validation' -> a checked tuple, or a usage error naming the known splits."""
    try:
        return data.parse_splits(value)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--splits") from e


def _summary(root: Path, splits: tuple[str, ...], how: str) -> str:
    """A small table of clips, audio found and audio missing per split."""
    lines = [f"Clotho v2.1 in {root} ({how})", f"{'split':<12} {'clips':>6} {'audio':>6} {'missing':>8}"]
    from ..research import downloads

    notes: list[str] = []
    for split, r in downloads.clotho_report(root, splits).items():
        lines.append(f"{split:<12} {r.clips:>6} {r.found:>6} {len(r.missing):>8}")
        if r.missing:
            more = f" and {len(r.missing) - 5} more" if len(r.missing) > 5 else ""
            notes.append(f"  {split} is missing " + ", ".join(map(repr, r.missing[:5])) + more)
    return "\n".join(lines + notes)


@data_app.command("clotho")
def clotho(
    root: Annotated[Path, typer.Option("--root", help="Folder to hold Clotho v2.1 (created if needed).")],
    splits: Annotated[str, typer.Option("--splits", help="Comma-separated splits to get.")] = _ALL,
    adopt: Annotated[
        bool, typer.Option("--adopt", help="Use a copy already in the official layout; download nothing.")
    ] = False,
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="Mirror to download from instead of zenodo.org.")
    ] = None,
    keep_archives: Annotated[
        bool, typer.Option("--keep-archives", help="Keep the .7z archives after unpacking them.")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Download Clotho v2.1 (checked and resumable) or adopt an existing copy, then summarise it."""
    from ..research import downloads

    chosen = _parse_splits(splits)
    root = root.expanduser()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if adopt or downloads.layout_complete(root, chosen):
                downloads.adopt_clotho(root, chosen)
                how = "adopted"
            else:
                downloads.download_clotho(root, chosen, base_url, progress, keep_archives=keep_archives)
                how = "downloaded"
    except (OSError, ValueError) as e:  # missing files, malformed CSVs, failed or corrupt downloads
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    typer.echo(_summary(root, chosen, how))
