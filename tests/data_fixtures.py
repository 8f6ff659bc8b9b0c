"""Helpers for the data tests: a miniature refer-format dataset and an offline tokenizer.

Imported by ``tests/test_data_*.py`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "the", "a", "man", "woman", "left", "right", "red", "blue", "green", "yellow", "small", "big",
    "circle", "square", "triangle", "shape", "of", "second", "first", "third", "from", "biggest",
    "smallest", "above", "below", "top", "bottom", "dog", "cat", "on", "in", "white", "shirt", "car", "person",
]  # fmt: skip


def make_tokenizer(tmp_path: Path):
    """A tiny uncased BERT WordPiece tokenizer built from a local vocab file.

    transformers 5 takes the file as ``vocab=`` (``vocab_file=`` is silently ignored there and
    leaves only the special tokens).
    """
    from transformers import BertTokenizerFast

    vocab = Path(tmp_path) / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    assert tokenizer.vocab_size == len(VOCAB)
    return tokenizer


# --- miniature refer tree ------------------------------------------------------------------

IMAGES = [
    # id, file name, width, height, format
    (101, "COCO_train2014_000000000101.jpg", 40, 30, "JPEG"),
    (102, "COCO_train2014_000000000102.png", 32, 24, "PNG"),
    (103, "COCO_train2014_000000000103.png", 20, 20, "PNG"),
    (104, "COCO_train2014_000000000104.png", 16, 12, "PNG"),
]


def _uncompressed_rle(binary: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major run lengths starting with zeros)."""
    flat = binary.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": list(binary.shape), "counts": counts}


def make_refer_tree(root: Path, dataset: str = "refcoco", split_by: str = "unc") -> dict:
    """Write ``refer/<dataset>/{refs(<split_by>).p,instances.json}`` and ``images/`` under ``root``.

    Annotations: 1001 single polygon, 1002 two polygons, 1003 compressed RLE (string counts),
    1004 uncompressed RLE (list counts), 1005 polygon on a second image, 1006 polygon on image 104.

    Returns:
        dict with ``refer_root``, ``coco_images``, ``refs_path``, ``instances_path``, ``refs``,
        ``instances``.
    """
    root = Path(root)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for _, name, width, height, fmt in IMAGES:
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images_dir / name, format=fmt)

    rle_square = np.zeros((24, 32), dtype=np.uint8)
    rle_square[3:15, 5:20] = 1
    rle_square[18:22, 25:30] = 1
    compressed = mask_utils.encode(np.asfortranarray(rle_square))
    compressed["counts"] = compressed["counts"].decode("ascii")
    ring = np.zeros((24, 32), dtype=np.uint8)
    ring[2:20, 2:12] = 1
    ring[6:16, 5:9] = 0

    annotations = [
        {"id": 1001, "image_id": 101, "category_id": 1, "iscrowd": 0,
         "segmentation": [[2.0, 3.0, 25.5, 4.0, 20.0, 22.5, 5.0, 18.0]], "bbox": [2.0, 3.0, 23.5, 19.5]},
        {"id": 1002, "image_id": 101, "category_id": 18, "iscrowd": 0,
         "segmentation": [[28.0, 2.0, 38.0, 2.0, 38.0, 10.0, 28.0, 10.0], [30.0, 15.0, 37.0, 26.0, 27.0, 27.0]],
         "bbox": [27.0, 2.0, 11.0, 25.0]},
        {"id": 1003, "image_id": 102, "category_id": 3, "iscrowd": 0, "segmentation": compressed,
         "bbox": [5.0, 3.0, 25.0, 19.0]},
        {"id": 1004, "image_id": 102, "category_id": 1, "iscrowd": 1, "segmentation": _uncompressed_rle(ring),
         "bbox": [2.0, 2.0, 10.0, 18.0]},
        {"id": 1005, "image_id": 103, "category_id": 18, "iscrowd": 0,
         "segmentation": [[1.0, 1.0, 15.0, 2.0, 10.0, 17.0]], "bbox": [1.0, 1.0, 14.0, 16.0]},
        {"id": 1006, "image_id": 104, "category_id": 1, "iscrowd": 0,
         "segmentation": [[0.0, 0.0, 15.0, 0.0, 15.0, 11.0, 0.0, 11.0]], "bbox": [0.0, 0.0, 15.0, 11.0]},
        {"id": 1007, "image_id": 104, "category_id": 1, "iscrowd": 0,  # not referred to by any ref
         "segmentation": [], "bbox": [0.0, 0.0, 1.0, 1.0]},
    ]  # fmt: skip
    instances = {
        "images": [
            {"id": i, "file_name": name, "width": w, "height": h, "license": 1} for i, name, w, h, _ in IMAGES
        ],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}],
    }

    def ref(ref_id, ann_id, image_id, category_id, split, sents):
        sentences = [
            {"tokens": s.split(), "raw": s.upper(), "sent_id": ref_id * 10 + k, "sent": s} for k, s in enumerate(sents)
        ]
        return {
            "sent_ids": [s["sent_id"] for s in sentences],
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "ann_id": ann_id,
            "ref_id": ref_id,
            "image_id": image_id,
            "split": split,
            "sentences": sentences,
            "category_id": category_id,
        }

    splits = {"unc": ("train", "val", "testA", "testB"), "umd": ("train", "val", "test"), "google": ("train", "val")}
    names = splits[split_by]
    refs = [
        ref(1, 1001, 101, 1, names[0], ["man on the left", "left man", "the man in white shirt"]),
        ref(2, 1002, 101, 18, names[0], ["dog on the right"]),
        ref(3, 1003, 102, 3, names[1], ["the red car", "car"]),
        ref(4, 1004, 102, 1, names[-1], ["woman", "the woman on the left"]),
        ref(5, 1005, 103, 18, names[2] if len(names) > 2 else names[0], ["small dog"]),
        ref(6, 1006, 104, 1, names[-1], ["person"]),
    ]
    folder = root / "refer" / dataset
    folder.mkdir(parents=True, exist_ok=True)
    refs_path = folder / f"refs({split_by}).p"
    instances_path = folder / "instances.json"
    with open(refs_path, "wb") as handle:
        pickle.dump(refs, handle, protocol=2)  # the official files come from Python 2
    instances_path.write_text(json.dumps(instances))
    return {
        "refer_root": root / "refer",
        "coco_images": images_dir,
        "refs_path": refs_path,
        "instances_path": instances_path,
        "refs": refs,
        "instances": instances,
    }


def reference_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Expected mask computed directly with pycocotools, independently of the library code."""
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        return (mask_utils.decode(rles).sum(axis=2) > 0).astype(np.uint8)
    if isinstance(segmentation["counts"], list):
        return mask_utils.decode(mask_utils.frPyObjects(segmentation, height, width)).astype(np.uint8)
    return mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()}).astype(np.uint8)


def make_processor(tmp_path: Path, size: int = 32, max_length: int = 20):
    """The real ``MagNetProcessor`` with a small image size and the offline tokenizer."""
    from magnet_hf.image_processing_magnet import MagNetImageProcessor
    from magnet_hf.processing_magnet import MagNetProcessor

    return MagNetProcessor(
        image_processor=MagNetImageProcessor(size={"height": size, "width": size}),
        tokenizer=make_tokenizer(tmp_path),
        max_length=max_length,
    )
