# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Progress bars of the command lines: shown only for work that takes a while, and never into a file or pipe.

transformers draws a bar for every weight load ("Loading weights 802/802") and every save ("Writing model shards"),
even when they take a fraction of a second; in a redirected log each becomes a line of carriage returns. The
commands install `transformers.utils.logging.set_tqdm_hook` (transformers' own hook for customising its bars) with
tqdm's `delay` (a bar appears only once its work has run that long) and `disable=None` (off when stderr is not a
terminal). `--verbose` leaves transformers' bars as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

#: Seconds a load or save must run before its bar appears.
PROGRESS_DELAY_SECONDS = 2.0


def _quiet_bar(factory, args, kwargs):
    kwargs = dict(kwargs)
    kwargs.setdefault("delay", PROGRESS_DELAY_SECONDS)
    kwargs.setdefault("disable", None)  # tqdm: None disables the bar when the stream is not a terminal
    return factory(*args, **kwargs)


@contextlib.contextmanager
def command_progress(verbose: bool = False) -> Iterator[None]:
    """For the duration of a command: transformers' progress bars only for slow work on a terminal (all of them
    with `verbose`). Restores the previous hook afterwards, so library callers are unaffected."""
    if verbose:
        yield
        return
    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.set_tqdm_hook(_quiet_bar)
    try:
        yield
    finally:
        transformers_logging.set_tqdm_hook(previous)


__all__ = ["PROGRESS_DELAY_SECONDS", "command_progress"]
