"""Test helper for the reranker tests: a tiny Qwen2-VL with large random weights.

The shared ``tiny_checkpoint`` has weights of std 0.02, so its logits barely move when
positions or penalties change (differences ~1e-4): a test could not tell a wrong M-RoPE
continuation from the right one. Here the language model's matrices get std 0.25, which
makes such mistakes change logits by whole units.
"""

from __future__ import annotations

from pathlib import Path


def save_sharp_checkpoint(folder: Path, tokenizer, *, repetition_penalty: float | None = None,
                          std: float = 0.25, seed: int = 1) -> Path:
    """A tiny checkpoint folder; ``repetition_penalty`` goes into its generation_config.json."""
    import torch

    from lamra.demo.tiny import image_processor, tiny_model

    model = tiny_model(tokenizer, hidden_size=64, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and "visual" not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    if repetition_penalty is not None:
        model.generation_config.repetition_penalty = repetition_penalty
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor().save_pretrained(folder)
    return folder
