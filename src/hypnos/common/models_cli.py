"""``hypnos models list|prepare NAME``: the built-in models and their local checkpoints.

Run: ``hypnos models list`` ; ``hypnos models prepare smollm2-135m-instruct [--force]``
"""

from __future__ import annotations

from typing import Annotated

import typer

from hypnos.common.models import BUILTIN_MODELS, cache_dir, model_info

app = typer.Typer(help="Built-in models: list them, prepare (convert) them once.", no_args_is_help=True)


@app.command("list")
def list_models() -> None:
    """List built-in models and whether each is prepared in the cache."""
    for name, spec in BUILTIN_MODELS.items():
        info = model_info(name)
        state = f"prepared at {cache_dir() / 'models' / name}" if info else "not prepared"
        typer.echo(f"{name}\t{spec.license}\t{state}\n    {spec.description}")


@app.command("prepare")
def prepare(
    name: Annotated[str, typer.Argument(help=f"one of: {', '.join(BUILTIN_MODELS)}")],
    force: Annotated[bool, typer.Option(help="rebuild even if a valid checkpoint exists")] = False,
) -> None:
    """Convert a built-in model to a local fp32 checkpoint (once; verified by sha256 afterwards)."""
    if name not in BUILTIN_MODELS:
        raise typer.BadParameter(f"unknown model {name!r}; built-in: {', '.join(BUILTIN_MODELS)}")
    import time

    from hypnos.common.models import prepare_builtin

    start = time.perf_counter()
    path = prepare_builtin(name, force=force)
    typer.echo(f"{name}: {path} ({time.perf_counter() - start:.1f} s)")
