"""``hypnos serve MODEL [MODEL...]``: an OpenAI-compatible server with a web chat page.

Run: ``hypnos serve smollm2-135m-instruct sft=outputs/demo/sft --port 8000 --api-key-env HYPNOS_API_KEY``
Each MODEL is ``REF`` (served under that name) or ``NAME=REF``; REF is a checkpoint dir, a built-in model
name or a hub id. Clients use ``http://HOST:PORT/v1``; the chat page is at ``http://HOST:PORT/``.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

app = typer.Typer(help="Serve models over an OpenAI-compatible HTTP API.")


@app.command()
def serve(
    models: Annotated[list[str], typer.Argument(help="REF or NAME=REF (checkpoint dir, built-in name, hub id)")],
    name: Annotated[str | None, typer.Option(help="served id of a single MODEL (same as NAME=REF)")] = None,
    host: Annotated[str, typer.Option(help="interface to bind (0.0.0.0 exposes it on the network)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    api_key_env: Annotated[str | None, typer.Option(help="env var holding the bearer key clients must send")
                           ] = None,
    device: Annotated[str | None, typer.Option(help="torch device; default cuda if available, else cpu")] = None,
    max_tokens_limit: Annotated[int | None, typer.Option(
        help="the largest max_tokens a request may ask for (default: the model's context); a request without "
             "max_tokens gets the room left in the context")] = None,
    max_batch_rows: Annotated[int, typer.Option(help="most sequences decoded together per model")] = 16,
    max_queue: Annotated[int, typer.Option(help="queued requests per model before new ones get 429")] = 256,
    prefill_chunk: Annotated[int, typer.Option(help="most prompt tokens prefilled per decode step")] = 256,
    shutdown_timeout: Annotated[float, typer.Option(
        help="seconds running answers may take to finish after SIGTERM/Ctrl-C before they are cut "
             "(finish_reason length)")] = 30.0,
) -> None:
    """Load MODELS and serve them until interrupted."""
    # Spinning OpenMP workers collapse when other processes share the cores: on 2 busy cores a SmolLM2
    # decode step took 0.4-6 s instead of 45-120 ms. Must be set before torch loads; an explicit value wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import logging

    from hypnos.serve.app import parse_model_specs, serve_forever
    from hypnos.serve.engine import Engine

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise typer.BadParameter(f"environment variable {api_key_env} is not set", param_hint="--api-key-env")
    try:
        if name is not None and len(models) != 1:
            raise ValueError("--name needs exactly one MODEL")
        specs = parse_model_specs([f"{name}={models[0]}"] if name is not None else models)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="MODELS") from e
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engines = {}
    for served, ref in specs.items():
        typer.echo(f"loading {served} from {ref} ...", err=True)
        engines[served] = Engine(ref, device=device, max_batch_rows=max_batch_rows, prefill_chunk=prefill_chunk)
    typer.echo(f"serving {', '.join(engines)} at http://{host}:{port}/v1 (chat page: http://{host}:{port}/)", err=True)
    serve_forever(engines, host, port, api_key=api_key, shutdown_timeout_s=shutdown_timeout,
                  max_tokens_limit=max_tokens_limit, max_queue=max_queue)
