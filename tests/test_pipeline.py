"""The referring-image-segmentation pipeline: inputs, output format, batching, dtype, errors and Hub remote code."""

from __future__ import annotations

import pickle
import textwrap

import numpy as np
import pytest
import torch
from pipeline_fixtures import (
    assert_mask_matches,
    direct_predictions,
    run_without_magnet_hf,
    save_model_folder,
    scene_images,
)
from PIL import Image

import magnet_hf
from magnet_hf import (
    REFERRING_SEGMENTATION_TASK,
    MagNetImageError,
    MagNetModel,
    MagNetProcessor,
    MagNetReferringSegmentationPipeline,
)

EXPRESSIONS = ["the red circle", "the small blue square", "the second triangle from the left"]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_model_folder(tmp_path_factory.mktemp("pipeline") / "model")


@pytest.fixture(scope="module")
def segmenter(model_folder):
    from transformers import pipeline

    model = MagNetModel.from_pretrained(model_folder).eval()
    processor = MagNetProcessor.from_pretrained(model_folder)
    return pipeline(REFERRING_SEGMENTATION_TASK, model=model, processor=processor, device="cpu")


def assert_result_format(results, expressions, image):
    assert [r["label"] for r in results] == expressions
    for result in results:
        assert set(result) == {"score", "label", "mask"}
        assert isinstance(result["score"], float) and 0.0 <= result["score"] <= 1.0
        assert result["mask"].mode == "L" and result["mask"].size == image.size
        assert set(np.unique(np.asarray(result["mask"]))) <= {0, 255}


def test_task_is_registered_when_magnet_hf_is_imported(segmenter):
    from transformers.pipelines import PIPELINE_REGISTRY

    assert REFERRING_SEGMENTATION_TASK in PIPELINE_REGISTRY.get_supported_tasks()
    assert type(segmenter) is MagNetReferringSegmentationPipeline
    assert magnet_hf.MagNetReferringSegmentationPipeline is MagNetReferringSegmentationPipeline


def test_one_image_several_expressions_matches_a_direct_model_call(segmenter, model_folder):
    image = scene_images()[0]
    results = segmenter(image, text=EXPRESSIONS, batch_size=2)
    assert_result_format(results, EXPRESSIONS, image)
    expected = direct_predictions(model_folder, image, EXPRESSIONS)
    for result, (mask, probability, score) in zip(results, expected):
        assert_mask_matches(np.asarray(result["mask"]) > 127, mask, probability)
        assert result["score"] == pytest.approx(score, abs=1e-5)
    masks = [np.asarray(r["mask"]) for r in results]
    assert any(m.any() and not m.all() for m in masks), "masks should be neither empty nor full"
    assert not np.array_equal(masks[0], masks[1]), "different expressions should give different masks"


def test_input_forms_give_the_same_masks(segmenter, tmp_path):
    first, second = scene_images()
    path = tmp_path / "first.png"
    first.save(path)
    reference = segmenter(first, text=EXPRESSIONS[0])
    assert isinstance(reference, list) and len(reference) == 1
    same_image_forms = [
        segmenter(str(path), text=[EXPRESSIONS[0]])[0],
        segmenter(np.asarray(first), text=EXPRESSIONS[0])[0],
        segmenter({"image": path, "text": EXPRESSIONS[0]})[0],
    ]
    for result in same_image_forms:
        assert np.array_equal(np.asarray(result["mask"]), np.asarray(reference[0]["mask"]))
    per_image = segmenter([{"image": first, "text": EXPRESSIONS[:2]}, {"image": second, "text": EXPRESSIONS[2]}], batch_size=2)
    assert [len(results) for results in per_image] == [2, 1]
    assert_result_format(per_image[0], EXPRESSIONS[:2], first)
    assert_result_format(per_image[1], EXPRESSIONS[2:], second)
    shared_text = segmenter([first, second], text=EXPRESSIONS[:2])
    assert [[r["label"] for r in results] for results in shared_text] == [EXPRESSIONS[:2]] * 2
    assert np.array_equal(np.asarray(shared_text[0][0]["mask"]), np.asarray(reference[0]["mask"]))


def test_batch_size_does_not_change_results(segmenter):
    images = scene_images()
    inputs = [{"image": images[0], "text": EXPRESSIONS[:2]}, {"image": images[1], "text": EXPRESSIONS[2]}]
    one_by_one = segmenter(inputs, batch_size=1)
    batched = segmenter(inputs, batch_size=3)  # one batch across the image boundary
    for single, grouped in zip(one_by_one, batched):
        for a, b in zip(single, grouped):
            assert a["label"] == b["label"]
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
            disagreement = np.mean(np.asarray(a["mask"]) != np.asarray(b["mask"]))
            assert disagreement < 1e-3


def test_threshold_controls_the_mask(segmenter):
    image = scene_images()[0]
    everything = segmenter(image, text=EXPRESSIONS[0], threshold=0.0)[0]
    nothing = segmenter(image, text=EXPRESSIONS[0], threshold=1.0)[0]
    assert np.asarray(everything["mask"]).min() == 255
    assert np.asarray(nothing["mask"]).max() == 0 and nothing["score"] == 0.0


def test_bfloat16_runs_under_autocast_and_agrees_with_float32(model_folder):
    model = MagNetModel.from_pretrained(model_folder).eval()
    processor = MagNetProcessor.from_pretrained(model_folder)
    full = MagNetReferringSegmentationPipeline(model=model, processor=processor, device="cpu")
    half = MagNetReferringSegmentationPipeline(
        model=MagNetModel.from_pretrained(model_folder, dtype=torch.bfloat16), processor=processor, device="cpu",
        dtype="bfloat16",
    )
    assert half.compute_dtype == torch.bfloat16 and next(half.model.parameters()).dtype == torch.float32
    image = scene_images()[0]
    exact, reduced = full(image, text=EXPRESSIONS[0])[0], half(image, text=EXPRESSIONS[0])[0]
    assert exact["score"] != reduced["score"]  # bf16 arithmetic did run
    assert reduced["score"] == pytest.approx(exact["score"], abs=0.02)
    agreement = np.mean(np.asarray(exact["mask"]) == np.asarray(reduced["mask"]))
    assert agreement > 0.95


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda s, img: s(img), ValueError, "no expression given"),
        (lambda s, img: s(img, text=["the circle", "  "]), ValueError, "expression 1 is empty"),
        (lambda s, img: s(img, text=[3]), TypeError, "must be a string"),
        (lambda s, img: s("/no/such/image.png", text="the circle"), MagNetImageError, "does not exist"),
        (lambda s, img: s({"picture": img, "text": "x"}), ValueError, "needs an 'image'"),
        (lambda s, img: s(img, text="the circle", threshold=1.5), ValueError, "threshold"),
        (lambda s, img: s([], text="the circle"), ValueError, "No images"),
    ],
)
def test_bad_inputs_fail_clearly(segmenter, call, error, message):
    with pytest.raises(error, match=message):
        call(segmenter, scene_images()[0])


def test_unreadable_image_file_fails_clearly(segmenter, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(MagNetImageError, match="not a readable image"):
        segmenter(str(broken), text="the circle")


def test_saved_pipeline_runs_in_a_fresh_process_without_magnet_hf(segmenter, model_folder, tmp_path):
    """Acceptance: model + processor + pipeline saved, then `pipeline(model=DIR, trust_remote_code=True)` elsewhere."""
    saved = tmp_path / "saved"
    segmenter.save_pretrained(saved)
    first, second = scene_images()
    first.save(tmp_path / "first.png")
    np.save(tmp_path / "second.npy", np.asarray(second))
    script = textwrap.dedent(f"""
        import pickle, sys
        import numpy as np
        from transformers import pipeline
        segmenter = pipeline(model={str(saved)!r}, trust_remote_code=True, device="cpu")
        inputs = [
            {{"image": {str(tmp_path / 'first.png')!r}, "text": {EXPRESSIONS!r}}},
            {{"image": np.load({str(tmp_path / 'second.npy')!r}), "text": {EXPRESSIONS[:2]!r}}},
        ]
        results = segmenter(inputs, batch_size=2)
        assert "magnet_hf" not in sys.modules, "magnet_hf was imported"
        plain = [[dict(r, mask=np.asarray(r["mask"]), mode=r["mask"].mode, size=r["mask"].size) for r in rs] for rs in results]
        with open("results.pkl", "wb") as handle:
            pickle.dump(plain, handle)
        print(type(segmenter).__name__, segmenter.task, type(segmenter.model).__name__)
    """)
    result = run_without_magnet_hf(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MagNetReferringSegmentationPipeline referring-image-segmentation MagNetModel" in result.stdout
    with open(tmp_path / "results.pkl", "rb") as handle:
        remote = pickle.load(handle)
    for image, expressions, results in zip((first, second), (EXPRESSIONS, EXPRESSIONS[:2]), remote):
        assert [r["label"] for r in results] == expressions
        expected = direct_predictions(model_folder, image, expressions)
        for result, (mask, probability, score) in zip(results, expected):
            assert result["mode"] == "L" and result["size"] == image.size
            assert set(np.unique(result["mask"])) <= {0, 255}
            assert_mask_matches(result["mask"] > 127, mask, probability)
            assert result["score"] == pytest.approx(score, abs=1e-5)


def test_saved_folder_declares_the_pipeline_and_carries_its_code(segmenter, tmp_path):
    import json

    segmenter.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["custom_pipelines"][REFERRING_SEGMENTATION_TASK]["impl"] == (
        "pipeline_magnet.MagNetReferringSegmentationPipeline"
    )
    assert config["custom_pipelines"][REFERRING_SEGMENTATION_TASK]["pt"] == ["AutoModel"]
    for name in ("pipeline_magnet.py", "processing_magnet.py", "image_processing_magnet.py", "processor_config.json"):
        assert (tmp_path / name).is_file(), name
    reloaded = MagNetProcessor.from_pretrained(tmp_path)
    assert reloaded.max_length == segmenter.processor.max_length


def test_pipeline_without_a_processor_is_refused(model_folder):
    model = MagNetModel.from_pretrained(model_folder)
    with pytest.raises(ValueError, match="needs a MagNetProcessor"):
        MagNetReferringSegmentationPipeline(model=model, device="cpu")


def test_masks_come_back_at_each_images_own_size(segmenter):
    tall = Image.new("RGB", (33, 201), (120, 30, 200))
    result = segmenter(tall, text="the tall shape")[0]
    assert result["mask"].size == (33, 201)
