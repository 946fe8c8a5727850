"""Every ``--help`` of every command and group: plain text, arguments in capitals, no raw markup."""

from __future__ import annotations

import re

import pytest
import typer

from lamra.cli import app, main

# What must never reach a user: reST literals, typer's {name} / <type> labels, rich tags left as text.
RAW_MARKUP = [
    (re.compile(r"``"), "reST literal"),
    (re.compile(r"\{[a-z_]+\}"), "{argument} label"),
    (re.compile(r"<(?:bool|str|int|float|path|file|text|list\[[^\]]*\]|\w+ range)>", re.I), "<type> label"),
    (re.compile(r"\[/?(?:bold|dim|italic|red|green|yellow|blue|magenta|cyan|b|i|u)\b[^\]]*\]"), "rich tag"),
    (re.compile(r"\[/\]"), "rich closing tag"),
]


def command_paths(command=None, prefix=()):
    """Every command and group of the app, as argument lists (the root is [])."""
    command = command or typer.main.get_command(app)
    yield list(prefix)
    for name, sub in getattr(command, "commands", {}).items():
        yield from command_paths(sub, (*prefix, name))


PATHS = list(command_paths())


def test_every_command_is_listed():
    names = {" ".join(path) for path in PATHS}
    for expected in ("embed", "prompt", "search", "serve", "index build", "index add", "index info",
                     "data validate", "data synth", "eval mbeir", "eval zeroshot"):
        assert expected in names


@pytest.mark.parametrize("path", PATHS, ids=lambda path: " ".join(path) or "lamra")
def test_help_has_no_raw_markup(path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main([*path, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.strip(), "empty help"
    for pattern, what in RAW_MARKUP:
        found = pattern.search(text)
        assert found is None, f"{what} {found.group(0)!r} in `lamra {' '.join(path)} --help`"
    usage = next(line.strip() for line in text.splitlines() if "Usage:" in line)
    # Arguments in capitals, options as [OPTIONS]: "Usage: lamra index add [OPTIONS] INDEX COLLECTION".
    assert re.fullmatch(r"Usage: lamra(?: [a-z-]+)* \[OPTIONS\](?: \[?[A-Z_]+(?:\.\.\.)?\]?| COMMAND \[ARGS\]\.\.\.)*",
                        usage), usage


def test_model_options_are_shared_by_every_command_that_loads_a_model(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    for path in (["embed"], ["index", "build"], ["index", "add"], ["search"], ["serve"]):
        assert main([*path, "--help"]) == 0
        text = capsys.readouterr().out
        for option in ("--max-pixels", "--min-pixels", "--positions", "--max-tokens", "--image-pixel-limit"):
            assert option in text, (path, option)
    assert main(["serve", "--help"]) == 0
    assert "--rerank-scores" in capsys.readouterr().out
