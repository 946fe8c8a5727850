"""The FastAPI app factory: ``create_app(retriever, index, reranker=...)``.

Everything a server holds lives in the app it builds (``app.state.engine``); there are no
module-level globals, so tests can run several apps side by side.
"""

from __future__ import annotations

import io
import logging
import mimetypes
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi import Query as QueryParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.default_instructions import MODALITIES as QUERY_MODALITIES
from ..data.default_instructions import choose_instruction, default_instruction, index_modality, modality
from ..items import Item
from ..version import __version__
from .auth import ApiKeyAuth, openai_error
from .engine import Query, SearchEngine, describe_reranker
from .limits import (
    ApiError,
    BodySizeLimit,
    BodyTooLarge,
    ServeConfig,
    check_bool,
    check_int,
    check_text,
    decode_base64,
    decode_image,
)
from .metrics import Metrics, RecordRequests
from .middleware import AccessLog, SecurityHeaders
from .schemas import (
    ERROR_RESPONSES,
    SEARCH_MULTIPART_SCHEMA,
    EmbedRequest,
    EmbedResponse,
    ItemInfo,
    SearchRequest,
    SearchResponse,
)
from .standard import ServedNames, add_standard_routes, is_standard_path
from .uploads import hide_upload_paths, read_search_fields, remove_uploads, save_video, validation_error

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# The page loads nothing from elsewhere; images come from this server or the user's own drop.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; style-src 'self'; "
            "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def create_app(retriever, index, *, reranker=None, config: ServeConfig | None = None,
               untrained: bool = False, api_keys: Sequence[str] = (), model_names: Sequence[str] = (),
               rerank_names: Sequence[str] = (), load_seconds: float | None = None,
               default_instructions: bool = False) -> FastAPI:
    """A server over ``index`` (a :class:`lamra.index.Index`) queried with ``retriever``.

    ``reranker`` is any object with ``score(query_item, candidate_items) -> P(Yes) array``;
    without one, requests asking for reranking get a 400 and the page hides its toggle.
    ``untrained`` (a model marked as random weights, see :mod:`lamra.qwen2vl.model_source`) puts the
    CLI's warning in /info and on the page. ``api_keys``: every route but /health (and the page's
    static shell) needs one of them as a bearer token. ``model_names`` / ``rerank_names``: the names
    the standard routes' ``model`` field may give besides the models' own ids (the first is listed).
    ``load_seconds``: the models' load time, for /metrics. ``default_instructions`` (``lamra serve``):
    a /search query without an instruction gets the M-BEIR one of the closest task (``none``: none),
    shown on the page; without it such a query has none.
    """
    config = config or ServeConfig()
    metrics = Metrics()
    engine = SearchEngine(retriever, index, reranker=reranker, config=config, untrained=untrained, metrics=metrics)
    names = ServedNames(retriever.fingerprint(), model_names)
    reranker_card = describe_reranker(reranker)
    served_rerank = None if reranker is None else ServedNames(reranker_card, rerank_names)
    metrics.queue_depth.set_function(engine.batcher.pending)
    if load_seconds is not None:
        metrics.model_load.set(load_seconds)
    metrics.describe_models(retriever.fingerprint(), reranker_card,
                            fingerprint=fingerprint_digest(retriever.fingerprint()),
                            reranker_fingerprint=None if reranker is None else fingerprint_digest(reranker_card))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(
        title="lamra search",
        version=__version__,
        description="Multimodal search over a lamra index with a LamRA retriever (and optional reranker). "
                    "Errors are JSON: {detail, code, field}.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    # A query without an instruction gets the M-BEIR one of the closest task, as in lamra search.
    app.state.index_kind = index_modality(index) if default_instructions else None
    app.state.config = config
    app.state.metrics = metrics
    _add_error_handlers(app)
    _add_routes(app, engine, config)
    add_standard_routes(app, engine, config, names=names, rerank_names=served_rerank)

    @app.get("/metrics", summary="Prometheus metrics: requests, latency, batches, queue, items, model load")
    def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    if api_keys:
        app.add_middleware(ApiKeyAuth, keys=api_keys)
    app.add_middleware(RecordRequests, metrics=metrics)  # counts refusals by the others too
    app.add_middleware(AccessLog)  # outermost: it times and logs refusals by the others too
    return app


def fingerprint_digest(fingerprint: dict) -> str:
    """A short digest of a model fingerprint (the info metric's label; /v1/models has it whole)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_app(index_path, model, *, lora=None, rerank=None, rerank_lora=None, device=None, dtype=None,
             config: ServeConfig | None = None, settings=None, api_keys: Sequence[str] = (),
             model_names: Sequence[str] = (), rerank_names: Sequence[str] = (),
             milvus_uri: str | None = None, milvus_token: str | None = None) -> FastAPI:
    """Open the index, load the retriever (once) and the reranker, build the app.

    The index opens first, so a wrong folder fails before a model loads; the app refuses an
    index made by another model, adapter, prompt format or settings. ``settings`` (a
    :class:`~lamra.settings.ModelSettings`) go to the retriever; the reranker takes its own
    folder's settings and the ``rerank_scores`` mode.
    """
    from ..index import Index
    from ..qwen2vl.model_source import is_untrained
    from ..retriever.model import Retriever

    index = Index.open(index_path, milvus_uri=milvus_uri, milvus_token=milvus_token)
    started = time.perf_counter()
    retriever = Retriever.from_pretrained(model, lora=lora, device=device, dtype=dtype, settings=settings)
    reranker = None
    if rerank is not None:
        from ..reranker.model import Reranker

        # The reranker keeps its own folder's settings; only the score mode comes from the command.
        reranker = Reranker.from_pretrained(rerank, lora=rerank_lora, device=device, dtype=dtype,
                                            rerank_scores=settings.rerank_scores if settings else None)
    # The names a client knows the models by: the --model / --rerank value as given (as vLLM serves it).
    return create_app(retriever, index, reranker=reranker, config=config,
                      untrained=is_untrained(model) or (rerank is not None and is_untrained(rerank)),
                      api_keys=api_keys, model_names=[*model_names, str(model)],
                      rerank_names=[*rerank_names, *([str(rerank)] if rerank is not None else [])],
                      load_seconds=time.perf_counter() - started, default_instructions=True)


# -- routes ----------------------------------------------------------------------------


def _add_routes(app: FastAPI, engine: SearchEngine, config: ServeConfig) -> None:
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/health", summary="Liveness: the server answers and the model thread runs")
    def health() -> dict:
        return {"status": "ok" if engine.batcher.running else "starting", "items": len(engine.index)}

    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @app.get("/info", summary="Model fingerprint, index manifest and counts, reranker, limits, batching")
    def info() -> dict:
        defaults = {kind: default_instruction(kind, app.state.index_kind).instruction for kind in QUERY_MODALITIES}
        return {**engine.info(), "default_instructions": defaults if app.state.index_kind else None}

    @app.post("/search", response_model=SearchResponse, responses=ERROR_RESPONSES,
              summary="Search the index with text and/or an image",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": SearchRequest.model_json_schema()},
                  "multipart/form-data": {"schema": SEARCH_MULTIPART_SCHEMA}}}})
    async def search(request: Request) -> dict:
        """Send JSON (``image`` / ``video`` as base64) or a multipart form (``image`` / ``video`` as file
        uploads). A video is an mp4, webm, gif ... file; its frames are sampled as the model expects."""
        fields, uploads = await read_search_fields(request, config)
        text = check_text(fields.get("text"), field="text", limit=config.max_text_chars)
        instruction = check_text(fields.get("instruction"), field="instruction", limit=config.max_instruction_chars)
        if app.state.index_kind is not None:
            instruction = choose_instruction(instruction, modality(text, uploads.image is not None or uploads.video
                                                                   is not None), app.state.index_kind).instruction
        k = check_int(fields.get("k"), field="k", low=1, high=config.max_k, default=config.default_k)
        rerank = check_bool(fields.get("rerank"), field="rerank")
        depth = check_int(fields.get("rerank_depth"), field="rerank_depth", low=k,
                          high=max(k, config.max_rerank_depth), default=k)
        # Decoding a large image takes a while: off the event loop, after the cheap checks.
        image = None if uploads.image is None else await run_in_threadpool(decode_image, uploads.image,
                                                                           field="image", config=config)
        saved = []
        try:
            video = None
            if uploads.video is not None:
                video = await run_in_threadpool(save_video, *uploads.video)
                saved.append(video)
            query = Query(text=text, image=image, instruction=instruction, video=video)
            with hide_upload_paths(saved):
                found = await engine.search(query, k=k, rerank=rerank, rerank_depth=depth)
        finally:
            remove_uploads(saved)
        base = str(request.base_url)
        results = [{**hit, "scores": {"retrieval": hit["retrieval"], "rerank": hit["rerank"], "fused": hit["fused"]},
                    **_item_fields(engine.metadata(hit["id"]), base)} for hit in found["results"]]
        return {"query": {"text": query.text, "instruction": query.instruction, "has_image": query.image is not None,
                          "has_video": query.video is not None, "k": k, "rerank": rerank},
                "results": results, "timings": found["timings"]}

    @app.post("/embed", response_model=EmbedResponse, responses=ERROR_RESPONSES,
              summary="Embed items (text and/or base64 image) into the retriever's space")
    async def embed(body: EmbedRequest) -> dict:
        if not body.items:
            raise ApiError(400, "empty_request", "items is empty", field="items")
        if len(body.items) > config.max_embed_items:
            raise ApiError(400, "too_many_items", f"{len(body.items)} items, over the limit of "
                                                  f"{config.max_embed_items}", field="items")
        instruction = check_text(body.instruction, field="instruction", limit=config.max_instruction_chars)
        saved: list[Path] = []
        try:
            items = [await run_in_threadpool(_embed_item, entry, position, config, saved)
                     for position, entry in enumerate(body.items)]
            with hide_upload_paths(saved):
                vectors = await engine.embed(items, instruction)
        finally:
            remove_uploads(saved)
        return {"ids": [entry.id for entry in body.items], "dim": int(vectors.shape[1]),
                "vectors": vectors.tolist(), "model": engine.retriever.fingerprint()}

    @app.get("/items/{item_id:path}/image", responses={404: ERROR_RESPONSES[400] | {"description": "Unknown id "
                                                                                     "or item without image"}},
             summary="An indexed item's image (or a JPEG thumbnail with ?thumb=SIDE)")
    def item_image(item_id: str, thumb: int | None = QueryParam(
            None, description="Longest side of a JPEG thumbnail, 16 to thumbnail_max_side.")) -> Response:
        path = engine.image_path(item_id)  # only paths the index stored; the request names an id
        headers = {"Cache-Control": "public, max-age=3600"}
        if thumb is None:
            media = mimetypes.guess_type(path.name)[0] or ""
            return FileResponse(path, media_type=media if media.startswith("image/") else "application/octet-stream",
                                headers=headers)
        side = check_int(thumb, field="thumb", low=16, high=config.thumbnail_max_side, default=256)
        limit = engine.retriever_settings().image_pixel_limit
        return Response(_thumbnail(path, side, item_id, limit), media_type="image/jpeg", headers=headers)

    @app.get("/items/{item_id:path}", response_model=ItemInfo, responses={404: ERROR_RESPONSES[400]},
             summary="An indexed item's text and image URLs")
    def item_info(item_id: str, request: Request) -> dict:
        meta = engine.metadata(item_id)
        return {"id": item_id, **_item_fields(meta, str(request.base_url))}


def _embed_item(entry, position: int, config: ServeConfig, saved: list) -> Item:
    where = f"items[{position}]"
    text = check_text(entry.text, field=f"{where}.text", limit=config.max_text_chars)
    image = video = None
    if entry.image:
        data = decode_base64(entry.image, field=f"{where}.image", limit=config.max_upload_bytes)
        image = decode_image(data, field=f"{where}.image", config=config)
    if entry.video:
        data = decode_base64(entry.video, field=f"{where}.video", limit=config.max_video_bytes)
        video = save_video(data, None, field=f"{where}.video")
        saved.append(video)
    if text is None and image is None and video is None:
        raise ApiError(400, "empty_item", f"{where} has no text, image or video", field=where)
    return Item(text=text, images=[image] if image is not None else [], id=entry.id, video=video)


def _item_fields(meta: dict, base_url: str) -> dict[str, Any]:
    """The public fields of an indexed item: its text and URLs (never its file path)."""
    has_image = bool(meta.get("image"))
    url = f"{base_url}items/{quote(str(meta['id']), safe='')}/image" if has_image else None
    return {"text": meta.get("text"), "image_url": url, "thumbnail_url": f"{url}?thumb=256" if url else None}


def _thumbnail(path: Path, side: int, item_id: str, pixel_limit: int) -> bytes:
    """A JPEG of at most ``side`` pixels a side; transparent images are laid on white (JPEG has no alpha)."""
    from PIL import Image

    from ..errors import InputError
    from ..qwen2vl.images import image_size

    try:
        image_size(path, pixel_limit=pixel_limit, item=item_id)  # the loader's checks and messages
        with Image.open(path) as handle:
            handle.seek(0)  # the first frame of an animation
            handle.draft("RGB", (side, side))  # a JPEG decodes at a reduced scale
            image = handle.convert("RGBA") if _has_alpha(handle) else handle.convert("RGB")
    except InputError as exc:
        raise ApiError(500, "image_unreadable", f"the indexed image of item {item_id!r} cannot be read: "
                                                f"{exc.reason}", field="id") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ApiError(500, "image_unreadable", f"the indexed image of item {item_id!r} cannot be read: "
                                                f"corrupt or truncated image ({exc})", field="id") from None
    image.thumbnail((side, side))
    if image.mode == "RGBA":  # composite onto white: a bare convert would show transparent pixels black
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def _has_alpha(image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)


# -- errors and headers ------------------------------------------------------------------


def _error_response(request: Request, error: ApiError) -> JSONResponse:
    """lamra's body ({detail, code, field}), or OpenAI's on the standard routes (param: the field)."""
    if is_standard_path(request.url.path):
        kind = "not_found_error" if error.status == 404 else (
            "invalid_request_error" if error.status < 500 else "server_error")
        body = openai_error(error.message, kind=kind, param=error.field, code=error.code)
        return JSONResponse(body, status_code=error.status)
    return JSONResponse(error.body(), status_code=error.status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(request: Request, exc: RequestValidationError):
        errors = list(exc.errors())
        if errors and errors[0].get("type") == "json_invalid":
            error = ApiError(400, "bad_json", "the body is not valid JSON")
        else:
            error = validation_error(errors)
        return _error_response(request, error)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, exc: BodyTooLarge):
        return _error_response(request, ApiError(413, "body_too_large", str(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "body_too_large"}
        body = {"detail": str(exc.detail), "code": codes.get(exc.status_code, "http_error"), "field": None}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}", "code": "internal", "field": None},
                            status_code=500)
