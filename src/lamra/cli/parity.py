"""``lamra parity``: check another engine's vectors (or rerank scores) against the reference path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .options import LORA, ModelOptions, model_options


def register(app: typer.Typer) -> None:
    app.command("parity")(parity)


@model_options(rerank_scores=True)
def parity(
    url: str = typer.Argument(..., metavar="URL", help="The endpoint's base URL (http://host:port or .../v1)."),
    model: str = typer.Option(..., "--model", help="The reference checkpoint (hub id or folder); also the model "
                                                   "name sent unless --served-model-name."),
    lora: Optional[Path] = LORA,
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name", metavar="NAME",
                                                    help="The name the endpoint serves the model under."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LAMRA_API_KEY", metavar="KEY",
                                          help="Bearer key of the endpoint (also read from LAMRA_API_KEY)."),
    rerank: bool = typer.Option(False, "--rerank", help="Check /v1/rerank's relevance scores against "
                                                        "Reranker.score (--model is then the reranker)."),
    tolerance: float = typer.Option(1e-3, min=0.0, help="Largest 1 - cosine per probe (rerank: largest |score "
                                                        "difference|). 1e-3 suits fp32 engines; bf16 ones need "
                                                        "about 1e-2."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of text."),
    timeout: float = typer.Option(120.0, min=1.0, help="Seconds to wait for each answer."),
    *,
    model_options: ModelOptions,
) -> None:
    """Send a fixed probe set to URL and compare with the same items through lamra in-process.

    Prints each probe's cosine and max |difference|, a summary per modality and the setting that
    most likely explains a miss (positions, template, resize). Exit status 1 when a probe is
    beyond the tolerance.
    """
    from ..serving.parity import check_embeddings, check_rerank, format_report, open_client, preflight
    from .models import check_sources, load_reranker, load_retriever

    check_sources(model, lora)
    name = served_model_name or model
    with open_client(url, api_key, timeout=timeout) as client:
        preflight(client, url)  # an unreachable endpoint or a wrong key: one error line, before the model loads
        if rerank:
            reference = load_reranker(model, lora=lora, device=model_options.device, dtype=model_options.dtype,
                                      settings=model_options.reranker_settings(model, lora), quiet=True)
            report = check_rerank(client, name, reference, url=url, tolerance=tolerance)
        else:
            reference = load_retriever(model, lora=lora, device=model_options.device, dtype=model_options.dtype,
                                       settings=model_options.settings(model, lora), quiet=True)
            report = check_embeddings(client, name, reference, url=url, tolerance=tolerance)
    typer.echo(json.dumps(report.as_dict(), indent=2) if as_json else format_report(report))
    if not report.passed:
        raise typer.Exit(1)
