"""`audiofind remove` and the notes `audiofind index` prints about roots: thin over `Library.remove` and
`Library.prune_missing` (registered by audiofind.cli.main). No `from __future__ import annotations`: the
command's option types come from `main` inside `register`, and typer reads them when it is defined."""

import json
from typing import TYPE_CHECKING, Annotated

import typer

from ..paths import terminal_text

if TYPE_CHECKING:  # `audiofind --help` loads no library code (numpy, FAISS): the hints below are strings
    from ..library import SearchResult, UpdateReport
    from ..library.records import RemovalReport


def path_text(r: "SearchResult") -> str:
    """The path, and how many identical copies the one result stands for (listed with --json)."""
    copies = len(r.duplicates)
    more = f"  (+{copies} identical {'copy' if copies == 1 else 'copies'})" if copies else ""
    return terminal_text(r.display_path) + more


IndexPathsArg = Annotated[
    list[str] | None,
    typer.Argument(help="Folders (searched recursively) or audio files; none: all indexed before.",
                   show_default=False),
]
PruneOpt = Annotated[
    bool, typer.Option("--prune", help="Drop the indexed folders that no longer exist, with their clips.")
]


def print_index_notes(report: "UpdateReport", pruned: "RemovalReport | None") -> None:
    """One line on stderr per file skipped (with why), per root pruned, and per root gone (kept)."""
    for path, reason in report.skipped:
        typer.echo(f"skipped {terminal_text(path)}: {terminal_text(reason)}", err=True)
    for root in pruned.roots if pruned else []:
        typer.echo(f"pruned {terminal_text(root)}: it no longer exists", err=True)
    if pruned and pruned.roots:
        typer.echo(f"pruned {pruned.clips} clips", err=True)
    for root in report.missing_roots:
        typer.echo(f"gone: {terminal_text(root)} no longer exists; its clips are kept until: "
                   f"audiofind index --prune", err=True)


def register(app: typer.Typer) -> None:
    """Add `remove` to `app`."""
    from .main import IndexOpt, JsonOpt, UsageError, errors

    @app.command()
    def remove(
        paths: Annotated[
            list[str] | None,
            typer.Argument(help="Indexed folders or files, or ones inside them.", show_default=False)
        ] = None,
        index: IndexOpt = None,
        missing: Annotated[
            bool, typer.Option("--missing", help="Also drop the indexed folders that no longer exist.")
        ] = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Take PATHS out of the index: their clips go, an indexed folder is no longer refreshed, and a folder
        inside one is skipped by later refreshes (until you index it again by name)."""
        from ..library import Library

        with errors():
            if not paths and not missing:
                raise UsageError("give the folders or files to remove, or --missing")
            with Library.open(index) as lib:
                done = [lib.remove(paths)] if paths else []
                done += [lib.prune_missing()] if missing else []
                left = len(lib)
        if json_out:
            typer.echo(json.dumps({"removed": sum(r.clips for r in done), "clips_left": left,
                                   "roots": [p for r in done for p in r.roots],
                                   "excluded": [p for r in done for p in r.excluded]}, ensure_ascii=False))
            return
        for r in done:
            for root in r.roots:
                typer.echo(f"no longer indexed: {terminal_text(root)}")
            for path in r.excluded:
                typer.echo(f"kept out of refreshes: {terminal_text(path)}")
        typer.echo(f"removed {sum(r.clips for r in done)} clips; {left} left")
