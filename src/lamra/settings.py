"""Settings that change what a model computes, in one object.

``Retriever.from_pretrained``, ``Reranker.from_pretrained``, the CLI (``--max-pixels`` ...) and
the server all pass a :class:`ModelSettings`; the retriever's fingerprint records every field
that changes vectors, so an index or cache made with other settings is refused by name.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

# LamRA's image cap (spec section 2): 300 merged tokens at most, 4 at least.
DEFAULT_MAX_PIXELS = 300 * 28 * 28
DEFAULT_MIN_PIXELS = 4 * 28 * 28
# Whole-sequence token cap of the official evaluation (spec section 2).
DEFAULT_MAX_TOKENS = 1024
# A decompression-bomb guard: images above this many pixels are refused before decoding.
# One number everywhere (issue 12); PIL's own guard is raised to the same value when loading.
DEFAULT_IMAGE_PIXEL_LIMIT = 89_478_485

# A model folder may carry the settings it was trained with (lamra's trainer writes it); they
# become that model's defaults, and explicit settings still win.
SETTINGS_FILE = "lamra_settings.json"

POSITION_MODES = ("1d", "mrope")
RERANK_SCORE_MODES = ("official", "raw")


@dataclass(frozen=True)
class ModelSettings:
    """How inputs become tensors and how outputs are read.

    - ``max_pixels`` / ``min_pixels``: per-image pixel range after smart_resize (multiples of 28).
    - ``positions``: "1d" gives every token, image tokens included, positions 0, 1, 2, ... as
      the released LamRA-Ret was trained and evaluated (spec 2); "mrope" lets the model compute
      Qwen2-VL's 3-D M-RoPE (for retrievers you train that way). The reranker always uses M-RoPE.
    - ``max_tokens``: whole-sequence cap; a longer sequence is cut and its last kept token pooled
      (exactly the official evaluation's behaviour for candidates).
    - ``video_fps``, ``video_min_frames``, ``video_max_frames``, ``video_min_pixels``,
      ``video_max_pixels``, ``video_total_pixels``: frame sampling of qwen-vl-utils (spec 2).
    - ``rerank_scores``: "official" applies the checkpoint's repetition penalty to the Yes / No
      logits as ``generate`` did in the released evaluation; "raw" reads the logits as they are.
    - ``image_pixel_limit``: refuse images over this many pixels before decoding (not a vector
      setting: it never changes a vector, only which inputs are accepted).
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    min_pixels: int = DEFAULT_MIN_PIXELS
    positions: str = "1d"
    max_tokens: int = DEFAULT_MAX_TOKENS
    video_fps: float = 2.0
    video_min_frames: int = 4
    video_max_frames: int = 768
    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 768 * 28 * 28
    video_total_pixels: int = 24576 * 28 * 28
    rerank_scores: str = "official"
    image_pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT

    def __post_init__(self):
        if self.positions not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES}, got {self.positions!r}")
        if self.rerank_scores not in RERANK_SCORE_MODES:
            raise ValueError(f"rerank_scores must be one of {RERANK_SCORE_MODES}, got {self.rerank_scores!r}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}")
        if self.max_tokens < 16:
            raise ValueError(f"max_tokens must be at least 16, got {self.max_tokens}")

    # Fields that never change a retrieval vector.
    _NOT_IN_FINGERPRINT = ("rerank_scores", "image_pixel_limit")

    def fingerprint(self) -> dict:
        """The fields that change retrieval vectors (stored with every index and cache)."""
        return {k: v for k, v in asdict(self).items() if k not in self._NOT_IN_FINGERPRINT}

    def with_overrides(self, **overrides) -> "ModelSettings":
        """A copy with the given fields changed; ``None`` values are ignored (CLI defaults)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def for_model(cls, model: str | os.PathLike | None) -> "ModelSettings":
        """The settings a model folder says it was trained with (``lamra_settings.json``), else the defaults."""
        if model is None:
            return cls()
        path = Path(model) / SETTINGS_FILE
        if not path.is_file():
            return cls()
        values = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def save(self, folder: str | os.PathLike) -> None:
        """Write the vector-changing fields as the folder's ``lamra_settings.json``."""
        Path(folder, SETTINGS_FILE).write_text(json.dumps(self.fingerprint(), indent=2) + "\n", encoding="utf-8")
