"""Offline synthetic referring scenes: coloured shapes on a textured background.

Each image holds a few non-overlapping circles, squares and triangles in a few colours and two
size classes. Expressions need attributes and relations to resolve, for example
``"the small red circle"``, ``"the square left of the blue triangle"``,
``"the second triangle from the left"`` or ``"the biggest green shape"``. Every expression names
exactly one object. The rows follow :data:`~magnet_hf.data.schema.REFER_FEATURES`, so the same
training and evaluation code runs on them and on RefCOCO.

Semantics (what a resolver must implement to check an expression):

- ``small`` / ``big``: size class; the extent (largest bbox side) of a big object is at least
  ``0.24 * min(H, W)``, of a small one at most ``0.16 * min(H, W) + 1`` pixels.
- ``A left of B``: A's mask lies entirely left of B's (``A.x_max < B.x_min``); likewise
  ``right of``, ``above`` (``A.y_max < B.y_min``) and ``below``. ``B`` is unique by colour and shape;
  among the objects matching ``A`` (other than B) exactly one satisfies the relation.
- ``the <ordinal> <group> from the <side>``: rank along that axis within the group (a shape,
  optionally with a colour); the members' extents along the axis are disjoint, so the k-th from the
  left has exactly k - 1 members entirely ``left of`` it (the relation's own test).
- ``the biggest|smallest <group>``: by mask area within the group (a colour, a shape, or all
  ``shape``\\ s); the winner is at least 15% larger (smaller) than every other member.

Everything is drawn without anti-aliasing, so the mask of an object is exactly its pixels.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset, DatasetDict
from PIL import Image, ImageDraw

from .errors import ReferDataError
from .schema import REFER_FEATURES

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: COCO-like category ids of the shapes.
CATEGORY_IDS: dict[str, int] = {"circle": 1, "square": 2, "triangle": 3}
#: Nominal RGB of each colour word; drawn colours jitter by at most 12 per channel.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
}
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.06, 0.08), "big": (0.12, 0.16)}  # half-extent / min side
ORDINALS: tuple[str, ...] = ("first", "second", "third")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
_SIDES = {"left": ("left of", False), "right": ("left of", True), "top": ("above", False), "bottom": ("above", True)}
_SUPERLATIVE_MARGIN = 1.15
_MIN_SIDE = 64


@dataclass
class SceneObject:
    """One drawn object. ``mask`` is a boolean ``(H, W)`` array; geometry is measured on it."""

    shape: str
    color: str
    size: str
    mask: np.ndarray = field(repr=False)

    def __post_init__(self):
        ys, xs = np.nonzero(self.mask)
        self.x_min, self.x_max, self.y_min, self.y_max = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
        self.area = int(xs.size)
        self.centroid = (float(xs.mean()), float(ys.mean()))

    @property
    def bbox(self) -> list[float]:
        """COCO ``[x, y, w, h]`` of the mask."""
        return [float(self.x_min), float(self.y_min), float(self.x_max - self.x_min + 1), float(self.y_max - self.y_min + 1)]


@dataclass
class Scene:
    """A generated image, its objects and, per object index, the expressions that name it."""

    image: Image.Image
    objects: list[SceneObject]
    expressions: dict[int, list[str]]


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    # Low-saturation stripes plus blocky noise: busy enough to need learning, never close to an object
    # colour. sin(a + b) is expanded into outer products and the noise is drawn at a quarter of the
    # resolution, which keeps hundreds of large images fast to draw and to PNG-encode.
    angle, period, phase = rng.uniform(0, np.pi), rng.uniform(6, 24), rng.uniform(0, 2 * np.pi)
    k = 2 * np.pi / period
    ax = k * np.cos(angle) * np.arange(width, dtype=np.float32)
    by = k * np.sin(angle) * np.arange(height, dtype=np.float32) + phase
    stripes = np.outer(np.cos(by), np.sin(ax)) + np.outer(np.sin(by), np.cos(ax))
    noise = rng.integers(-8, 9, size=(-(-height // 4), -(-width // 4))).astype(np.float32)
    noise = np.repeat(np.repeat(noise, 4, axis=0), 4, axis=1)[:height, :width]
    gray = rng.uniform(105, 150) + rng.uniform(8, 20) * stripes + noise
    tint = rng.uniform(-6, 6, size=3).astype(np.float32)
    return np.clip(gray[..., None] + tint, 70, 185).astype(np.uint8)


def _draw_mask(shape: str, cx: int, cy: int, radius: int, height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "circle":
        draw.ellipse(box, fill=1)
    elif shape == "square":
        draw.rectangle(box, fill=1)
    else:
        draw.polygon([(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)], fill=1)
    return np.asarray(canvas, dtype=bool)


def _matching(objects: list[SceneObject], shape: str | None = None, color: str | None = None, size: str | None = None):
    return [
        i
        for i, o in enumerate(objects)
        if (shape is None or o.shape == shape) and (color is None or o.color == color) and (size is None or o.size == size)
    ]


def _relation_holds(a: SceneObject, relation: str, b: SceneObject) -> bool:
    return {
        "left of": a.x_max < b.x_min,
        "right of": a.x_min > b.x_max,
        "above": a.y_max < b.y_min,
        "below": a.y_min > b.y_max,
    }[relation]


def describe_objects(objects: list[SceneObject]) -> dict[int, list[str]]:
    """List, for every object, the expressions of each template that name it and only it.

    Args:
        objects: the objects of one scene.

    Returns:
        ``{object index: [expression, ...]}`` (objects without any valid expression are absent).
    """
    found: dict[int, list[str]] = {}

    def add(index: int, text: str) -> None:
        found.setdefault(index, []).append(text)

    for i, o in enumerate(objects):
        same_kind = _matching(objects, o.shape, o.color)
        if len(same_kind) == 1:
            add(i, f"the {o.color} {o.shape}")
        elif len(_matching(objects, o.shape, o.color, o.size)) == 1:
            add(i, f"the {o.size} {o.color} {o.shape}")

    for a_index, anchor in enumerate(objects):
        if len(_matching(objects, anchor.shape, anchor.color)) != 1:
            continue
        for relation in RELATIONS:
            for target_index, target in enumerate(objects):
                if target_index == a_index or not _relation_holds(target, relation, anchor):
                    continue
                for color in (None, target.color):
                    group = [j for j in _matching(objects, target.shape, color) if j != a_index]
                    if [j for j in group if _relation_holds(objects[j], relation, anchor)] == [target_index]:
                        noun = target.shape if color is None else f"{color} {target.shape}"
                        add(target_index, f"the {noun} {relation} the {anchor.color} {anchor.shape}")
                        break

    for shape in SHAPES:
        for color in (None, *COLORS):
            group = _matching(objects, shape, color)
            if len(group) < 2:
                continue
            noun = shape if color is None else f"{color} {shape}"
            for side, (before, descending) in _SIDES.items():
                axis = 0 if before == "left of" else 1
                ascending = sorted(group, key=lambda j: objects[j].centroid[axis])
                # Members that overlap along the axis have no order a viewer can be sure of; the earlier
                # rule (centroids at least 2 px apart) let 44 % of ranked groups overlap so.
                if not all(_relation_holds(objects[a], before, objects[b]) for a, b in zip(ascending, ascending[1:])):
                    continue
                ranked = ascending[::-1] if descending else ascending
                for rank, j in enumerate(ranked[: len(ORDINALS)]):
                    add(j, f"the {ORDINALS[rank]} {noun} from the {side}")

    groups = [(None, None, "shape")] + [(None, c, f"{c} shape") for c in COLORS] + [(s, None, s) for s in SHAPES]
    for shape, color, noun in groups:
        group = _matching(objects, shape, color)
        if len(group) < 2:
            continue
        areas = sorted((objects[j].area, j) for j in group)
        if areas[-1][0] >= _SUPERLATIVE_MARGIN * areas[-2][0]:
            add(areas[-1][1], f"the biggest {noun}")
        if areas[1][0] >= _SUPERLATIVE_MARGIN * areas[0][0]:
            add(areas[0][1], f"the smallest {noun}")
    return found


def _image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(height, width) < _MIN_SIDE or max(height, width) > 4096:
        raise ReferDataError(f"image_size must be between {_MIN_SIDE} and 4096 pixels per side, got {image_size}.")
    return int(height), int(width)


def generate_scene(
    seed: int,
    index: int,
    image_size: int | tuple[int, int] = 128,
    objects_per_image: tuple[int, int] = (3, 6),
) -> Scene:
    """Draw scene ``index`` of the synthetic set with ``seed``; the same arguments give the same scene.

    Args:
        seed: dataset seed (non-negative).
        index: global image index (non-negative); each scene has its own random stream.
        image_size: ``S`` for ``S x S`` images, or ``(height, width)``; each side in [64, 4096].
        objects_per_image: inclusive range of objects to place (fewer if they do not fit).

    Returns:
        :class:`Scene` with an RGB image, its objects and their expressions.
    """
    height, width = _image_hw(image_size)
    rng = np.random.default_rng([seed, index])
    pixels = _texture(rng, height, width)
    # A small palette per image makes look-alikes common, so attributes alone rarely suffice.
    colors = list(rng.choice(list(COLORS), size=int(rng.integers(2, 4)), replace=False))
    shapes = list(rng.choice(SHAPES, size=int(rng.integers(2, 4)), replace=False))
    side = min(height, width)
    occupied = np.zeros((height, width), dtype=bool)
    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))):
        shape, color, size = str(rng.choice(shapes)), str(rng.choice(colors)), str(rng.choice(["small", "big"]))
        radius = max(4, round(rng.uniform(*SIZE_RANGES[size]) * side))
        for _attempt in range(30):
            cx, cy = int(rng.integers(radius + 1, width - radius - 1)), int(rng.integers(radius + 1, height - radius - 1))
            y0, y1, x0, x1 = cy - radius - 2, cy + radius + 3, cx - radius - 2, cx + radius + 3
            if not occupied[max(y0, 0) : y1, max(x0, 0) : x1].any():
                occupied[max(y0, 0) : y1, max(x0, 0) : x1] = True
                mask = _draw_mask(shape, cx, cy, radius, height, width)
                rgb = np.clip(np.array(COLORS[color]) + rng.integers(-12, 13, size=3), 0, 255)
                pixels[mask] = rgb.astype(np.uint8)
                objects.append(SceneObject(shape=shape, color=color, size=size, mask=mask))
                break
    return Scene(image=Image.fromarray(pixels, mode="RGB"), objects=objects, expressions=describe_objects(objects))


#: The kinds of expression the generator writes (see the module docstring).
EXPRESSION_KINDS: tuple[str, ...] = ("attribute", "relation", "ordinal", "superlative")


def expression_kind(text: str) -> str:
    """Which of :data:`EXPRESSION_KINDS` an expression of the generator is."""
    if any(f" {relation} the " in text for relation in RELATIONS):
        return "relation"
    if text.endswith(("from the left", "from the right", "from the top", "from the bottom")):
        return "ordinal"
    if text.startswith(("the biggest", "the smallest")):
        return "superlative"
    return "attribute"


def _pick_sentences(texts: list[str], count: int, rng: np.random.Generator) -> list[str]:
    # Round-robin over expression kinds so that every kind (attribute, relation, ordinal,
    # superlative) is well represented instead of the most prolific one.
    by_kind: dict[str, list[str]] = {}
    for text in texts:
        by_kind.setdefault(expression_kind(text), []).append(text)
    pools = [list(rng.permutation(by_kind[kind])) for kind in sorted(by_kind)]
    pools = [pools[i] for i in rng.permutation(len(pools))]
    picked: list[str] = []
    while len(picked) < count and any(pools):
        for pool in pools:
            if pool and len(picked) < count:
                picked.append(str(pool.pop()))
    return picked


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # speed over size: this data is regenerated at will
    return buffer.getvalue()


def _split_sizes(num_images: int | Mapping[str, int]) -> dict[str, int]:
    if isinstance(num_images, Mapping):
        sizes = {str(k): int(v) for k, v in num_images.items()}
    else:
        if int(num_images) < 3:
            raise ReferDataError(f"num_images must be at least 3 (one per split), got {num_images}.")
        n_val = n_test = max(1, round(0.1 * num_images))
        sizes = {"train": int(num_images) - n_val - n_test, "val": n_val, "test": n_test}
    if not sizes or any(v < 0 for v in sizes.values()):
        raise ReferDataError(f"num_images per split must be non-negative counts, got {dict(sizes)}.")
    return sizes


def build_synthetic_dataset(
    num_images: int | Mapping[str, int] = 100,
    image_size: int | tuple[int, int] = 128,
    seed: int = 0,
    *,
    objects_per_image: tuple[int, int] = (3, 6),
    refs_per_image: int = 2,
    sentences_per_ref: int = 3,
) -> DatasetDict:
    """Build the synthetic referring dataset, deterministically from its arguments.

    Args:
        num_images: total images, split 80/10/10 into ``train``/``val``/``test``, or a mapping
            ``{split: images}``.
        image_size: ``S`` or ``(height, width)``; each side in [64, 4096].
        seed: non-negative seed; scene ``i`` (counted across splits in order) only depends on
            ``(seed, i)`` and the drawing arguments.
        objects_per_image: inclusive range of objects per image.
        refs_per_image: at most this many referred objects per image (fewer if fewer have an expression).
        sentences_per_ref: at most this many expressions per referred object.

    Returns:
        ``DatasetDict`` with :data:`~magnet_hf.data.schema.REFER_FEATURES` columns, one row per ref.
        Ids: ``image_id = i + 1``, ``ann_id = ref_id = 100 * image_id + object index``;
        ``category_id`` from :data:`CATEGORY_IDS`; ``file_name = "synthetic_{image_id:08d}.png"``.
    """
    if seed < 0:
        raise ReferDataError(f"seed must be non-negative, got {seed}.")
    if refs_per_image < 1 or sentences_per_ref < 1:
        raise ReferDataError("refs_per_image and sentences_per_ref must be at least 1.")
    if not 1 <= objects_per_image[0] <= objects_per_image[1] or objects_per_image[1] > 99:
        raise ReferDataError(f"objects_per_image must be a range within [1, 99], got {objects_per_image}.")
    _image_hw(image_size)
    splits: dict[str, Dataset] = {}
    offset = 0
    for split, count in _split_sizes(num_images).items():
        rows: dict[str, list] = {name: [] for name in REFER_FEATURES}
        for index in range(offset, offset + count):
            scene = generate_scene(seed, index, image_size, objects_per_image)
            rng = np.random.default_rng([seed, index, 1])
            image_id = index + 1
            file_name = f"synthetic_{image_id:08d}.png"
            image_bytes = _png(scene.image)
            candidates = sorted(scene.expressions)
            chosen = rng.choice(candidates, size=min(refs_per_image, len(candidates)), replace=False) if candidates else []
            for k in sorted(int(c) for c in chosen):
                obj = scene.objects[k]
                rows["image"].append({"bytes": image_bytes, "path": file_name})
                rows["mask"].append({"bytes": _png(Image.fromarray(obj.mask.astype(np.uint8), mode="L")), "path": None})
                rows["sentences"].append(_pick_sentences(scene.expressions[k], sentences_per_ref, rng))
                rows["ref_id"].append(100 * image_id + k)
                rows["ann_id"].append(100 * image_id + k)
                rows["image_id"].append(image_id)
                rows["category_id"].append(CATEGORY_IDS[obj.shape])
                rows["bbox"].append(obj.bbox)
                rows["file_name"].append(file_name)
        splits[split] = Dataset.from_dict(rows, features=REFER_FEATURES)
        offset += count
    return DatasetDict(splits)
