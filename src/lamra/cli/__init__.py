"""The ``lamra`` command: one typer app, each command a thin typed function over the API.

Command modules register themselves here; they import torch / transformers / faiss inside
their functions, so ``lamra --help`` stays instant. ``python -m lamra`` runs the same app.
"""

from __future__ import annotations

import sys

import typer

from .help import LamraGroup, use_plain_help

app = typer.Typer(
    name="lamra",
    help="LamRA: a multimodal LLM as a universal retriever and reranker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=LamraGroup,
)

# Each module defines register(app). Keep this list in sync with the files in this folder.
_COMMAND_MODULES = ["embed", "index", "data", "evaluate", "serve", "parity", "train", "mine", "distill", "models"]


def _register_commands() -> None:
    from importlib import import_module

    for name in _COMMAND_MODULES:
        import_module(f"{__name__}.{name}").register(app)
    use_plain_help(app)


_register_commands()


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details, show the "
                                                                      "libraries' progress bars and the "
                                                                      "traceback of an error.")) -> None:
    from .runtime import set_verbose

    set_verbose(verbose)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; ``main([...])`` runs a command in-process (tests).

    Usage errors print their message and give exit code 2 (click's standalone handling); a
    lamra error (bad input, incompatible artefact, a model that cannot be found) prints one
    ``error: ...`` line - and its traceback with ``-v`` - and also gives 2.
    """
    from ..errors import LamraError
    from .runtime import is_verbose, set_verbose

    set_verbose(False)  # each in-process run starts quiet; the callback reads -v
    try:
        app(args=argv if argv is not None else sys.argv[1:], prog_name="lamra", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except LamraError as exc:
        if is_verbose():
            import traceback

            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        return 2
    return 0
