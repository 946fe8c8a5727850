"""lamra.demo.smollm2: the Qwen2-VL checkpoint computes what SmolLM2 computes. The reference is
SmolLM2 as plain transformers reads it from the GGUF file (a Llama), compared here with the
saved checkpoint loaded by plain transformers as a Qwen2-VL; a wrong transplant is refused."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow  # loads and de-quantises the 135M model three times (~1.5 minutes)

SENTENCE = "A small boat drifts past the harbour lights at dusk."


def test_the_checkpoint_computes_what_smollm2_computes(smollm2_gguf, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2VLForConditionalGeneration

    from lamra.demo.smollm2 import build_checkpoint

    report = build_checkpoint(tmp_path / "base")
    assert report["transplant_ok"]

    source_tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    source = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                  dtype="float32").eval()
    ours_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "base")
    ours = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path / "base", dtype="float32").eval()

    ids = source_tokenizer(SENTENCE, add_special_tokens=False)["input_ids"]
    assert ours_tokenizer(SENTENCE, add_special_tokens=False)["input_ids"] == ids
    # The special tokens Qwen2-VL prompts need, each one token of the checkpoint's tokenizer.
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"):
        assert len(ours_tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    with torch.no_grad():
        expected = source(input_ids=torch.tensor([ids])).logits[0]
        positions = torch.arange(len(ids)).view(1, 1, -1).expand(3, 1, -1)  # plain 1-D positions (spec 2)
        got = ours(input_ids=torch.tensor([ids]), position_ids=positions).logits[0, :, :expected.shape[-1]]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_a_transplant_that_computes_something_else_is_refused(smollm2_gguf, tmp_path, monkeypatch):
    import lamra.demo.smollm2 as smollm2

    real = smollm2.transplant

    def off_by_a_layer(source, tokenizer):  # a wrong copy: one layer's norm weights scaled
        model = real(source, tokenizer)
        model.model.language_model.layers[3].input_layernorm.weight.data *= 1.5
        return model

    monkeypatch.setattr(smollm2, "transplant", off_by_a_layer)
    with pytest.raises(RuntimeError, match="does not compute what SmolLM2 computes"):
        smollm2.build_checkpoint(tmp_path / "base")
