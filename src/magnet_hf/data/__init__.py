"""Referring-segmentation data for MagNet through the ``datasets`` library.

- :func:`build_refer_dataset` / :func:`prepare_refer_dataset`: RefCOCO, RefCOCO+, RefCOCOg from the
  official refer-toolkit files.
- :func:`explode_sentences`: one row per sentence, for evaluation.
- :func:`build_synthetic_dataset`: offline synthetic referring scenes for tests, smoke runs and demos.
- :func:`safe_load_pickle`: restricted loading of refs pickles.
"""

from .errors import ReferDataError
from .explode import explode_sentences
from .masks import decode_segmentation
from .refer import build_refer_dataset, prepare_refer_dataset
from .safe_pickle import RestrictedUnpickler, safe_load_pickle
from .schema import PARTITIONS, REFER_FEATURES, partition_splits
from .synthetic import Scene, SceneObject, build_synthetic_dataset, describe_objects, generate_scene

__all__ = [
    "PARTITIONS",
    "REFER_FEATURES",
    "ReferDataError",
    "RestrictedUnpickler",
    "Scene",
    "SceneObject",
    "build_refer_dataset",
    "build_synthetic_dataset",
    "describe_objects",
    "generate_scene",
    "decode_segmentation",
    "explode_sentences",
    "partition_splits",
    "prepare_refer_dataset",
    "safe_load_pickle",
]
