"""Options shared by several commands (one definition, one help text).

The model settings (``--max-pixels`` ... ``--image-pixel-limit``, and ``--rerank-scores`` where a
reranker loads) are declared once here; a command lists them as parameters named like the
:class:`~lamra.settings.ModelSettings` fields and passes them to :func:`model_settings`::

    def cmd(..., max_pixels: Optional[int] = MAX_PIXELS, min_pixels: Optional[int] = MIN_PIXELS,
            positions: Optional[str] = POSITIONS, max_tokens: Optional[int] = MAX_TOKENS,
            image_pixel_limit: Optional[int] = IMAGE_PIXEL_LIMIT):
        settings = model_settings(max_pixels=max_pixels, min_pixels=min_pixels, positions=positions,
                                  max_tokens=max_tokens, image_pixel_limit=image_pixel_limit)

Options left out keep the settings' defaults (None means "not given").
"""

from __future__ import annotations

import typer

from ..settings import ModelSettings, POSITION_MODES, RERANK_SCORE_MODES

_DEFAULTS = ModelSettings()

MODEL = typer.Option(None, "--model", "-m", help="Qwen2-VL checkpoint: hub id (owner/name) or local folder "
                                                "(default: lamra's demo model, trained once on first use).")
INDEX_MODEL = typer.Option(None, "--model", "-m", help="Qwen2-VL checkpoint: hub id (owner/name) or local folder "
                                                      "(default: the model the index was built with).")
LORA = typer.Option(None, "--lora", help="LoRA adapter folder (peft) put on top of the model.")
DEVICE = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available).")
DTYPE = typer.Option(None, help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU).")

# -- model settings (they change vectors, and are recorded in an index's fingerprint) ------------------

MAX_PIXELS = typer.Option(None, "--max-pixels", min=1, help=f"Most pixels of an image after resizing "
                                                              f"(default {_DEFAULTS.max_pixels}, LamRA's cap).")
MIN_PIXELS = typer.Option(None, "--min-pixels", min=1, help=f"Fewest pixels of an image after resizing "
                                                              f"(default {_DEFAULTS.min_pixels}).")
POSITIONS = typer.Option(None, "--positions", help=f"Position ids: {' or '.join(POSITION_MODES)} (default "
                                                   f"{_DEFAULTS.positions}, as the released LamRA-Ret; mrope "
                                                   "is Qwen2-VL's 3-D rotary positions).")
MAX_TOKENS = typer.Option(None, "--max-tokens", min=16, help=f"Most tokens of one sequence; longer ones are cut "
                                                               f"(default {_DEFAULTS.max_tokens}).")
IMAGE_PIXEL_LIMIT = typer.Option(None, "--image-pixel-limit", min=1,
                                 help=f"Refuse images of more pixels than this before decoding them "
                                      f"(default {_DEFAULTS.image_pixel_limit}; a guard against "
                                      "decompression bombs).")
RERANK_SCORES = typer.Option(None, "--rerank-scores", help=f"Reranker scores: {' or '.join(RERANK_SCORE_MODES)} "
                                                           f"(default {_DEFAULTS.rerank_scores}: the checkpoint's "
                                                           "repetition penalty on the Yes / No logits, as the "
                                                           "released evaluation; raw: the logits as they are).")


def rerank_options_without_rerank(*, rerank_lora, alpha, listwise: bool, rerank_scores) -> str | None:
    """The message for reranking options given without --rerank (None when there are none)."""
    given = [name for name, value in (("--rerank-lora", rerank_lora), ("--alpha", alpha),
                                      ("--listwise", listwise or None), ("--rerank-scores", rerank_scores))
             if value is not None]
    return f"{', '.join(given)} only work(s) with --rerank" if given else None


def model_settings(model=None, **values) -> ModelSettings:
    """The model's settings (its folder's ``lamra_settings.json``, else the defaults) with the
    options that were given on top (None values keep them).

    A bad combination (``--min-pixels`` over ``--max-pixels``, an unknown ``--positions``) is a
    usage error: exit status 2 with the reason.
    """
    try:
        return ModelSettings.for_model(model).with_overrides(**values)
    except ValueError as exc:
        raise typer.BadParameter(_option_names(str(exc))) from None


def _option_names(message: str) -> str:
    """Settings' field names in a message, as the options that set them."""
    for field in ("max_pixels", "min_pixels", "positions", "max_tokens", "image_pixel_limit", "rerank_scores"):
        message = message.replace(field, "--" + field.replace("_", "-"))
    return message
