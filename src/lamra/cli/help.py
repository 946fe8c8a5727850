"""One look for every ``--help``: arguments in capitals, options with a plain value name.

typer 0.29 shows a required argument as ``{input}`` in the usage line, each value as a type in
angle brackets (``<path>``, ``<list[str]>``) and a flag as ``<bool>``. Every lamra command and
group is built with the classes below (:func:`use_plain_help` sets them on the whole app), so
the usage line reads ``lamra embed [OPTIONS] INPUT``, an option's value is a word such as
``PATH`` or ``INTEGER``, a flag has none, and an argument's name is its only label.
"""

from __future__ import annotations

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

# typer's type labels -> the value names shown after an option.
_VALUE_NAMES = {"path": "PATH", "str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN"}


def _value_name(label: str) -> str:
    label = label.strip("<>").replace(" range", "")
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    label = label.lower()
    if "|" in label:  # a choice: show the choices
        return label
    return _VALUE_NAMES.get(label, label.upper())


def _tidy(params) -> None:
    for param in params:
        if getattr(param, "_lamra_tidy", False):
            continue
        if isinstance(param, TyperArgument):
            if param.metavar is None:
                param.metavar = param.name.upper()
            # The name says what it is; no type label beside it.
            param.display_type_rich = lambda ctx: None
        elif isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = "" if param.is_flag else _value_name(param.display_type(None))
        param._lamra_tidy = True


def _argument_usage(param) -> str:
    name = param.metavar or param.name.upper()
    if param.nargs != 1:
        name += "..."
    return name if param.required else f"[{name}]"


class LamraCommand(TyperCommand):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _tidy(self.params)

    def collect_usage_pieces(self, ctx):
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [_argument_usage(p) for p in self.get_params(ctx) if isinstance(p, TyperArgument)]

    def format_help(self, ctx, formatter):
        _tidy(self.get_params(ctx))  # the --help option itself
        return super().format_help(ctx, formatter)


class LamraGroup(TyperGroup):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _tidy(self.params)

    def format_help(self, ctx, formatter):
        _tidy(self.get_params(ctx))
        return super().format_help(ctx, formatter)


def use_plain_help(app: typer.Typer) -> None:
    """Build every command and group of ``app`` (and its sub-apps) with the classes above."""
    for command in app.registered_commands:
        if command.cls in (None, TyperCommand):  # typer's default, not a class a command chose
            command.cls = LamraCommand
    for group in app.registered_groups:
        if not (isinstance(group.cls, type) and issubclass(group.cls, LamraGroup)):
            group.cls = LamraGroup
        use_plain_help(group.typer_instance)
