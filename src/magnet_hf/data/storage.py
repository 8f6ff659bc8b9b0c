"""Atomic writing of a dataset folder: built next to the output, renamed into place when complete."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..files import refuse_existing_output, replacing_directory
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
    refuse_existing_output(output, overwrite, error=ReferDataError, flag="--overwrite (overwrite=True)")
    if not output.parent.is_dir():
        raise ReferDataError(f"parent folder of the output does not exist: {output.parent}")
    return output


@contextmanager
def atomic_output_dir(output: str | os.PathLike, overwrite: bool = False) -> Iterator[Staging]:
    """Context manager that publishes ``Staging.dataset_dir`` as ``output`` only on success.

    The dataset folder is a hidden sibling of ``output`` (same file system, so the final rename is atomic; see
    :func:`magnet_hf.files.replacing_directory`). On any exception it is removed and an existing output is
    untouched; with ``overwrite`` the previous output is replaced only once the new one is complete.
    """
    output = check_output_dir(output, overwrite)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.cache-", dir=output.parent) as cache_dir:
        with replacing_directory(output) as dataset_dir:
            yield Staging(dataset_dir=dataset_dir, cache_dir=Path(cache_dir))
            if not any(dataset_dir.iterdir()):
                raise RuntimeError("atomic_output_dir: nothing was saved to Staging.dataset_dir")
            # The output may have appeared while the dataset was being built.
            refuse_existing_output(output, overwrite, error=ReferDataError)
