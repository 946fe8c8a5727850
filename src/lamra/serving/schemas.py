"""Request and response shapes of the HTTP API (they document it in OpenAPI)."""

from __future__ import annotations

from typing import Optional

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
