"""The only module that knows model classes, processors, dtypes, devices, the ``<emb>`` token
and transformers-version quirks. Everything else talks to a :class:`Backbone`.

Tested with transformers 5.x. Notes on the quirks handled here:

- Qwen2-VL's combined ``Qwen2VLProcessor`` insists on a video processor, which needs
  torchvision; lamra uses the tokenizer and the PIL image processor directly and expands the
  ``<|image_pad|>`` placeholders itself (video frames are embedded as a list of images).
- transformers 5 computes M-RoPE positions from ``mm_token_type_ids`` (1 on image tokens), which
  the processor used to return; :meth:`Backbone.model_inputs` builds it.
- The PIL image processor is used even where torchvision exists: it is the processor the
  LamRA checkpoints were trained with (transformers 4.45 had no torchvision one).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .prompts import EMB_TOKEN

logger = logging.getLogger(__name__)

IMAGE_PAD = "<|image_pad|>"
DEFAULT_MAX_PIXELS = 300 * 28 * 28  # LamRA's cap (spec section 2)
DEFAULT_MIN_PIXELS = 56 * 56

_MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}


@dataclass
class Backbone:
    """A loaded multimodal LM ready to encode: model, tokenizer, image processor, ``<emb>`` id."""

    model: Any
    tokenizer: Any
    image_processor: Any
    emb_token_id: int
    model_id: str
    adapter_id: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    @property
    def hidden_size(self) -> int:
        config = self.model.config
        text_config = getattr(config, "text_config", None) or config
        return int(text_config.hidden_size)

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)

    @property
    def merge_size(self) -> int:
        return int(self.image_processor.merge_size)

    def language_model(self):
        """The transformer that returns hidden states (``Qwen2VLModel``), LoRA layers included."""
        model = self.model
        if hasattr(model, "get_base_model"):  # a peft.PeftModel
            model = model.get_base_model()
        return model.model

    def output_head(self):
        """The LM head (hidden state -> vocabulary logits), for answers such as "Yes" / "No"."""
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return model.get_output_embeddings()

    def image_token_count(self, size: tuple[int, int]) -> int:
        """How many ``<|image_pad|>`` tokens an image of (width, height) becomes."""
        height, width = _smart_resize_hw(size, self.image_processor)
        patch = int(self.image_processor.patch_size)
        return (height // patch) * (width // patch) // (self.merge_size**2)

    def pixel_inputs(self, images: list) -> dict:
        """Pixel patches and grids for RGB PIL images, in order."""
        out = self.image_processor(images=images, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def fingerprint(self) -> dict:
        """What identifies the vectors this backbone makes (stored with every artefact)."""
        return {"model": self.model_id, "adapter": self.adapter_id}


def _smart_resize_hw(size: tuple[int, int], image_processor) -> tuple[int, int]:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    width, height = size
    factor = int(image_processor.patch_size) * int(image_processor.merge_size)
    pixels = image_processor.size
    return smart_resize(height, width, factor=factor, min_pixels=pixels["shortest_edge"],
                        max_pixels=pixels["longest_edge"])


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: Any, device: str):
    """``None`` / "auto" means bf16 on a GPU and fp32 on a CPU."""
    import torch

    if dtype is None or dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def resolve_attention(attn_implementation: str | None, device: str, dtype) -> str:
    """sdpa by default; flash-attention 2 when it is installed and the run is on a GPU in 16 bit."""
    import torch

    if attn_implementation:
        return attn_implementation
    if str(device).startswith("cuda") and dtype in (torch.bfloat16, torch.float16):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def load_tokenizer(path: str | os.PathLike, **hub_kwargs):
    """The checkpoint's tokenizer with ``<emb>`` added (or found, if the checkpoint saved it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), **hub_kwargs)
    if EMB_TOKEN not in tokenizer.get_vocab():
        # A plain added token, as LamRA does: it lands right after the last existing token.
        tokenizer.add_tokens([EMB_TOKEN])
    tokenizer.padding_side = "right"
    return tokenizer


def load_image_processor(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                         min_pixels: int = DEFAULT_MIN_PIXELS, **hub_kwargs):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil.from_pretrained(str(path), min_pixels=min_pixels, max_pixels=max_pixels,
                                                    **hub_kwargs)


def _model_class(path: str, hub_kwargs: dict):
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, **hub_kwargs)
    name = _MODEL_CLASSES.get(config.model_type)
    if name is None:
        raise ValueError(f"{path}: model type {config.model_type!r} is not supported; lamra supports "
                         f"{', '.join(sorted(_MODEL_CLASSES))}")
    return getattr(transformers, name)


def load_backbone(
    model: str | os.PathLike,
    *,
    lora: str | os.PathLike | None = None,
    merge_lora: bool = False,
    device: str | None = None,
    dtype: Any = None,
    attn_implementation: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    revision: str | None = None,
) -> Backbone:
    """Load a Qwen2-VL (or Qwen2.5-VL) checkpoint from a hub id or a local folder.

    ``lora`` is a peft adapter folder put on top (``merge_lora`` folds it into the weights).
    """
    import torch

    model_path = str(model)
    hub_kwargs = {"revision": revision} if revision else {}
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    attention = resolve_attention(attn_implementation, device, torch_dtype)

    tokenizer = load_tokenizer(model_path, **hub_kwargs)
    image_processor = load_image_processor(model_path, max_pixels=max_pixels, **hub_kwargs)
    model_class = _model_class(model_path, hub_kwargs)
    logger.info("loading %s (%s, %s, attention=%s)", model_path, device, torch_dtype, attention)
    network = model_class.from_pretrained(model_path, dtype=torch_dtype, attn_implementation=attention,
                                          **hub_kwargs)
    emb_token_id = tokenizer.convert_tokens_to_ids(EMB_TOKEN)
    if network.get_input_embeddings().weight.shape[0] <= emb_token_id:
        # Released LamRA checkpoints were saved with the vocabulary resized to include <emb>;
        # a raw Qwen2-VL has padding rows, so this only runs for a smaller vocabulary.
        network.resize_token_embeddings(len(tokenizer))
    if lora is not None:
        network = attach_lora(network, lora, merge=merge_lora)
    network.to(device)
    network.eval()
    return Backbone(
        model=network,
        tokenizer=tokenizer,
        image_processor=image_processor,
        emb_token_id=emb_token_id,
        model_id=_model_id(model_path),
        adapter_id=None if lora is None else _model_id(str(lora)) + ("+merged" if merge_lora else ""),
    )


def attach_lora(network, adapter: str | os.PathLike, *, merge: bool = False):
    """Put a peft LoRA adapter on ``network``; merged, it becomes a plain model again."""
    from peft import PeftModel

    adapter = str(adapter)
    if not Path(adapter, "adapter_config.json").is_file() and Path(adapter).exists():
        raise FileNotFoundError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    network = PeftModel.from_pretrained(network, adapter)
    if merge:
        network = network.merge_and_unload()
    return network


def _model_id(path: str) -> str:
    """A stable name for a checkpoint that survives moving its folder.

    A hub id stays as it is; a local folder becomes ``name@digest``, the digest covering its
    config and the names and sizes of its weight files (adapter weights are hashed whole:
    they are small and retrained in place more often).
    """
    import hashlib

    local = Path(path).expanduser()
    if not local.is_dir():
        return path
    digest = hashlib.sha256()
    for file in sorted(local.iterdir()):
        if file.suffix == ".json" and "config" in file.name:
            digest.update(file.name.encode() + file.read_bytes())
        elif file.suffix in (".safetensors", ".bin"):
            is_adapter = file.name.startswith("adapter_")
            digest.update(file.name.encode() + (file.read_bytes() if is_adapter else str(file.stat().st_size).encode()))
    return f"{local.resolve().name}@{digest.hexdigest()[:12]}"
