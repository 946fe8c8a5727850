"""The exact LamRA prompts (docs/format.md), rendered in the Qwen2-VL chat format.

Everything a model reads is built here, so :func:`render_prompt` shows a user precisely
what goes into the model for any item.
"""

from __future__ import annotations

from typing import Any, Callable

from ..items import Item, as_item, is_video

# Bump when anything below changes the vectors a model produces: stored embeddings and
# indexes carry it and refuse to mix with another version. (2: 1-D positions, the official
# truncation, the multi-image and video forms.)
PROMPT_FORMAT_VERSION = "lamra-ret-2"

EMB_TOKEN = "<emb>"
SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
ASSISTANT_START = "<|im_start|>assistant\n"

SUMMARIZE_TEXT = "\nSummarize above sentence in one word: "
SUMMARIZE_IMAGE = "\nSummarize above image in one word: "
SUMMARIZE_IMAGE_TEXT = "\nSummarize above image and sentence in one word: "
SUMMARIZE_VIDEO = "\nSummarize above video in one word: "
SUMMARIZE_VIDEO_TEXT = "\nSummarize above video and sentence in one word: "
SUMMARIZE_MULTI = "\nSummarize above images and sentences in one word: "
EMB_ANSWER = f"{EMB_TOKEN}."

# Training-time text cuts of the official code (docs/format.md, "Truncation"): formatted text, tokenized
# and decoded.
MAX_RETRIEVAL_TEXT_TOKENS = 480
MAX_RERANK_TEXT_TOKENS = 256


def format_text(text: str | None) -> str:
    """LamRA's text normalisation: drop "\\r", strip spaces and outer double quotes,
    upper-case the first character, end with ".", "?" or "!". Empty stays empty."""
    if not text:
        return ""
    text = text.replace("\r", "").strip().strip('"')
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    if not text.endswith((".", "?", "!")):
        text += "."
    return text


def truncate_text(text: str | None, tokenizer: Any, max_tokens: int) -> str | None:
    """Cut ``text`` to at most ``max_tokens`` tokens of ``tokenizer`` (tokenize, cut, decode).

    The official training rule for formatted texts (480 tokens for retrieval, 256 for
    reranking); inference never calls it.
    """
    # Every token covers at least one byte, and NFC normalisation at most triples the UTF-8
    # bytes (UAX #15), so a text this short cannot exceed the limit: skip tokenizing it.
    if not text or 3 * len(text.encode("utf-8")) <= max_tokens:
        return text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens])


class TrainingTextRule:
    """``format`` then the official training cut (tokenize, keep ``max_tokens``, decode): what the
    released stage-2 and rerank training fed the model. A class, so DataLoader workers can pickle it."""

    def __init__(self, tokenizer: Any, max_tokens: int = MAX_RETRIEVAL_TEXT_TOKENS):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    def __call__(self, text: str) -> str:
        return truncate_text(format_text(text), self.tokenizer, self.max_tokens)


def raw_text(text: str) -> str:
    """Stage 1 of the released code feeds sentences as they are (no format, no cut)."""
    return text


def is_multi_part(item: Item) -> bool:
    """Several images, or text and images interleaved: the official multi-image form."""
    images = [p for p in item.parts if not isinstance(p, str) and not is_video(p)]
    texts = [p for p in item.parts if isinstance(p, str)]
    return len(images) >= 2 or len(texts) >= 2


def _media(part: Any) -> dict:
    return {"type": "video", "video": part} if is_video(part) else {"type": "image", "image": part}


def user_content(item: Any, instruction: str | None = None, *,
                 prepare_text: Callable[[str], str] = format_text) -> list[dict]:
    """The user turn's content list for an item, in the Qwen2-VL message format.

    Queries pass their task ``instruction``; candidates pass none. The paper's kinds:
    media (image or video) first, then ``prepare_text(f"{instruction} {text}")`` (``format``
    at inference; format + the 480-token cut in training), then the kind's suffix. Items with
    several images or several texts take the official multi-image form (Visual Storytelling):
    the instruction, then the parts in order, all raw, then the plural suffix.
    """
    item = as_item(item)
    if is_multi_part(item):
        content = [{"type": "text", "text": instruction}] if instruction else []
        content += [{"type": "text", "text": p} if isinstance(p, str) else _media(p) for p in item.parts]
        content.append({"type": "text", "text": SUMMARIZE_MULTI})
        return content
    text = item.text or ""
    text = prepare_text(f"{instruction} {text}" if instruction else text)
    content = [_media(p) for p in item.parts if not isinstance(p, str)]
    has_video = any(c["type"] == "video" for c in content)
    if content and text:
        suffix = SUMMARIZE_VIDEO_TEXT if has_video else SUMMARIZE_IMAGE_TEXT
    elif content:
        suffix = SUMMARIZE_VIDEO if has_video else SUMMARIZE_IMAGE
    else:
        suffix = SUMMARIZE_TEXT
    # The suffix joins the text (no separator in the chat template), as in LamRA.
    content.append({"type": "text", "text": text + suffix})
    return content


def embedding_messages(item: Any, instruction: str | None = None, *,
                       prepare_text: Callable[[str], str] = format_text) -> list[dict]:
    """The chat messages of LamRA-Ret for ``item``: user content, then the ``<emb>.`` answer."""
    return [
        {"role": "user", "content": user_content(item, instruction, prepare_text=prepare_text)},
        {"role": "assistant", "content": [{"type": "text", "text": EMB_ANSWER}]},
    ]


_PLACEHOLDERS = {"image": IMAGE_PLACEHOLDER, "video": VIDEO_PLACEHOLDER}


def render_chat(messages: list[dict], *, add_generation_prompt: bool = True) -> str:
    """Render messages exactly as the Qwen2-VL chat template does (default system prompt)."""
    out = []
    if not messages or messages[0]["role"] != "system":
        out.append(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n")
    for message in messages:
        out.append(f"<|im_start|>{message['role']}\n")
        content = message["content"]
        if isinstance(content, str):
            out.append(content)
        else:
            for part in content:
                out.append(_PLACEHOLDERS[part["type"]] if part["type"] in _PLACEHOLDERS else part["text"])
        out.append("<|im_end|>\n")
    if add_generation_prompt:
        out.append(ASSISTANT_START)
    return "".join(out)


def render_prompt(item: Any, instruction: str | None = None, *, cut_at_emb: bool = False,
                  prepare_text: Callable[[str], str] = format_text) -> str:
    """The exact text the model reads for ``item`` (images appear as vision placeholders).

    With ``cut_at_emb`` the text stops right before ``<emb>``: under causal attention the
    hidden state there is the same, so encoding uses this shorter form (docs/format.md).
    """
    text = render_chat(embedding_messages(item, instruction, prepare_text=prepare_text))
    if cut_at_emb:
        text = text[: text.index(EMB_TOKEN)]
    return text


# -- LamRA-Rank (docs/format.md, "Reranker prompts") ----------------------------------------
# Kept exactly as in the released training data: the Qwen2-VL release has runs of 24 / 25 spaces
# (a backslash line continuation inside the official string), the Qwen2.5-VL release single
# spaces; both keep "responed".
POINTWISE_INSTRUCTION = (
    "I will provide you with a query and a candidate. Please evaluate whether the candidate"
    + " " * 24
    + "meets the requirements of the query. If it does, respond with 'Yes'; if it doesn't, responed with 'No'."
)
LISTWISE_INSTRUCTION = (
    "I will provide you with a query followed by multiple candidates in the format: (1) cand1 (2) cand2, etc. "
    "Each candidate is independent of the others." + " " * 25 + "Evaluate each candidate against the query, "
    "and respond with the number corresponding to the candidate that best meets the requirements of the query."
)
# The rule set's ``rerank_instructions`` (lamra.settings) picks one pair.
POINTWISE_INSTRUCTIONS = {"spaced": POINTWISE_INSTRUCTION, "single": POINTWISE_INSTRUCTION.replace(" " * 24, " ")}
LISTWISE_INSTRUCTIONS = {"spaced": LISTWISE_INSTRUCTION, "single": LISTWISE_INSTRUCTION.replace(" " * 25, " ")}
LISTWISE_ANSWER_PREFIX = "Ans: ("
# The listwise answer is one digit, so at most 9 candidates share a prompt (the reranker's
# window; in training, the positive and at most 8 negatives).
MAX_LISTWISE_CANDIDATES = 9


def _item_parts(item: Any, instruction: str | None, truncate) -> list[dict]:
    """An item's image(s) then its formatted text, as reranker content parts."""
    item = as_item(item)
    truncate = truncate or (lambda s: s)
    text = truncate(item.text) if item.text else ""
    text = format_text(f"{instruction} {text}" if instruction else text)
    parts = [{"type": "image", "image": image} for image in item.images]
    if text:
        parts.append({"type": "text", "text": text})
    return parts


def pointwise_messages(query: Any, candidate: Any, instruction: str | None = None, *, truncate=None,
                       instructions: str = "spaced") -> list[dict]:
    """The user turn of LamRA-Rank's pointwise prompt; the model answers "Yes" or "No".
    ``instructions``: the rule set's instruction strings, "spaced" or "single"."""
    content = [{"type": "text", "text": POINTWISE_INSTRUCTIONS[instructions]}, {"type": "text", "text": "Query:"}]
    content += _item_parts(query, instruction, truncate)
    content.append({"type": "text", "text": "Candidate:"})
    content += _item_parts(candidate, None, truncate)
    return [{"role": "user", "content": content}]


def listwise_messages(query: Any, candidates: list, instruction: str | None = None, *, truncate=None,
                      instructions: str = "spaced") -> list[dict]:
    """The user turn of LamRA-Rank's listwise prompt; the answer is "Ans: (k)".
    ``instructions``: the rule set's instruction strings, "spaced" or "single"."""
    content = [{"type": "text", "text": LISTWISE_INSTRUCTIONS[instructions]}, {"type": "text", "text": "Query:"}]
    content += _item_parts(query, instruction, truncate)
    content.append({"type": "text", "text": "Candidates:"})
    for number, candidate in enumerate(candidates, start=1):
        content.append({"type": "text", "text": f"({number}) "})
        content += _item_parts(candidate, None, truncate)
    return [{"role": "user", "content": content}]
