# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Loading a model folder a user points at, so that every way it can be broken ends in one clear message.

`from_pretrained` on a user-supplied folder fails in many library-specific ways (safetensors' `SafetensorError` for a
truncated file, `UnpicklingError` from `torch.load(weights_only=True)` for a planted pickle, huggingface_hub's strict
dataclass errors, `IndexError`/`RuntimeError` from impossible shapes in a config...). None of them is a bug of the
caller, so all of them become a `ModelFolderError` naming the folder; the commands print it as `error: ...`.
Weights are never unpickled unrestricted: transformers reads safetensors, or a `.bin` through `weights_only=True`.
"""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Any


class ModelFolderError(ValueError):
    """A model folder (or Hub id) that does not load; the message names it and the reason."""


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no details"
    return f"{type(error).__name__}: {text[:300]}"


def load_pretrained(model_class: Any, source: str | os.PathLike, **kwargs) -> tuple[Any, dict[str, Any]]:
    """`model_class.from_pretrained(source, output_loading_info=True, **kwargs)` with every failure turned into a
    `ModelFolderError`; returns the model and transformers' loading info (missing / unexpected / mismatched keys)."""
    try:
        with warnings.catch_warnings():
            # torch's restricted unpickler warns about the protocol of a planted pickle before refusing it.
            warnings.simplefilter("ignore", UserWarning)
            return model_class.from_pretrained(str(source), output_loading_info=True, **kwargs)
    except MemoryError:
        raise
    except pickle.UnpicklingError:
        raise ModelFolderError(
            f"{str(source)!r} holds a pickle weights file with more than plain tensors in it; refused (it could run "
            "code). Re-save the model with safetensors from a source you trust."
        ) from None
    except Exception as error:  # see the module docstring: every failure here is a property of the folder
        raise ModelFolderError(f"cannot load a MagNet model from {str(source)!r} ({_reason(error)}).") from None


def load_processor(source: str | os.PathLike) -> Any:
    """`MagNetProcessor.from_pretrained(source)` with every failure turned into a `ModelFolderError`."""
    from .processing_magnet import MagNetProcessor

    try:
        processor = MagNetProcessor.from_pretrained(str(source))
        processor.image_processor.check_settings()
        return processor
    except MemoryError:
        raise
    except Exception as error:  # as for the weights: a broken processor file is bad input, whatever raised
        raise ModelFolderError(
            f"{str(source)!r} has no usable MagNet processor ({_reason(error)}). Save one next to the model "
            "(processor.save_pretrained), or convert with --tokenizer."
        ) from None


def check_loading_info(source: str | os.PathLike, info: dict[str, Any], *, allow_unexpected: bool = True) -> None:
    """Refuses weights that do not fit the config: missing or mis-shaped keys (and unexpected ones unless allowed,
    e.g. the training heads of a full checkpoint loaded into `MagNetModel`)."""
    kinds = ["missing_keys", "mismatched_keys"] + ([] if allow_unexpected else ["unexpected_keys"])
    problems = {kind: sorted(map(str, info.get(kind) or [])) for kind in kinds if info.get(kind)}
    if problems:
        details = "; ".join(f"{kind.replace('_', ' ')}: {len(keys)} (first: {keys[:3]})" for kind, keys in problems.items())
        raise ModelFolderError(f"the weights in {str(source)!r} do not fit its config ({details}).")


__all__ = ["ModelFolderError", "check_loading_info", "load_pretrained", "load_processor"]
