"""State of one run of the ``lamra`` command: verbosity, and the noise of the libraries below.

``-v`` (``lamra -v COMMAND``) turns on lamra's INFO logs, the libraries' own progress bars and
the traceback of an error; without it a command prints its progress bar, its result and, on
error, one ``error: ...`` line.
"""

from __future__ import annotations

import logging

_STATE = {"verbose": False}


def set_verbose(verbose: bool) -> None:
    _STATE["verbose"] = bool(verbose)
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)  # basicConfig does nothing when a handler exists (in-process runs)


def is_verbose() -> bool:
    return _STATE["verbose"]


def quiet_model_loading(*, show_downloads: bool = True) -> None:
    """Before a model loads: transformers' "Loading weights" bar only with ``-v``; hub download
    bars stay (a multi-GB download without one looks hung) unless ``show_downloads`` is False."""
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    if is_verbose():
        hf_logging.enable_progress_bar()
        return
    hf_logging.disable_progress_bar()  # (it turns the hub's bars off too)
    if show_downloads:
        enable_progress_bars()
    else:
        disable_progress_bars()
