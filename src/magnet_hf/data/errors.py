"""Exception raised for malformed or inconsistent referring-segmentation data."""


class ReferDataError(ValueError):
    """Bad input data: the message names the offending file or field and says how to fix it.

    Raised by every loader in :mod:`magnet_hf.data` *before* anything is written, so a failed
    preparation never leaves a half-written dataset behind. The command line tool catches it and
    exits with status 2 and the message, without a traceback.
    """


def first_items(items: list, limit: int = 5) -> str:
    """``"a, b, c, ..."``: the first ``limit`` items for an error message, with an ellipsis if cut."""
    shown = ", ".join(map(str, items[:limit]))
    return shown + (", ..." if len(items) > limit else "")
