"""The Mask Grounding probe: how much of the masked-word loss depends on the scene (image and mask) shown."""

from __future__ import annotations

import json

import pytest
import torch

from magnet_hf import MagNetConfig, MagNetForReferringSegmentation, MagNetImageProcessor, MagNetProcessor
from magnet_hf.data import build_synthetic_dataset, explode_sentences
from magnet_hf.losses_magnet import IGNORE_INDEX
from magnet_hf.training.grounding_probe import mask_grounding_scene_dependence


@pytest.fixture(scope="module")
def probe_setup(tokenizer):
    torch.manual_seed(0)
    config = MagNetConfig.from_preset("magnet-tiny", image_size=64, mask_grounding_visual_stride=8, vocab_size=tokenizer.vocab_size)
    model = MagNetForReferringSegmentation(config).eval()
    processor = MagNetProcessor(MagNetImageProcessor(size={"height": 64, "width": 64}), tokenizer)
    rows = explode_sentences(build_synthetic_dataset({"test": 4}, image_size=64, seed=1)["test"])
    return model, processor, rows


def test_an_untrained_head_reads_the_scene_and_the_numbers_are_the_models_own_loss(probe_setup):
    model, processor, rows = probe_setup
    groups = {"colour": ("red", "green", "blue", "yellow"), "shape": ("circle", "square", "triangle")}
    result = mask_grounding_scene_dependence(model, processor, rows, groups, batch_size=len(rows))
    tokenizer = processor.tokenizer
    texts = [sentences[0].split() for sentences in rows["sentences"]]
    assert result["shape"]["words"] == sum(any(w in groups["shape"] for w in t) for t in texts)
    # Another scene changes the loss (if only slightly: the tied vocabulary head starts with logits near zero), where
    # the same scene twice (next test) gives no gap at all.
    assert all(entry["gap"] != 0 and entry["own_scene"] > 1 for entry in result.values())
    # own_scene is the model's Mask Grounding loss with the first shape word of every sentence masked.
    from magnet_hf.data.collate import DataCollatorForReferringSegmentation

    batch = DataCollatorForReferringSegmentation(processor, train=False, mask_grounding=False)(list(rows))
    ids = batch["input_ids"]
    shape_ids = torch.tensor([tokenizer.convert_tokens_to_ids(w) for w in groups["shape"]])
    first = torch.isin(ids, shape_ids) & (torch.isin(ids, shape_ids).cumsum(1) == 1)
    mlm_labels = torch.where(first, ids, torch.full_like(ids, IGNORE_INDEX))
    with torch.no_grad():
        direct = model(**batch, masked_input_ids=ids.masked_fill(first, tokenizer.mask_token_id), mlm_labels=mlm_labels)
    assert result["shape"]["own_scene"] == pytest.approx(float(direct.loss_dict["loss_mask_grounding"]), rel=1e-6)


def test_the_same_scene_twice_gives_no_gap_and_bad_input_is_refused(probe_setup):
    model, processor, rows = probe_setup
    shapes = ("circle", "square", "triangle")
    row = next(r for r in rows if any(word in shapes for word in r["sentences"][0].split()))
    result = mask_grounding_scene_dependence(model, processor, [row] * 4, {"shape": shapes})  # rolled: the same scene
    assert result["shape"]["words"] == 4 and result["shape"]["gap"] == 0
    with pytest.raises(ValueError, match="batch_size"):
        mask_grounding_scene_dependence(model, processor, rows, batch_size=1)
    torch.manual_seed(0)
    no_head = MagNetForReferringSegmentation(MagNetConfig.from_preset("magnet-tiny", use_mask_grounding=False))
    with pytest.raises(ValueError, match="no Mask Grounding head"):
        mask_grounding_scene_dependence(no_head, processor, rows)


def test_cli_prints_the_table_writes_json_and_refuses_a_model_without_the_head(probe_setup, tmp_path, capsys):
    from magnet_hf.commands.probe_mask_grounding import main

    model, processor, _ = probe_setup
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    output = tmp_path / "probe.json"
    argv = ["--model", str(folder), "--heldout-images", "3", "--max-sentences", "12", "--output", str(output)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    written = json.loads(output.read_text())
    assert set(written) <= {"colour", "shape", "position or rank"} and written
    for name, entry in written.items():
        assert f"| {name} | {entry['words']} | {entry['own_scene']:.4f} |" in printed
    assert main(argv) == 2 and "exists" in capsys.readouterr().err  # no --overwrite
    torch.manual_seed(0)
    MagNetForReferringSegmentation(MagNetConfig.from_preset("magnet-tiny", image_size=64, use_mask_grounding=False,
                                                            vocab_size=processor.tokenizer.vocab_size)).save_pretrained(folder)
    capsys.readouterr()
    assert main(["--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no Mask Grounding head" in err and len(err.strip().splitlines()) == 1
    assert main(["--model", str(tmp_path / "missing")]) == 2
