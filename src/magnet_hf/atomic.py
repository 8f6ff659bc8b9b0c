# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Putting a finished folder in place without ever leaving a half-written or missing one behind."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path


def replace_directory(source: Path, target: Path) -> None:
    """Moves the complete folder `source` to `target` (same file system). An existing `target` is renamed aside first
    and removed only after the move succeeded, so a failure leaves the old folder where it was."""
    if not target.exists() and not target.is_symlink():
        source.rename(target)
        return
    backup = target.with_name(f".{target.name}.replaced-{uuid.uuid4().hex[:8]}")
    target.rename(backup)
    try:
        source.rename(target)
    except BaseException:
        backup.rename(target)
        raise
    if backup.is_symlink():  # rmtree refuses links (and ignore_errors would hide that, leaving it behind)
        backup.unlink()
    else:
        shutil.rmtree(backup, ignore_errors=True)
