"""Without cairosvg the demo data builder stops at once and says what to install."""

from __future__ import annotations

import sys

import pytest

from lamra.errors import InputError


def test_a_missing_cairosvg_is_one_clear_error(monkeypatch):
    from lamra.demo.sources import clipart

    monkeypatch.setitem(sys.modules, "cairosvg", None)  # import cairosvg now raises ImportError
    with pytest.raises(InputError, match=r"pip install 'lamra\[demo\]'"):
        clipart.check_renderer()
