"""LamRA-Ret: one vector per item, from the hidden state just before ``<emb>``."""

from __future__ import annotations

import logging
import os
from contextlib import closing
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import InputError
from ..items import as_item
from ..progress import progress_bar
from ..qwen2vl.backbone import Backbone, load_backbone
from ..qwen2vl.batching import plan_batches, prefetch
from ..qwen2vl.loader import collate_in_workers, to_device
from ..qwen2vl.prompts import PROMPT_FORMAT_VERSION, render_prompt
from ..settings import ModelSettings
from .packing import check_packing, embed_packed, packed_inputs, plan_packing
from .pooling import gather_rows, l2_normalize, last_positions

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
# Padded tokens per batch when max_batch_tokens="auto": GPUs like big batches; on CPUs smaller
# ones stay in cache (measured in benchmarks/encode_throughput.py, docs/benchmarks.md).
AUTO_MAX_BATCH_TOKENS = {"cuda": 16384, "cpu": 4096}


class Retriever:
    """Embeds text, images, image+text, several images or a video into one space.

    >>> retriever = Retriever.from_pretrained("path/or/hub-id", lora="adapter/")
    >>> vectors = retriever.encode(["a red car", Path("car.jpg")])   # (2, D) float32, unit norm

    :meth:`embed` is the one forward (training, evaluation and the server all call it);
    :meth:`encode` wraps it with batching, inference mode and numpy.
    """

    def __init__(self, backbone: Backbone):
        self.backbone = backbone

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike,
        *,
        lora: str | os.PathLike | None = None,
        merge_lora: bool = False,
        device: str | None = None,
        dtype: Any = None,
        attn_implementation: str | None = None,
        settings: ModelSettings | None = None,
        **setting_overrides,
    ) -> "Retriever":
        """Load a Qwen2-VL checkpoint (hub id or folder), optionally with a LoRA adapter.

        ``settings`` (or single fields as keywords, e.g. ``max_pixels=...``) set pixels,
        positions and token caps; see :class:`lamra.settings.ModelSettings`. Without them, the
        adapter's or model folder's ``lamra_settings.json`` (written by lamra's trainer) gives the
        defaults, rule set included; else the checkpoint's release decides the rule set
        (docs/format.md#rule-sets).
        """
        settings = (settings or ModelSettings.for_model(model, lora)).with_overrides(**setting_overrides)
        backbone = load_backbone(model, lora=lora, merge_lora=merge_lora, device=device, dtype=dtype,
                                 attn_implementation=attn_implementation, settings=settings)
        return cls(backbone)

    # -- what the model reads -------------------------------------------------------------

    @property
    def processor(self):
        return self.backbone.processor

    @property
    def settings(self) -> ModelSettings:
        return self.backbone.settings

    @property
    def dim(self) -> int:
        return self.backbone.hidden_size

    @property
    def prompt_version(self) -> str:
        return PROMPT_FORMAT_VERSION

    def fingerprint(self) -> dict:
        """Model, adapter, prompt format, dimension and every setting that changes vectors."""
        return {**self.backbone.fingerprint(), "prompt_format": PROMPT_FORMAT_VERSION, "dim": self.dim,
                "settings": self.settings.fingerprint()}

    def prompt(self, item: Any, instruction: str | None = None) -> str:
        """The exact chat text the model reads for ``item`` (full LamRA form, with ``<emb>``)."""
        return render_prompt(item, instruction)

    def tokenize(self, item: Any, instruction: str | None = None) -> list[int]:
        """Token ids fed to the model (cut before ``<emb>``), vision placeholders expanded."""
        return self.processor.embedding_input(item, instruction).input_ids

    # -- the forward --------------------------------------------------------------------------

    def embed(self, inputs: dict):
        """Unit vectors (B, D) for a collated batch, on the model's device, in float32.

        Follows the caller's gradient mode: training calls it with gradients, :meth:`encode`
        under inference mode. The pooled state is each row's last token (the prompt ends just
        before ``<emb>``, or at the ``max_tokens`` cut).
        """
        hidden = self.backbone.hidden_states(inputs)
        return l2_normalize(gather_rows(hidden, last_positions(inputs["attention_mask"])))

    def encode(
        self,
        items: Iterable[Any],
        instruction: str | Sequence[str | None] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_tokens: int | str | None = "auto",
        sort_by_length: bool = True,
        show_progress: bool = True,
        convert_to: str = "numpy",
        packing: bool = False,
        packed_tokens: int | str = "auto",
        num_workers: int = 0,
    ):
        """Embed ``items`` into an (N, D) float32 array of unit vectors, in input order.

        ``instruction`` is one task instruction for all items (queries) or one per item;
        candidates take none. Batches are cut by ``max_batch_tokens`` padded tokens after
        sorting by length (``sort_by_length=False`` and ``max_batch_tokens=None`` give plain
        fixed-size batches in input order). ``"auto"`` picks a budget for the device.

        ``packing=True`` encodes text-only items without padding: several prompts in one row of
        at most ``packed_tokens`` tokens (``"auto"``: the device's ``max_batch_tokens`` default),
        the same vectors (:mod:`lamra.retriever.packing`); items with images or videos keep the
        padded batches. Only under 1-D positions (the lamra-qwen2vl rule set); M-RoPE is refused.

        ``num_workers=N`` collates the padded batches (image decode, resize, normalize, padding)
        in N DataLoader worker processes, pinned for non-blocking copies on a GPU
        (:mod:`lamra.qwen2vl.loader`); 0 (the default): one worker thread, one batch ahead.
        The vectors are the same either way.
        """
        return self.encode_prepared(self.prepare(items, instruction), batch_size=batch_size,
                                    max_batch_tokens=max_batch_tokens, sort_by_length=sort_by_length,
                                    show_progress=show_progress, convert_to=convert_to, packing=packing,
                                    packed_tokens=packed_tokens, num_workers=num_workers)

    def prepare(self, items: Iterable[Any], instruction: str | Sequence[str | None] | None = None) -> list:
        """Each item's tokenized prompt (a ``PromptInput``: ids, image and video sources), as
        :meth:`encode` reads it; pixels are decoded only when a batch is collated."""
        items = [as_item(x) for x in items]
        prepared = []
        for position, (item, instr) in enumerate(zip(items, per_item_instructions(instruction, len(items)))):
            try:
                prepared.append(self.processor.embedding_input(item, instr))
            except InputError as exc:
                raise exc.located(item=item.id if item.id is not None else f"#{position}") from None
        return prepared

    def encode_prepared(self, prepared: Sequence, *, processor=None, batch_size: int = DEFAULT_BATCH_SIZE,
                        max_batch_tokens: int | str | None = "auto", sort_by_length: bool = True,
                        show_progress: bool = True, convert_to: str = "numpy", packing: bool = False,
                        packed_tokens: int | str = "auto", num_workers: int = 0):
        """:meth:`encode` for prompts already tokenized (:meth:`prepare`, or another prompt
        recipe's); ``processor``: the one that tokenized them, for collation (default: the model's)."""
        import torch

        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 (a thread) or more (processes), got {num_workers}")
        auto_tokens = AUTO_MAX_BATCH_TOKENS.get(self.backbone.device.type, AUTO_MAX_BATCH_TOKENS["cuda"])
        if max_batch_tokens == "auto":
            max_batch_tokens = auto_tokens
        out = torch.empty((len(prepared), self.dim), dtype=torch.float32)
        packed_rows, padded = [], list(range(len(prepared)))
        if packing:
            check_packing((processor or self.processor).settings, self.backbone.base_model())
            packed_rows, padded = plan_packing(prepared, auto_tokens if packed_tokens == "auto" else int(packed_tokens))
        batches = plan_batches([len(prepared[i].input_ids) for i in padded], max_batch_size=batch_size,
                               max_batch_tokens=max_batch_tokens, sort_by_length=sort_by_length)
        batches = [[padded[i] for i in batch] for batch in batches]
        was_training = self.backbone.model.training
        self.backbone.eval()
        try:
            with progress_bar(len(prepared), "encoding", enabled=show_progress and len(prepared) > 0) as bar:
                for rows in packed_rows:
                    inputs = packed_inputs([prepared[i] for i in rows])
                    with torch.inference_mode():
                        out[rows] = embed_packed(self.backbone, inputs).cpu()
                    bar.advance(len(rows))
                collate = (processor or self.processor).collate
                device = self.backbone.device
                pinned = num_workers > 0 and device.type == "cuda"
                if num_workers > 0:
                    collated = collate_in_workers(collate, prepared, batches, num_workers=num_workers,
                                                  pin_memory=pinned)
                else:
                    collated = prefetch(lambda rows: (rows, collate([prepared[i] for i in rows])), batches)
                with closing(collated):  # an error stops the workers now, not when collected
                    for rows, inputs in collated:
                        if pinned:
                            inputs = to_device(inputs, device)
                        with torch.inference_mode():
                            out[rows] = self.embed(inputs).cpu()
                        bar.advance(len(rows))
        finally:
            self.backbone.train(was_training)
        return out.numpy() if convert_to == "numpy" else out

    @staticmethod
    def similarity(queries, candidates) -> np.ndarray:
        """Cosine similarity of unit vectors: (Q, D) x (C, D) -> (Q, C)."""
        return np.asarray(queries, dtype=np.float32) @ np.asarray(candidates, dtype=np.float32).T


def per_item_instructions(instruction, count: int) -> list:
    """One instruction for every item, or a list with one per item (checked)."""
    if instruction is None or isinstance(instruction, str):
        return [instruction] * count
    instruction = list(instruction)
    if len(instruction) != count:
        raise ValueError(f"got {len(instruction)} instructions for {count} items")
    return instruction
