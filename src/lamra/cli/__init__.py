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
        import_module(f"{__name__}.{name}").register(app)


_register_commands()


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; ``main([...])`` runs a command in-process (tests).

    Usage errors print their message and give exit code 2 (click's standalone handling); a
    lamra error (bad input, incompatible artefact) prints one line and also gives 2.
    """
    from ..errors import LamraError

    try:
        app(args=argv if argv is not None else sys.argv[1:], standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except LamraError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    return 0
