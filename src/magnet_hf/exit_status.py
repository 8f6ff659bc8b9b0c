# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Exit statuses of every magnet_hf command line, in one place (the README's "Security and data safety" lists them).

1 is left to Python itself (an uncaught exception, i.e. a bug), so no command uses it on purpose.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable

OK = 0
#: A bad flag, path, file, model folder, dataset or configuration; the message names it.
BAD_INPUT = 2
#: `push_to_hub.py` / `--push-to-hub`: everything was written locally but the upload failed.
UPLOAD_FAILED = 3
#: `train.py`: the loss or the weights became NaN/inf; the message names the last good checkpoint.
DIVERGED = 4
#: Out of memory or out of disk space.
OUT_OF_RESOURCES = 5
#: Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def error(message: object) -> None:
    """Prints the one-line `error: ...` message the commands end with."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)


def guard_resources(main: Callable[..., int]) -> Callable[..., int]:
    """Wraps a command's `main` so that running out of memory or disk, an unwritable output and Ctrl-C end with a
    one-line `error:` and their own status instead of a traceback."""

    @functools.wraps(main)
    def guarded(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except MemoryError:
            error("out of memory; use a smaller input, --batch-size or model, or a machine with more memory.")
            return OUT_OF_RESOURCES
        except OSError as failure:
            where = f" ({failure.filename})" if failure.filename else ""
            if failure.errno in _DISK_FULL:
                error(f"no space left on the device{where}; nothing incomplete was left in place. Free some space and re-run.")
                return OUT_OF_RESOURCES
            if failure.errno in _NOT_WRITABLE:
                error(f"permission denied{where}: {failure.strerror}.")
                return BAD_INPUT
            raise
        except KeyboardInterrupt:
            error("interrupted.")
            return INTERRUPTED

    return guarded


__all__ = ["BAD_INPUT", "DIVERGED", "INTERRUPTED", "OK", "OUT_OF_RESOURCES", "UPLOAD_FAILED", "error", "guard_resources"]
