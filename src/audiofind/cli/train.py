"""`audiofind train CONFIG.yaml [key=value ...]`: train a dual encoder (see `audiofind.research.train`).

`register(app)` adds the command to the main CLI. For several GPUs run the same arguments under torchrun:
`torchrun --nproc_per_node 4 -m audiofind.research.train CONFIG.yaml [key=value ...]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

_EPILOG = (
    "Overrides are dotted keys of the YAML file, e.g. optim.lr=1e-4 data.batch_size=8 epochs=3. "
    "Re-running a command whose run directory has last.pt resumes it. "
    "Several GPUs: torchrun --nproc_per_node N -m audiofind.research.train CONFIG.yaml key=value ..."
)


def train_command(
    config: Annotated[
        Path, typer.Argument(help="YAML training config (see configs/).", exists=True, dir_okay=False)
    ],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Require resuming from RUN_DIR/last.pt.")] = False,
    run_dir: Annotated[
        str | None, typer.Option("--run-dir", help="Output folder (overrides run_dir).")
    ] = None,
) -> None:
    """Train a text-audio dual encoder; writes best.pt, last.pt, metrics.csv and curves.png."""
    from ..research.train import run_cli, setup_logging

    setup_logging()
    try:
        best = run_cli(config, overrides or [], resume=resume, run_dir=run_dir)
    except (ValueError, FileNotFoundError) as exc:  # config and data errors name what is wrong
        typer.echo(f"audiofind train: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(2) from None
    kind = "best checkpoint" if best.name == "best.pt" else "checkpoint to score (last epoch)"
    typer.echo(f"{kind}: {best}")


def register(app: typer.Typer) -> None:
    """Add `train` to a Typer app."""
    app.command("train", epilog=_EPILOG)(train_command)
