"""Builder from the official refer-toolkit files: rows, masks, partitions and bad data."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import make_refer_tree, reference_mask
from datasets import DatasetDict, load_from_disk

from magnet_hf.data import ReferDataError, build_refer_dataset, explode_sentences, prepare_refer_dataset
from magnet_hf.commands.prepare_data import main

REPO = Path(__file__).resolve().parents[1]
# pycocotools (used by the reference masks) warns on every decode under numpy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def tree(tmp_path):
    return make_refer_tree(tmp_path)


def _rewrite_instances(tree, edit):
    instances = json.loads(tree["instances_path"].read_text())
    edit(instances)
    tree["instances_path"].write_text(json.dumps(instances))


def _rewrite_refs(tree, edit):
    refs = [dict(ref) for ref in tree["refs"]]
    edit(refs)
    with open(tree["refs_path"], "wb") as handle:
        pickle.dump(refs, handle, protocol=2)


def test_rows_per_split_sentences_and_metadata(tree):
    ds = build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcoco", "unc")
    assert list(ds) == ["train", "val", "testA", "testB"]
    assert {split: ds[split].num_rows for split in ds} == {"train": 2, "val": 1, "testA": 1, "testB": 2}
    assert ds["train"]["ref_id"] == [1, 2]
    assert ds["testB"]["ref_id"] == [4, 6]
    row = ds["train"][0]
    assert row["sentences"] == ["man on the left", "left man", "the man in white shirt"]
    assert (row["ann_id"], row["image_id"], row["category_id"]) == (1001, 101, 1)
    assert row["bbox"] == [2.0, 3.0, 23.5, 19.5]
    # the COCO image file name, not the ref's "<image>_<ann>.jpg" name
    assert row["file_name"] == "COCO_train2014_000000000101.jpg"


def test_masks_match_pycocotools_pixel_exactly(tree):
    ds = build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcoco", "unc")
    anns = {ann["id"]: ann for ann in tree["instances"]["annotations"]}
    images = {img["id"]: img for img in tree["instances"]["images"]}
    checked = set()
    for split in ds:
        for row in ds[split]:
            image = images[row["image_id"]]
            expected = reference_mask(anns[row["ann_id"]]["segmentation"], image["height"], image["width"])
            mask = row["mask"]
            assert mask.mode == "L" and mask.size == (image["width"], image["height"])
            got = np.array(mask)
            assert set(np.unique(got)) <= {0, 1}
            np.testing.assert_array_equal(got, expected)
            assert got.sum() > 0
            checked.add(row["ann_id"])
    # polygon, multi-polygon, compressed RLE, uncompressed RLE and two more polygons
    assert checked == {1001, 1002, 1003, 1004, 1005, 1006}


def test_multi_polygon_mask_is_union_and_rle_ring_keeps_hole(tree):
    ds = build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcoco", "unc")
    dog = np.array(ds["train"][1]["mask"])
    # both polygons of annotation 1002 are present: one upper right, one lower right
    assert dog[2:10, 28:38].all() and dog[20, 31] == 1
    woman = np.array(ds["testB"][0]["mask"])
    assert woman[10, 6] == 0 and woman[3, 3] == 1  # the hole of the uncompressed-RLE ring


def test_image_bytes_are_stored_unchanged(tree):
    ds = build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcoco", "unc")
    raw = ds["train"].cast_column("image", ds["train"].features["image"].__class__(decode=False))[0]["image"]
    assert raw["bytes"] == (tree["coco_images"] / "COCO_train2014_000000000101.jpg").read_bytes()
    assert ds["train"][0]["image"].format == "JPEG"


@pytest.mark.parametrize(
    ("split_by", "splits", "counts"),
    [("umd", ["train", "val", "test"], [2, 1, 3]), ("google", ["train", "val"], [3, 3])],
)
def test_refcocog_partitions(tmp_path, split_by, splits, counts):
    tree = make_refer_tree(tmp_path, dataset="refcocog", split_by=split_by)
    ds = build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcocog", split_by)
    assert list(ds) == splits
    assert [ds[split].num_rows for split in splits] == counts


def test_explode_one_row_per_sentence(tree):
    ds = build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcoco", "unc")
    exploded = explode_sentences(ds)
    assert isinstance(exploded, DatasetDict)
    assert exploded["train"].num_rows == 4 and exploded["testB"].num_rows == 3
    assert exploded["train"]["sentences"] == [["man on the left"], ["left man"], ["the man in white shirt"], ["dog on the right"]]
    assert exploded["train"]["sentence_index"] == [0, 1, 2, 0]
    assert exploded["train"]["ref_id"] == [1, 1, 1, 2]
    np.testing.assert_array_equal(np.array(exploded["train"][2]["mask"]), np.array(ds["train"][0]["mask"]))
    assert exploded["train"][2]["image"].format == "JPEG"


def test_prepare_saves_atomically_and_refuses_existing_output(tree, tmp_path):
    output = tmp_path / "out"
    saved = prepare_refer_dataset(tree["refer_root"], tree["coco_images"], output, "refcoco", "unc")
    assert {split: saved[split].num_rows for split in saved} == {"train": 2, "val": 1, "testA": 1, "testB": 2}
    assert load_from_disk(str(output))["val"][0]["sentences"] == ["the red car", "car"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "out", "refer"]  # no scratch left behind
    with pytest.raises(ReferDataError, match="already exists.*--overwrite"):
        prepare_refer_dataset(tree["refer_root"], tree["coco_images"], output, "refcoco", "unc")
    _rewrite_refs(tree, lambda refs: refs.pop())
    replaced = prepare_refer_dataset(tree["refer_root"], tree["coco_images"], output, "refcoco", "unc", overwrite=True)
    assert replaced["testB"].num_rows == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "out", "refer"]


def test_failure_during_generation_leaves_nothing(tree, tmp_path):
    (tree["coco_images"] / "COCO_train2014_000000000103.png").write_bytes(b"not an image")
    output = tmp_path / "out"
    with pytest.raises(ReferDataError, match="cannot read image .*000000000103.png"):
        prepare_refer_dataset(tree["refer_root"], tree["coco_images"], output, "refcoco", "unc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "refer"]


def test_failed_overwrite_keeps_previous_output(tree, tmp_path):
    output = tmp_path / "out"
    prepare_refer_dataset(tree["refer_root"], tree["coco_images"], output, "refcoco", "unc")
    _rewrite_instances(tree, lambda inst: inst["annotations"][0].update(segmentation=[]))
    with pytest.raises(ReferDataError):
        prepare_refer_dataset(tree["refer_root"], tree["coco_images"], output, "refcoco", "unc", overwrite=True)
    assert load_from_disk(str(output))["train"].num_rows == 2


def test_missing_images_are_counted_listed_or_skipped(tree):
    (tree["coco_images"] / "COCO_train2014_000000000101.jpg").unlink()
    (tree["coco_images"] / "COCO_train2014_000000000104.png").unlink()
    with pytest.raises(ReferDataError) as info:
        build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcoco", "unc")
    message = str(info.value)
    assert "2 of 4 image files are missing" in message
    assert "COCO_train2014_000000000101.jpg" in message and "--skip-missing" in message
    ds = build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcoco", "unc", skip_missing=True)
    assert {split: ds[split].num_rows for split in ds} == {"train": 0, "val": 1, "testA": 1, "testB": 1}


def test_annotation_without_segmentation(tree):
    _rewrite_instances(tree, lambda inst: inst["annotations"][2].pop("segmentation"))
    with pytest.raises(ReferDataError, match=r"instances.json: annotation\(s\) 1003 .* no 'segmentation'"):
        build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcoco", "unc")


def test_unknown_split_and_partition(tree):
    with pytest.raises(ReferDataError, match="unknown partition 'google' for refcoco"):
        build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcoco", "google")
    with pytest.raises(ReferDataError, match="unknown dataset 'refclef'"):
        build_refer_dataset(tree["refer_root"], tree["coco_images"], "refclef", "unc")
    _rewrite_refs(tree, lambda refs: refs[0].update(split="testC"))
    with pytest.raises(ReferDataError, match=r"unknown split name\(s\) \['testC'\]"):
        build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcoco", "unc")


def test_refs_not_matching_instances(tree):
    _rewrite_refs(tree, lambda refs: refs[1].update(ann_id=999999))
    with pytest.raises(ReferDataError, match=r"ann_id\(s\) missing from .*instances.json \(ref_id 2\)"):
        build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcoco", "unc")
    _rewrite_refs(tree, lambda refs: refs[1].update(image_id=5))
    with pytest.raises(ReferDataError, match=r"image_id\(s\) missing"):
        build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcoco", "unc")
    _rewrite_refs(tree, lambda refs: refs[1].update(image_id=102))
    with pytest.raises(ReferDataError, match="different from their annotation"):
        build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcoco", "unc")


def test_image_size_must_match_instances(tree):
    _rewrite_instances(tree, lambda inst: inst["images"][2].update(width=21))
    with pytest.raises(ReferDataError, match="000000000103.png is 20x20 but instances.json says 21x20"):
        build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcoco", "unc")


def test_non_pickle_refs_file(tree):
    tree["refs_path"].write_text("this is not a pickle")
    with pytest.raises(ReferDataError, match=r"refs\(unc\).p is not a valid refs pickle"):
        build_refer_dataset(tree["refer_root"], tree["coco_images"], "refcoco", "unc")


def test_cli_success_and_clean_error(tree, tmp_path, capsys):
    args = ["--dataset", "refcoco", "--split-by", "unc", "--refer-root", str(tree["refer_root"]),
            "--coco-images", str(tree["coco_images"]), "--output", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 0
    assert "testB: 2 refs" in capsys.readouterr().out
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_push_to_hub_is_called(tree, tmp_path, monkeypatch):
    pushed = []
    monkeypatch.setattr(DatasetDict, "push_to_hub", lambda self, repo, **kw: pushed.append((repo, dict(self.num_rows))))
    args = ["--dataset", "refcoco", "--split-by", "unc", "--refer-root", str(tree["refer_root"]),
            "--coco-images", str(tree["coco_images"]), "--output", str(tmp_path / "out"), "--push-to-hub", "me/refcoco"]  # fmt: skip
    assert main(args) == 0
    assert pushed == [("me/refcoco", {"train": 2, "val": 1, "testA": 1, "testB": 2})]


def test_script_exits_nonzero_without_traceback(tree, tmp_path):
    (tree["coco_images"] / "COCO_train2014_000000000102.png").unlink()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "prepare_refcoco.py"), "--dataset", "refcoco", "--split-by", "unc",
         "--refer-root", str(tree["refer_root"]), "--coco-images", str(tree["coco_images"]),
         "--output", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "1 of 4 image files are missing" in result.stderr and "COCO_train2014_000000000102.png" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
