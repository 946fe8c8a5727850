"""lamra.smollm2: the Qwen2-VL checkpoint computes what SmolLM2 (read by transformers as a Llama)
computes; the check is the independent computation, and a wrong transplant is refused."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.slow  # loads and de-quantises the 135M model twice (~1 minute)


@pytest.fixture(scope="module")
def gguf_available():
    from lamra.token_embeddings import find_gguf

    try:
        find_gguf()
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


def test_the_checkpoint_computes_what_smollm2_computes(gguf_available, tmp_path):
    from lamra.smollm2 import build_checkpoint

    report = build_checkpoint(tmp_path / "base")
    assert report["transplant_ok"] and report["same_token_ids"] and report["prompt_same_token_ids"]
    assert report["max_abs_diff_logits"] <= 1e-4 and report["max_abs_diff_lamra_prompt_hidden"] <= 1e-4
    assert (tmp_path / "base" / "config.json").is_file()


def test_a_transplant_that_computes_something_else_is_refused(gguf_available, tmp_path, monkeypatch):
    import lamra.smollm2 as smollm2

    real = smollm2.transplant

    def off_by_a_layer(source, tokenizer):  # a wrong copy: one layer's norm weights scaled
        model = real(source, tokenizer)
        model.model.language_model.layers[3].input_layernorm.weight.data *= 1.5
        return model

    monkeypatch.setattr(smollm2, "transplant", off_by_a_layer)
    with pytest.raises(RuntimeError, match="does not compute what SmolLM2 computes"):
        smollm2.build_checkpoint(tmp_path / "base")
