# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Putting a finished file or folder in place without ever leaving a half-written or missing one behind, with the
permissions the user's umask asks for.

Temporary files and folders (`tempfile.mkstemp` / `mkdtemp`) are created private (0600 / 0700) whatever the umask,
and transformers writes `model.safetensors` as 0600 too; renamed into place as they are, a user's outputs would be
unreadable to the group or the web server the umask allows. Every writer here gives its result the modes a plain
`open()` / `mkdir()` would have (0666 / 0777 less the umask) before the rename.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (`os.umask` sets it to read it, which
    another thread could observe)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode of a file created with `open(path, "w")`: 0666 less the umask."""
    return 0o666 & ~current_umask()


def default_directory_mode() -> int:
    """The mode of a folder created with `mkdir`: 0777 less the umask."""
    return 0o777 & ~current_umask()


def apply_default_modes(path: str | os.PathLike) -> None:
    """Gives `path` (a file, or a folder and everything in it) the modes the umask asks for; executable bits of files
    are kept, symbolic links are left alone."""
    path = Path(path)
    file_mode, directory_mode = default_file_mode(), default_directory_mode()

    def fix(item: Path) -> None:
        info = item.lstat()
        if stat.S_ISLNK(info.st_mode):
            return
        if stat.S_ISDIR(info.st_mode):
            os.chmod(item, directory_mode)
        else:
            os.chmod(item, file_mode | (info.st_mode & 0o111 & directory_mode))

    fix(path)
    if path.is_dir() and not path.is_symlink():
        for root, directories, files in os.walk(path):
            for name in directories + files:
                fix(Path(root) / name)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """
    Calls `write(temporary)` to fill a temporary sibling of `path`, gives it the umask's mode and renames it over
    `path`, so that `path` is either the old file or the complete new one. The temporary file is removed on failure.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, default_file_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """[`write_atomically`] of a UTF-8 text."""
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def probe_writable(folder: str | os.PathLike, size: int = 4096) -> None:
    """Writes, syncs and removes a small temporary file in `folder`, so that a read-only folder or a full disk shows
    before a long computation rather than after it. Raises `OSError`."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".magnet-write-check-") as probe:
        probe.write(b"x" * size)
        probe.flush()
        os.fsync(probe.fileno())


def make_staging_directory(target: str | os.PathLike) -> Path:
    """An empty hidden folder beside `target` (same file system, so [`replace_directory`] can rename it)."""
    target = Path(target)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))


def replace_directory(source: Path, target: Path) -> None:
    """Moves the complete folder `source` to `target` (same file system), with the umask's modes throughout. An
    existing `target` is renamed aside first and removed only after the move succeeded, so a failure leaves the old
    folder where it was."""
    apply_default_modes(source)
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


__all__ = [
    "apply_default_modes",
    "current_umask",
    "default_directory_mode",
    "default_file_mode",
    "make_staging_directory",
    "probe_writable",
    "replace_directory",
    "write_atomically",
    "write_text_atomically",
]
