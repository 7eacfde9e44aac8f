"""`audiofind serve`: the web page and HTTP API over an index (registered by audiofind.cli)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .options import DeviceOpt, StoreOpt, default_index_help, resolve_device

TOKEN_ENV = "AUDIOFIND_TOKEN"


def register(app: typer.Typer) -> None:
    """Add the `serve` command to `app`."""

    @app.command("serve")
    def serve(
        index: Annotated[
            Path | None,
            typer.Option("--index", show_default=False,
                         help=f"Index folder (default: $AUDIOFIND_INDEX, else {default_index_help()})."),
        ] = None,
        host: Annotated[
            str, typer.Option("--host", help="Address to listen on; non-loopback needs --token.")
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8765,
        token: Annotated[
            str | None,
            typer.Option(
                "--token",
                envvar=TOKEN_ENV,
                help="Require this token on every API request "
                f"(Authorization: Bearer or X-Audiofind-Token; ${TOKEN_ENV}).",
            ),
        ] = None,
        no_auth: Annotated[
            bool,
            typer.Option(
                "--no-auth", help="Serve a non-loopback address without a token (anyone can listen)."
            ),
        ] = False,
        cors_origin: Annotated[
            list[str] | None,
            typer.Option("--cors-origin", help="Allow API calls from this web origin (repeatable)."),
        ] = None,
        model: Annotated[
            str | None, typer.Option("--model", help="Model name or checkpoint (default: the index's own).")
        ] = None,
        max_upload_mb: Annotated[
            float,
            typer.Option("--max-upload-mb", min=0.001, help="Largest clip accepted for search by example."),
        ] = 50.0,
        torch_threads: Annotated[
            int,
            typer.Option(
                "--torch-threads",
                min=0,
                help="Intra-op threads for the model (0 = torch's default). Queries arrive in small batches "
                "while the server itself needs CPU, so one thread is the fastest default.",
            ),
        ] = 1,
        log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "warning",
        device: DeviceOpt = "auto",
        store: StoreOpt = None,
    ) -> None:
        """Serve the search page and JSON API; prints the URL to open."""
        from ..library import LibraryError, default_index_dir
        from ..server.app import Limits, app_url, create_app
        from ..server.app import serve as run_server
        from ..server.security import check_bind, is_loopback

        try:
            check_bind(host, token, no_auth)
            dev = resolve_device(device)
        except ValueError as e:
            typer.echo(f"audiofind serve: {e}", err=True)
            raise typer.Exit(2) from None
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        index_dir = (index or default_index_dir()).expanduser()
        typer.echo(f"Loading {index_dir} ...", err=True)
        allowed_hosts = None if (token is not None or is_loopback(host)) else ["*"]

        def ready() -> None:
            if not is_loopback(host):
                typer.echo(
                    f"Listening on {host}:{port}: reachable from other machines"
                    + (" WITHOUT authentication" if no_auth else " (token required)"),
                    err=True,
                )
            typer.echo(f"Open {app_url(host, port, token)}  (Ctrl+C to stop)")
            sys.stdout.flush()

        try:
            if store is not None:  # recorded in the index, which the server then opens with it
                from ..library import Library

                Library.open(index_dir, store=store).close()
            app = create_app(
                index_dir,
                model=model,
                token=token,
                cors_origins=tuple(cors_origin or ()),
                allowed_hosts=allowed_hosts,
                on_ready=ready,
                limits=Limits(max_upload_bytes=int(max_upload_mb * 1024 * 1024)),
                device=dev,
            )
        except (LibraryError, ValueError) as e:
            typer.echo(f"audiofind serve: {e}", err=True)
            raise typer.Exit(1) from None
        library = app.state.service.library
        stats = library.stats()
        typer.echo(
            f"Serving {stats['clips']:,} clips ({stats['audio_hours']:.2f} h of audio) from {index_dir}; "
            "loading the model ...",
            err=True,
        )
        try:
            library.model  # noqa: B018 -- load now: a model that does not match the index is a clean error
        except (LibraryError, ValueError, OSError) as e:
            library.close()
            typer.echo(f"audiofind serve: {e}", err=True)
            raise typer.Exit(1) from None
        run_server(app, host=host, port=port, log_level=log_level)


def main() -> None:
    """Run `serve` on its own (`python -m audiofind.cli.serve`), e.g. before it is wired into the main CLI."""
    app = typer.Typer(add_completion=False)
    register(app)

    @app.callback()
    def _root() -> None:
        """audiofind web server."""

    app(prog_name=os.path.basename(sys.argv[0]) or "audiofind")


if __name__ == "__main__":
    main()
