"""Options shared by several commands (one definition, one help text)."""

from __future__ import annotations

import typer

MODEL = typer.Option(..., "--model", "-m", help="Qwen2-VL checkpoint: hub id or local folder.")
LORA = typer.Option(None, "--lora", help="LoRA adapter folder (peft) put on top of the model.")
DEVICE = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available).")
DTYPE = typer.Option(None, help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU).")
