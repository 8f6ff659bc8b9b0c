"""Referring-segmentation data for MagNet through the ``datasets`` library.

- :func:`build_refer_dataset` / :func:`prepare_refer_dataset`: RefCOCO, RefCOCO+, RefCOCOg from the
  official refer-toolkit files.
- :func:`load_hub_layout`, :func:`from_jxu124`, :func:`from_lmms`: the same schema from Hub copies
  (``jxu124/refcoco*`` rows plus local COCO images, ``lmms-lab/RefCOCO*`` evaluation splits).
- :func:`explode_sentences`: one row per sentence, for evaluation.
- :func:`build_synthetic_dataset`: offline synthetic referring scenes for tests, smoke runs and demos.
- :class:`DataCollatorForReferringSegmentation`: processor inputs, resized masks and Mask Grounding
  inputs for training and evaluation.
- :func:`safe_load_pickle`: restricted loading of refs pickles.
"""

import importlib
from typing import TYPE_CHECKING, Any

# Submodule of each public name, imported on first access (PEP 562): the collator imports torch, and the data
# preparation command should not pay for it.
_LAZY_NAMES: dict[str, str] = {
    "DataCollatorForReferringSegmentation": "collate",
    "PhotometricAugment": "collate",
    "mask_tokens": "collate",
    "ReferDataError": "errors",
    "explode_sentences": "explode",
    "coco_file_name": "hub_layouts",
    "filter_to_partition": "hub_layouts",
    "from_jxu124": "hub_layouts",
    "from_lmms": "hub_layouts",
    "load_hub_layout": "hub_layouts",
    "refer_partition_index": "hub_layouts",
    "decode_segmentation": "masks",
    "build_refer_dataset": "refer",
    "prepare_refer_dataset": "refer",
    "RestrictedUnpickler": "safe_pickle",
    "safe_load_pickle": "safe_pickle",
    "PARTITIONS": "schema",
    "REFER_FEATURES": "schema",
    "partition_splits": "schema",
    "Scene": "synthetic",
    "SceneObject": "synthetic",
    "build_synthetic_dataset": "synthetic",
    "describe_objects": "synthetic",
    "expression_kind": "synthetic",
    "generate_scene": "synthetic",
}

if TYPE_CHECKING:
    from .collate import DataCollatorForReferringSegmentation, PhotometricAugment, mask_tokens
    from .errors import ReferDataError
    from .explode import explode_sentences
    from .hub_layouts import (
        coco_file_name,
        filter_to_partition,
        from_jxu124,
        from_lmms,
        load_hub_layout,
        refer_partition_index,
    )
    from .masks import decode_segmentation
    from .refer import build_refer_dataset, prepare_refer_dataset
    from .safe_pickle import RestrictedUnpickler, safe_load_pickle
    from .schema import PARTITIONS, REFER_FEATURES, partition_splits
    from .synthetic import Scene, SceneObject, build_synthetic_dataset, describe_objects, expression_kind, generate_scene


def __getattr__(name: str) -> Any:
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))


__all__ = [
    "DataCollatorForReferringSegmentation",
    "PhotometricAugment",
    "PARTITIONS",
    "REFER_FEATURES",
    "ReferDataError",
    "RestrictedUnpickler",
    "Scene",
    "SceneObject",
    "build_refer_dataset",
    "coco_file_name",
    "filter_to_partition",
    "from_jxu124",
    "from_lmms",
    "load_hub_layout",
    "mask_tokens",
    "refer_partition_index",
    "build_synthetic_dataset",
    "describe_objects",
    "generate_scene",
    "decode_segmentation",
    "explode_sentences",
    "partition_splits",
    "prepare_refer_dataset",
    "safe_load_pickle",
]
