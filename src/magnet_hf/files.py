# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Every file and folder magnet_hf writes goes through here: put in place whole or not at all, never over an existing
output without `overwrite`, never over an input, and with the permissions the user's umask asks for.

- `write_atomically` / `write_text_atomically` / `write_json_atomically`: a file, through a temporary sibling renamed
  over the target.
- `replacing_directory` (and `replace_directory`): a folder, assembled in a hidden sibling and swapped in when
  complete; an existing one is renamed aside first and removed only after the swap.
- `move_into`: finished files moved into an existing folder one rename at a time, in a chosen order.
- `refuse_existing_output` / `refuse_replacing_inputs`: the `--overwrite` rule and the "holds an input" rule, with
  the same one-line messages for every command.

Temporary files and folders (`tempfile.mkstemp` / `mkdtemp`) are created private (0600 / 0700) whatever the umask,
and transformers writes `model.safetensors` as 0600 too; renamed into place as they are, a user's outputs would be
unreadable to the group or the web server the umask allows. Every writer here gives its result the modes a plain
`open()` / `mkdir()` would have (0666 / 0777 less the umask) before the rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


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


def sync_tree(path: str | os.PathLike) -> None:
    """Flushes `path` (a file, or every file in a folder) to disk: a rename is atomic, but without this a power cut
    could still publish empty files."""
    path = Path(path)
    for item in [path] if path.is_file() else path.rglob("*"):
        if item.is_file() and not item.is_symlink():
            with open(item, "rb") as file:
                os.fsync(file.fileno())


# ------------------------------------------------------------------------------------------------- the rules


def refuse_existing_output(
    path: str | os.PathLike, overwrite: bool, *, error: type[Exception] = FileExistsError, flag: str = "--overwrite"
) -> Path:
    """Raises `error` when `path` exists (a dangling link counts: writing would replace it) and `overwrite` is off."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise error(f"{path} already exists; pass {flag} to replace it.")
    return path


def refuse_replacing_inputs(
    output: str | os.PathLike,
    inputs: Mapping[str, str | os.PathLike | None],
    *,
    error: type[Exception] = ValueError,
    output_flag: str = "--output",
) -> None:
    """Raises `error` when `output` is, or holds, one of the local `inputs` (flag -> path): replacing it would delete
    that input."""
    target = Path(output).expanduser().resolve()
    inside = []
    for flag, value in inputs.items():
        if value is None or not Path(value).expanduser().exists():
            continue
        resolved = Path(value).expanduser().resolve()
        if resolved == target or resolved.is_relative_to(target):
            inside.append(flag)
    if inside:
        raise error(f"{output_flag} {output} holds the input of {' and '.join(inside)}; replacing it would delete that input.")


# ------------------------------------------------------------------------------------------------------ files


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None], *, sync: bool = False) -> Path:
    """
    Calls `write(temporary)` to fill a temporary sibling of `path`, gives it the umask's mode and renames it over
    `path`, so that `path` is either the old file or the complete new one. The temporary file is removed on failure.
    `sync` flushes it to disk before the rename (checkpoints, which must survive a power cut).
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        if sync:
            sync_tree(temporary)
        os.chmod(temporary, default_file_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | os.PathLike, text: str, *, sync: bool = False) -> Path:
    """[`write_atomically`] of a UTF-8 text."""
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"), sync=sync)


def write_json_atomically(path: str | os.PathLike, data: Any, *, sync: bool = False, sort_keys: bool = False) -> Path:
    """[`write_atomically`] of `data` as indented JSON with a final newline."""
    return write_text_atomically(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n", sync=sync)


def probe_writable(folder: str | os.PathLike, size: int = 4096) -> None:
    """Writes, syncs and removes a small temporary file in `folder`, so that a read-only folder or a full disk shows
    before a long computation rather than after it. Raises `OSError`."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".magnet-write-check-") as probe:
        probe.write(b"x" * size)
        probe.flush()
        os.fsync(probe.fileno())


# ---------------------------------------------------------------------------------------------------- folders


def make_staging_directory(target: str | os.PathLike) -> Path:
    """An empty hidden folder beside `target` (same file system, so [`replace_directory`] can rename it)."""
    target = Path(target)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))


def replace_directory(source: Path, target: Path, *, sync: bool = False) -> None:
    """Moves the complete folder `source` to `target` (same file system), with the umask's modes throughout. An
    existing `target` is renamed aside first and removed only after the move succeeded, so a failure leaves the old
    folder where it was."""
    apply_default_modes(source)
    if sync:
        sync_tree(source)
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


@contextlib.contextmanager
def replacing_directory(target: str | os.PathLike, *, sync: bool = False) -> Iterator[Path]:
    """Yields an empty staging folder beside `target`; when the block ends without an exception the staging folder
    replaces `target` ([`replace_directory`]), otherwise it is removed and `target` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_directory(target)
    try:
        yield staging
        replace_directory(staging, target, sync=sync)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_into(source: Path, folder: Path, last: Iterable[str] = ()) -> list[str]:
    """Moves every entry of the finished folder `source` into the existing `folder` by atomic renames, replacing
    entries of the same names, the names in `last` after all others (so that, e.g., a `config.json` marks a folder
    whose other files are complete). Returns the names moved."""
    last = list(last)
    names = sorted(path.name for path in source.iterdir())
    ordered = [name for name in names if name not in last] + [name for name in last if name in names]
    apply_default_modes(source)
    for name in ordered:
        destination = folder / name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        os.replace(source / name, destination)
    return ordered


__all__ = [
    "apply_default_modes",
    "current_umask",
    "default_directory_mode",
    "default_file_mode",
    "make_staging_directory",
    "move_into",
    "probe_writable",
    "refuse_existing_output",
    "refuse_replacing_inputs",
    "replace_directory",
    "replacing_directory",
    "sync_tree",
    "write_atomically",
    "write_json_atomically",
    "write_text_atomically",
]
