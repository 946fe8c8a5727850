"""Where a model comes from, checked before transformers is asked to load it.

``--model`` and ``--lora`` take a local folder or a hub id (``owner/name``). A wrong value used to
end in a long chain of transformers / hub errors, after a minute of download retries without
network. :func:`check_model_source` and :func:`check_adapter_source` look first and say, in a
line or two, what was looked for and what to do:

- a local path that does not exist, a file, or a folder without ``config.json`` (an adapter:
  ``adapter_config.json``) or without weights (``*.safetensors`` / ``*.bin``, index files count);
- a hub id that is not in the local Hugging Face cache while ``HF_HUB_OFFLINE`` is set, or while
  the hub cannot be reached (asked once per id, one request with a short timeout, no retries),
  or that the hub does not know;
- a string that is neither an existing path nor a hub id.

They raise :class:`lamra.errors.ModelSourceError`, which the CLI prints as ``error: ...``.

The same module knows the *untrained* mark: :func:`lamra.demo.tiny.save_tiny_checkpoint` writes
``UNTRAINED.txt`` into the folders of random-weight models it makes (tests, the demo), and
:func:`is_untrained` finds it, so the CLI and the web page can say that rankings mean nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ModelSourceError

HUB_EXAMPLE = "Qwen/Qwen2-VL-2B-Instruct"
UNTRAINED_MARK = "UNTRAINED.txt"
UNTRAINED_WARNING = ("this model is UNTRAINED (random weights, built by lamra.demo.tiny for tests and the demo): "
                     "rankings show the pipeline working, not retrieval quality. "
                     "Pass --model with a LamRA checkpoint for real results.")
# Seconds the one reachability request may take (an unreachable hub fails in well under that).
HUB_TIMEOUT_S = 3.0

_MODEL_WEIGHTS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# (endpoint, repo, revision) -> None when the hub has it, else the error message (asked once).
_HUB_ANSWERS: dict[tuple, str | None] = {}
_TRUE = {"1", "on", "yes", "true"}


def check_model_source(model: str | os.PathLike, *, revision: str | None = None) -> None:
    """Raise :class:`ModelSourceError` unless ``model`` is a checkpoint folder or a loadable hub id."""
    _check_source(model, kind="model", config="config.json", weights=_MODEL_WEIGHTS, revision=revision,
                  example=HUB_EXAMPLE)


def check_adapter_source(lora: str | os.PathLike | None, *, revision: str | None = None) -> None:
    """The same for a peft LoRA adapter (``adapter_config.json`` + ``adapter_model.*``); None passes."""
    if lora is None:
        return
    _check_source(lora, kind="LoRA adapter", config="adapter_config.json", weights=_ADAPTER_WEIGHTS,
                  revision=revision, example="owner/name")


def is_untrained(model: str | os.PathLike | None) -> bool:
    """True for a local model folder marked as random weights (see the module docstring)."""
    if model is None:
        return False
    return (Path(model).expanduser() / UNTRAINED_MARK).is_file()


def mark_untrained(folder: str | os.PathLike, how: str = "lamra.demo.tiny") -> None:
    """Mark a saved checkpoint folder as random weights (made by ``how``)."""
    text = (f"This checkpoint has random weights: it was built by {how} for tests and demos.\n"
            "lamra warns when it is loaded (CLI and web page): its rankings mean nothing.\n")
    (Path(folder) / UNTRAINED_MARK).write_text(text)


# -- the checks ----------------------------------------------------------------------------------


def _check_source(value, *, kind: str, config: str, weights: tuple[str, ...], revision: str | None,
                  example: str) -> None:
    text = os.fspath(value)
    if not isinstance(text, str):
        raise ModelSourceError(f"{kind} must be a folder or a hub id, got {value!r}")
    local = Path(text).expanduser()
    if local.exists():
        _check_folder(text, local, kind=kind, config=config, weights=weights, example=example)
        return
    if _looks_like_path(text):
        raise ModelSourceError(
            f"{kind} {text!r} not found: there is no such folder ({local.absolute()}). Give a checkpoint folder "
            f"({config} and weights) or a hub id such as {example}.")
    if not _is_hub_id(text):
        raise ModelSourceError(
            f"{kind} {text!r} is neither a folder here nor a hub id (hub ids look like owner/name, "
            f"e.g. {example}). Check the spelling, or give the path of a checkpoint folder.")
    _check_hub(text, kind=kind, config=config, revision=revision)


def _check_folder(text: str, local: Path, *, kind: str, config: str, weights: tuple[str, ...],
                  example: str) -> None:
    if not local.is_dir():
        raise ModelSourceError(f"{kind} {text!r} is a file; give the folder that holds {config} and the weights.")
    if not (local / config).is_file():
        inside = sorted(str(Path(text) / sub.name) for sub in local.iterdir() if (sub / config).is_file())[:3]
        hint = (f"; {' or '.join(repr(s) for s in inside)} inside it {'is one' if len(inside) == 1 else 'are'}"
                if inside else f". Give the folder written by save_pretrained ({config} and weights), or a hub id "
                                f"such as {example}")
        raise ModelSourceError(f"{kind} folder {text!r} is not a checkpoint: it has no {config}{hint}.")
    if not any(next(local.glob(pattern), None) is not None for pattern in weights):
        raise ModelSourceError(
            f"{kind} folder {text!r} has {config} but no weights ({', '.join(weights)}): the download or copy "
            "looks incomplete.")


def _looks_like_path(text: str) -> bool:
    """Written as a path: absolute, ~, ./ or ../, a backslash, a trailing slash or more than one slash."""
    return (os.path.isabs(text) or text.startswith(("~", "./", "../", ".\\", "..\\")) or text in (".", "..")
            or "\\" in text or text.endswith("/") or text.count("/") > 1)


def _is_hub_id(text: str) -> bool:
    """``owner/name`` (lamra's models are never legacy single-name repos)."""
    if text.count("/") != 1 or not re.fullmatch(r"[\w.\-/]+", text):
        return False
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # pragma: no cover - a transformers dependency
        return True
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def _check_hub(repo: str, *, kind: str, config: str, revision: str | None) -> None:
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, config, revision=revision), str):
        return  # in the local cache: transformers loads it from there
    cache = constants.HF_HUB_CACHE
    if _offline():
        raise ModelSourceError(
            f"{kind} {repo!r} is not a local folder and not in the Hugging Face cache ({cache}), and HF_HUB_OFFLINE "
            f"is set, so it cannot be downloaded. Download it first (hf download {repo}), unset HF_HUB_OFFLINE, "
            "or give a local folder.")
    key = (constants.ENDPOINT, repo, revision)
    if key not in _HUB_ANSWERS:
        _HUB_ANSWERS[key] = _ask_hub(constants.ENDPOINT, repo, revision, kind=kind, cache=cache)
    if _HUB_ANSWERS[key] is not None:
        raise ModelSourceError(_HUB_ANSWERS[key])


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or any(
        os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _ask_hub(endpoint: str, repo: str, revision: str | None, *, kind: str, cache: str) -> str | None:
    """One HEAD request for the repo's API page: None when it is there, else the error to show."""
    import urllib.error
    import urllib.request

    url = f"{endpoint.rstrip('/')}/api/models/{repo}" + (f"/revision/{revision}" if revision else "")
    headers = {"User-Agent": "lamra"}
    token = _hub_token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD", headers=headers),
                                    timeout=HUB_TIMEOUT_S):
            return None
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403, 404):
            return (f"{kind} {repo!r} is not a local folder, and {endpoint} has no model of that name that this "
                    f"machine may read (HTTP {exc.code}). Check the spelling; for a private or gated model log in "
                    "(hf auth login) or set HF_TOKEN.")
        return None  # the hub answered something else: let the download say what it is
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return (f"{kind} {repo!r} is not a local folder and not in the Hugging Face cache ({cache}), and {endpoint} "
                f"cannot be reached ({reason}). Download it where there is network (hf download {repo}) and copy "
                "the cache, or give a local folder.")


def _hub_token() -> str | None:
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - no token is fine
        return None
