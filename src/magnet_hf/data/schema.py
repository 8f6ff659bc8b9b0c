"""The common row schema of every referring dataset in :mod:`magnet_hf.data`, and the partitions."""

from __future__ import annotations

from datasets import Features, Image, List, Value

from .errors import ReferDataError

#: One row per referred object ("ref"). ``mask`` is an 8-bit "L" image holding 0/1 values.
REFER_FEATURES = Features(
    {
        "image": Image(),
        "mask": Image(),
        "sentences": List(Value("string")),
        "ref_id": Value("int64"),
        "ann_id": Value("int64"),
        "image_id": Value("int64"),
        "category_id": Value("int64"),
        "bbox": List(Value("float64"), length=4),
        "file_name": Value("string"),
    }
)

#: Official partitions (``dataset -> split_by -> splits``), as in the refer toolkit.
PARTITIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "refcoco": {"unc": ("train", "val", "testA", "testB")},
    "refcoco+": {"unc": ("train", "val", "testA", "testB")},
    "refcocog": {"umd": ("train", "val", "test"), "google": ("train", "val")},
}


def partition_splits(dataset: str, split_by: str) -> tuple[str, ...]:
    """Return the split names of an official partition.

    Args:
        dataset: ``"refcoco"``, ``"refcoco+"`` or ``"refcocog"``.
        split_by: ``"unc"`` (RefCOCO, RefCOCO+), ``"umd"`` or ``"google"`` (RefCOCOg).

    Raises:
        ReferDataError: unknown dataset or partition, with the supported combinations.
    """
    if dataset not in PARTITIONS:
        raise ReferDataError(f"unknown dataset {dataset!r}; expected one of {sorted(PARTITIONS)}.")
    if split_by not in PARTITIONS[dataset]:
        raise ReferDataError(
            f"unknown partition {split_by!r} for {dataset}; supported: {sorted(PARTITIONS[dataset])}."
        )
    return PARTITIONS[dataset][split_by]
