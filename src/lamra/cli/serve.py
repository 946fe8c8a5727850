"""``lamra serve``: the HTTP API and search page over an index."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import DEVICE, DTYPE, LORA, MODEL


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    index: Path = typer.Argument(..., help="Index folder (made by `lamra index build`)."),
    model: str = MODEL,
    lora: Optional[Path] = LORA,
    rerank: Optional[str] = typer.Option(None, "--rerank", help="Reranker checkpoint (LamRA-Rank): hub id or "
                                                                "folder. Without it, rerank requests get a 400."),
    rerank_lora: Optional[Path] = typer.Option(None, "--rerank-lora", help="LoRA adapter of the reranker."),
    host: str = typer.Option("127.0.0.1", help="Address to bind. The default serves this machine only; "
                                               "0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    max_batch_size: int = typer.Option(16, min=1, help="Most queries encoded together."),
    max_wait_ms: float = typer.Option(2.0, help="How long a batch waits for more queries once one arrives."),
    max_k: int = typer.Option(100, min=1, help="Largest k a request may ask for."),
    max_upload_mb: float = typer.Option(10.0, help="Largest uploaded image, in MiB."),
    timeout: float = typer.Option(60.0, help="Seconds a request may wait for the model before a 504."),
    alpha: float = typer.Option(0.5, min=0.0, max=1.0, help="Fusion weight: alpha * retrieval + (1 - alpha) * rerank."),
) -> None:
    """Serve an index over HTTP: a JSON API (/search, /embed, /info, /docs) and a search page at /."""
    import os

    # torch and faiss-cpu each bundle their own OpenMP runtime. A server alternates a model call and a
    # search on every request, and with spinning (the default) idle threads of one runtime starve the
    # other: a tiny-model request measured 10x slower. Passive waiting must be set before they load.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import uvicorn

    from ..serving.app import load_app
    from ..serving.limits import ServeConfig

    config = ServeConfig(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_k=max_k,
                         max_upload_bytes=int(max_upload_mb * 1024 * 1024), request_timeout_s=timeout, alpha=alpha)
    app = load_app(index, model, lora=lora, rerank=rerank, rerank_lora=rerank_lora, device=device, dtype=dtype,
                   config=config)
    typer.echo(f"serving {len(app.state.engine.index)} items on http://{host}:{port}/ (API docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
