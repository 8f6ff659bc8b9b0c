"""Packing a trained folder as the embedded demo model, and refreshing a folder's copied remote code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import magnet_hf
from magnet_hf import MagNetForReferringSegmentation
from magnet_hf.demo.packing import REMOTE_CODE_MODULES, DemoPackingError, pack_demo_model, refresh_remote_code

PACKAGE = Path(magnet_hf.__file__).parent


@pytest.fixture()
def trained_folder(tiny_model, tiny_processor, tmp_path):
    assert tiny_model.config.use_mask_grounding  # the head a training run saves and the demo model leaves out
    torch.manual_seed(1)
    with torch.no_grad():  # open the fusion gates post_init leaves closed, so every path counts in the output
        for name, parameter in tiny_model.named_parameters():
            if ".gate." in name:
                parameter.normal_(0.0, 0.02)
    folder = tmp_path / "run" / "best"
    tiny_model.save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    return folder


def _inputs(processor):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    batch = processor(images=[image, image], text=["the red circle", "the second square from the left"], return_tensors="pt")
    return {key: batch[key] for key in ("pixel_values", "input_ids", "attention_mask")}


def test_packed_folder_loads_in_float32_from_float16_weights_without_mask_grounding(trained_folder, tiny_model, tiny_processor, tmp_path):
    destination = tmp_path / "demo_model"
    destination.mkdir()
    (destination / "README.md").write_text("# the card\n")
    (destination / "failure_examples.png").write_bytes(b"png")
    (destination / "stale.bin").write_bytes(b"old")
    with pytest.raises(DemoPackingError, match="already exists; pass --overwrite"):
        pack_demo_model(trained_folder, destination)
    assert (destination / "stale.bin").read_bytes() == b"old"

    packed = pack_demo_model(trained_folder, destination, overwrite=True)
    with safe_open(str(trained_folder / "model.safetensors"), framework="pt") as saved:
        head = [key for key in saved.keys() if key.startswith("mask_grounding.")]  # tied weights are saved once
    assert head and packed["dropped_tensors"] == len(head)
    with safe_open(str(destination / "model.safetensors"), framework="pt") as saved:
        keys = list(saved.keys())
        assert {saved.get_tensor(key).dtype for key in keys if saved.get_tensor(key).is_floating_point()} == {torch.float16}
    assert keys and not [key for key in keys if key.startswith("mask_grounding.")]
    config = json.loads((destination / "config.json").read_text())
    assert config["dtype"] == "float32" and config["use_mask_grounding"] is False
    assert (destination / "README.md").read_text() == "# the card\n" and (destination / "failure_examples.png").is_file()
    assert not (destination / "stale.bin").exists()
    for name in REMOTE_CODE_MODULES:
        assert (destination / name).read_bytes() == (PACKAGE / name).read_bytes(), name
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo_model", "run"]  # no staging left

    loaded = MagNetForReferringSegmentation.from_pretrained(destination).eval()
    assert next(loaded.parameters()).dtype == torch.float32
    inputs = _inputs(tiny_processor)
    with torch.no_grad():
        expected, packed_masks = tiny_model(**inputs).pred_masks, loaded(**inputs).pred_masks
    # float16 keeps 11 significant bits: the masks move by a few parts in a thousand of their range, no more.
    assert 0 < (packed_masks - expected).abs().max() <= 5e-3 * expected.abs().max()


def test_packing_refuses_a_destination_holding_the_source_and_a_folder_without_weights(trained_folder, tmp_path):
    with pytest.raises(DemoPackingError, match="holds the input of --source"):
        pack_demo_model(trained_folder, trained_folder.parent, overwrite=True)
    assert (trained_folder / "model.safetensors").is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DemoPackingError, match="no config.json"):
        pack_demo_model(tmp_path / "empty", tmp_path / "out")


def test_refresh_rewrites_the_remote_code_and_keeps_the_weights(trained_folder, tmp_path):
    folder = tmp_path / "demo_model"
    pack_demo_model(trained_folder, folder)
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "modeling_magnet.py").write_text("# an old copy\n")
    (folder / "removed_module_magnet.py").write_text("# a module the package no longer has\n")
    written = refresh_remote_code(folder)
    assert written[-1] == "config.json" and set(REMOTE_CODE_MODULES) <= set(written)
    assert sorted(path.name for path in folder.glob("*.py")) == sorted(REMOTE_CODE_MODULES)
    assert (folder / "modeling_magnet.py").read_bytes() == (PACKAGE / "modeling_magnet.py").read_bytes()
    assert (folder / "model.safetensors").read_bytes() == weights
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModel"] == "modeling_magnet.MagNetModel"
