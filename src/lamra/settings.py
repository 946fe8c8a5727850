"""Settings that change what a model computes, in one object.

``Retriever.from_pretrained``, ``Reranker.from_pretrained``, the CLI (``--max-pixels`` ...) and
the server all pass a :class:`ModelSettings`; the retriever's fingerprint records every field
that changes vectors, so an index or cache made with other settings is refused by name.

The two LamRA releases were trained and evaluated under different rules (positions, RGBA
conversion, evaluation truncation, the reranker's instruction strings: docs/format.md,
"Rule sets"). Each release is a named rule set (:data:`RULE_SETS`); a checkpoint picks its own
(its ``lamra_settings.json``, else its config's ``model_type``) and every field can still be set
one by one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

# LamRA's image cap (docs/format.md, "Images"): 300 merged tokens at most, 4 at least.
DEFAULT_MAX_PIXELS = 300 * 28 * 28
DEFAULT_MIN_PIXELS = 4 * 28 * 28
# Whole-sequence token cap of the Qwen2-VL release's evaluation (docs/format.md, "Truncation").
DEFAULT_MAX_TOKENS = 1024
# A decompression-bomb guard: images above this many pixels are refused before decoding.
# One number everywhere (issue 12); PIL's own guard is raised to the same value when loading.
DEFAULT_IMAGE_PIXEL_LIMIT = 89_478_485

# A model folder may carry the settings it was trained with (lamra's trainer writes it); they
# become that model's defaults, and explicit settings still win.
SETTINGS_FILE = "lamra_settings.json"

POSITION_MODES = ("1d", "mrope")
RERANK_SCORE_MODES = ("official", "raw")
RGBA_MODES = ("convert", "white")  # PIL's convert("RGB"), or pasted on white with its alpha as the mask
RERANK_INSTRUCTION_MODES = ("spaced", "single")  # the runs of 24 / 25 spaces, or single spaces
VIDEO_FRAME_MODES = ("round", "floor")  # a video's frame count at a frame rate: to the nearest even number, or down

# One named rule set per LamRA release: the fields in which the releases' official code differs
# (docs/format.md#rule-sets). max_tokens 0: no whole-sequence cut. The video fields follow each
# release's vendored qwen-vl-utils (the Qwen2.5-VL branch's total pixels: 128000 * 28 * 28 * 0.9).
QWEN2VL_RULES = "lamra-qwen2vl"
QWEN25VL_RULES = "lamra-qwen25vl"
RULE_SETS = {
    QWEN2VL_RULES: dict(positions="1d", rgba="convert", max_tokens=DEFAULT_MAX_TOKENS, rerank_instructions="spaced",
                        video_frames="round", video_total_pixels=24576 * 28 * 28),
    QWEN25VL_RULES: dict(positions="mrope", rgba="white", max_tokens=0, rerank_instructions="single",
                         video_frames="floor", video_total_pixels=90_316_800),
}
RULE_FIELDS = tuple(RULE_SETS[QWEN2VL_RULES])
# A checkpoint's config ``model_type`` -> the rule set of the release built on it.
RULES_BY_MODEL_TYPE = {"qwen2_vl": QWEN2VL_RULES, "qwen2_5_vl": QWEN25VL_RULES}
# What a model without a rule set of its own (a bare processor, a stand-in) is given.
DEFAULT_RULES = QWEN2VL_RULES


@dataclass(frozen=True)
class ModelSettings:
    """How inputs become tensors and how outputs are read.

    - ``rules``: the rule set (:data:`RULE_SETS`): "lamra-qwen2vl" (the Qwen2-VL release) or
      "lamra-qwen25vl" (the Qwen2.5-VL release). It gives ``positions``, ``rgba``, ``max_tokens``
      and ``rerank_instructions`` unless they are set; None means "the checkpoint's", decided
      when a model loads (:meth:`for_model_type`).
    - ``max_pixels`` / ``min_pixels``: per-image pixel range after smart_resize (multiples of 28).
    - ``positions``: "1d" gives every token, image tokens included, positions 0, 1, 2, ... as
      the Qwen2-VL LamRA-Ret was trained and evaluated; "mrope" lets the model compute its 3-D
      M-RoPE, as the Qwen2.5-VL LamRA-Ret was. The reranker always uses M-RoPE.
    - ``rgba``: "convert" turns an RGBA image into RGB with PIL's ``convert`` (transparent pixels
      keep their colour); "white" pastes it on white with its alpha as the mask.
    - ``max_tokens``: whole-sequence cap; a longer sequence is cut and its last kept token pooled
      (the Qwen2-VL release's evaluation of candidates); 0: no cut.
    - ``rerank_instructions``: the reranker's instruction strings, "spaced" (runs of 24 / 25
      spaces, the Qwen2-VL release) or "single" (single spaces, the Qwen2.5-VL release).
    - ``video_fps``, ``video_min_frames``, ``video_max_frames``, ``video_min_pixels``,
      ``video_max_pixels``, ``video_total_pixels``: frame sampling of qwen-vl-utils; with
      ``video_frames`` ("round" or "floor": how a frame count at ``video_fps`` becomes even)
      and ``video_total_pixels`` given by the rule set.
    - ``rerank_scores``: "official" applies the checkpoint's repetition penalty to the Yes / No
      logits as ``generate`` did in the released evaluation; "raw" reads the logits as they are.
    - ``image_pixel_limit``: refuse images over this many pixels before decoding (not a vector
      setting: it never changes a vector, only which inputs are accepted).
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    min_pixels: int = DEFAULT_MIN_PIXELS
    positions: str | None = None
    max_tokens: int | None = None
    video_fps: float = 2.0
    video_min_frames: int = 4
    video_max_frames: int = 768
    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 768 * 28 * 28
    video_total_pixels: int | None = None
    rerank_scores: str = "official"
    image_pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT
    rules: str | None = None
    rgba: str | None = None
    rerank_instructions: str | None = None
    video_frames: str | None = None

    def __post_init__(self):
        if self.rules is not None:
            if self.rules not in RULE_SETS:
                raise ValueError(f"rules must be one of {tuple(RULE_SETS)}, got {self.rules!r}")
            for name, value in RULE_SETS[self.rules].items():
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)
        for name, choices in (("positions", POSITION_MODES), ("rgba", RGBA_MODES),
                              ("rerank_instructions", RERANK_INSTRUCTION_MODES), ("video_frames", VIDEO_FRAME_MODES),
                              ("rerank_scores", RERANK_SCORE_MODES)):
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}")
        if self.max_tokens is not None and self.max_tokens != 0 and self.max_tokens < 16:
            raise ValueError(f"max_tokens must be 0 (no cut) or at least 16, got {self.max_tokens}")

    # Fields that never change a retrieval vector.
    _NOT_IN_FINGERPRINT = ("rerank_scores", "image_pixel_limit", "rerank_instructions")

    def fingerprint(self) -> dict:
        """The fields that change retrieval vectors (stored with every index and cache), the rule
        set's name among them."""
        return {k: v for k, v in asdict(self).items() if k not in self._NOT_IN_FINGERPRINT}

    def with_overrides(self, **overrides) -> "ModelSettings":
        """A copy with the given fields changed; ``None`` values are ignored (CLI defaults).

        A new ``rules`` brings its own values for the rule fields, except those this copy had
        set apart from its old rule set (or that ``overrides`` sets).
        """
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        rules = changes.get("rules")
        if rules is not None and rules != self.rules:
            old = RULE_SETS.get(self.rules, {})
            for name in RULE_FIELDS:
                if name not in changes and (self.rules is None or getattr(self, name) == old.get(name)):
                    changes[name] = None if self.rules is not None else getattr(self, name)
            return replace(self, **changes)
        return replace(self, **changes)

    def for_model_type(self, model_type: str | None) -> "ModelSettings":
        """These settings with a rule set: their own, else the release of ``model_type`` (a
        config's ``model_type``: "qwen2_vl", "qwen2_5_vl"), else :data:`DEFAULT_RULES`."""
        if self.rules is not None:
            return self
        return replace(self, rules=RULES_BY_MODEL_TYPE.get(model_type or "", DEFAULT_RULES))

    def describe_rules(self) -> str:
        """One line: the rule set's name and its four rules as these settings hold them."""
        if self.rules is None:
            return "the checkpoint's (its config's model_type decides when it loads)"
        cut = f"cut at {self.max_tokens} tokens" if self.max_tokens else "no whole-sequence cut"
        return (f"{self.rules} (positions {self.positions}, RGBA {self.rgba}, {cut}, "
                f"rerank instructions {self.rerank_instructions}, video frames {self.video_frames})")

    @classmethod
    def for_model(cls, model: str | os.PathLike | None, lora: str | os.PathLike | None = None) -> "ModelSettings":
        """The settings a model folder says it was trained with (``lamra_settings.json``; a LoRA
        adapter folder's first, as lamra's trainer writes it there), else the defaults with the
        rule set of its config's ``model_type`` (for a hub id: decided when the model loads)."""
        if lora is not None and Path(lora, SETTINGS_FILE).is_file():
            model = lora
        if model is None:
            return cls()
        folder = Path(model)
        path = folder / SETTINGS_FILE
        if not path.is_file():
            return cls().for_model_type(_model_type(folder)) if folder.is_dir() else cls()
        values = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        settings = cls(**{k: v for k, v in values.items() if k in known})
        if "rules" not in values and "positions" in values:
            # lamra's trainer before rule sets (it always wrote positions): the Qwen2-VL release's rules.
            return settings.for_model_type("qwen2_vl")
        return settings.for_model_type(_model_type(folder))

    def save(self, folder: str | os.PathLike) -> None:
        """Write the vector-changing fields and the rule set as the folder's ``lamra_settings.json``."""
        values = {**self.fingerprint(), "rerank_instructions": self.rerank_instructions}
        Path(folder, SETTINGS_FILE).write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")


def _model_type(folder: Path) -> str | None:
    """A checkpoint folder's ``model_type`` (its config.json), None when it has none."""
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
