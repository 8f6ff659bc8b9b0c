"""Adapters from referring datasets published on the Hugging Face Hub to the common schema.

Two layouts are supported (column names checked against the Hub dataset cards):

``jxu124/refcoco``, ``jxu124/refcocoplus``, ``jxu124/refcocog`` (``layout="jxu124"``)
    One row per ref, **no pixels**: ``ref_id``, ``ann_id``, ``image_id``, ``category_id``,
    ``split``, ``sentences`` (list of ``{raw, sent, sent_id, tokens}``), ``captions`` (list of
    strings), ``bbox``, ``raw_anns`` (the COCO annotation as a JSON string, or a dict; a list of
    annotations is also accepted and searched for ``ann_id``), ``raw_image_info`` (the COCO image
    entry as JSON: ``file_name``, ``height``, ``width``) and ``image_path`` (assumed to end with the
    COCO file name, e.g. ``coco/train2014/COCO_train2014_000000581857.jpg``). Images are read from a
    local COCO folder. Splits are named ``train``/``validation``/``test``/``testB`` there; they are
    renamed ``val`` and, when ``testB`` exists, ``test`` -> ``testA``.

``lmms-lab/RefCOCO``, ``lmms-lab/RefCOCOplus``, ``lmms-lab/RefCOCOg`` (``layout="lmms"``, evaluation only)
    One row per ref with ``image``, ``question`` (a fixed prompt, ignored), ``answer`` (the list of
    referring sentences), ``segmentation`` (one flat polygon), ``bbox``, ``iscrowd``,
    ``file_name`` and ``question_id``. There are no ref/annotation/category ids: ``ref_id`` is
    the integer in ``question_id`` when it has one, else the row index; ``ann_id`` and
    ``category_id`` are -1; ``image_id`` is parsed from a COCO file name (else -1). Its ``val``
    split mixes the UNC and Google partitions (RefCOCO: 8,811 = 3,811 UNC + 5,000 Google refs), so
    converting it warns; :func:`refer_partition_index` and :func:`filter_to_partition` keep the
    refs of one official partition by matching the COCO file name and the box.

These layouts are what the dataset cards describe at the time of writing; a missing column raises
:class:`~magnet_hf.data.errors.ReferDataError` naming it.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, Image, load_dataset
from PIL import Image as PILImage

from .errors import ReferDataError, first_items
from .masks import decode_segmentation
from .refer import dataset_from_plans, load_instances, refer_paths
from .safe_pickle import safe_load_pickle
from .schema import REFER_FEATURES, partition_splits

JXU124_COLUMNS = ("ref_id", "ann_id", "image_id", "category_id", "sentences", "raw_anns", "image_path")
LMMS_COLUMNS = ("image", "answer", "segmentation", "bbox", "file_name")
_COCO_NAME = re.compile(r"(COCO_[a-z]+\d{4}_(\d{12}))(?:_\d+)?(\.jpg)$")


def coco_file_name(name: str) -> str:
    """Normalise a COCO image or refer file name to the image file name.

    ``"coco/train2014/COCO_train2014_000000581857_16.jpg"`` -> ``"COCO_train2014_000000581857.jpg"``;
    names that do not look like COCO file names are returned as their base name.
    """
    base = os.path.basename(name)
    match = _COCO_NAME.search(base)
    return match.group(1) + match.group(3) if match else base


def _require_columns(dataset: Dataset, columns: tuple[str, ...], layout: str, split: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ReferDataError(
            f"split {split!r} does not look like the {layout} layout: missing column(s) {missing} "
            f"(has {dataset.column_names})."
        )


def _as_dict(value: Any, field: str, where: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as error:
            raise ReferDataError(f"{where}: field {field!r} is not valid JSON ({error}).") from None
    return value


def _jxu124_plan(row: dict[str, Any], coco_images: Path, where: str) -> dict[str, Any] | str:
    """A plan for :func:`~magnet_hf.data.refer.make_row`, or the missing file name."""
    ann = _as_dict(row["raw_anns"], "raw_anns", where)
    if isinstance(ann, list):
        same = [a for a in ann if isinstance(a, dict) and a.get("id") == row["ann_id"]]
        ann = same[0] if same else (ann[0] if len(ann) == 1 else None)
    if not isinstance(ann, dict) or not ann.get("segmentation"):
        raise ReferDataError(f"{where}: 'raw_anns' has no segmentation for ann_id {row['ann_id']}.")
    info = _as_dict(row.get("raw_image_info") or "{}", "raw_image_info", where) or {}
    names = [row["image_path"], os.path.basename(row["image_path"]), coco_file_name(row["image_path"])]
    if info.get("file_name"):
        names.append(info["file_name"])
    path = next((coco_images / n for n in names if (coco_images / n).is_file()), None)
    if path is None:
        return coco_file_name(row["image_path"])
    if "height" in info and "width" in info:
        height, width = int(info["height"]), int(info["width"])
    else:
        with PILImage.open(path) as probe:
            width, height = probe.size
    sentences = [s["sent"] if isinstance(s, dict) else str(s) for s in row["sentences"] or []]
    if not sentences and row.get("captions"):
        sentences = list(row["captions"])
    if not sentences:
        raise ReferDataError(f"{where}: ref_id {row['ref_id']} has no sentences.")
    return {
        "ref_id": int(row["ref_id"]),
        "ann_id": int(row["ann_id"]),
        "image_id": int(row["image_id"]),
        "category_id": int(row["category_id"]),
        "bbox": [float(v) for v in (ann.get("bbox") or row.get("bbox"))],
        "file_name": path.name,
        "sentences": sentences,
        "image_path": str(path),
        "height": height,
        "width": width,
        "segmentation": ann["segmentation"],
        "where": f"{where} ann_id {row['ann_id']}",
    }


def _rename_splits(names: list[str]) -> dict[str, str]:
    renamed = {name: name for name in names}
    if "validation" in renamed and "val" not in renamed:
        renamed["validation"] = "val"
    if "testB" in renamed and "test" in renamed and "testA" not in renamed:
        renamed["test"] = "testA"
    return renamed


def from_jxu124(
    dataset: Dataset | DatasetDict,
    coco_images: str | os.PathLike,
    *,
    skip_missing: bool = False,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
) -> DatasetDict:
    """Convert rows in the ``jxu124/refcoco*`` layout to :data:`REFER_FEATURES`.

    Args:
        dataset: the loaded rows (a ``DatasetDict``, or one ``Dataset`` taken as split ``train``).
        coco_images: folder with the COCO train2014 images the rows point to.
        skip_missing: leave out rows whose image is missing instead of raising.
        cache_dir: where ``datasets`` writes the converted Arrow files.
        num_proc: processes used to generate each split.

    Returns:
        ``DatasetDict`` with splits renamed to the refer names (``val``, ``testA``, ...).

    Raises:
        ReferDataError: missing columns, bad JSON, missing segmentation or image files.
    """
    dataset = DatasetDict({"train": dataset}) if isinstance(dataset, Dataset) else dataset
    coco_images = Path(coco_images)
    if not coco_images.is_dir():
        raise ReferDataError(f"COCO image folder not found: {coco_images}")
    plans: dict[str, list[dict[str, Any]]] = {}
    missing: list[str] = []
    for split, rows in dataset.items():
        _require_columns(rows, JXU124_COLUMNS, "jxu124/refcoco", split)
        plans[split] = []
        for index, row in enumerate(rows):
            plan = _jxu124_plan(row, coco_images, f"split {split!r} row {index}")
            if isinstance(plan, str):
                missing.append(plan)
            else:
                plans[split].append(plan)
    if missing and not skip_missing:
        unique = sorted(set(missing))
        raise ReferDataError(
            f"{len(unique)} image files are missing from {coco_images} (first: {first_items(unique)}); "
            "point coco_images at the COCO train2014 folder or pass skip_missing=True."
        )
    if missing:
        warnings.warn(f"skipped {len(missing)} rows whose image is missing from {coco_images}", stacklevel=2)
    cache = None if cache_dir is None else os.fspath(cache_dir)
    names = _rename_splits(list(plans))
    return DatasetDict({names[split]: dataset_from_plans(plans[split], names[split], cache, num_proc) for split in plans})


def _lmms_batch(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {name: [] for name in REFER_FEATURES}
    for k, index in enumerate(indices):
        image = batch["image"][k]
        data = image.get("bytes")
        if data is None:
            with open(image["path"], "rb") as handle:
                data = handle.read()
        with PILImage.open(io.BytesIO(data)) as probe:
            width, height = probe.size
        where = f"row {index} ({batch['file_name'][k]})"
        mask = decode_segmentation(batch["segmentation"][k], height, width, where=where)
        buffer = io.BytesIO()
        PILImage.fromarray(mask, mode="L").save(buffer, format="PNG")
        answer = batch["answer"][k]
        sentences = [answer] if isinstance(answer, str) else list(answer or [])
        if not sentences:
            raise ReferDataError(f"{where}: 'answer' holds no referring sentence.")
        question_id = str(batch["question_id"][k]) if "question_id" in batch else ""
        digits = re.findall(r"\d+", question_id)
        match = _COCO_NAME.search(batch["file_name"][k] or "")
        bbox = [float(v) for v in batch["bbox"][k]]
        if len(bbox) != 4:
            raise ReferDataError(f"{where}: 'bbox' must have 4 numbers, got {len(bbox)}.")
        out["image"].append({"bytes": data, "path": image.get("path")})
        out["mask"].append({"bytes": buffer.getvalue(), "path": None})
        out["sentences"].append(sentences)
        out["ref_id"].append(int(digits[-1]) if digits else index)
        out["ann_id"].append(-1)
        out["image_id"].append(int(match.group(2)) if match else -1)
        out["category_id"].append(-1)
        out["bbox"].append(bbox)
        out["file_name"].append(coco_file_name(batch["file_name"][k] or ""))
    return out


def from_lmms(
    dataset: Dataset | DatasetDict,
    *,
    partition_index: Mapping[str, list[list[float]]] | None = None,
    num_proc: int | None = None,
) -> DatasetDict:
    """Convert rows in the ``lmms-lab/RefCOCO*`` layout (evaluation splits) to :data:`REFER_FEATURES`.

    Args:
        dataset: the loaded rows (a ``DatasetDict``, or one ``Dataset`` taken as split ``val``).
        partition_index: from :func:`refer_partition_index`; when given, every split keeps only
            the refs of that partition (needed for ``val``, which mixes UNC and Google refs).
        num_proc: processes for :meth:`datasets.Dataset.map`.

    Returns:
        ``DatasetDict`` with the same split names. Image bytes are kept as stored.

    Warns:
        UserWarning: a ``val`` split converted without ``partition_index``.
    """
    dataset = DatasetDict({"val": dataset}) if isinstance(dataset, Dataset) else dataset
    converted = {}
    for split, rows in dataset.items():
        _require_columns(rows, LMMS_COLUMNS, "lmms-lab/RefCOCO", split)
        if split == "val" and partition_index is None:
            warnings.warn(
                "the val split of lmms-lab/RefCOCO* mixes the UNC and Google partitions (RefCOCO: 8,811 refs "
                "= 3,811 UNC + 5,000 Google); scores on it are not comparable to papers. Pass "
                "partition_index=refer_partition_index(...) to keep one partition.",
                UserWarning,
                stacklevel=2,
            )
        raw = rows.cast_column("image", Image(decode=False))
        features = REFER_FEATURES.copy()
        features["image"], features["mask"] = Image(decode=False), Image(decode=False)
        out = raw.map(
            _lmms_batch,
            batched=True,
            with_indices=True,
            remove_columns=raw.column_names,
            features=features,
            num_proc=num_proc,
            desc=f"convert {split}",
        )
        out = out.cast(REFER_FEATURES)
        if partition_index is not None:
            out = filter_to_partition(out, partition_index)
        converted[split] = out
    return DatasetDict(converted)


def refer_partition_index(
    refer_root: str | os.PathLike, dataset: str, split_by: str, split: str
) -> dict[str, list[list[float]]]:
    """Boxes of the refs of one official split, by COCO image file name.

    Args:
        refer_root, dataset, split_by: as for :func:`~magnet_hf.data.refer.build_refer_dataset`.
        split: one split of that partition, e.g. ``"val"``.

    Returns:
        ``{coco file name: [[x, y, w, h], ...]}`` for :func:`filter_to_partition`.
    """
    splits = partition_splits(dataset, split_by)
    if split not in splits:
        raise ReferDataError(f"unknown split {split!r} for {dataset} ({split_by}); expected one of {list(splits)}.")
    refs_path, instances_path = refer_paths(refer_root, dataset, split_by)
    refs = safe_load_pickle(refs_path)
    instances = load_instances(instances_path)
    images = {image["id"]: image["file_name"] for image in instances["images"]}
    boxes = {ann["id"]: ann["bbox"] for ann in instances["annotations"]}
    index: dict[str, list[list[float]]] = {}
    for ref in refs:
        if ref.get("split") == split:
            if ref.get("ann_id") not in boxes or ref.get("image_id") not in images:
                raise ReferDataError(f"{refs_path}: ref_id {ref.get('ref_id')} does not match {instances_path}.")
            index.setdefault(images[ref["image_id"]], []).append([float(v) for v in boxes[ref["ann_id"]]])
    return index


def filter_to_partition(
    dataset: Dataset, partition_index: Mapping[str, list[list[float]]], atol: float = 0.05
) -> Dataset:
    """Keep the rows whose ``file_name`` and ``bbox`` (within ``atol`` pixels) are in the index."""

    def keep(file_names: list[str], bboxes: list[list[float]]) -> list[bool]:
        flags = []
        for name, bbox in zip(file_names, bboxes):
            candidates = partition_index.get(coco_file_name(name), [])
            flags.append(any(np.allclose(bbox, box, rtol=0, atol=atol) for box in candidates))
        return flags

    # Only the two key columns are read, so images are never decoded while filtering.
    return dataset.filter(keep, batched=True, input_columns=["file_name", "bbox"], desc="filter to partition")


def load_hub_layout(
    name_or_path: str,
    layout: str,
    *,
    coco_images: str | os.PathLike | None = None,
    partition_index: Mapping[str, list[list[float]]] | None = None,
    skip_missing: bool = False,
    cache_dir: str | os.PathLike | None = None,
    **load_kwargs: Any,
) -> DatasetDict:
    """``load_dataset(name_or_path)`` and convert it with :func:`from_jxu124` or :func:`from_lmms`.

    Args:
        name_or_path: Hub dataset name (e.g. ``"jxu124/refcoco"``) or a local folder / data files.
        layout: ``"jxu124"`` or ``"lmms"``.
        coco_images: COCO image folder (required for ``"jxu124"``).
        partition_index: see :func:`from_lmms`.
        skip_missing: see :func:`from_jxu124`.
        cache_dir: passed to ``load_dataset`` and used for the converted files.
        **load_kwargs: forwarded to :func:`datasets.load_dataset` (``split``, ``revision``, ...).
    """
    if layout not in ("jxu124", "lmms"):
        raise ReferDataError(f"unknown layout {layout!r}; expected 'jxu124' or 'lmms'.")
    if layout == "jxu124" and coco_images is None:
        raise ReferDataError("the jxu124 layout has no pixels: pass coco_images=<COCO train2014 folder>.")
    if cache_dir is not None:
        load_kwargs["cache_dir"] = os.fspath(cache_dir)
    loaded = load_dataset(name_or_path, **load_kwargs)
    if layout == "jxu124":
        converted_cache = None if cache_dir is None else Path(cache_dir) / f"magnet_hf-{uuid.uuid4().hex[:8]}"
        return from_jxu124(loaded, coco_images, skip_missing=skip_missing, cache_dir=converted_cache)
    return from_lmms(loaded, partition_index=partition_index)
