"""The ecosystem's routes: OpenAI ``/v1/embeddings``, Cohere v2 / Jina / vLLM ``/v1/rerank``, ``/v1/models``.

Every vector comes from the same batched retriever as ``/embed`` and every score from the same
reranker as ``/search``: these routes only translate shapes. Their errors are OpenAI's body
(``{"error": {message, type, param, code}}``, ``param`` naming the field), which the ``openai``
and ``cohere`` SDKs turn into their exceptions.

Items: a string, ``{text?, image?}`` (``image`` a ``data:`` URI), or ``{content: [parts]}`` with
OpenAI chat parts (``{type: "text", text}``, ``{type: "image_url", image_url: {url}}``) in
order, for several images. ``messages`` (vLLM's form) is one item: its one user message's content.
Images come only as ``data:`` URIs: the server fetches nothing from the network.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any, Sequence

import numpy as np
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from ..items import Item
from ..pipeline import LISTWISE, alpha_for, fuse_ranked
from .engine import Query, SearchEngine
from .limits import ApiError, ServeConfig, check_text, decode_base64, decode_image
from .schemas import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    ModelList,
    RerankRequest,
    RerankResponse,
)

# Paths whose errors use OpenAI's body.
STANDARD_PREFIXES = ("/v1/", "/v2/")
RERANK_PATHS = ("/v1/rerank", "/rerank", "/v2/rerank")


def is_standard_path(path: str) -> bool:
    return path.startswith(STANDARD_PREFIXES) or path == "/rerank"


class ServedNames:
    """The names a request's ``model`` may give: the served model's, and aliases given at start."""

    def __init__(self, fingerprint: dict, aliases: Sequence[str] = ()):
        model = str(fingerprint.get("model") or fingerprint.get("class") or "lamra")
        names = [*aliases, model, model.split("@")[0]]  # a local folder's id is name@digest
        self.primary = names[0]
        self.all = list(dict.fromkeys(name for name in names if name))

    def check(self, requested: str | None, *, kind: str) -> str:
        if requested is None or requested in self.all:
            return self.primary
        raise ApiError(404, "model_not_found", f"The model `{requested}` does not exist: this server's {kind} "
                                               f"model is {' or '.join(repr(n) for n in self.all)} (GET /v1/models)",
                       field="model")


def task_instruction(value: str | None) -> str | None:
    """An M-BEIR task name (``mscoco_task0``) stands for its first instruction; anything else is kept."""
    from ..data.mbeir import TASKS_BY_NAME
    from ..data.mbeir_instructions import BUILTIN_INSTRUCTIONS

    task = TASKS_BY_NAME.get(value or "")
    if task is None:
        return value
    return BUILTIN_INSTRUCTIONS[(task.dataset_id, task.query_modality, task.cand_modality)]


# -- inputs ------------------------------------------------------------------------------------------------


def data_uri_image(url: Any, *, field: str, config: ServeConfig):
    """An RGB PIL image from a ``data:image/...;base64,...`` URI; a 400 for any other URL."""
    if not isinstance(url, str):
        raise ApiError(400, "bad_field", f"{field} must be a data: URI string", field=field)
    if not url.startswith("data:"):
        shown = url if len(url) <= 60 else url[:57] + "..."
        raise ApiError(400, "url_not_allowed", f"{field}: only data: URIs are accepted (data:image/png;base64,...); "
                                               f"this server fetches nothing from the network, got {shown!r}",
                       field=field)
    header, comma, _ = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise ApiError(400, "bad_data_uri", f"{field}: a data: URI must be base64 (data:image/png;base64,...)",
                       field=field)
    data = decode_base64(url, field=field, limit=config.max_upload_bytes)
    return decode_image(data, field=field, config=config)


def content_item(parts: Any, *, field: str, config: ServeConfig) -> Item:
    """An item from OpenAI chat content: a string, or text and image_url parts in order."""
    if isinstance(parts, str):
        parts = [{"type": "text", "text": parts}]
    if not isinstance(parts, list):
        raise ApiError(400, "bad_field", f"{field} must be a string or a list of parts", field=field)
    values: list = []
    for n, part in enumerate(parts):
        where = f"{field}[{n}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = check_text(part.get("text"), field=f"{where}.text", limit=config.max_text_chars)
            if text is not None:
                values.append(text)
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            values.append(data_uri_image(url, field=f"{where}.image_url.url", config=config))
        else:
            raise ApiError(400, "bad_field", f"{where} must be {{type: 'text', text}} or "
                                             f"{{type: 'image_url', image_url: {{url}}}}", field=where)
    if not values:
        raise ApiError(400, "empty_item", f"{field} has no text and no image", field=field)
    return Item.interleaved(values)


def object_item(value: Any, *, field: str, config: ServeConfig, allow_content: bool = True) -> Item:
    """An item from a string, ``{text?, image?}`` or ``{content: [parts]}``."""
    if isinstance(value, str):
        text = check_text(value, field=field, limit=config.max_text_chars)
        if text is None:
            raise ApiError(400, "empty_item", f"{field} is an empty string", field=field)
        return Item(text=text)
    if not isinstance(value, dict):
        raise ApiError(400, "bad_field", f"{field} must be a string or an object {{text?, image?}}", field=field)
    known = {"text", "image", "content"} if allow_content else {"text", "image"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field {field}.{unknown[0]} (known: {', '.join(sorted(known))})",
                       field=f"{field}.{unknown[0]}")
    if "content" in value:
        if len(value) > 1:
            raise ApiError(400, "bad_field", f"{field}: give content alone, or text / image", field=field)
        return content_item(value["content"], field=f"{field}.content", config=config)
    text = check_text(value.get("text"), field=f"{field}.text", limit=config.max_text_chars)
    image = value.get("image")
    image = None if image in (None, "") else data_uri_image(image, field=f"{field}.image", config=config)
    if text is None and image is None:
        raise ApiError(400, "empty_item", f"{field} has neither text nor image", field=field)
    return Item(text=text, images=[image] if image is not None else [])


def embedding_items(body: EmbeddingsRequest, config: ServeConfig) -> list[Item]:
    """The items of an embeddings request (``input`` or ``messages``), checked; ids name their field."""
    # (An SDK that requires input may send an empty placeholder beside extra_body's messages.)
    if body.messages is not None and body.input not in (None, "", []):
        raise ApiError(400, "bad_field", "give input or messages, not both", field="messages")
    if body.messages is not None:
        users = [n for n, m in enumerate(body.messages) if isinstance(m, dict) and m.get("role") == "user"]
        if len(body.messages) != 1 or len(users) != 1:
            raise ApiError(400, "bad_field", "messages must hold exactly one user message (one item; for several "
                                             "items send input: [{content: [...]}, ...])", field="messages")
        item = content_item(body.messages[0].get("content"), field="messages[0].content", config=config)
        return [Item.interleaved(item.parts, id="messages[0]")]
    values = body.input
    if values is None:
        raise ApiError(400, "bad_field", "input is required (a string, a list of strings or items)", field="input")
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list):
        raise ApiError(400, "bad_field", "input must be a string or a list", field="input")
    if not values:
        raise ApiError(400, "empty_request", "input is an empty list", field="input")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values) or any(isinstance(v, list) for v in values):
        raise ApiError(400, "token_ids_not_supported",
                       "input holds token ids; send text "
                       "(LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))",
                       field="input")
    if len(values) > config.max_embed_items:
        raise ApiError(400, "too_many_items", f"input has {len(values)} items, over the limit of "
                                              f"{config.max_embed_items}", field="input")
    items = []
    for n, value in enumerate(values):
        item = object_item(value, field=f"input[{n}]", config=config)
        items.append(Item.interleaved(item.parts, id=f"input[{n}]"))
    return items


def rerank_items(body: RerankRequest, config: ServeConfig) -> tuple[Query, list[Item]]:
    if body.query is None:
        raise ApiError(400, "bad_field", "query is required (a string or {text?, image?})", field="query")
    query = object_item(body.query, field="query", config=config, allow_content=False)
    if not isinstance(body.documents, list):
        raise ApiError(400, "bad_field", "documents must be a list of strings or {text?, image?} objects",
                       field="documents")
    if not body.documents:
        raise ApiError(400, "empty_request", "documents is an empty list", field="documents")
    if len(body.documents) > config.max_rerank_depth:
        raise ApiError(400, "too_many_items", f"documents has {len(body.documents)} items, over the limit of "
                                              f"{config.max_rerank_depth}", field="documents")
    documents = []
    for n, value in enumerate(body.documents):
        item = object_item(value, field=f"documents[{n}]", config=config, allow_content=False)
        documents.append(Item(text=item.text, images=item.images, id=f"documents[{n}]"))
    instruction = task_instruction(check_text(body.instruction, field="instruction",
                                              limit=config.max_instruction_chars))
    image = query.images[0] if query.images else None
    return Query(text=query.text, image=image, instruction=instruction), documents


# -- responses ---------------------------------------------------------------------------------------------


def encode_vector(vector: np.ndarray, encoding_format: str):
    """A row as floats, or as base64 of its little-endian float32 bytes (what the openai SDK decodes)."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()


def _parse_and_prepare(body: EmbeddingsRequest, config: ServeConfig, retriever, instruction):
    """The request's items and their tokenized prompts (None for a model without ``prepare``):
    tokenized once, here, for ``usage`` and for the encoder (image headers only, no pixels)."""
    items = embedding_items(body, config)
    prepare = getattr(retriever, "prepare", None)
    return items, (prepare(items, instruction) if callable(prepare) else None)


def _has_images(body: EmbeddingsRequest) -> bool:
    """Whether a request may carry images (decoding them is slow work for a thread, not the event loop)."""
    values = body.input if isinstance(body.input, list) else [body.input]
    return body.messages is not None or not all(isinstance(v, (str, type(None))) for v in values)


async def _maybe_in_thread(function, *args, in_thread: bool):
    # Text alone is parsed and counted in microseconds: a thread hop would cost more than it saves.
    return await run_in_threadpool(function, *args) if in_thread else function(*args)


def _document(item: Item) -> dict:
    return {"text": item.text, "has_image": bool(item.images)}


# -- routes ------------------------------------------------------------------------------------------------


def add_standard_routes(app: FastAPI, engine: SearchEngine, config: ServeConfig, *, names: ServedNames,
                        rerank_names: ServedNames | None) -> None:
    started = int(time.time())

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, tags=["OpenAI-compatible"],
              summary="Embeddings in OpenAI's shape (text, images as data: URIs, vLLM's messages form)")
    async def embeddings(body: EmbeddingsRequest) -> dict:
        model = names.check(body.model, kind="embedding")
        if body.dimensions is not None:
            raise ApiError(400, "dimensions_not_supported",
                           f"dimensions is not supported: LamRA vectors have one size ({engine.retriever.dim}); "
                           "truncating them would change every score", field="dimensions")
        instruction = task_instruction(check_text(body.instruction, field="instruction",
                                                  limit=config.max_instruction_chars))
        items, prepared = await _maybe_in_thread(_parse_and_prepare, body, config, engine.retriever, instruction,
                                                 in_thread=_has_images(body))
        tokens = sum(len(p.input_ids) for p in prepared) if prepared is not None else 0
        vectors = await engine.embed(items, instruction, prepared=prepared)
        data = [{"object": "embedding", "index": n, "embedding": encode_vector(vector, body.encoding_format)}
                for n, vector in enumerate(vectors)]
        return {"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    async def rerank(body: RerankRequest) -> dict:
        if rerank_names is None:
            raise ApiError(400, "rerank_unavailable", "this server has no reranker; start it with --rerank MODEL",
                           field="model")
        model = rerank_names.check(body.model, kind="rerank")
        if body.max_tokens_per_doc is not None:
            raise ApiError(400, "max_tokens_per_doc_not_supported", "max_tokens_per_doc is not supported: documents "
                                                                   "are scored whole (up to the model's max_tokens)",
                           field="max_tokens_per_doc")
        if body.task is not None:
            from ..data.mbeir import TASKS_BY_NAME

            if body.task not in TASKS_BY_NAME:
                raise ApiError(400, "unknown_task", f"task {body.task!r} is not an M-BEIR task (e.g. mscoco_task0)",
                               field="task")
        if body.top_n is not None and body.top_n < 1:
            raise ApiError(400, "out_of_range", f"top_n must be at least 1, got {body.top_n}", field="top_n")
        query, documents = await run_in_threadpool(rerank_items, body, config)
        if body.fuse_with is not None and len(body.fuse_with) != len(documents):
            raise ApiError(400, "bad_field", f"fuse_with has {len(body.fuse_with)} scores for {len(documents)} "
                                             "documents", field="fuse_with")
        scores = await engine.rerank_documents(query, documents, mode=body.mode)
        results = _ranked(scores, body)
        if body.top_n is not None:
            results = results[: body.top_n]
        if body.return_documents:
            for result in results:
                result["document"] = _document(documents[result["index"]])
        return {"id": uuid.uuid4().hex, "model": model, "mode": body.mode, "results": results,
                "usage": {"documents": len(documents)}, "meta": {"api_version": {"version": "2"}}}

    for path in RERANK_PATHS:
        app.add_api_route(path, rerank, methods=["POST"], response_model=RerankResponse,
                          tags=["Cohere / Jina / vLLM-compatible"], include_in_schema=path == "/v1/rerank",
                          summary="Rerank documents for a query: P(Yes) per document, or listwise")

    @app.get("/v1/models", response_model=ModelList, tags=["OpenAI-compatible"],
             summary="The served retriever and reranker with their fingerprints")
    def models() -> dict:
        cards = [_card(names, "embedding", engine.retriever.fingerprint(), started)]
        if rerank_names is not None:
            from .engine import describe_reranker

            cards.append(_card(rerank_names, "rerank", describe_reranker(engine.reranker) or {}, started))
        return {"object": "list", "data": cards}


def _ranked(scores: np.ndarray, body: RerankRequest) -> list[dict]:
    """Results best first; with ``fuse_with`` the fused score (pipeline.fuse_ranked, the one rule)."""
    if body.fuse_with is None:
        order = np.argsort(-scores, kind="stable")
        return [{"index": int(i), "relevance_score": float(scores[i])} for i in order]
    # The listwise S_rank is each probability over the largest, as the pipeline fuses it
    # (docs/format.md#retrieve-rerank-fuse).
    s_rank = scores / scores.max() if body.mode == LISTWISE and scores.max() > 0 else scores
    alpha = body.alpha if body.alpha is not None else alpha_for(None, body.task)
    order = sorted(range(len(scores)), key=lambda n: -body.fuse_with[n])  # retrieval order: it breaks ties
    head = [(str(n), float(body.fuse_with[n])) for n in order]
    return [{"index": int(hit.id), "relevance_score": hit.fused, "rerank_score": hit.rerank,
             "retrieval_score": hit.retrieval} for hit in fuse_ranked(head, s_rank[order], alpha)]


def _card(names: ServedNames, kind: str, fingerprint: dict, created: int) -> dict:
    return {"id": names.primary, "object": "model", "created": created, "owned_by": "lamra", "kind": kind,
            "aliases": [name for name in names.all if name != names.primary], "fingerprint": fingerprint}
