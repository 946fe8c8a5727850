"""Every string the official zero-shot evaluation feeds the models, in one place (Code-kunkun/LamRA
@7286399), and how a list of parts becomes the chat text.

An entry's prompt is a tuple of *parts*: text strings, image paths (:class:`~pathlib.Path`) and
videos (:class:`~lamra.items.Video`), rendered in order with no separator, exactly as the Qwen2-VL
chat template joins a content list. Text is never formatted (no capital, no added period): the
official zero-shot code feeds every caption raw. The retrieval parts end with the summarize
suffix; the rerank parts have none. The suffix strings and the reranker's instruction are the
ones of :mod:`lamra.qwen2vl.prompts` (one home for each).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ...items import is_video
from ...qwen2vl.prompts import (  # noqa: F401  (re-exported: the readers take every string from here)
    EMB_ANSWER,
    EMB_TOKEN,
    POINTWISE_INSTRUCTIONS,
    SUMMARIZE_IMAGE,
    SUMMARIZE_IMAGE_TEXT,
    SUMMARIZE_MULTI,
    SUMMARIZE_TEXT,
    SUMMARIZE_VIDEO,
    render_chat,
)

# Bump when a string below or the way parts render changes: cached embeddings and rerank scores
# carry it and are rebuilt.
ZEROSHOT_PROMPTS_VERSION = "lamra-zeroshot-1"

# -- retrieval (eval/eval_zeroshot/*, dataset/datasets_*.py) -----------------------------------
IMAGE_CAPTION = "Find an image caption describing the following everyday image."
# datasets_urban1k.py L37 puts the instruction in a Python set ({text}); the chat template prints it so.
URBAN_IMAGE_CAPTION = "{'Find an image caption describing the following everyday image.'}"
CHANGES = "I'm looking for a similar everyday image with the described changes."
SAME_ATTRIBUTES = "I'm looking for an image with the same attributes as described."
VIST = ("I will provide you with a series of images and captions from a story, and I need you to retrieve "
        "the image corresponding to the last caption.")
VISDIAL = "Find me an everyday image that matches the given dialog."
FASHION = "Find me a similar fashion image based on the following multi-round modifications."
VIDEO_CAPTION = "Find an everyday video match with caption."

# Urban-1K alone is embedded through eval_collator_default_resolution.py: qwen_vl_utils' own image
# cap (MAX_PIXELS = 16384 * 28 * 28), not LamRA's 300 * 28 * 28. Its reranking uses the usual cap.
URBAN_MAX_PIXELS = 16384 * 28 * 28

# -- zero-shot reranking (eval/eval_zeroshot_rerank.py, dataset/datasets_*.py Rerank classes) ---
CAPTION_IMAGE = "Find me an everyday image that matches the given caption."  # t->i rerank only
CIRCO_RERANK = "I'm looking for a similar everyday image with the described changes"  # no period (L174)
VISDIAL_RERANK = "Find the image that matches the dialogue"  # "dialogue", no period (L180)
RERANK_QUERY, RERANK_CANDIDATE = "Query:", "Candidate:"

# The official zero-shot reranking: pointwise, the top 10 (2 for the matching sets: both captions),
# fused as S_ret + w * P(Yes) with w = 1, except Sugar-Crepe's 0.1 (eval_itm.py L18-29).
RERANK_TOP_K = 10
MATCHING_RERANK_K = 2  # CC-Neg, Sugar-Crepe: the caption and its negative
RERANK_WEIGHT = 1.0
SUGAR_CREPE_RERANK_WEIGHT = 0.1

def alpha_of(weight: float) -> float:
    """lamra fuses ``alpha * S_ret + (1 - alpha) * S_rank``; the official ``S_ret + w * S_rank`` is
    the same order with alpha = 1 / (1 + w) (w = 1 -> 0.5; w = 0.1 -> 1/1.1)."""
    return 1.0 / (1.0 + weight)


def content(parts: Sequence) -> list[dict]:
    """Parts -> a Qwen2-VL content list."""
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append({"type": "text", "text": part})
        elif is_video(part):
            out.append({"type": "video", "video": part})
        else:
            out.append({"type": "image", "image": part})
    return out


def retrieval_text(parts: Sequence, *, cut_at_emb: bool = False) -> str:
    """The chat text LamRA-Ret reads (eval_collator.py: user parts, assistant ``<emb>.``,
    generation prompt). ``cut_at_emb``: stop right before ``<emb>`` (the state pooled)."""
    messages = [{"role": "user", "content": content(parts)},
                {"role": "assistant", "content": [{"type": "text", "text": EMB_ANSWER}]}]
    text = render_chat(messages)
    return text[: text.index(EMB_TOKEN)] if cut_at_emb else text


def rerank_text(query: Sequence, candidate: Sequence, *, instructions: str = "spaced") -> str:
    """The chat text LamRA-Rank reads for one pair (one user turn, generation prompt);
    ``instructions``: the reranker's rule set's strings (docs/format.md#rule-sets)."""
    parts = [POINTWISE_INSTRUCTIONS[instructions], RERANK_QUERY, *query, RERANK_CANDIDATE, *candidate]
    return render_chat([{"role": "user", "content": content(parts)}])


def media(parts: Sequence) -> tuple[list, list]:
    """The images and the videos among ``parts``, in order."""
    images = [p for p in parts if isinstance(p, Path)]
    videos = [p for p in parts if is_video(p)]
    return images, videos
