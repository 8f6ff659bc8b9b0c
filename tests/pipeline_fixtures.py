"""Helpers for the pipeline, CLI and Hub tests: a saved magnet-tiny folder and direct (pipeline-free) predictions.

Imported by ``tests/test_pipeline.py``, ``tests/test_cli.py`` and ``tests/test_hub.py`` (pytest puts ``tests/`` on
``sys.path``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from conftest import write_test_tokenizer
from PIL import Image

# Random weights give mask probabilities within ~1e-3 of 0.5, where batching noise could flip pixels; scaling the
# last mask-embedding layer spreads the logits so that masks are clear-cut and differ from one expression to the next.
MASK_LOGIT_SHARPENING = 300.0
# Batched and single forward passes agree to ~1e-6 in probability; pixels this close to the threshold may differ.
THRESHOLD_BAND = 1e-4


def sharpened_tiny_model(seed: int = 0):
    """A randomly initialised magnet-tiny (128 px) whose masks are far from the threshold on most pixels."""
    from magnet_hf import MagNetConfig, MagNetForReferringSegmentation

    torch.manual_seed(seed)
    model = MagNetForReferringSegmentation(MagNetConfig.from_preset("magnet-tiny")).eval()
    last_layer = model.model.transformer_decoder.decoder.mask_predictor.mask_embedder.get_submodule("2.0")
    with torch.no_grad():
        last_layer.weight.mul_(MASK_LOGIT_SHARPENING)
        last_layer.bias.mul_(MASK_LOGIT_SHARPENING)
    return model


def tiny_processor(tokenizer_folder: Path):
    from transformers import BertTokenizer

    from magnet_hf import MagNetImageProcessor, MagNetProcessor

    tokenizer = BertTokenizer.from_pretrained(str(write_test_tokenizer(tokenizer_folder)))
    return MagNetProcessor(MagNetImageProcessor(size={"height": 128, "width": 128}), tokenizer)


def save_model_folder(folder: Path, seed: int = 0) -> Path:
    """`folder` with a sharpened magnet-tiny and its processor, as `save_pretrained` writes them (no pipeline)."""
    model = sharpened_tiny_model(seed)
    processor = tiny_processor(folder.parent / f"{folder.name}-tokenizer")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def scene_images() -> list[Image.Image]:
    """Two images of different sizes and aspect ratios (neither is the model's 128x128)."""
    rng = np.random.default_rng(7)
    first = Image.fromarray(rng.integers(0, 256, size=(90, 150, 3), dtype=np.uint8))
    second = Image.fromarray(rng.integers(0, 256, size=(140, 100, 3), dtype=np.uint8))
    return [first, second]


def direct_predictions(folder: Path, image: Image.Image, expressions: list[str], threshold: float = 0.5):
    """Per expression `(mask bool array, probability array, score)` from a direct model call, batch of all."""
    import torch.nn.functional as F

    from magnet_hf import MagNetModel, MagNetProcessor

    model = MagNetModel.from_pretrained(folder).eval()
    processor = MagNetProcessor.from_pretrained(folder)
    inputs = processor(images=image, text=expressions)
    with torch.no_grad():
        outputs = model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
    results = processor.post_process_referring_segmentation(outputs, inputs["original_sizes"], threshold)
    probabilities = F.interpolate(
        outputs.pred_masks, size=(image.height, image.width), mode="bilinear", align_corners=True
    ).sigmoid()[:, 0]
    return [(r["mask"].numpy(), p.numpy(), r["score"]) for r, p in zip(results, probabilities)]


def assert_mask_matches(mask: np.ndarray, expected: np.ndarray, probability: np.ndarray, threshold: float = 0.5):
    """`mask` equals `expected` on every pixel whose probability is not within THRESHOLD_BAND of the threshold."""
    decided = np.abs(probability - threshold) > THRESHOLD_BAND
    assert decided.mean() > 0.99, "too few pixels are clear of the threshold for a meaningful comparison"
    assert mask.shape == expected.shape
    mismatched = (mask != expected) & decided
    assert not mismatched.any(), f"{int(mismatched.sum())} decided pixels differ"


def run_without_magnet_hf(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Runs `script` in a fresh interpreter that cannot import this checkout's magnet_hf, offline."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment["HF_HUB_OFFLINE"] = "1"
    environment["HF_MODULES_CACHE"] = str(cwd / "hf_modules")  # remote code of earlier runs must not be reused
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, env=environment)
