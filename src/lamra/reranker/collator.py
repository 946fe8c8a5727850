"""LamRA-Rank training batches: the pointwise and listwise prompts with their answers, and labels.

Each prompt is rendered with the functions the reranker's inference uses (:mod:`lamra.qwen2vl.prompts`),
followed by the assistant's answer, exactly as the released collator's chat template renders
it (``add_generation_prompt=False``)::

    ...<|im_end|>\\n<|im_start|>assistant\\nYes<|im_end|>\\n

Labels are -100 everywhere except the answer. Where the answer is, is read from the rendered
template, never from token counts: the prompt is tokenized up to the start of the labelled
span and up to its end, and those token counts (checked to be prefixes of the full sequence)
bound the span. ``label_span`` chooses the span:

- ``"answer"`` (default; docs/format.md#reranker-prompts: the answer tokens): ``Yes`` / ``No`` / ``Ans: (k)``;
- ``"answer_eos"``: the answer and the end-of-turn token ``<|im_end|>``;
- ``"official"``: what the released collator (collators/mbeir_rerank.py) leaves unmasked - the
  whole assistant turn: ``<|im_start|>assistant\\n``, the answer, ``<|im_end|>`` and ``\\n``.

Texts go through the official training rule first: format, then cut to 256 tokens (tokenize,
cut, decode); the query's text is ``format(instruction) + " " + query text`` before the rule,
as in the released dataset. Positions: M-RoPE (the processor's ``positions="mrope"``), as the
stock model class the released reranker was trained with computes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..items import Item
from ..qwen2vl.processor import LamraProcessor, PromptInput
from ..qwen2vl.prompts import (
    ASSISTANT_START,
    LISTWISE_ANSWER_PREFIX,
    MAX_RERANK_TEXT_TOKENS,
    TrainingTextRule,
    format_text,
    listwise_messages,
    pointwise_messages,
    render_chat,
)
from ..training.args import LABEL_SPANS
from .data import RerankExample
from .scores import NO, YES

IGNORE = -100
END_OF_TURN = "<|im_end|>"
KINDS = ("pointwise", "listwise")  # the batch's two parts; the step logs a loss for each


def pointwise_answer(positive: bool) -> str:
    return YES if positive else NO


def listwise_answer(slot: int) -> str:
    return f"{LISTWISE_ANSWER_PREFIX}{slot})"


@dataclass
class LabelledPrompt:
    """A tokenized training prompt (answer included) and its labels (-100 outside the span)."""

    prompt: PromptInput
    labels: list[int]


def answer_span_texts(messages: list[dict], answer: str, span: str) -> tuple[str, str, str]:
    """(full text, text before the labelled span, text up to its end) of a prompt and its answer."""
    if span not in LABEL_SPANS:
        raise ValueError(f"label_span must be one of {LABEL_SPANS}, got {span!r}")
    head = render_chat(messages, add_generation_prompt=False)
    answered = messages + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    full = render_chat(answered, add_generation_prompt=False)
    prompt = head + ASSISTANT_START
    if full != prompt + answer + END_OF_TURN + "\n":
        raise ValueError("the chat template does not end a prompt as <|im_start|>assistant\\n{answer}<|im_end|>\\n")
    if span == "official":
        return full, head, full
    if span == "answer_eos":
        return full, prompt, prompt + answer + END_OF_TURN
    return full, prompt, prompt + answer


def labelled_prompt(processor: LamraProcessor, messages: list[dict], answer: str, images: list, *,
                    span: str = "answer", item_id: str | None = None) -> LabelledPrompt:
    """Tokenize ``messages`` + the assistant's ``answer``; label the ``span`` tokens only."""
    full, before, through = answer_span_texts(messages, answer, span)
    tokenizer = processor.tokenizer

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    raw, start_ids, stop_ids = ids(full), ids(before), ids(through)
    if raw[: len(start_ids)] != start_ids or raw[: len(stop_ids)] != stop_ids:
        raise ValueError("the answer does not start at a token boundary of the prompt: cannot locate its labels")
    prompt = processor.tokenize(full, images, item_id=item_id)
    offset = len(prompt.input_ids) - len(raw)  # image / video pads expanded, all before the answer
    start, stop = offset + len(start_ids), offset + len(stop_ids)
    labels = [IGNORE] * len(prompt.input_ids)
    labels[start:stop] = prompt.input_ids[start:stop]
    return LabelledPrompt(prompt, labels)


class RerankCollator:
    """Examples -> {"pointwise": [chunk, ...], "listwise": [chunk, ...], "label_counts", "size"}.

    A chunk holds the samples of at most ``chunk_size`` queries (None: all of them): two
    pointwise rows per query (positive, negative) and one listwise row. Each chunk is the
    processor's collated tensors with ``labels`` (B, L) beside them.
    """

    def __init__(self, processor: LamraProcessor, *, max_text_tokens: int = MAX_RERANK_TEXT_TOKENS,
                 label_span: str = "answer", chunk_size: int | None = None):
        if label_span not in LABEL_SPANS:
            raise ValueError(f"label_span must be one of {LABEL_SPANS}, got {label_span!r}")
        self.processor = processor
        self.rule = TrainingTextRule(processor.tokenizer, max_text_tokens)
        self.label_span = label_span
        self.chunk_size = chunk_size

    # -- one example -> three prompts ------------------------------------------------------------

    def prepared(self, item: Item, instruction: str | None = None) -> Item:
        """``item`` with its text as the released training fed it (instruction joined, formatted, cut)."""
        text = item.text or ""
        if instruction is not None:
            text = f"{format_text(instruction)} {text}"
        return Item(text=self.rule(text) or None, images=item.images, id=item.id)

    def samples(self, example: RerankExample) -> dict[str, list[LabelledPrompt]]:
        query = self.prepared(example.query, example.instruction)
        pointwise = []
        for candidate, is_positive in ((example.positive, True), (example.negative, False)):
            candidate = self.prepared(candidate)
            messages = pointwise_messages(query, candidate, instructions=self.processor.settings.rerank_instructions)
            pointwise.append(labelled_prompt(self.processor, messages,
                                             pointwise_answer(is_positive), query.images + candidate.images,
                                             span=self.label_span, item_id=query.id))
        listed = [self.prepared(c) for c in example.candidates]
        images = query.images + [image for c in listed for image in c.images]
        messages = listwise_messages(query, listed, instructions=self.processor.settings.rerank_instructions)
        listwise = [labelled_prompt(self.processor, messages, listwise_answer(example.answer),
                                    images, span=self.label_span, item_id=query.id)]
        return {"pointwise": pointwise, "listwise": listwise}

    # -- a batch ---------------------------------------------------------------------------------

    def __call__(self, examples: Sequence[RerankExample]) -> dict:
        per_example = [self.samples(e) for e in examples]
        size = self.chunk_size or len(examples) or 1
        batch: dict = {"size": len(examples)}
        counts = {}
        for kind in KINDS:
            chunks = []
            for start in range(0, len(per_example), size):
                rows = [row for samples in per_example[start : start + size] for row in samples[kind]]
                chunks.append(self.collate(rows))
            batch[kind] = chunks
            counts[kind] = sum(int((chunk["labels"] != IGNORE).sum()) for chunk in chunks)
        batch["label_counts"] = counts
        return batch

    def collate(self, rows: list[LabelledPrompt]) -> dict:
        """The processor's M-RoPE batch of ``rows`` with their labels, right-padded with -100."""
        import torch

        inputs = self.processor.collate([row.prompt for row in rows], positions="mrope")
        labels = torch.full(inputs["input_ids"].shape, IGNORE, dtype=torch.long)
        for number, row in enumerate(rows):
            labels[number, : len(row.labels)] = torch.tensor(row.labels, dtype=torch.long)
        inputs["labels"] = labels
        return inputs
