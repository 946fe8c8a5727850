"""Merge a LoRA adapter into its base model and save a plain checkpoint folder."""

from __future__ import annotations

import os
from pathlib import Path

from ..settings import SETTINGS_FILE


def merge_lora(model: str | os.PathLike, adapter: str | os.PathLike, out: str | os.PathLike) -> Path:
    """``model`` + ``adapter`` -> ``out``: weights, tokenizer (with ``<emb>``), image processor."""
    from transformers import AutoConfig

    from ..qwen2vl.backbone import load_backbone

    # Keep the base's own dtype (a bf16 checkpoint stays bf16).
    dtype = getattr(AutoConfig.from_pretrained(str(model)), "dtype", None) or "fp32"
    backbone = load_backbone(model, lora=adapter, merge_lora=True, device="cpu", dtype=dtype)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    backbone.model.save_pretrained(out)
    backbone.tokenizer.save_pretrained(out)
    backbone.image_processor.save_pretrained(out)
    settings = Path(adapter, SETTINGS_FILE)
    if settings.is_file():  # the settings the adapter was trained with go with the merged weights
        (out / SETTINGS_FILE).write_bytes(settings.read_bytes())
    return out
