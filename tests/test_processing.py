"""Image processor and processor: every input kind, the released text rule, the released post-processing."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from magnet_hf import MagNetImageError, MagNetImageProcessor, MagNetImageProcessorPil, MagNetModelOutput
from magnet_hf.image_processing_magnet import load_image_as_rgb

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def released_transform(image: Image.Image, size: int) -> np.ndarray:
    """The released evaluation transform written out: PIL bilinear resize, /255, ImageNet normalisation."""
    array = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
    return ((array - MEAN) / STD).transpose(2, 0, 1)


@pytest.fixture(params=["pil", "torchvision"])
def processor(request):
    backend = {"pil": MagNetImageProcessorPil, "torchvision": MagNetImageProcessor}[request.param]
    return backend(size={"height": 64, "width": 64})


def random_image(height=37, width=53, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_rgb_image_matches_the_released_transform(processor):
    image = random_image()
    out = processor(image)
    assert out["pixel_values"].shape == (1, 3, 64, 64) and out["pixel_values"].dtype == torch.float32
    assert out["original_sizes"].tolist() == [[37, 53]]
    if processor.backend == "pil":  # the released transform, bit for bit
        np.testing.assert_array_equal(out["pixel_values"][0].numpy(), released_transform(image, 64))
    else:  # upsampling: the two bilinear filters agree to float32 rounding of the normalisation
        np.testing.assert_allclose(out["pixel_values"][0].numpy(), released_transform(image, 64), atol=1e-5, rtol=0)


def test_torchvision_backend_stays_within_the_stated_tolerance_when_downscaling():
    # README "Image processing backends": antialiased bilinear on uint8 tensors vs PIL's filter, at most 1/255 apart
    # per pixel before normalisation (<= 0.0175 after dividing by the smallest ImageNet std).
    image = random_image(480, 640, seed=3)
    pil = MagNetImageProcessorPil(size={"height": 120, "width": 120})(image)["pixel_values"]
    torchvision = MagNetImageProcessor(size={"height": 120, "width": 120})(image)["pixel_values"]
    difference = (pil - torchvision).abs()
    assert 0 < difference.max() <= 1 / 255 / 0.224 + 1e-6
    np.testing.assert_array_equal(pil[0].numpy(), released_transform(image, 120))


def test_standard_keywords_and_saved_settings_take_effect(tmp_path):
    image = random_image(40, 30)
    for backend in (MagNetImageProcessorPil, MagNetImageProcessor):
        configured = backend(size={"height": 32, "width": 48}, do_normalize=False, rescale_factor=1 / 510)
        configured.save_pretrained(tmp_path / backend.__name__)
        loaded = backend.from_pretrained(tmp_path / backend.__name__)
        for processor in (configured, loaded):
            out = processor(image)["pixel_values"]
            assert out.shape == (1, 3, 32, 48) and 0 <= out.min() and out.max() <= 0.5
        raw = backend()(np.asarray(image), do_resize=False, do_rescale=False, do_normalize=False)["pixel_values"]
        assert raw.shape == (1, 3, 40, 30) and torch.equal(raw[0], torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float())
        first = backend()(np.asarray(image).transpose(2, 0, 1), input_data_format="channels_first", do_resize=False)
        last = backend()(np.asarray(image), data_format="channels_last", do_resize=False)
        assert torch.equal(first["pixel_values"].permute(0, 2, 3, 1), last["pixel_values"])
        nearest = backend()(image, size={"height": 20, "width": 20}, resample=Image.Resampling.NEAREST)["pixel_values"]
        assert not torch.equal(nearest, backend()(image, size={"height": 20, "width": 20})["pixel_values"])
        grey = backend()(image.convert("L"), do_convert_rgb=False, do_normalize=False, do_resize=False)["pixel_values"]
        assert grey.shape == (1, 1, 40, 30)
        with pytest.raises(TypeError):
            backend()(image, not_a_keyword=True)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "1", "LA", "I;16", "I", "F"])
def test_every_mode_becomes_rgb(processor, mode):
    base = random_image()
    if mode in ("I;16", "I"):
        image = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16 if mode == "I;16" else np.int32))
        expected = base.convert("L").convert("RGB")  # 16-bit rescaled to 8-bit gives back the 8-bit grey
    elif mode == "F":
        image = Image.fromarray(np.asarray(base.convert("L"), dtype=np.float32) / 255)
        expected = base.convert("L").convert("RGB")
    else:
        image = base.convert(mode)
        expected = None
    rgb = load_image_as_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == base.size
    if expected is not None:
        np.testing.assert_array_equal(np.asarray(rgb), np.asarray(expected))
    assert processor(image)["pixel_values"].shape == (1, 3, 64, 64)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(load_image_as_rgb(image))[0, 0].tolist() == [255, 255, 255]


def test_numpy_torch_and_paths_give_the_same_pixels(processor, tmp_path):
    image = random_image()
    array = np.asarray(image)
    path = tmp_path / "image.png"
    image.save(path)
    reference = processor(image)["pixel_values"]
    variants = [array, array.transpose(2, 0, 1), torch.from_numpy(array.copy()), torch.from_numpy(array.transpose(2, 0, 1).copy()),
                array.astype(np.float32) / 255, array.astype(np.uint16) * 257, str(path), path]
    for variant in variants:
        torch.testing.assert_close(processor(variant)["pixel_values"], reference, rtol=0, atol=0)
    assert processor([image, str(path)])["pixel_values"].shape == (2, 3, 64, 64)


def test_tiny_and_large_images(processor):
    assert processor(random_image(1, 1))["pixel_values"].shape == (1, 3, 64, 64)
    large = Image.new("RGB", (6000, 4000), (10, 20, 30))
    out = processor(large)
    assert out["pixel_values"].shape == (1, 3, 64, 64) and out["original_sizes"].tolist() == [[4000, 6000]]


def test_bad_images_get_clear_errors(processor, tmp_path):
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    cases = [
        (str(tmp_path / "corrupt.jpg"), "not a readable image"),
        (str(tmp_path / "missing.png"), "does not exist"),
        (np.zeros((5, 5, 7), dtype=np.uint8), "not an image"),
        (np.full((5, 5, 3), 2.0, dtype=np.float32), r"values in \[0, 1\]"),
        (np.full((5, 5), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((0, 5, 3), dtype=np.uint8), "empty"),
        ("", "does not exist"),
        (42, "unsupported type int"),
        ([], "No images"),
    ]
    for image, message in cases:
        with pytest.raises(MagNetImageError, match=message):
            processor(image)


def test_text_follows_the_released_cut_and_pad_rule(tiny_processor, caplog):
    encoded = tiny_processor(text=["the red circle", "a small green square left of the big blue triangle"])
    assert encoded["input_ids"].shape == (2, 20) and encoded["input_ids"].dtype == torch.long
    cls, sep = tiny_processor.tokenizer.cls_token_id, tiny_processor.tokenizer.sep_token_id
    first = encoded["input_ids"][0].tolist()
    assert first[0] == cls and first[4] == sep and first[5:] == [0] * 15
    assert encoded["attention_mask"][0].tolist() == [1] * 5 + [0] * 15
    long_text = " ".join(["red"] * 30)
    with caplog.at_level(logging.WARNING):
        cut = tiny_processor(text=long_text)
    assert "cut to 20" in caplog.text
    assert cut["attention_mask"].sum().item() == 20
    assert cut["input_ids"][0, 0].item() == cls and sep not in cut["input_ids"][0].tolist()  # as released


@pytest.mark.parametrize("text", ["", "   ", ["the dog", ""]])
def test_empty_expressions_are_refused(tiny_processor, text):
    with pytest.raises(ValueError, match="is empty"):
        tiny_processor(text=text)


def test_images_and_expressions_pair_up(tiny_processor):
    image = random_image()
    one_image = tiny_processor(images=image, text=["the dog", "the cat", "the man"])
    assert one_image["pixel_values"].shape[0] == 3 and one_image["original_sizes"].shape == (3, 2)
    one_text = tiny_processor(images=[image, image], text="the dog")
    assert one_text["input_ids"].shape == (2, 20)
    with pytest.raises(ValueError, match="2 images and 3 expressions"):
        tiny_processor(images=[image, image], text=["a", "b", "c"])


def test_post_processing_is_the_released_one():
    generator = torch.Generator().manual_seed(0)
    outputs = MagNetModelOutput(pred_masks=torch.randn(2, 1, 8, 8, generator=generator), pred_logits=torch.randn(2, 1, 2, generator=generator))
    results = MagNetImageProcessor().post_process_referring_segmentation(outputs, [(30, 20), (8, 8)])
    for index, (height, width) in enumerate([(30, 20), (8, 8)]):
        logits = F.interpolate(outputs.pred_masks[index : index + 1], size=(height, width), mode="bilinear", align_corners=True)
        expected = logits.sigmoid()[0, 0] > 0.5  # the class weighting is a softmax over one query: exactly 1
        assert results[index]["mask"].dtype == torch.bool
        assert torch.equal(results[index]["mask"], expected)
        probability = logits.sigmoid()[0, 0]
        assert results[index]["score"] == pytest.approx(probability[expected].mean().item())
    empty = MagNetModelOutput(pred_masks=torch.full((1, 1, 4, 4), -20.0), pred_logits=torch.zeros(1, 1, 2))
    result = MagNetImageProcessor().post_process_referring_segmentation(empty)
    assert result[0]["mask"].shape == (16, 16) and not result[0]["mask"].any() and result[0]["score"] == 0.0
    with pytest.raises(ValueError, match="target sizes"):
        MagNetImageProcessor().post_process_referring_segmentation(outputs, [(3, 3)])


def test_processor_round_trip(tiny_processor, tmp_path):
    from magnet_hf import MagNetProcessor

    tiny_processor.save_pretrained(tmp_path)
    loaded = MagNetProcessor.from_pretrained(tmp_path)
    image = random_image()
    a, b = tiny_processor(images=image, text="the red circle"), loaded(images=image, text="the red circle")
    assert loaded.max_length == 20 and all(torch.equal(a[k], b[k]) for k in a)


def test_processors_keep_their_backend_and_older_folders_load_with_pil(tokenizer, tmp_path):
    from transformers import AutoImageProcessor, AutoProcessor

    from magnet_hf import MagNetProcessor

    for backend in (MagNetImageProcessorPil, MagNetImageProcessor):
        folder = tmp_path / backend.__name__
        MagNetProcessor(backend(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
        assert type(MagNetProcessor.from_pretrained(folder).image_processor) is backend
        assert type(AutoProcessor.from_pretrained(folder).image_processor) is backend
        # transformers' own rule for the image processor alone: the backend is chosen at load time.
        assert type(AutoImageProcessor.from_pretrained(folder)) is MagNetImageProcessor
        assert type(AutoImageProcessor.from_pretrained(folder, backend="pil")) is MagNetImageProcessorPil
        loaded = MagNetProcessor.from_pretrained(folder, backend="pil")
        assert type(loaded.image_processor) is MagNetImageProcessorPil and loaded.image_processor.size["height"] == 32
    # A folder written before the torchvision backend existed records no backend (its class was the PIL-only one).
    legacy = tmp_path / "legacy"
    MagNetProcessor(MagNetImageProcessorPil(size={"height": 32, "width": 32}), tokenizer).save_pretrained(legacy)
    config_file = legacy / "processor_config.json"
    config = json.loads(config_file.read_text())
    assert config.pop("image_processor_backend") == "pil"
    assert config["image_processor"]["image_processor_type"] == "MagNetImageProcessor"  # transformers drops "Pil"
    config_file.write_text(json.dumps(config))
    assert type(MagNetProcessor.from_pretrained(legacy).image_processor) is MagNetImageProcessorPil
    with pytest.raises(ValueError, match="backend must be one of"):
        MagNetProcessor.from_pretrained(legacy, backend="cuda")
