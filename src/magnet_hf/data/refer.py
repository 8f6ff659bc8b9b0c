"""Build RefCOCO, RefCOCO+ and RefCOCOg from the official refer-toolkit files.

Expected inputs (the layout of https://github.com/lichengunc/refer)::

    <refer_root>/<dataset>/refs(<split_by>).p   # list of ref dicts (restricted unpickling)
    <refer_root>/<dataset>/instances.json       # COCO-style images / annotations / categories
    <coco_images>/<images[i]["file_name"]>      # e.g. COCO_train2014_000000581857.jpg

Every input is validated before any row is generated, so bad data fails fast with a
:class:`~magnet_hf.data.errors.ReferDataError` naming the file and field.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, NamedSplit, load_from_disk
from datasets.exceptions import DatasetGenerationError
from PIL import Image as PILImage

from .errors import ReferDataError, first_items
from .masks import decode_segmentation
from .safe_pickle import safe_load_pickle
from .schema import REFER_FEATURES, partition_splits
from .storage import atomic_output_dir

logger = logging.getLogger(__name__)

_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences", "category_id")
_REF_INT_KEYS = ("ref_id", "ann_id", "image_id", "category_id")
#: Largest image (and so mask) accepted from instances.json, in pixels: the bound on what decoding may allocate.
MAX_IMAGE_PIXELS = 20_000 * 20_000


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def has_words(text: str) -> bool:
    """Whether `text` holds anything but whitespace, control and zero-width (format) characters."""
    import unicodedata

    return any(not character.isspace() and unicodedata.category(character) not in ("Cc", "Cf") for character in text)


def _safe_file_name(name: Any) -> bool:
    # A file_name is joined to --coco-images: an absolute path or '..' would embed a file from elsewhere.
    if not isinstance(name, str) or not name or "\x00" in name:
        return False
    path = Path(name)
    return not path.is_absolute() and ".." not in path.parts and not name.startswith(("/", "\\", "~"))


def refer_paths(refer_root: str | os.PathLike, dataset: str, split_by: str) -> tuple[Path, Path]:
    """Return ``(refs_path, instances_path)`` for a dataset and partition, validating the pair."""
    partition_splits(dataset, split_by)
    folder = Path(refer_root) / dataset
    return folder / f"refs({split_by}).p", folder / "instances.json"


def load_instances(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``instances.json`` and check it has ``images`` and ``annotations`` lists."""
    try:
        with open(path, encoding="utf-8") as handle:
            instances = json.load(handle)
    except FileNotFoundError:
        raise ReferDataError(f"instances file not found: {path}") from None
    except (OSError, ValueError) as error:
        raise ReferDataError(f"{path} is not valid JSON ({error}).") from None
    if not isinstance(instances, dict) or not all(isinstance(instances.get(k), list) for k in ("images", "annotations")):
        raise ReferDataError(f"{path} must be a JSON object with 'images' and 'annotations' lists.")
    return instances


def _validate_refs(refs: Any, refs_path: Path) -> list[dict[str, Any]]:
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise ReferDataError(f"{refs_path} must hold a list of ref dicts, got {type(refs).__name__}.")
    for index, ref in enumerate(refs):
        missing = [key for key in _REF_KEYS if key not in ref]
        if missing:
            raise ReferDataError(f"{refs_path}: ref #{index} lacks field(s) {missing}.")
        not_int = [key for key in _REF_INT_KEYS if not _is_int(ref[key])]
        if not_int:
            raise ReferDataError(
                f"{refs_path}: ref #{index} has non-integer {', '.join(f'{key}={ref[key]!r}' for key in not_int)}."
            )
        if not isinstance(ref["split"], str):
            raise ReferDataError(f"{refs_path}: ref_id {ref['ref_id']} has a non-string split {ref['split']!r}.")
        sentences = ref["sentences"]
        if not isinstance(sentences, list) or not sentences or not all(
            isinstance(s, dict) and isinstance(s.get("sent"), str) for s in sentences
        ):
            raise ReferDataError(
                f"{refs_path}: ref_id {ref['ref_id']} needs a non-empty 'sentences' list of dicts with a 'sent' string."
            )
        empty = [s["sent"] for s in sentences if not has_words(s["sent"])]
        if empty:
            # An empty expression tokenises to [CLS][SEP] only and breaks the Mask Grounding masking in training.
            raise ReferDataError(f"{refs_path}: ref_id {ref['ref_id']} has an empty sentence {empty[0]!r}.")
    return refs


def _validate_instances(refs: list[dict[str, Any]], images: dict, annotations: dict, instances_path: Path) -> None:
    """Checks the images and annotations the refs use: types, a bounded size, a safe file name, a bbox."""
    for image_id in sorted({ref["image_id"] for ref in refs}):
        image = images[image_id]
        where = f"{instances_path}: image {image_id}"
        if not _safe_file_name(image.get("file_name")):
            raise ReferDataError(
                f"{where} has file_name {image.get('file_name')!r}; it must be a relative path inside --coco-images."
            )
        height, width = image.get("height"), image.get("width")
        if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
            raise ReferDataError(f"{where} needs positive integer 'height' and 'width', got {height!r} x {width!r}.")
        if height * width > MAX_IMAGE_PIXELS:
            raise ReferDataError(f"{where} claims {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS} accepted.")
    for ann_id in sorted({ref["ann_id"] for ref in refs}):
        bbox = annotations[ann_id].get("bbox")
        if not (
            isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
        ):
            raise ReferDataError(f"{instances_path}: annotation {ann_id} needs a 'bbox' of four finite numbers, got {bbox!r}.")


def plan_refer_rows(
    refs: list[dict[str, Any]],
    instances: dict[str, Any],
    splits: tuple[str, ...],
    coco_images: str | os.PathLike,
    *,
    refs_path: str | os.PathLike = "refs",
    instances_path: str | os.PathLike = "instances.json",
    skip_missing: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Join refs with their annotation and image and check everything a row needs exists.

    Args:
        refs: the unpickled refs list.
        instances: the parsed ``instances.json``.
        splits: the partition's split names; any other ``split`` value is an error.
        coco_images: folder holding the COCO image files.
        refs_path, instances_path: used in error messages only.
        skip_missing: drop refs whose image file is missing (logged) instead of raising.

    Returns:
        ``{split: [plan, ...]}`` where a plan holds the row's metadata, the image path, its size and
        the raw segmentation, in refs order. Every split of the partition is present (possibly empty).

    Raises:
        ReferDataError: unknown split names, refs that do not match the instances file, annotations
            without segmentation, or missing image files (unless ``skip_missing``).
    """
    refs_path, instances_path = Path(refs_path), Path(instances_path)
    refs = _validate_refs(refs, refs_path)
    unknown = sorted({str(ref["split"]) for ref in refs} - set(splits))
    if unknown:
        raise ReferDataError(
            f"{refs_path}: unknown split name(s) {unknown}; this partition has {list(splits)}. "
            "Check --dataset/--split-by match the refs file."
        )
    for key in ("images", "annotations"):
        broken = [index for index, entry in enumerate(instances[key]) if not isinstance(entry, dict) or not _is_int(entry.get("id"))]
        if broken:
            raise ReferDataError(f"{instances_path}: {key} entry #{broken[0]} is not an object with an integer 'id'.")
    images = {image["id"]: image for image in instances["images"]}
    annotations = {ann["id"]: ann for ann in instances["annotations"]}

    bad_ann = [ref["ref_id"] for ref in refs if ref["ann_id"] not in annotations]
    if bad_ann:
        raise ReferDataError(
            f"{len(bad_ann)} ref(s) in {refs_path} point to ann_id(s) missing from {instances_path} "
            f"(ref_id {first_items(bad_ann)}); the refs and instances files do not belong together."
        )
    bad_img = [ref["ref_id"] for ref in refs if ref["image_id"] not in images]
    if bad_img:
        raise ReferDataError(
            f"{len(bad_img)} ref(s) in {refs_path} point to image_id(s) missing from {instances_path} "
            f"(ref_id {first_items(bad_img)}); the refs and instances files do not belong together."
        )
    mismatched = [ref["ref_id"] for ref in refs if annotations[ref["ann_id"]].get("image_id") != ref["image_id"]]
    if mismatched:
        raise ReferDataError(
            f"{len(mismatched)} ref(s) in {refs_path} have an image_id different from their annotation's in "
            f"{instances_path} (ref_id {first_items(mismatched)})."
        )
    no_seg = sorted({ref["ann_id"] for ref in refs if not annotations[ref["ann_id"]].get("segmentation")})
    if no_seg:
        raise ReferDataError(
            f"{instances_path}: annotation(s) {first_items(no_seg)} referred to in {refs_path} have no 'segmentation'."
        )
    _validate_instances(refs, images, annotations, instances_path)

    coco_images = Path(coco_images)
    if not coco_images.is_dir():
        raise ReferDataError(f"COCO image folder not found: {coco_images}")
    needed = sorted({images[ref["image_id"]]["file_name"] for ref in refs})
    missing = [name for name in needed if not (coco_images / name).is_file()]
    if missing and not skip_missing:
        raise ReferDataError(
            f"{len(missing)} of {len(needed)} image files are missing from {coco_images} (first: {first_items(missing)}). "
            "Point --coco-images at the COCO train2014 folder, or pass --skip-missing to build without them."
        )
    if missing:
        logger.warning(
            "Skipping %d missing image file(s) from %s (first: %s).", len(missing), coco_images, first_items(missing)
        )
    missing_set = set(missing)

    plans: dict[str, list[dict[str, Any]]] = {split: [] for split in splits}
    for ref in refs:
        image, ann = images[ref["image_id"]], annotations[ref["ann_id"]]
        if image["file_name"] in missing_set:
            continue
        plans[ref["split"]].append(
            {
                "ref_id": int(ref["ref_id"]),
                "ann_id": int(ref["ann_id"]),
                "image_id": int(ref["image_id"]),
                "category_id": int(ref["category_id"]),
                "bbox": [float(v) for v in ann["bbox"]],
                "file_name": image["file_name"],
                "sentences": [s["sent"] for s in ref["sentences"]],
                "image_path": str(coco_images / image["file_name"]),
                "height": int(image["height"]),
                "width": int(image["width"]),
                "segmentation": ann["segmentation"],
                "where": f"{instances_path} annotation {ref['ann_id']}",
            }
        )
    return plans


def make_row(plan: dict[str, Any]) -> dict[str, Any]:
    """Turn one plan from :func:`plan_refer_rows` into a row of :data:`REFER_FEATURES`.

    The image bytes are stored unchanged (no re-encoding); the mask is decoded with pycocotools.

    Raises:
        ReferDataError: unreadable image, image size different from ``instances.json``, or an
            undecodable segmentation.
    """
    path = plan["image_path"]
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        with PILImage.open(io.BytesIO(data)) as probe:
            size = probe.size
    except Exception as error:
        raise ReferDataError(f"cannot read image {path} ({type(error).__name__}: {error}).") from None
    if size != (plan["width"], plan["height"]):
        raise ReferDataError(
            f"image {path} is {size[0]}x{size[1]} but instances.json says {plan['width']}x{plan['height']}."
        )
    mask = decode_segmentation(plan["segmentation"], plan["height"], plan["width"], where=plan["where"])
    return {
        "image": {"bytes": data, "path": plan["file_name"]},
        "mask": PILImage.fromarray(mask, mode="L"),
        "sentences": plan["sentences"],
        "ref_id": plan["ref_id"],
        "ann_id": plan["ann_id"],
        "image_id": plan["image_id"],
        "category_id": plan["category_id"],
        "bbox": plan["bbox"],
        "file_name": plan["file_name"],
    }


def _generate_rows(plans: list[dict[str, Any]]):
    for plan in plans:
        yield make_row(plan)


def dataset_from_plans(
    plans: list[dict[str, Any]], split: str, cache_dir: str | None = None, num_proc: int | None = None
) -> Dataset:
    """Generate a :data:`REFER_FEATURES` split from row plans with :meth:`datasets.Dataset.from_generator`.

    Args:
        plans: as returned per split by :func:`plan_refer_rows` (see :func:`make_row`).
        split: split name recorded in the dataset info.
        cache_dir: where ``datasets`` writes the Arrow files (default: its cache).
        num_proc: processes; the plans are sharded between them.

    Raises:
        ReferDataError: from :func:`make_row` (unreadable image, size mismatch, bad segmentation).
    """
    if not plans:
        return Dataset.from_dict({name: [] for name in REFER_FEATURES}, features=REFER_FEATURES, split=NamedSplit(split))
    try:
        return Dataset.from_generator(
            _generate_rows,
            features=REFER_FEATURES,
            gen_kwargs={"plans": plans},
            cache_dir=cache_dir,
            num_proc=num_proc,
            split=NamedSplit(split),
            # A fresh fingerprint: never reuse a stale cache built from older files at the same paths,
            # and skip hashing the (large) plan list.
            fingerprint=uuid.uuid4().hex,
        )
    except DatasetGenerationError as error:
        cause = error.__cause__
        while cause is not None and not isinstance(cause, ReferDataError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def build_refer_dataset(
    refer_root: str | os.PathLike,
    coco_images: str | os.PathLike,
    dataset: str = "refcoco",
    split_by: str = "unc",
    *,
    skip_missing: bool = False,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
) -> DatasetDict:
    """Build a :class:`~datasets.DatasetDict` (one row per ref) from the official files.

    Args:
        refer_root: folder holding ``<dataset>/refs(<split_by>).p`` and ``<dataset>/instances.json``.
        coco_images: folder with the COCO train2014 images.
        dataset: ``"refcoco"``, ``"refcoco+"`` or ``"refcocog"``.
        split_by: ``"unc"`` for RefCOCO/RefCOCO+, ``"umd"`` or ``"google"`` for RefCOCOg.
        skip_missing: leave out refs whose image file is missing instead of raising.
        cache_dir: where ``datasets`` writes its Arrow files (default: the ``datasets`` cache).
        num_proc: processes used to generate each split.

    Returns:
        ``DatasetDict`` with one split per partition split and columns of
        :data:`~magnet_hf.data.schema.REFER_FEATURES`: ``image``, ``mask`` (0/1 "L"), ``sentences``
        (the refer ``sent`` strings), ``ref_id``, ``ann_id``, ``image_id``, ``category_id``,
        ``bbox`` (x, y, w, h), ``file_name`` (the COCO image file name).

    Raises:
        ReferDataError: any input problem, before rows are generated where it can be detected then.
    """
    splits = partition_splits(dataset, split_by)
    refs_path, instances_path = refer_paths(refer_root, dataset, split_by)
    refs = safe_load_pickle(refs_path)
    instances = load_instances(instances_path)
    plans = plan_refer_rows(
        refs,
        instances,
        splits,
        coco_images,
        refs_path=refs_path,
        instances_path=instances_path,
        skip_missing=skip_missing,
    )
    cache = None if cache_dir is None else os.fspath(cache_dir)
    return DatasetDict({split: dataset_from_plans(plans[split], split, cache, num_proc) for split in splits})


def prepare_refer_dataset(
    refer_root: str | os.PathLike,
    coco_images: str | os.PathLike,
    output: str | os.PathLike,
    dataset: str = "refcoco",
    split_by: str = "unc",
    *,
    skip_missing: bool = False,
    overwrite: bool = False,
    num_proc: int | None = None,
) -> DatasetDict:
    """Build with :func:`build_refer_dataset` and ``save_to_disk`` it to ``output`` atomically.

    The dataset is written to a hidden folder next to ``output`` and renamed into place only when
    complete; on error nothing is left behind and an existing output is untouched.

    Returns:
        The saved dataset, loaded back from ``output`` with :func:`datasets.load_from_disk`.

    Raises:
        ReferDataError: bad inputs, or ``output`` exists and ``overwrite`` is false.
    """
    with atomic_output_dir(output, overwrite=overwrite) as staging:
        built = build_refer_dataset(
            refer_root,
            coco_images,
            dataset,
            split_by,
            skip_missing=skip_missing,
            cache_dir=staging.cache_dir,
            num_proc=num_proc,
        )
        empty = [split for split in built if built[split].num_rows == 0]
        if empty:
            logger.warning("Split(s) %s have no refs (all their images missing?); they are saved empty.", empty)
        # An empty split needs one (empty) shard written explicitly, or load_from_disk cannot read the folder.
        built.save_to_disk(os.fspath(staging.dataset_dir), num_shards={split: 1 for split in empty} or None)
        counts = Counter({split: built[split].num_rows for split in built})
        logger.info("Saved %s (%s) to %s: %s", dataset, split_by, output, dict(counts))
    return load_from_disk(os.fspath(output))
