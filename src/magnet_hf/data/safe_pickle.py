"""Restricted loading of the refer toolkit's ``refs(<split_by>).p`` pickles.

A pickle is a program: unpickling may import and call any function (``os.system`` via
``__reduce__`` is the classic example). The official refs pickles only hold builtin containers
and scalars (lists, dicts, strings, ints, floats), which the pickle protocol encodes with
dedicated opcodes that never go through :meth:`pickle.Unpickler.find_class`. Refusing every
``find_class`` call therefore loads the real files while rejecting anything that would import a
global, before it is called.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

from .errors import ReferDataError


class ForbiddenPickleContent(pickle.UnpicklingError):
    """A pickle asked for a global or a persistent id; it was refused before anything ran."""


class RestrictedUnpickler(pickle.Unpickler):
    """:class:`pickle.Unpickler` that refuses to resolve any global (class or function).

    Only builtin containers and scalars can be loaded; any other object raises
    :class:`ForbiddenPickleContent` (a :class:`pickle.UnpicklingError`) before it is constructed or called.
    """

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - documented on the class
        raise ForbiddenPickleContent(
            f"refusing to load global '{module}.{name}': only lists, dicts, strings and numbers are allowed"
        )

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        raise ForbiddenPickleContent("refusing to load a persistent id: not allowed in a refs pickle")


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle that may only contain builtin containers and scalars.

    Args:
        path: pickle file, typically ``<refer_root>/<dataset>/refs(<split_by>).p``.

    Returns:
        The unpickled object (for refs files: a list of dicts).

    Raises:
        ReferDataError: the file is missing, is not a pickle, or references a global (for
            example a malicious ``__reduce__``). Nothing from the file is executed.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ReferDataError(f"refs pickle not found: {path}") from None
    except OSError as error:
        raise ReferDataError(f"cannot read refs pickle {path}: {error}") from None
    try:
        # latin1 lets Python 2 pickles (the official refs files were written by Python 2) load
        # their byte strings as str, as the refer toolkit does.
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except ForbiddenPickleContent as error:
        raise ReferDataError(
            f"{path} was refused by the restricted unpickler ({error}). A refs pickle must only contain "
            "lists, dicts, strings and numbers; re-download it from the refer toolkit."
        ) from None
    except Exception as error:  # truncated or non-pickle input raises many different types
        raise ReferDataError(
            f"{path} is not a valid refs pickle ({type(error).__name__}: {error}); re-download it from the refer toolkit."
        ) from None
