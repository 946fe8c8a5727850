"""Generated folders appear whole, readable, and replace only what their generator made."""

from __future__ import annotations

import stat

import pytest

from lamra.data.generated import write_generated
from lamra.errors import InputError


def test_a_failed_build_leaves_nothing_and_a_finished_one_replaces_the_last(tmp_path):
    out = tmp_path / "set"

    def broken(folder):
        (folder / "half.txt").write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_generated(out, broken, marker="made.json", what="test set")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its building copy

    def one_file(folder):
        (folder / "a.txt").write_text("1")
        return {"n": 1}

    write_generated(out, one_file, marker="made.json", what="test set")
    assert (out / "made.json").read_text() == '{\n  "n": 1\n}\n'
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not mkdtemp's private 0o700

    with pytest.raises(InputError, match="exists; pass overwrite=True"):
        write_generated(out, lambda folder: {}, marker="made.json", what="test set")
    write_generated(out, lambda folder: {"n": 2}, marker="made.json", what="test set", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["made.json"]  # the old files went with the old folder

    (tmp_path / "mine").mkdir()
    with pytest.raises(InputError, match="is not a test set"):
        write_generated(tmp_path / "mine", lambda folder: {}, marker="made.json", what="test set", overwrite=True)
