"""Synthetic referring scenes: determinism, schema, and an independent check of every expression.

The check does not use the generator's object list: it finds the objects in the stored image as
connected components of saturated pixels, reads colour, shape and size from those pixels, and
resolves each expression with its own small interpreter of the documented semantics.
"""

from __future__ import annotations

import re
from collections import deque

import numpy as np
import pytest

from magnet_hf.data import REFER_FEATURES, ReferDataError, build_synthetic_dataset

PALETTE = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
ORDINAL = {"first": 0, "second": 1, "third": 2}


def components(image: np.ndarray) -> list[np.ndarray]:
    """8-connected components of saturated (non-background) pixels, as boolean masks."""
    saturated = (image.max(axis=2).astype(int) - image.min(axis=2)) > 60
    labels = np.zeros(saturated.shape, dtype=int)
    found = []
    for start in zip(*np.nonzero(saturated)):
        if labels[start]:
            continue
        label = len(found) + 1
        labels[start] = label
        queue = deque([start])
        while queue:
            y, x = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < labels.shape[0] and 0 <= nx < labels.shape[1] and saturated[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = label
                        queue.append((ny, nx))
        found.append(labels == label)
    return found


def measure(image: np.ndarray, mask: np.ndarray) -> dict:
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    box_w, box_h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    fill = xs.size / (box_w * box_h)
    mean = image[mask].mean(axis=0)
    color = min(PALETTE, key=lambda name: np.abs(mean - PALETTE[name]).sum())
    return {
        "mask": mask,
        "color": color,
        "shape": "square" if fill > 0.92 else "circle" if fill > 0.65 else "triangle",
        "size": "big" if max(box_w, box_h) >= 0.2 * min(height, width) else "small",
        "area": xs.size,
        "x": (xs.min(), xs.max(), xs.mean()),
        "y": (ys.min(), ys.max(), ys.mean()),
    }


def related(a: dict, relation: str, b: dict) -> bool:
    if relation == "left of":
        return a["x"][1] < b["x"][0]
    if relation == "right of":
        return a["x"][0] > b["x"][1]
    if relation == "above":
        return a["y"][1] < b["y"][0]
    return a["y"][0] > b["y"][1]


def resolve(sentence: str, objs: list[dict]) -> list[int]:
    """Indices of the objects the sentence describes (a valid expression gives exactly one)."""

    def group(color=None, shape=None, size=None):
        return [
            i for i, o in enumerate(objs)
            if (color is None or o["color"] == color) and (shape in (None, "shape") or o["shape"] == shape)
            and (size is None or o["size"] == size)
        ]  # fmt: skip

    if m := re.fullmatch(r"the (?:(\w+) )?(\w+) (left of|right of|above|below) the (\w+) (\w+)", sentence):
        color, shape, relation, anchor_color, anchor_shape = m.groups()
        anchors = group(anchor_color, anchor_shape)
        assert len(anchors) == 1, f"anchor of {sentence!r} is not unique"
        return [i for i in group(color, shape) if i != anchors[0] and related(objs[i], relation, objs[anchors[0]])]
    if m := re.fullmatch(r"the (first|second|third) (?:(\w+) )?(\w+) from the (left|right|top|bottom)", sentence):
        ordinal, color, shape, side = m.groups()
        axis = "x" if side in ("left", "right") else "y"
        members = sorted(group(color, shape), key=lambda i: objs[i][axis][2], reverse=side in ("right", "bottom"))
        ascending = sorted(members, key=lambda i: objs[i][axis][2])
        assert all(objs[a][axis][1] < objs[b][axis][0] for a, b in zip(ascending, ascending[1:])), (
            f"ordinal {sentence!r} ranks members that overlap along the axis"
        )
        return [members[ORDINAL[ordinal]]] if len(members) > ORDINAL[ordinal] else []
    if m := re.fullmatch(r"the (biggest|smallest) (?:(\w+) )?(\w+)", sentence):
        which, color, shape = m.groups()
        areas = sorted((objs[i]["area"], i) for i in group(color, shape))
        best, runner_up = (areas[-1], areas[-2]) if which == "biggest" else (areas[0], areas[1])
        return [j for a, j in areas if a == best[0]] if max(best[0], runner_up[0]) >= 1.15 * min(best[0], runner_up[0]) else []
    if m := re.fullmatch(r"the (small|big) (\w+) (\w+)", sentence):
        return group(m.group(2), m.group(3), m.group(1))
    if m := re.fullmatch(r"the (\w+) (\w+)", sentence):
        return group(m.group(1), m.group(2))
    raise AssertionError(f"unexpected expression {sentence!r}")


def _rows(ds):
    return [row for split in ds for row in ds[split]]


@pytest.mark.parametrize("image_size", [64, 96, (80, 128)])
def test_every_expression_names_exactly_the_referred_object(image_size):
    ds = build_synthetic_dataset(num_images=30, image_size=image_size, seed=7)
    rows = _rows(ds)
    assert len(rows) >= 40
    cache = {}
    for row in rows:
        image = np.array(row["image"])
        if row["image_id"] not in cache:
            masks = components(image)
            cache[row["image_id"]] = [measure(image, mask) for mask in masks]
        objs = cache[row["image_id"]]
        target = np.array(row["mask"]).astype(bool)
        # the stored mask is exactly one object's pixels, and its bbox matches
        matches = [i for i, o in enumerate(objs) if np.array_equal(o["mask"], target)]
        assert len(matches) == 1
        ys, xs = np.nonzero(target)
        assert row["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert row["category_id"] == {"circle": 1, "square": 2, "triangle": 3}[objs[matches[0]]["shape"]]
        for sentence in row["sentences"]:
            assert resolve(sentence, objs) == matches, f"{sentence!r} in image {row['image_id']}"
    # attributes, relations, ordinals and superlatives all occur
    joined = " ".join(" ".join(row["sentences"]) for row in rows)
    for pattern in (r" (left of|right of) ", r" (above|below) ", r"\bsecond\b", r"\bbiggest\b", r"\bsmallest\b",
                    r"the (small|big) (red|green|blue|yellow) "):  # fmt: skip
        assert re.search(pattern, joined), pattern


def test_deterministic_per_seed_and_differs_across_seeds():
    a = build_synthetic_dataset(num_images=12, image_size=64, seed=3)
    b = build_synthetic_dataset(num_images=12, image_size=64, seed=3)
    c = build_synthetic_dataset(num_images=12, image_size=64, seed=4)
    for split in a:
        assert a[split].to_dict() == b[split].to_dict()  # images and masks compared as PNG bytes
    assert a["train"]["sentences"] != c["train"]["sentences"]
    assert a["train"].data.column("image").to_pylist() != c["train"].data.column("image").to_pylist()


def test_schema_ids_and_splits():
    ds = build_synthetic_dataset(num_images={"train": 6, "val": 2, "test": 2}, image_size=64, seed=0, refs_per_image=2)
    assert list(ds) == ["train", "val", "test"]
    for split, dataset in ds.items():
        assert dataset.features == REFER_FEATURES
        assert set(dataset["image_id"]) <= {"train": set(range(1, 7)), "val": {7, 8}, "test": {9, 10}}[split]
        assert len(dataset["image_id"]) <= 2 * {"train": 6, "val": 2, "test": 2}[split]
        for row in dataset:
            assert row["file_name"] == f"synthetic_{row['image_id']:08d}.png"
            assert row["ref_id"] == row["ann_id"] and row["ann_id"] // 100 == row["image_id"]
            assert row["image"].size == (64, 64) and row["image"].mode == "RGB"
            assert row["mask"].mode == "L" and set(np.unique(np.array(row["mask"]))) == {0, 1}
            assert 1 <= len(row["sentences"]) <= 3
    default = build_synthetic_dataset(num_images=20, image_size=64)
    assert len(set(default["train"]["image_id"])) <= 16 and len(set(default["val"]["image_id"])) <= 2


def test_fast_enough_for_tests_and_demos():
    import time

    start = time.perf_counter()
    ds = build_synthetic_dataset(num_images=300, image_size=64, seed=1)
    assert sum(d.num_rows for d in ds.values()) > 400
    assert time.perf_counter() - start < 15


def test_bad_arguments():
    with pytest.raises(ReferDataError, match="image_size"):
        build_synthetic_dataset(num_images=5, image_size=32)
    with pytest.raises(ReferDataError, match="at least 3"):
        build_synthetic_dataset(num_images=2)
    with pytest.raises(ReferDataError, match="seed"):
        build_synthetic_dataset(num_images=5, seed=-1)
    with pytest.raises(ReferDataError, match="objects_per_image"):
        build_synthetic_dataset(num_images=5, objects_per_image=(4, 2))
