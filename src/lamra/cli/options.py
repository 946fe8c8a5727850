"""Options shared by several commands (one definition, one help text).

The model options (``--device``, ``--dtype``, ``--max-pixels`` ... ``--image-pixel-limit``, and
``--rerank-scores`` where a reranker loads) are one group, :class:`ModelOptions`. The
:func:`model_options` decorator adds the group to a command's options and hands the command
their values as one ``model_options`` argument::

    @model_options()
    def cmd(model: Optional[str] = MODEL, lora: Optional[Path] = LORA, *, model_options: ModelOptions) -> None:
        settings = model_options.settings(model, lora)
        retriever = load_retriever(model, device=model_options.device, dtype=model_options.dtype,
                                   settings=settings)

Options left out keep the settings' defaults (None means "not given").
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, fields
from typing import Optional

import typer

from ..settings import POSITION_MODES, RERANK_SCORE_MODES, RGBA_MODES, RULE_SETS, ModelSettings

_DEFAULTS = ModelSettings()

MODEL = typer.Option(None, "--model", "-m", help="Qwen2-VL checkpoint: hub id (owner/name) or local folder "
                                                "(default: lamra's demo model, trained once on first use).")
INDEX_MODEL = typer.Option(None, "--model", "-m", help="Qwen2-VL checkpoint: hub id (owner/name) or local folder "
                                                      "(default: the model the index was built with).")
LORA = typer.Option(None, "--lora", help="LoRA adapter folder (peft) put on top of the model.")
RERANK_LORA = typer.Option(None, "--rerank-lora", help="LoRA adapter of the reranker.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")
SHARD_SIZE = typer.Option(1024, "--shard-size", help="Items per checkpointed shard.")
BATCH_SIZE = typer.Option(64, "--batch-size", help="Most items in one forward pass.")
DEVICE = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available).")
DTYPE = typer.Option(None, help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU).")

# -- model settings (they change vectors, and are recorded in an index's fingerprint) ------------------

MAX_PIXELS = typer.Option(None, "--max-pixels", min=1, help=f"Most pixels of an image after resizing "
                                                              f"(default {_DEFAULTS.max_pixels}, LamRA's cap).")
MIN_PIXELS = typer.Option(None, "--min-pixels", min=1, help=f"Fewest pixels of an image after resizing "
                                                              f"(default {_DEFAULTS.min_pixels}).")
RULES = typer.Option(None, "--rules", help=f"Rule set of a LamRA release: {' or '.join(RULE_SETS)} (default: the "
                                           "checkpoint's, from its lamra_settings.json or its config's model_type; "
                                           "docs/format.md#rule-sets).")
POSITIONS = typer.Option(None, "--positions", help=f"Position ids: {' or '.join(POSITION_MODES)} (default: the rule "
                                                   "set's: 1d for the Qwen2-VL LamRA-Ret, mrope, the model's 3-D "
                                                   "rotary positions, for the Qwen2.5-VL one).")
RGBA = typer.Option(None, "--rgba", help=f"RGBA images: {' or '.join(RGBA_MODES)} (default: the rule set's: convert, "
                                         "PIL's, for Qwen2-VL; white, pasted on white, for Qwen2.5-VL).")
MAX_TOKENS = typer.Option(None, "--max-tokens", min=0, help="Most tokens of one sequence; longer ones are cut, 0: "
                                                            "no cut (default: the rule set's: 1024 for Qwen2-VL, "
                                                            "0 for Qwen2.5-VL).")
IMAGE_PIXEL_LIMIT = typer.Option(None, "--image-pixel-limit", min=1,
                                 help=f"Refuse images of more pixels than this before decoding them "
                                      f"(default {_DEFAULTS.image_pixel_limit}; a guard against "
                                      "decompression bombs).")
RERANK_SCORES = typer.Option(None, "--rerank-scores", help=f"Reranker scores: {' or '.join(RERANK_SCORE_MODES)} "
                                                           f"(default {_DEFAULTS.rerank_scores}: the checkpoint's "
                                                           "repetition penalty on the Yes / No logits, as the "
                                                           "released evaluation; raw: the logits as they are).")

# A Milvus-backed index (docs/index.md): where its database is, and the server's token.
MILVUS_URI = typer.Option(None, "--milvus-uri", help="milvus: the database - a file (embedded Milvus Lite; default: "
                                                     "milvus.db in the index folder) or a server / cluster, "
                                                     "http://host:19530.")
MILVUS_TOKEN = typer.Option(None, "--milvus-token", envvar="MILVUS_TOKEN", show_envvar=True,
                            help="milvus: the server's token (user:password or an API key).")


@dataclass(frozen=True)
class ModelOptions:
    """The model options of one command (None: not given, so the model's settings or the
    library's default apply). ``rerank_scores`` is None in commands without that option."""

    device: Optional[str] = None
    dtype: Optional[str] = None
    max_pixels: Optional[int] = None
    min_pixels: Optional[int] = None
    positions: Optional[str] = None
    max_tokens: Optional[int] = None
    rules: Optional[str] = None
    rgba: Optional[str] = None
    image_pixel_limit: Optional[int] = None
    rerank_scores: Optional[str] = None

    def settings(self, model=None, lora=None, *, rerank_scores: bool = False) -> ModelSettings:
        """A retriever's settings: its own (the adapter's ``lamra_settings.json``, else the model
        folder's, else its release's rule set), with the options given on top (and the
        ``--rerank-scores`` mode with ``rerank_scores``, for a server that hands it to its reranker)."""
        extra = {"rerank_scores": self.rerank_scores} if rerank_scores else {}
        return model_settings(model, lora, max_pixels=self.max_pixels, min_pixels=self.min_pixels,
                              positions=self.positions, max_tokens=self.max_tokens, rules=self.rules,
                              rgba=self.rgba, image_pixel_limit=self.image_pixel_limit, **extra)

    def reranker_settings(self, model, lora=None) -> ModelSettings:
        """A reranker's settings: its folder's, with the options given and the ``--rerank-scores``
        mode; not ``--positions`` (the reranker reads M-RoPE positions)."""
        return model_settings(model, lora, max_pixels=self.max_pixels, min_pixels=self.min_pixels,
                              max_tokens=self.max_tokens, rules=self.rules, rgba=self.rgba,
                              image_pixel_limit=self.image_pixel_limit, rerank_scores=self.rerank_scores)


# Each field of the group: its type, as typer reads it, and its option.
_GROUP = {
    "device": (Optional[str], DEVICE),
    "dtype": (Optional[str], DTYPE),
    "max_pixels": (Optional[int], MAX_PIXELS),
    "min_pixels": (Optional[int], MIN_PIXELS),
    "positions": (Optional[str], POSITIONS),
    "max_tokens": (Optional[int], MAX_TOKENS),
    "rules": (Optional[str], RULES),
    "rgba": (Optional[str], RGBA),
    "image_pixel_limit": (Optional[int], IMAGE_PIXEL_LIMIT),
    "rerank_scores": (Optional[str], RERANK_SCORES),
}
assert list(_GROUP) == [field.name for field in fields(ModelOptions)]


def model_options(*, rerank_scores: bool = False, **replaced):
    """Decorator: the command takes the model options (``--rerank-scores`` too with
    ``rerank_scores``) and receives them as one keyword argument ``model_options: ModelOptions``.

    typer reads a command's signature, so the decorated command shows the group's parameters in
    place of ``model_options`` (after its own options). ``replaced`` gives one command its own
    declaration of an option (``image_pixel_limit=typer.Option(...)``: another help text).
    """
    names = [name for name in _GROUP if rerank_scores or name != "rerank_scores"]
    unknown = set(replaced) - set(names)
    if unknown:
        raise TypeError(f"not model options of this command: {sorted(unknown)}")

    def decorate(command):
        signature = inspect.signature(command)
        own = [parameter for parameter in signature.parameters.values() if parameter.name != "model_options"]
        if len(own) == len(signature.parameters):
            raise TypeError(f"{command.__name__} needs a keyword-only parameter model_options")
        group = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=_GROUP[name][0],
                                   default=replaced.get(name, _GROUP[name][1])) for name in names]

        @functools.wraps(command)
        def run(*args, **kwargs):
            values = {name: kwargs.pop(name, None) for name in names}
            return command(*args, model_options=ModelOptions(**values), **kwargs)

        run.__signature__ = signature.replace(parameters=own + group)
        annotations = {k: v for k, v in command.__annotations__.items() if k != "model_options"}
        run.__annotations__ = {**annotations, **{name: _GROUP[name][0] for name in names}}
        return run

    return decorate


def rerank_options_without_rerank(*, rerank_lora, alpha, listwise: bool, rerank_scores) -> str | None:
    """The message for reranking options given without --rerank (None when there are none)."""
    given = [name for name, value in (("--rerank-lora", rerank_lora), ("--alpha", alpha),
                                      ("--listwise", listwise or None), ("--rerank-scores", rerank_scores))
             if value is not None]
    return f"{', '.join(given)} only work(s) with --rerank" if given else None


def model_settings(model=None, lora=None, **values) -> ModelSettings:
    """The model's settings (``lamra_settings.json`` of the adapter ``lora``, else of the model
    folder, else the defaults of its release) with the options that were given on top (None
    values keep them).

    A bad combination (``--min-pixels`` over ``--max-pixels``, an unknown ``--positions``) is a
    usage error: exit status 2 with the reason.
    """
    try:
        return ModelSettings.for_model(model, lora).with_overrides(**values)
    except ValueError as exc:
        raise typer.BadParameter(_option_names(str(exc))) from None


def _option_names(message: str) -> str:
    """Settings' field names in a message, as the options that set them."""
    for field in ("max_pixels", "min_pixels", "positions", "max_tokens", "image_pixel_limit", "rerank_scores",
                  "rules", "rgba"):
        message = message.replace(field, "--" + field.replace("_", "-"))
    return message
