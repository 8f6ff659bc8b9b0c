"""Hub layouts (jxu124/refcoco*, lmms-lab/RefCOCO*) converted from small local parquet files."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from data_fixtures import IMAGES, make_refer_tree, reference_mask
from datasets import Dataset, DatasetDict, Features, Image, List, Value

from magnet_hf.data import (
    REFER_FEATURES,
    ReferDataError,
    build_refer_dataset,
    coco_file_name,
    from_lmms,
    load_hub_layout,
    refer_partition_index,
)

# pycocotools (used by the reference masks) warns on every decode under numpy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

JXU124_SPLITS = {"train": "train", "val": "validation", "testA": "test", "testB": "testB"}


@pytest.fixture
def tree(tmp_path):
    return make_refer_tree(tmp_path / "src")


def write_jxu124(tree, folder):
    """The refs of the fixture in the jxu124/refcoco layout, one parquet file per Hub split."""
    anns = {a["id"]: a for a in tree["instances"]["annotations"]}
    images = {i["id"]: i for i in tree["instances"]["images"]}
    (folder / "data").mkdir(parents=True)
    for our_split, hub_split in JXU124_SPLITS.items():
        rows = [
            {
                "sent_ids": ref["sent_ids"], "file_name": ref["file_name"], "ann_id": ref["ann_id"],
                "ref_id": ref["ref_id"], "image_id": ref["image_id"], "split": ref["split"],
                "sentences": ref["sentences"], "category_id": ref["category_id"],
                "raw_anns": json.dumps(anns[ref["ann_id"]]), "raw_image_info": json.dumps(images[ref["image_id"]]),
                "raw_sentences": json.dumps(ref["sentences"]),
                "image_path": f"coco/train2014/{images[ref['image_id']]['file_name']}",
                "bbox": anns[ref["ann_id"]]["bbox"], "captions": [s["sent"] for s in ref["sentences"]],
                "global_image_id": f"coco.{ref['image_id']}", "anns_id": str(ref["ann_id"]),
            }
            for ref in tree["refs"] if ref["split"] == our_split
        ]  # fmt: skip
        Dataset.from_list(rows).to_parquet(str(folder / "data" / f"{hub_split}-00000-of-00001.parquet"))


def test_jxu124_layout_matches_the_official_builder(tree, tmp_path):
    hub = tmp_path / "jxu124"
    write_jxu124(tree, hub)
    converted = load_hub_layout(str(hub), "jxu124", coco_images=tree["coco_images"], cache_dir=tmp_path / "cache")
    official = build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcoco", "unc")
    assert sorted(converted) == sorted(official)  # validation -> val, test -> testA
    for split in official:
        assert converted[split].features == REFER_FEATURES
        assert converted[split].num_rows == official[split].num_rows
        for a, b in zip(converted[split], official[split]):
            for key in ("sentences", "ref_id", "ann_id", "image_id", "category_id", "bbox", "file_name"):
                assert a[key] == b[key], key
            np.testing.assert_array_equal(np.array(a["mask"]), np.array(b["mask"]))
            np.testing.assert_array_equal(np.array(a["image"]), np.array(b["image"]))


def test_jxu124_missing_images_and_columns(tree, tmp_path):
    hub = tmp_path / "jxu124"
    write_jxu124(tree, hub)
    (tree["coco_images"] / IMAGES[0][1]).unlink()
    with pytest.raises(ReferDataError, match=r"1 image files are missing .*COCO_train2014_000000000101.jpg"):
        load_hub_layout(str(hub), "jxu124", coco_images=tree["coco_images"], cache_dir=tmp_path / "cache")
    with pytest.warns(UserWarning, match="skipped 2 rows"):
        converted = load_hub_layout(
            str(hub), "jxu124", coco_images=tree["coco_images"], skip_missing=True, cache_dir=tmp_path / "cache"
        )
    assert converted["train"].num_rows == 0 and converted["val"].num_rows == 1
    with pytest.raises(ReferDataError, match="pass coco_images"):
        load_hub_layout(str(hub), "jxu124")
    with pytest.raises(ReferDataError, match="unknown layout"):
        load_hub_layout(str(hub), "coco")


LMMS_FEATURES = Features(
    {
        "question_id": Value("string"),
        "image": Image(),
        "question": Value("string"),
        "answer": List(Value("string")),
        "segmentation": List(Value("float32")),
        "bbox": List(Value("float32")),
        "iscrowd": Value("int8"),
        "file_name": Value("string"),
    }
)


def lmms_rows(tree, split_names):
    anns = {a["id"]: a for a in tree["instances"]["annotations"]}
    images = {i["id"]: i for i in tree["instances"]["images"]}
    rows = []
    for ref in tree["refs"]:
        ann = anns[ref["ann_id"]]
        if ref["split"] not in split_names or not isinstance(ann["segmentation"], list):
            continue
        rows.append(
            {
                "question_id": f"{ref['ref_id']}",
                "image": str(tree["coco_images"] / images[ref["image_id"]]["file_name"]),
                "question": "Please carefully observe the area circled in the image and come up with a caption.",
                "answer": [s["sent"] for s in ref["sentences"]],
                "segmentation": ann["segmentation"][0],
                "bbox": ann["bbox"],
                "iscrowd": 0,
                "file_name": images[ref["image_id"]]["file_name"],
            }
        )
    return rows


def test_lmms_layout_masks_and_sentences(tree, tmp_path):
    val = lmms_rows(tree, {"train", "val"})
    # a ref of another partition on the same image, with a box not in the UNC val split
    val.append(dict(val[-1], question_id="777", answer=["google ref"], bbox=[1.0, 1.0, 5.0, 5.0]))
    path = tmp_path / "lmms" / "data"
    path.mkdir(parents=True)
    Dataset.from_list(val, features=LMMS_FEATURES).to_parquet(str(path / "val-00000-of-00001.parquet"))
    Dataset.from_list(lmms_rows(tree, {"testA"}), features=LMMS_FEATURES).to_parquet(
        str(path / "testA-00000-of-00001.parquet")
    )
    with pytest.warns(UserWarning, match="mixes the UNC and Google partitions"):
        converted = load_hub_layout(str(tmp_path / "lmms"), "lmms", cache_dir=tmp_path / "cache")
    assert converted["val"]["ref_id"] == [1, 2, 777] and converted["testA"]["ref_id"] == [5]
    row = converted["val"][0]
    assert row["sentences"] == ["man on the left", "left man", "the man in white shirt"]
    assert (row["ref_id"], row["ann_id"], row["image_id"], row["category_id"]) == (1, -1, 101, -1)
    assert row["file_name"] == "COCO_train2014_000000000101.jpg"
    ann = tree["instances"]["annotations"][0]
    np.testing.assert_array_equal(np.array(row["mask"]), reference_mask(ann["segmentation"], 30, 40))
    # image bytes kept as stored (a JPEG here)
    assert row["image"].format == "JPEG"

    index = refer_partition_index(tree["refer_root"], "refcoco", "unc", "val")
    assert index == {"COCO_train2014_000000000102.png": [[5.0, 3.0, 25.0, 19.0]]}
    index = refer_partition_index(tree["refer_root"], "refcoco", "unc", "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no mixing warning once a partition is chosen
        filtered = load_hub_layout(str(tmp_path / "lmms"), "lmms", partition_index=index, cache_dir=tmp_path / "c2")
    assert filtered["val"]["ref_id"] == [1, 2]
    assert filtered["testA"].num_rows == 0


def test_lmms_bad_rows(tree):
    rows = lmms_rows(tree, {"train"})
    broken = Dataset.from_list([dict(rows[0], segmentation=[])], features=LMMS_FEATURES)
    with pytest.raises(ReferDataError, match="COCO_train2014_000000000101.jpg.*no segmentation"):
        from_lmms(DatasetDict({"testA": broken}))
    with pytest.raises(ReferDataError, match=r"missing column\(s\) \['answer'\]"):
        from_lmms(Dataset.from_list(rows, features=LMMS_FEATURES).remove_columns("answer"))
    with pytest.raises(ReferDataError, match="unknown split 'testA' for refcocog"):
        refer_partition_index(tree["refer_root"], "refcocog", "umd", "testA")


def test_coco_file_name():
    assert coco_file_name("coco/train2014/COCO_train2014_000000581857.jpg") == "COCO_train2014_000000581857.jpg"
    assert coco_file_name("COCO_train2014_000000581857_16.jpg") == "COCO_train2014_000000581857.jpg"
    assert coco_file_name("images/other.png") == "other.png"
