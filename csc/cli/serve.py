"""``csc serve``: share one loaded local model with any OpenAI-compatible client."""

from __future__ import annotations

import logging
import os

import typer

from csc.cli.common import fail


def register(app: typer.Typer) -> None:
    @app.command("serve", epilog="Example: csc serve --lm local --port 8400")
    def serve(
        lm: str = typer.Option(
            "local", "--lm", help="The model to serve: 'local', 'local:PATH' or 'finetuned:DIR'."
        ),
        host: str = typer.Option(
            "127.0.0.1", "--host", help="Address to bind (0.0.0.0 exposes it to the network)."
        ),
        port: int = typer.Option(
            8400, "--port", min=0, max=65535, help="TCP port (0: any free one)."
        ),
        api_key_env: str = typer.Option(
            None,
            "--api-key-env",
            help="Name of an environment variable holding the API key clients must send "
            "(Authorization: Bearer ...). Without it the server takes any request.",
        ),
        model_name: str = typer.Option(
            None, "--model-name", help="Model id clients ask for (default: the LM's name)."
        ),
        max_batch_size: int = typer.Option(
            16, "--max-batch-size", min=1, help="Most requests decoded together."
        ),
        threads: int = typer.Option(
            None, "--threads", min=0, help="Torch CPU threads (default: the free cores)."
        ),
        quiet: bool = typer.Option(False, "--quiet", help="Do not log each request."),
    ) -> None:
        """Serve the embedded engine over an OpenAI-compatible HTTP API (/v1/chat/completions).

        Other csc processes then share the loaded model with
        --lm openai/<model id> --api-base http://HOST:PORT/v1. Stop with Ctrl-C.
        """
        from csc.engine import LocalLM
        from csc.engine.server import make_server
        from csc.lm import LMConfigError, build_lm

        api_key = None
        if api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                fail(f"--api-key-env names {api_key_env}, which is not set; export it first")
        try:
            model = build_lm(lm, max_batch_size=max_batch_size, num_threads=threads)
        except (LMConfigError, FileNotFoundError, ValueError) as exc:
            fail(str(exc))
        if not isinstance(model, LocalLM):
            fail(
                f"csc serve serves local models ('local', 'local:PATH', 'finetuned:DIR'), not {lm!r}"
            )
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
        try:
            server = make_server(model, host, port, api_key, model_name)
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        typer.echo(
            f"csc serve: {server.model_name} at {server.url} "
            f"({'API key required' if api_key else 'no API key'}); Ctrl-C stops",
            err=True,
        )
        typer.echo(f"  use: --lm openai/{server.model_name} --api-base {server.url}", err=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
