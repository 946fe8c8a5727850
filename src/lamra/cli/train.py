"""``lamra train retriever``, ``lamra train reranker`` and ``lamra lora merge``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

train_app = typer.Typer(help="Train LamRA models (retriever: stage 1 pairs, stage 2 M-BEIR; reranker: "
                                      "pointwise + listwise on mined negatives).", no_args_is_help=True)
lora_app = typer.Typer(help="LoRA adapters: merge one into its base model.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
    app.add_typer(lora_app, name="lora")


@train_app.command("retriever")
def retriever(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A yaml preset, e.g. configs/stage1.yaml."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base checkpoint: hub id or local folder "
                                                                     "(default: lamra's default model)."),
    data: Optional[str] = typer.Option(None, help="Pairs file (.jsonl / .csv) or M-BEIR root."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="Where checkpoints and the adapter go."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
    global_batch_size: Optional[int] = typer.Option(None, help="Examples per step over all processes."),
    chunk_size: Optional[int] = typer.Option(None, help="Gradient caching: rows per forward pass."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    distill: Optional[str] = typer.Option(None, "--distill", help="A teacher-scores file (lamra score-teacher): "
                                                                  "train on its queries with InfoNCE + a KL term "
                                                                  "to the reranker (configs/distill.yaml)."),
    assignments: Optional[list[str]] = typer.Option(None, "--set", help="Any argument as key=value (repeatable)."),
) -> None:
    """Train LamRA-Ret with InfoNCE; resumes from the newest checkpoint in the output folder.

    Under torchrun (or accelerate launch) every process trains on its share of each global batch
    and in-batch negatives span all of them.
    """
    from ..retriever.trainer import train_retriever
    from ..training.args import load_args

    args = load_args(config, **_overrides(assignments, model=model, data=data, output_dir=output_dir,
                                          max_steps=max_steps, global_batch_size=global_batch_size,
                                          chunk_size=chunk_size, device=device, distill=distill))
    if _prepare(args, "retriever"):
        return
    adapter = train_retriever(args, on_log=_print_log)
    from ..distributed import is_main_process

    if is_main_process():
        typer.echo(f"adapter written to {adapter}")
        typer.echo(f"use it: lamra embed ITEMS --model {args.model} --lora {adapter}   "
                   f"(or merge it: lamra lora merge {args.model} {adapter} MERGED)")


@train_app.command("reranker")
def reranker(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A yaml preset, e.g. configs/rerank.yaml."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base checkpoint (the raw Qwen2-VL-Instruct "
                                                                     "model): hub id or local folder (default: "
                                                                     "SmolLM2-135M-Instruct as a Qwen2-VL "
                                                                     "checkpoint, built once, text only)."),
    data: Optional[str] = typer.Option(None, help="M-BEIR root."),
    mined: Optional[str] = typer.Option(None, help="The jsonl written by lamra mine (each query's top-k)."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="Where checkpoints and the adapter go."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
    global_batch_size: Optional[int] = typer.Option(None, help="Training queries per step over all processes "
                                                               "(each: two pointwise pairs and one list)."),
    chunk_size: Optional[int] = typer.Option(None, help="Queries per forward pass (gradient accumulation)."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    assignments: Optional[list[str]] = typer.Option(None, "--set", help="Any argument as key=value (repeatable)."),
) -> None:
    """Train LamRA-Rank: next-token cross-entropy on the answers of pointwise (Yes / No) and
    listwise (Ans: (k)) prompts built from mined negatives; resumes from the newest checkpoint.

    Under torchrun (or accelerate launch) every process trains on its share of each global batch.
    """
    from ..reranker.trainer import train_reranker
    from ..training.args import RerankerTrainingArgs, load_args

    args = load_args(config, args_class=RerankerTrainingArgs,
                     **_overrides(assignments, RerankerTrainingArgs, model=model, data=data, mined=mined,
                                  output_dir=output_dir, max_steps=max_steps, global_batch_size=global_batch_size,
                                  chunk_size=chunk_size, device=device))
    if _prepare(args, "reranker"):
        return
    adapter = train_reranker(args, on_log=_print_log)
    from ..distributed import is_main_process

    if is_main_process():
        typer.echo(f"adapter written to {adapter}")
        typer.echo(f"use it: Reranker.from_pretrained({args.model!r}, lora={str(adapter)!r})")


def _overrides(assignments: list[str] | None, args_class=None, **options) -> dict:
    """The command's options with the ``--set key=value`` ones; an argument given both ways (with
    different values) is refused in one line rather than one silently winning."""
    from ..errors import InputError
    from ..training.args import RetrieverTrainingArgs, parse_assignment

    merged = dict(options)
    for text in assignments or []:
        key, value = parse_assignment(text, args_class=args_class or RetrieverTrainingArgs)
        if merged.get(key) is not None and merged[key] != value:
            raise InputError(f"{key} is given twice: --{key.replace('_', '-')} {merged[key]} and --set {text}",
                             field="set")
        merged[key] = value
    return merged


def _prepare(args, kind: str) -> bool:
    """Before a run: the default base model when none is given (said in one line), a wrong model
    refused in one line (after the data's checks), a finished run reported (True: nothing to do),
    the loading bars quiet."""
    from ..distributed import is_main_process
    from ..training.checkpoints import finished_run
    from .runtime import quiet_model_loading

    quiet_model_loading()
    if not args.model:
        args.model = _default_base(kind)
    args.check()
    finished = finished_run(Path(args.output_dir), args.to_dict()) if args.resume else None
    if finished is not None:
        if is_main_process():
            typer.echo(finished.message)
        return True
    return False


def _default_base(kind: str) -> str:
    """lamra's default model (the retriever), or for a reranker the instruction-tuned language
    model the demo reranker starts from (LamRA-Rank starts from an Instruct model, not a retriever)."""
    if kind == "retriever":
        from .models import resolve_model

        return resolve_model(None)[0]
    from ..demo.reranker import default_reranker_base

    folder = default_reranker_base(announce=lambda message: typer.echo(message, err=True))
    typer.echo(f"using lamra's default reranker base {folder} (SmolLM2-135M-Instruct as a Qwen2-VL checkpoint: "
               "text only, as the demo reranker; pass --model for a Qwen2-VL-Instruct model)", err=True)
    return str(folder)


def _print_log(record: dict) -> None:
    parts = "".join(f"  {name.removesuffix('_loss')} {record[name]:.4f}"
                    for name in ("pointwise_loss", "listwise_loss", "info_nce", "kl") if name in record)
    typer.echo(f"step {record['step']}/{record['total_steps']}  loss {record['loss']:.4f}{parts}  "
               f"lr {record['lr']:.2e}  {record['samples_per_second']:.1f} samples/s", err=True)


@lora_app.command("merge")
def merge(
    model: str = typer.Argument(..., help="The base checkpoint the adapter was trained on."),
    adapter: Path = typer.Argument(..., help="The LoRA adapter folder."),
    out: Path = typer.Argument(..., help="Folder for the merged checkpoint."),
) -> None:
    """Fold a LoRA adapter into its base model: a plain checkpoint (stage 2 starts from stage 1 merged)."""
    from ..training.merge import merge_lora
    from .runtime import quiet_model_loading

    quiet_model_loading()
    folder = merge_lora(model, adapter, out)
    typer.echo(f"merged checkpoint written to {folder}")
