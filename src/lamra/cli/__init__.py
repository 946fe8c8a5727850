"""The ``lamra`` command: one typer app, each command a thin typed function over the API.

Command modules register themselves here; they import torch / transformers / faiss inside
their functions, so ``lamra --help`` stays instant.
"""

from __future__ import annotations

import logging
import sys

import typer

app = typer.Typer(
    name="lamra",
    help="LamRA: a multimodal LLM as a universal retriever and reranker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines register(app). Keep this list in sync with the files in this folder.
_COMMAND_MODULES = ["embed", "index", "data", "evaluate", "serve"]


def _register_commands() -> None:
    from importlib import import_module

    for name in _COMMAND_MODULES:
        try:
            module = import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:  # TEMPORARY while command modules are being written
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        module.register(app)


_register_commands()


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; ``main([...])`` runs a command in-process (tests)."""
    try:
        # Outside standalone mode click returns an Exit's code instead of raising it.
        code = app(args=argv if argv is not None else sys.argv[1:], standalone_mode=False)
        return code if isinstance(code, int) else 0
    except SystemExit as exc:  # typer's Exit inside standalone_mode=False
        return int(exc.code or 0)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.Exit):
            return int(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            return 1
        from ..errors import LamraError

        if isinstance(exc, LamraError):
            typer.echo(f"error: {exc}", err=True)
            return 2
        raise
