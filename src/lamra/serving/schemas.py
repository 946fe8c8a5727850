"""Request and response shapes of the HTTP API (they document it in OpenAPI)."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class SearchRequest(BaseModel):
    """JSON form of ``POST /search`` (the multipart form has the same fields, ``image`` as a file)."""

    model_config = ConfigDict(extra="forbid")

    text: Optional[str] = Field(None, description="Query text.", examples=["a red car"])
    image: Optional[str] = Field(None, description="Query image as base64 (a data: URL prefix is allowed).")
    video: Optional[str] = Field(None, description="Query video file (mp4, webm, gif ...) as base64; its frames "
                                                   "are sampled as Qwen2-VL expects (at most max_video_bytes).")
    instruction: Optional[str] = Field(None, description="Task instruction put before the query text "
                                                         "(LamRA query prompt).")
    k: Optional[int] = Field(None, description="How many results (default 10, at most max_k of /info).")
    rerank: bool = Field(False, description="Rerank the top candidates with the server's reranker.")
    rerank_depth: Optional[int] = Field(None, description="How many retrieved candidates the reranker scores "
                                                          "(default k; at least k, at most max_rerank_depth).")


SEARCH_MULTIPART_SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "description": "Query text."},
        "image": {"type": "string", "format": "binary", "description": "Query image file."},
        "video": {"type": "string", "format": "binary", "description": "Query video file (mp4, webm, gif ...)."},
        "instruction": {"type": "string", "description": "Task instruction."},
        "k": {"type": "integer", "description": "How many results."},
        "rerank": {"type": "boolean", "description": "Rerank the top candidates."},
        "rerank_depth": {"type": "integer", "description": "Candidates the reranker scores."},
    },
}


class Scores(BaseModel):
    retrieval: float = Field(description="Cosine similarity of query and item embeddings.")
    rerank: Optional[float] = Field(None, description="Reranker P(Yes) in [0, 1] (null without reranking).")
    fused: Optional[float] = Field(None, description="alpha * retrieval + (1 - alpha) * rerank "
                                                     "(null without reranking).")


class Hit(BaseModel):
    rank: int
    id: str
    score: float = Field(description="The score that ordered the results: fused when reranked, else retrieval.")
    scores: Scores
    text: Optional[str] = Field(None, description="The item's text.")
    image_url: Optional[str] = Field(None, description="URL of the item's image (null when it has none).")
    thumbnail_url: Optional[str] = Field(None, description="URL of a small JPEG of the item's image.")


class QueryEcho(BaseModel):
    text: Optional[str]
    instruction: Optional[str]
    has_image: bool
    has_video: bool = False
    k: int
    rerank: bool


class SearchResponse(BaseModel):
    query: QueryEcho
    results: list[Hit]
    timings: dict[str, float] = Field(description="Milliseconds spent retrieving (queue included) and reranking.")


class EmbedItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Optional[str] = Field(None, description="Echoed back in the response.")
    text: Optional[str] = None
    image: Optional[str] = Field(None, description="Image as base64 (a data: URL prefix is allowed).")
    video: Optional[str] = Field(None, description="Video file (mp4, webm, gif ...) as base64.")


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[EmbedItem] = Field(description="Items to embed (at most max_embed_items of /info).")
    instruction: Optional[str] = Field(None, description="Task instruction for every item (queries); "
                                                         "candidates take none.")


class EmbedResponse(BaseModel):
    ids: list[Optional[str]]
    dim: int
    vectors: list[list[float]] = Field(description="One float32 L2-normalised row per item, in input order.")
    model: dict = Field(description="Fingerprint of the retriever that made the vectors.")


class ItemInfo(BaseModel):
    id: str
    text: Optional[str]
    image_url: Optional[str]
    thumbnail_url: Optional[str]


class ErrorBody(BaseModel):
    detail: str = Field(description="What is wrong, in words.")
    code: str = Field(description="A stable machine-readable code, e.g. not_an_image, empty_query, unknown_id.")
    field: Optional[str] = Field(None, description="The request field at fault, when there is one.")


ERROR_RESPONSES = {
    400: {"model": ErrorBody, "description": "Bad input (empty query, not an image, corrupt file, bad k...)"},
    413: {"model": ErrorBody, "description": "Upload, image pixels or body over the limits"},
    503: {"model": ErrorBody, "description": "Queue full; retry shortly"},
    504: {"model": ErrorBody, "description": "The model did not answer within the request timeout"},
}


# -- the ecosystem's shapes: OpenAI embeddings, Cohere v2 / Jina / vLLM rerank, OpenAI models --------------


class EmbeddingsRequest(BaseModel):
    """``POST /v1/embeddings``: OpenAI's fields, vLLM's ``messages`` form, and LamRA's ``instruction``."""

    model_config = ConfigDict(extra="forbid")

    model: Optional[str] = Field(None, description="The served model's name or an alias (GET /v1/models).")
    input: Any = Field(None, description="A string, a list of strings, or a list of items: a string, "
                                         "{text?, image?} (image a data: URI) or {content: [parts]} "
                                         "(OpenAI chat parts: text, image_url).")
    messages: Optional[list[Any]] = Field(None, description="vLLM's one-item form: [{role: 'user', content: "
                                                            "[{type: 'image_url', image_url: {url}}, "
                                                            "{type: 'text', text}]}].")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: lists of numbers; base64: little-endian float32 bytes (the openai SDK's "
                             "default).")
    dimensions: Optional[int] = Field(None, description="Refused: LamRA vectors have one size.")
    user: Optional[str] = Field(None, description="Accepted and ignored (OpenAI's end-user id).")
    instruction: Optional[str] = Field(None, description="Task instruction for every input (queries; "
                                                         "candidates take none), or an M-BEIR task name such as "
                                                         "mscoco_task0 standing for its instruction.")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str] = Field(description="Floats, or base64 of little-endian float32.")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class RerankRequest(BaseModel):
    """``POST /v1/rerank`` (also /rerank, /v2/rerank): the shape Cohere v2, Jina and vLLM share."""

    model_config = ConfigDict(extra="forbid")

    model: Optional[str] = Field(None, description="The served reranker's name or an alias (GET /v1/models).")
    query: Any = Field(None, description="A string or {text?, image?} (image a data: URI).")
    documents: Any = Field(None, description="Strings or {text?, image?} objects.")
    top_n: Optional[int] = Field(None, description="Return only the best top_n (default: all).")
    return_documents: bool = Field(False, description="Echo each document in its result.")
    instruction: Optional[str] = Field(None, description="Task instruction of the query, or an M-BEIR task name.")
    mode: Literal["pointwise", "listwise"] = Field(
        "pointwise", description="pointwise: relevance_score is P(Yes) per document; listwise: LamRA-Rank's "
                                 "listwise head (windows of at most 9 for long lists), each position's probability.")
    fuse_with: Optional[list[float]] = Field(None, description="Retrieval scores, one per document: relevance_score "
                                                               "becomes alpha * retrieval + (1 - alpha) * rerank.")
    alpha: Optional[float] = Field(None, ge=0.0, le=1.0, description="Fusion weight (default: the release's weight "
                                                                      "for task, else 0.5).")
    task: Optional[str] = Field(None, description="M-BEIR task name choosing the released fusion weight.")
    max_tokens_per_doc: Optional[int] = Field(None, description="Refused: documents are not cut.")
    priority: Optional[int] = Field(None, description="Accepted and ignored (Cohere's scheduling hint).")


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    rerank_score: Optional[float] = Field(None, description="With fuse_with: the reranker's own score.")
    retrieval_score: Optional[float] = Field(None, description="With fuse_with: the retrieval score given.")
    document: Optional[dict] = None


class RerankResponse(BaseModel):
    id: str
    model: str
    mode: str
    results: list[RerankResult]
    usage: dict
    meta: dict


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    kind: str = Field(description="embedding or rerank.")
    aliases: list[str]
    fingerprint: dict


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
