"""Atomic writing of a dataset folder: built next to the output, renamed into place when complete."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import ReferDataError


@dataclass(frozen=True)
class Staging:
    """Scratch folders of one atomic write.

    Attributes:
        dataset_dir: where the caller must ``save_to_disk`` the finished dataset.
        cache_dir: scratch space for ``datasets`` Arrow caches; deleted afterwards.
    """

    dataset_dir: Path
    cache_dir: Path


def check_output_dir(output: str | os.PathLike, overwrite: bool) -> Path:
    """Validate an output folder before any work starts.

    Raises:
        ReferDataError: the output exists and ``overwrite`` is false, or it is a file, or its
            parent folder does not exist.
    """
    output = Path(output).expanduser().absolute()
    if output.exists() and not output.is_dir():
        raise ReferDataError(f"output {output} exists and is not a folder; choose another --output.")
    if output.exists() and not overwrite:
        raise ReferDataError(f"output {output} already exists; pass --overwrite (overwrite=True) to replace it.")
    if not output.parent.is_dir():
        raise ReferDataError(f"parent folder of the output does not exist: {output.parent}")
    return output


@contextmanager
def atomic_output_dir(output: str | os.PathLike, overwrite: bool = False) -> Iterator[Staging]:
    """Context manager that publishes ``Staging.dataset_dir`` as ``output`` only on success.

    The scratch folder is a hidden sibling of ``output`` (same file system, so the final rename is
    atomic). On any exception the scratch folder is removed and an existing output is untouched;
    with ``overwrite`` the previous output is replaced only once the new one is complete.
    """
    output = check_output_dir(output, overwrite)
    scratch = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging = Staging(dataset_dir=scratch / "dataset", cache_dir=scratch / "cache")
    staging.cache_dir.mkdir(parents=True)
    try:
        yield staging
        if not staging.dataset_dir.is_dir():
            raise RuntimeError("atomic_output_dir: nothing was saved to Staging.dataset_dir")
        if output.exists():
            if not overwrite:  # appeared while we were building
                raise ReferDataError(f"output {output} appeared during the build; pass --overwrite to replace it.")
            retired = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
            output.rename(retired)
            staging.dataset_dir.rename(output)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.dataset_dir.rename(output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
