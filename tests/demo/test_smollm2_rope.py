"""lamra.demo.smollm2's transplant on a tiny random Llama (no GGUF file): the Qwen2-VL it writes
computes the Llama's logits, with a rope_theta that is neither Llama's default nor Qwen2's."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny_llama(small_tokenizer):
    """A 2-layer Llama with grouped-query attention and tied embeddings (as SmolLM2), weights large
    enough that a wrong rotary frequency moves the logits by whole units."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(small_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 50.0})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def test_the_transplant_keeps_a_non_default_rope_theta(tiny_llama, small_tokenizer, tmp_path):
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from lamra.demo.smollm2 import CHECK_SENTENCE, qwen2vl_tokenizer, transplant, transplant_differences

    assert tiny_llama.config.rope_parameters["rope_theta"] == 50.0
    tokenizer, _ = qwen2vl_tokenizer(small_tokenizer)
    transplant(tiny_llama, tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    from lamra.demo.tiny import image_processor

    image_processor().save_pretrained(tmp_path)
    ours = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path, dtype="float32").eval()
    assert ours.config.text_config.rope_parameters["rope_theta"] == 50.0

    ids = small_tokenizer(CHECK_SENTENCE, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = tiny_llama(input_ids=torch.tensor([ids])).logits[0]
        positions = torch.arange(len(ids)).view(1, 1, -1).expand(3, 1, -1)  # plain 1-D positions (spec 2)
        got = ours(input_ids=torch.tensor([ids]), position_ids=positions).logits[0, :, :expected.shape[-1]]
    assert len(ids) > 20 and float(expected.abs().max()) > 1
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # The build's own check (lamra's input path included) agrees.
    check = transplant_differences(tiny_llama, small_tokenizer, tmp_path)
    assert check["same_token_ids"] and check["prompt_same_token_ids"]
    assert max(check["max_abs_diff_logits"], check["max_abs_diff_lamra_prompt_hidden"]) < 1e-4
