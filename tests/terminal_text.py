"""Test helper: terminal output as plain words, for ``in`` checks on what the CLI printed."""

from __future__ import annotations

import re

# rich's box drawing: square (tables), heavy (table headers) and rounded (panels) lines and corners.
BOX_DRAWING = r"[│┃┏┓┗┛┡┩━─╇┳┻└┘┌┐├┤┼╋╭╮╰╯]"


def plain(text: str) -> str:
    """Terminal output without rich's box drawing and line wrapping."""
    return " ".join(re.sub(BOX_DRAWING, " ", text).split())
