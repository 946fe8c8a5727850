"""``lamra serve``: the HTTP API and search page over an index."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Optional

import typer

from ..serving.auth import API_KEY_ENV, is_loopback, split_keys
from ..serving.limits import ServeConfig
from .options import (
    IMAGE_PIXEL_LIMIT,
    INDEX_MODEL,
    LORA,
    MILVUS_TOKEN,
    MILVUS_URI,
    RERANK_LORA,
    ModelOptions,
    model_options,
)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


# The server also caps uploaded query images with --image-pixel-limit: its help says so.
SERVE_IMAGE_PIXEL_LIMIT = typer.Option(
    None, "--image-pixel-limit", min=1,
    help=IMAGE_PIXEL_LIMIT.help + " Given, it also caps uploaded query images (otherwise "
                                  f"{ServeConfig().max_image_pixels}).")


@model_options(rerank_scores=True, image_pixel_limit=SERVE_IMAGE_PIXEL_LIMIT)
def serve(
    index: Path = typer.Argument(..., metavar="INDEX", help="Index folder (made by lamra index build)."),
    model: Optional[str] = INDEX_MODEL,
    lora: Optional[Path] = LORA,
    rerank: Optional[str] = typer.Option(None, "--rerank", help="Reranker checkpoint (LamRA-Rank): hub id or "
                                                                "folder. Without it, rerank requests get a 400."),
    rerank_lora: Optional[Path] = RERANK_LORA,
    host: str = typer.Option("127.0.0.1", help="Address to bind. The default serves this machine only; "
                                               "0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on (0: any free port)."),
    max_batch_size: int = typer.Option(16, min=1, help="Most queries encoded together."),
    max_wait_ms: float = typer.Option(2.0, help="How long a batch waits for more queries once one arrives."),
    max_k: int = typer.Option(100, min=1, help="Largest k a request may ask for."),
    max_upload_mb: float = typer.Option(10.0, help="Largest uploaded image, in MiB."),
    max_video_mb: float = typer.Option(50.0, help="Largest uploaded video file, in MiB."),
    timeout: float = typer.Option(60.0, help="Seconds a request may wait for the model before a 504."),
    alpha: float = typer.Option(0.5, min=0.0, max=1.0, help="Fusion weight: alpha * retrieval + (1 - alpha) * rerank."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log",
                                    help="Log one line per request: method, path, status, milliseconds."),
    api_key: Optional[list[str]] = typer.Option(
        None, "--api-key", metavar="KEY",
        help="A key clients send as 'Authorization: Bearer KEY' (every route but /health needs one). Repeat it "
             f"for several keys; {API_KEY_ENV} (comma separated) adds more. Binding a non-loopback --host needs "
             "a key, or --no-auth."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Serve a non-loopback --host without keys (anyone who "
                                                           "reaches the port can use the server)."),
    model_alias: Optional[list[str]] = typer.Option(
        None, "--served-model-name", metavar="NAME",
        help="A name the standard routes' 'model' field may give for the retriever (besides --model as given); "
             "the first is the one /v1/models lists. Repeatable."),
    rerank_alias: Optional[list[str]] = typer.Option(
        None, "--served-rerank-name", metavar="NAME", help="The same for the reranker. Repeatable."),
    max_embed_items: int = typer.Option(32, min=1, help="Most items in one /embed or /v1/embeddings request."),
    milvus_uri: Optional[str] = MILVUS_URI,
    milvus_token: Optional[str] = MILVUS_TOKEN,
    *,
    model_options: ModelOptions,
) -> None:
    """Serve an index over HTTP: a JSON API (/search, /embed, /info, /docs), the ecosystem's routes
    (OpenAI /v1/embeddings, Cohere / Jina / vLLM /v1/rerank, /v1/models), /metrics and a search page at /.

    The port is taken before the models load, so a port in use fails at once.
    """
    import os

    keys = split_keys([*(api_key or []), os.environ.get(API_KEY_ENV)])
    if keys and no_auth:
        typer.echo("error: --no-auth contradicts the API keys given (--api-key or " + API_KEY_ENV + ")", err=True)
        raise typer.Exit(2)
    if not keys and not no_auth and not is_loopback(host):
        typer.echo(f"error: refusing to serve {host} without an API key: anyone who reaches the port could use it; "
                   f"give --api-key KEY (or set {API_KEY_ENV}), or --no-auth to serve it open", err=True)
        raise typer.Exit(2)

    # torch and faiss-cpu each bundle their own OpenMP runtime. A server alternates a model call and a
    # search on every request, and with spinning (the default) idle threads of one runtime starve the
    # other: a tiny-model request measured 10x slower. Passive waiting must be set before they load.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..serving.app import load_app
    from .models import check_sources, resolve_model, warn_if_untrained
    from .runtime import quiet_model_loading

    model, lora = resolve_model(model, lora, index=index)
    settings = model_options.settings(model, lora, rerank_scores=True)  # (the reranker takes the score mode)
    pixel_limit = model_options.image_pixel_limit
    limits = {} if pixel_limit is None else {"max_image_pixels": pixel_limit}
    config = ServeConfig(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_k=max_k,
                         max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                         max_video_bytes=int(max_video_mb * 1024 * 1024), request_timeout_s=timeout, alpha=alpha,
                         max_embed_items=max_embed_items, **limits)
    for source, adapter in ((model, lora), (rerank, rerank_lora)):
        if source is not None:
            check_sources(source, adapter)
    listener = listen(host, port)  # before the models load: a port in use fails at once
    try:
        for source in (model, rerank):
            if source is not None:
                warn_if_untrained(source)
        quiet_model_loading()
        app = load_app(index, model, lora=lora, rerank=rerank, rerank_lora=rerank_lora, device=model_options.device,
                       dtype=model_options.dtype, config=config, settings=settings, api_keys=keys,
                       model_names=model_alias or (), rerank_names=rerank_alias or (), milvus_uri=milvus_uri,
                       milvus_token=milvus_token)
        if access_log:
            import logging

            logging.getLogger("lamra.serving.access").setLevel(logging.INFO)
        bound = listener.getsockname()[1]
        access = (f"API keys required ({len(keys)} accepted)" if keys else
                  "no API key: open to anyone who reaches the port (--no-auth)" if no_auth else
                  "no API key (loopback only)")
        typer.echo(f"serving {len(app.state.engine.index)} items on {_url(host, bound)} (API docs at /docs; {access})")
        run(app, listener, host=host, port=bound)
    finally:
        listener.close()


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), or a usage error saying why not (exit 2)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: unknown host ({exc.strerror})", err=True)
        raise typer.Exit(2) from None
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts need no wait
        listener.bind(address)
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        hint = " (another server is using it: stop it or pick another --port)" if exc.errno == errno.EADDRINUSE else ""
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror}{hint}", err=True)
        raise typer.Exit(2) from None
    return listener


def run(app, listener: socket.socket, *, host: str, port: int) -> None:
    """Serve ``app`` with uvicorn on the socket already bound (until Ctrl-C)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    uvicorn.Server(config).run(sockets=[listener])


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"
