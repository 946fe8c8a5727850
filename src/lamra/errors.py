"""Errors that tell the user exactly which input is wrong (file, line, item, field)."""

from __future__ import annotations


class LamraError(Exception):
    """Base class of every error lamra raises on purpose."""


class InputError(LamraError, ValueError):
    """A bad input item, line or file.

    The message always names where the problem is, so that a user with a million-line
    jsonl can go straight to it: ``data.jsonl:17 (id 'cat-3'), field 'image': file not found``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        item: str | None = None,
        field: str | None = None,
    ):
        self.reason = message
        self.file = file
        self.line = line
        self.item = item
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file is not None:
            where.append(f"{self.file}:{self.line}" if self.line is not None else str(self.file))
        elif self.line is not None:
            where.append(f"line {self.line}")
        if self.item is not None:
            where.append(f"(item {self.item!r})")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        prefix = " ".join(where)
        return f"{prefix}: {self.reason}" if prefix else self.reason

    def located(self, *, file=None, line=None, item=None, field=None) -> "InputError":
        """A copy with the missing location parts filled in (the caller knows more)."""
        return InputError(
            self.reason,
            file=self.file if self.file is not None else file,
            line=self.line if self.line is not None else line,
            item=self.item if self.item is not None else item,
            field=self.field if self.field is not None else field,
        )


class IncompatibleArtifactError(LamraError):
    """A stored artefact (embeddings, index) made by another model, adapter or prompt format."""


class ModelSourceError(LamraError):
    """A ``--model`` / ``--lora`` that cannot be loaded: a missing folder, a folder that is not a
    checkpoint, or a hub id that is neither cached nor downloadable (see ``lamra.qwen2vl.model_source``)."""


class BadLinesError(InputError):
    """Several bad lines in one input file; ``problems`` holds one report dict per line
    (``{"line", "id", "error"}``), and the message lists them."""

    def __init__(self, problems: list[dict], *, file: str, hint: str = "", shown: int = 20):
        self.problems = list(problems)
        lines = [str(p["error"]) for p in self.problems[:shown]]
        if len(self.problems) > shown:
            lines.append(f"... and {len(self.problems) - shown} more")
        summary = f"{len(self.problems)} bad line(s)" + (f"; {hint}" if hint else "")
        super().__init__(summary + ":\n  " + "\n  ".join(lines), file=file)
