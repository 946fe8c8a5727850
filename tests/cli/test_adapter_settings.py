"""A lamra-trained adapter carries the settings it trained under (``lamra_settings.json`` in the
adapter folder): every command given ``--lora`` reads them, as ``Retriever.from_pretrained`` does."""

from __future__ import annotations

import json

import numpy as np

from lamra import Retriever
from lamra.cli import main
from lamra.settings import ModelSettings


def test_embed_with_lora_reads_the_adapters_settings(tmp_path, tiny_checkpoint, image_files):
    import torch
    from peft import LoraConfig, get_peft_model

    base = Retriever.from_pretrained(tiny_checkpoint, device="cpu")
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                        target_modules=r".*language_model.*\.(q_proj|v_proj)")
    torch.manual_seed(0)
    get_peft_model(base.backbone.model, config).save_pretrained(tmp_path / "adapter")
    # Trained at a smaller image cap than the base model's own (300 * 28 * 28).
    ModelSettings(max_pixels=16 * 28 * 28).for_model_type("qwen2_vl").save(tmp_path / "adapter")

    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": f"i{n}", "image": str(path)}) + "\n"
                             for n, path in enumerate(image_files)))
    out = tmp_path / "emb.npy"
    assert main(["embed", str(items), "--model", str(tiny_checkpoint), "--lora", str(tmp_path / "adapter"),
                 "--device", "cpu", "--out", str(out), "-q"]) == 0

    records = [{"image": str(path)} for path in image_files]
    as_trained = Retriever.from_pretrained(tiny_checkpoint, lora=tmp_path / "adapter", device="cpu")
    assert as_trained.settings.max_pixels == 16 * 28 * 28
    np.testing.assert_allclose(np.load(out), as_trained.encode(records, show_progress=False), atol=1e-5)
    at_base_cap = Retriever.from_pretrained(tiny_checkpoint, lora=tmp_path / "adapter", device="cpu",
                                            settings=ModelSettings.for_model(tiny_checkpoint))
    assert np.abs(np.load(out) - at_base_cap.encode(records, show_progress=False)).max() > 1e-3
