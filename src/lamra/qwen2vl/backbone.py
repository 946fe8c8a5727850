"""The only module that knows model classes, dtypes, devices, the ``<emb>`` token, which modules
train, and transformers-version quirks. Everything else talks to a :class:`Backbone`.

Tested with transformers 5.x. Notes on the quirks handled here:

- Qwen2-VL's combined ``Qwen2VLProcessor`` insists on a video processor, which needs
  torchvision; lamra uses the tokenizer and the PIL image processor directly (see
  processor.py) and patches video frames itself (video.py).
- Positions: transformers 5 computes the 3-D M-RoPE of Qwen2-VL / Qwen2.5-VL only when it is
  given ``mm_token_type_ids`` and no ``position_ids``; without either it silently uses 1-D
  positions. The Qwen2-VL LamRA-Ret used plain 1-D positions, the Qwen2.5-VL one M-RoPE
  (docs/format.md, "Positions"): the processor passes explicit ``position_ids`` in "1d" mode and
  ``mm_token_type_ids`` in "mrope" mode, and :meth:`Backbone.hidden_states` hands them through.
- Rule sets: :func:`load_backbone` gives settings without a rule set the checkpoint's (its
  config's ``model_type``), so a Qwen2.5-VL checkpoint scores under the Qwen2.5-VL release's rules.
- The PIL image processor is used even where torchvision exists: it is the processor the
  LamRA checkpoints were trained with (transformers 4.45 had no torchvision one).
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..settings import ModelSettings
from .processor import LamraProcessor

logger = logging.getLogger(__name__)


@contextmanager
def _quiet_peft():
    """peft asks every model for transformers' deprecated is_gradient_checkpointing when it wraps
    one: a FutureWarning about the libraries' own code on every LoRA, which users cannot act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


_MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}
# Inputs the language model takes; anything else a collator adds (labels, ids) is not for it.
_MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "image_grid_thw",
                 "pixel_values_videos", "video_grid_thw", "mm_token_type_ids", "cu_seq_lens_q", "cu_seq_lens_k")
# A packed row's longest sequence (lamra.retriever.packing): ints, passed as they are.
_MODEL_INT_INPUTS = ("max_length_q", "max_length_k")


@dataclass
class Backbone:
    """A loaded multimodal LM and its processor (tokenizer, image processor, ``<emb>`` id)."""

    model: Any
    processor: LamraProcessor
    model_id: str
    adapter_id: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_processor(self):
        return self.processor.image_processor

    @property
    def settings(self) -> ModelSettings:
        return self.processor.settings

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
        return self.processor.image_token_id

    @property
    def merge_size(self) -> int:
        return self.processor.merge_size

    def base_model(self):
        """The transformers model under any peft wrapper."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def language_model(self):
        """The transformer that returns hidden states (``Qwen2VLModel``), LoRA layers included."""
        return self.base_model().model

    def output_head(self):
        """The LM head (hidden state -> vocabulary logits), for answers such as "Yes" / "No"."""
        return self.base_model().get_output_embeddings()

    def pixel_inputs(self, images: list) -> dict:
        return self.processor.pixel_inputs(images)

    def hidden_states(self, inputs: dict):
        """Last hidden states (B, L, H) for collated inputs, on the model's device.

        Follows the caller's gradient mode (training and inference share this forward);
        ``position_ids`` from the processor are used as given (1-D mode), else the model
        computes M-RoPE from ``mm_token_type_ids``.
        """
        device, dtype = self.device, self.dtype
        batch = {k: v.to(device) for k, v in inputs.items() if k in _MODEL_INPUTS}
        batch.update({k: v for k, v in inputs.items() if k in _MODEL_INT_INPUTS})
        for key in ("pixel_values", "pixel_values_videos"):
            if key in batch:
                batch[key] = batch[key].to(dtype)
        return self.language_model()(**batch, use_cache=False).last_hidden_state

    def fingerprint(self) -> dict:
        """What identifies the vectors this backbone makes (stored with every artefact)."""
        return {"model": self.model_id, "adapter": self.adapter_id}

    # -- training ---------------------------------------------------------------------------

    def add_lora(self, *, r: int = 64, alpha: int = 128, dropout: float = 0.05, train_vision: bool = False,
                 full: bool = False, train_embeddings: bool = True) -> None:
        """Make the model trainable: a fresh LoRA on every linear layer of the language model
        (LamRA's recipe, docs/format.md), the vision tower and merger frozen unless ``train_vision``;
        ``full`` trains every language-model weight instead of a LoRA, the token embeddings
        (and a head tied to them) included unless ``train_embeddings`` is false."""
        from peft import LoraConfig, get_peft_model

        network = self.base_model()
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        if full:
            for parameter in self.language_model().language_model.parameters():
                parameter.requires_grad_(True)
            if not train_embeddings:
                network.get_input_embeddings().weight.requires_grad_(False)
        else:
            # train_vision: peft trains a copy of the tower and saves it with the adapter (trained
            # weights outside the adapter would be lost when it is saved).
            config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                                target_modules=language_model_linear_names(network),
                                modules_to_save=["visual"] if train_vision else None)
            with _quiet_peft():
                self.model = get_peft_model(network, config)
        if train_vision and full:
            for parameter in self.language_model().visual.parameters():
                parameter.requires_grad_(True)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass (non-reentrant: works with frozen inputs)."""
        network = self.base_model()
        # transformers 5.2x renamed it (and its keyword); older releases of the pinned range have
        # only the old name.
        if hasattr(network, "activation_checkpointing_enable"):
            network.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            network.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def trainable_parameters(self) -> list:
        return [p for p in self.model.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> "Backbone":
        self.model.train(mode)
        return self

    def eval(self) -> "Backbone":
        return self.train(False)


def language_model_linear_names(network) -> list[str]:
    """Full names of every ``nn.Linear`` in the language model (not the vision tower, not the head)."""
    import torch

    names = []
    for name, module in network.named_modules():
        if isinstance(module, torch.nn.Linear) and ".language_model." in f".{name}":
            names.append(name)
    if not names:
        raise ValueError("found no linear layers under a 'language_model' module: unknown architecture")
    return names


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


def _model_class(path: str, hub_kwargs: dict):
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, **hub_kwargs)
    name = _MODEL_CLASSES.get(config.model_type)
    if name is None:
        raise ValueError(f"{path}: model type {config.model_type!r} is not supported; lamra supports "
                         f"{', '.join(sorted(_MODEL_CLASSES))}")
    return getattr(transformers, name), config.model_type


def load_backbone(
    model: str | os.PathLike,
    *,
    lora: str | os.PathLike | None = None,
    merge_lora: bool = False,
    device: str | None = None,
    dtype: Any = None,
    attn_implementation: str | None = None,
    settings: ModelSettings | None = None,
    revision: str | None = None,
) -> Backbone:
    """Load a Qwen2-VL (or Qwen2.5-VL) checkpoint from a hub id or a local folder.

    ``lora`` is a peft adapter folder put on top (``merge_lora`` folds it into the weights);
    ``settings`` sets pixels, positions and token caps (:class:`ModelSettings`); without a rule
    set of their own they take the checkpoint's (its config's ``model_type``).
    """
    import torch

    from .model_source import check_adapter_source, check_model_source
    from .vision_attention import use_packed_vision_attention

    check_model_source(model, revision=revision)
    if lora is not None:
        check_adapter_source(lora, revision=revision)
    model_path = str(model)
    hub_kwargs = {"revision": revision} if revision else {}
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    attention = resolve_attention(attn_implementation, device, torch_dtype)

    model_class, model_type = _model_class(model_path, hub_kwargs)
    settings = (settings or ModelSettings()).for_model_type(model_type)
    processor = LamraProcessor.from_pretrained(model_path, settings, **hub_kwargs)
    logger.info("loading %s (%s, %s, attention=%s)", model_path, device, torch_dtype, attention)
    network = model_class.from_pretrained(model_path, dtype=torch_dtype, attn_implementation=attention,
                                          **hub_kwargs)
    use_packed_vision_attention(network)
    if network.get_input_embeddings().weight.shape[0] <= processor.emb_token_id:
        # Released LamRA checkpoints were saved with the vocabulary resized to include <emb>;
        # a raw Qwen2-VL has padding rows, so this only runs for a smaller vocabulary.
        network.resize_token_embeddings(len(processor.tokenizer))
    if lora is not None:
        network = attach_lora(network, lora, merge=merge_lora)
    network.to(device)
    network.eval()
    return Backbone(
        model=network,
        processor=processor,
        model_id=_model_id(model_path),
        adapter_id=None if lora is None else _model_id(str(lora)) + ("+merged" if merge_lora else ""),
    )


def attach_lora(network, adapter: str | os.PathLike, *, merge: bool = False):
    """Put a peft LoRA adapter on ``network``; merged, it becomes a plain model again."""
    from peft import PeftModel

    adapter = str(adapter)
    if not Path(adapter, "adapter_config.json").is_file() and Path(adapter).exists():
        raise FileNotFoundError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    with _quiet_peft():
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
