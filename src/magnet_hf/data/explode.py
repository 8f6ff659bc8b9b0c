"""One row per sentence: the evaluation view of a one-row-per-ref dataset."""

from __future__ import annotations

from typing import Any

from datasets import Dataset, DatasetDict, Image, Value


def _explode_batch(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {name: [] for name in batch}
    out["sentence_index"] = []
    for row in range(len(batch["sentences"])):
        for index, sentence in enumerate(batch["sentences"][row]):
            for name, values in batch.items():
                out[name].append([sentence] if name == "sentences" else values[row])
            out["sentence_index"].append(index)
    return out


def explode_sentences(dataset: Dataset | DatasetDict, num_proc: int | None = None) -> Dataset | DatasetDict:
    """Repeat every ref once per sentence, as referring segmentation is evaluated.

    Args:
        dataset: rows of :data:`~magnet_hf.data.schema.REFER_FEATURES` (one per ref), or a
            ``DatasetDict`` of them (each split is exploded).
        num_proc: processes for :meth:`datasets.Dataset.map`.

    Returns:
        Same columns, one row per (ref, sentence): ``sentences`` holds that single sentence, and a new
        ``sentence_index`` column gives its position in the ref's original list. Row order follows
        the refs, then the sentences. Image bytes are copied as stored (never re-encoded).
    """
    if isinstance(dataset, DatasetDict):
        return DatasetDict({split: explode_sentences(ds, num_proc=num_proc) for split, ds in dataset.items()})
    image_columns = [name for name, feature in dataset.features.items() if isinstance(feature, Image)]
    # Undecoded images pass through map as their stored bytes: decoding and re-encoding would be slow
    # and, for JPEG, lossy.
    raw = dataset
    for name in image_columns:
        raw = raw.cast_column(name, Image(decode=False))
    features = raw.features.copy()
    features["sentence_index"] = Value("int32")
    exploded = raw.map(_explode_batch, batched=True, features=features, num_proc=num_proc, desc="explode sentences")
    for name in image_columns:
        exploded = exploded.cast_column(name, dataset.features[name])
    return exploded
