"""Mask Grounding and cross-modal alignment losses: formulas against hand computations, gradients, switches, loading."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from magnet_hf import MagNetConfig, MagNetForReferringSegmentation, MagNetModel
from magnet_hf.losses_magnet import (
    IGNORE_INDEX,
    alignment_targets,
    mask_grounding_loss,
    pixel_pixel_alignment_loss,
    pixel_text_alignment_loss,
    segmentation_losses,
)

SIZE = 64
MASK_TOKEN_ID = 4


def tiny_config(**overrides) -> MagNetConfig:
    return MagNetConfig.from_preset("magnet-tiny", **overrides)


def tiny_model(seed: int = 0, **overrides) -> MagNetForReferringSegmentation:
    # Eval mode, so that gradients are deterministic (no dropout): the reference modules, which the fast path's
    # eval-mode computation (no gradients) is not.
    torch.manual_seed(seed)
    overrides.setdefault("magnet_implementation", "reference")
    return MagNetForReferringSegmentation(tiny_config(**overrides)).eval()


def training_batch(batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random images and sentences with a rectangular target and one or two masked words per sentence."""
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(batch, 12, dtype=torch.long)
    attention_mask[0, 7:] = 0
    input_ids = torch.randint(5, 40, (batch, 12), generator=generator) * attention_mask
    masked_input_ids, mlm_labels = input_ids.clone(), torch.full_like(input_ids, IGNORE_INDEX)
    for row, positions in enumerate(([2, 4], [3])[:batch] if batch <= 2 else [[2]] * batch):
        mlm_labels[row, positions] = input_ids[row, positions]
        masked_input_ids[row, positions] = MASK_TOKEN_ID
    labels = torch.zeros(batch, SIZE, SIZE)
    labels[:, 12:40, 20:56] = 1
    return {
        "pixel_values": torch.randn(batch, 3, SIZE, SIZE, generator=generator),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "masked_input_ids": masked_input_ids,
        "mlm_labels": mlm_labels,
    }


AUXILIARY_KEYS = {"loss_mask_grounding", "loss_pixel_text", "loss_pixel_pixel"}
SEGMENTATION_KEYS = {"loss_mask", "loss_dice", "loss_class", "loss_total_auxiliary"}


# ------------------------------------------------------------------------------------------------------------------
# The model's loss
# ------------------------------------------------------------------------------------------------------------------


def test_every_term_is_finite_positive_and_weighted_into_the_total():
    model = tiny_model(mask_grounding_loss_weight=0.5, pixel_text_loss_weight=2.0, pixel_pixel_loss_weight=0.25)
    batch = training_batch()
    torch.manual_seed(0)
    out = model(**batch)
    assert set(out.loss_dict) == SEGMENTATION_KEYS | AUXILIARY_KEYS
    for key in AUXILIARY_KEYS:
        value = out.loss_dict[key]
        assert value.dtype == torch.float32 and torch.isfinite(value) and value > 0, (key, value)
    # the MLM cross-entropy of an untrained head is close to that of a uniform guess over the vocabulary
    assert abs(out.loss_dict["loss_mask_grounding"].item() - math.log(1000)) < 1.0
    segmentation, _ = segmentation_losses(out, batch["labels"], model.config)
    expected = (
        segmentation
        + 0.5 * out.loss_dict["loss_mask_grounding"]
        + 2.0 * out.loss_dict["loss_pixel_text"]
        + 0.25 * out.loss_dict["loss_pixel_pixel"]
    )
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-6, atol=1e-5)
    assert out.fused_features is None  # read internally by Mask Grounding, not returned unless asked for


def only_weight(term: str) -> dict[str, float]:
    """Config overrides that keep a single loss term in the total."""
    weights = dict.fromkeys(
        ["mask_loss_weight", "dice_loss_weight", "class_loss_weight", "mask_grounding_loss_weight",
         "pixel_text_loss_weight", "pixel_pixel_loss_weight"], 0.0
    )
    weights[term] = 1.0
    return weights


def gradient_norms(model, batch) -> dict[str, float]:
    model.zero_grad()
    torch.manual_seed(0)
    model(**batch).loss.backward()
    return {name: (p.grad.abs().sum().item() if p.grad is not None else 0.0) for name, p in model.named_parameters()}


def reached(norms: dict[str, float], prefix: str) -> bool:
    return any(value > 0 for name, value in norms.items() if name.startswith(prefix))


@pytest.mark.parametrize("term", ["pixel_text_loss_weight", "pixel_pixel_loss_weight"])
def test_alignment_gradients_reach_the_pixel_decoder(term):
    model = tiny_model(**only_weight(term))
    norms = gradient_norms(model, training_batch())
    assert reached(norms, "model.pixel_decoder.mask_projection.") and reached(norms, "model.pixel_decoder.layers.")
    assert not reached(norms, "mask_grounding.") and not reached(norms, "model.transformer_decoder.")
    if term == "pixel_text_loss_weight":
        assert norms["text_projection.weight"] > 0 and reached(norms, "model.language_fusions.3.")
    else:
        assert norms["text_projection.weight"] == 0


def test_switches_remove_the_terms_and_the_head():
    batch = training_batch()
    without_grounding = tiny_model(use_mask_grounding=False)
    assert without_grounding.mask_grounding is None
    assert not any(name.startswith("mask_grounding.") for name in without_grounding.state_dict())
    out = without_grounding(**batch)  # the collator's masked sentence is accepted and ignored
    assert set(out.loss_dict) == SEGMENTATION_KEYS | {"loss_pixel_text", "loss_pixel_pixel"}

    without_alignment = tiny_model(use_alignment_loss=False)
    assert set(without_alignment(**batch).loss_dict) == SEGMENTATION_KEYS | {"loss_mask_grounding"}

    neither = tiny_model(use_mask_grounding=False, use_alignment_loss=False)
    out = neither(**batch)
    assert set(out.loss_dict) == SEGMENTATION_KEYS
    torch.testing.assert_close(out.loss, segmentation_losses(out, batch["labels"], neither.config)[0])
    # without a masked sentence Mask Grounding is skipped even when the head exists
    plain = {k: v for k, v in batch.items() if k not in ("masked_input_ids", "mlm_labels")}
    assert "loss_mask_grounding" not in tiny_model()(**plain).loss_dict


def test_bad_mask_grounding_inputs_are_explained():
    model = tiny_model()
    batch = training_batch()
    with pytest.raises(ValueError, match="both `masked_input_ids` and `mlm_labels`"):
        model(**{k: v for k, v in batch.items() if k != "mlm_labels"})
    with pytest.raises(ValueError, match="pass `labels`"):
        model(**{k: v for k, v in batch.items() if k != "labels"})
    with pytest.raises(ValueError, match=r"`masked_input_ids` \(2, 11\) must match `input_ids` \(2, 12\)"):
        model(**{**batch, "masked_input_ids": batch["masked_input_ids"][:, :11]})
    bad_labels = batch["mlm_labels"].clone()
    bad_labels[0, 0] = 5000
    with pytest.raises(ValueError, match=r"token ids in \[0, 1000\) or -100"):
        model(**{**batch, "mlm_labels": bad_labels})


def test_empty_and_full_masks_give_finite_losses_and_gradients():
    model = tiny_model()
    batch = training_batch()
    batch["labels"][0] = 0  # nothing to find
    batch["labels"][1] = 1  # everything is the target
    out = model(**batch)
    for key in AUXILIARY_KEYS | SEGMENTATION_KEYS:
        assert torch.isfinite(out.loss_dict[key]), key
    # no sample has both target and background pixels: the alignment terms contribute nothing
    assert out.loss_dict["loss_pixel_text"] == 0 and out.loss_dict["loss_pixel_pixel"] == 0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_predictions_do_not_depend_on_the_training_heads():
    with_head = tiny_model(seed=3)
    without_head = tiny_model(seed=4, use_mask_grounding=False, use_alignment_loss=False)
    missing, unexpected = without_head.load_state_dict(with_head.state_dict(), strict=False)
    assert missing == [] and unexpected and all(key.startswith("mask_grounding.") for key in unexpected)
    batch = training_batch()
    with torch.no_grad():
        reference = with_head(batch["pixel_values"], batch["input_ids"], batch["attention_mask"]).pred_masks
        assert torch.equal(without_head(batch["pixel_values"], batch["input_ids"], batch["attention_mask"]).pred_masks, reference)
        with_losses = with_head(**batch)
    assert with_losses.loss_dict.keys() >= AUXILIARY_KEYS
    assert torch.equal(with_losses.pred_masks, reference)


def test_losses_stay_in_fp32_under_bfloat16_autocast():
    model = tiny_model()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(**training_batch())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(out.loss_dict[key].dtype == torch.float32 for key in AUXILIARY_KEYS)


def test_mask_grounding_loss_on_constructed_logits():
    logits = torch.zeros(2, 10)
    logits[0, 3] = 2.0  # the right token is favoured
    logits[1, 7] = 1.0  # a wrong token is favoured
    labels = torch.tensor([3, 5])
    first = -2.0 + math.log(math.exp(2.0) + 9)
    second = math.log(math.exp(1.0) + 9)
    assert mask_grounding_loss(logits, labels).item() == pytest.approx((first + second) / 2, rel=1e-6)
    no_tokens = mask_grounding_loss(torch.zeros(0, 10, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert no_tokens.item() == 0 and no_tokens.requires_grad


# ------------------------------------------------------------------------------------------------------------------
# Alignment formulas
# ------------------------------------------------------------------------------------------------------------------


def test_alignment_targets_follow_area_coverage():
    labels = torch.zeros(1, 8, 8)
    labels[0, :4, :4] = 1  # the top-left cell of a 2x2 grid, fully
    labels[0, 4:, 4:6] = 1  # half of the bottom-right cell
    labels[0, :1, 4:] = 1  # a quarter of the top-right cell
    assert alignment_targets(labels, (2, 2)).tolist() == [[1.0, 0.0, 0.0, 1.0]]


def hand_pixel_text(pixels: list[list[float]], text: list[float], targets: list[int], temperature: float) -> float:
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    t = unit(text)
    scores = [sum(a * b for a, b in zip(unit(p), t)) / temperature for p in pixels]
    negatives = [s for s, y in zip(scores, targets) if not y]
    terms = [-math.log(math.exp(s) / (math.exp(s) + sum(math.exp(n) for n in negatives))) for s, y in zip(scores, targets) if y]
    return sum(terms) / len(terms)


def test_pixel_text_loss_matches_a_hand_computation():
    pixels = [[1.0, 0.0], [0.6, 0.8], [0.0, 2.0], [-1.0, 0.5]]  # a 2x2 grid of 2-d embeddings
    text, targets, temperature = [3.0, 1.0], [1, 1, 0, 0], 0.5
    embedding_map = torch.tensor(pixels).T.reshape(1, 2, 2, 2)
    value = pixel_text_alignment_loss(embedding_map, torch.tensor([text]), torch.tensor([targets]).float(), temperature)
    assert value.item() == pytest.approx(hand_pixel_text(pixels, text, targets, temperature), rel=1e-6)

    # the same targets, with the target pixels now pointing at the text: the loss drops
    aligned = [text, text, pixels[2], pixels[3]]
    better = pixel_text_alignment_loss(
        torch.tensor(aligned).T.reshape(1, 2, 2, 2), torch.tensor([text]), torch.tensor([targets]).float(), temperature
    )
    assert better.item() == pytest.approx(hand_pixel_text(aligned, text, targets, temperature), rel=1e-6)
    assert better < value


def test_pixel_text_loss_skips_samples_without_both_classes():
    torch.manual_seed(0)
    embeddings, text = torch.randn(3, 4, 2, 2, requires_grad=True), torch.randn(3, 4)
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0] * 4, [1.0] * 4])
    batch_value = pixel_text_alignment_loss(embeddings, text, targets, 0.1)
    alone = pixel_text_alignment_loss(embeddings[:1], text[:1], targets[:1], 0.1)
    torch.testing.assert_close(batch_value, alone)
    batch_value.backward()
    assert torch.isfinite(embeddings.grad).all() and embeddings.grad[1:].abs().sum() == 0


def hand_pixel_pixel(pixels: list[list[float]], targets: list[int], temperature: float) -> float:
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    z = [unit(p) for p in pixels]
    sim = lambda a, b: sum(x * y for x, y in zip(z[a], z[b])) / temperature  # noqa: E731
    positives = [i for i, y in enumerate(targets) if y]
    negatives = [i for i, y in enumerate(targets) if not y]
    per_anchor = []
    for a in positives:
        pairs = [
            -math.log(math.exp(sim(a, p)) / (math.exp(sim(a, p)) + sum(math.exp(sim(a, n)) for n in negatives)))
            for p in positives
            if p != a
        ]
        per_anchor.append(sum(pairs) / len(pairs))
    return sum(per_anchor) / len(per_anchor)


def test_pixel_pixel_loss_matches_a_hand_computation():
    pixels = [[1.0, 0.2], [0.7, 0.9], [0.1, 1.0], [-1.0, 0.3], [0.5, -0.5], [0.9, 0.0]]  # a 2x3 grid
    targets = [1, 1, 0, 0, 0, 1]
    embedding_map = torch.tensor(pixels).T.reshape(1, 2, 2, 3)
    # max_pixels large enough to take every pixel: no sampling involved
    value = pixel_pixel_alignment_loss(embedding_map, torch.tensor([targets]).float(), 0.2, max_pixels=16)
    assert value.item() == pytest.approx(hand_pixel_pixel(pixels, targets, 0.2), rel=1e-6)


def test_pixel_pixel_sampling_respects_the_cap():
    # 40 target pixels all equal to u, 60 background pixels all equal to v: whichever pixels are drawn, every
    # anchor/positive pair scores 1/t and every anchor/negative pair u.v/t, so the loss reveals how many negatives
    # were drawn: max_pixels - ceil(max_pixels / 2) when there are enough target pixels.
    u, v, temperature = torch.tensor([1.0, 0.0]), torch.tensor([0.6, 0.8]), 0.5
    targets = torch.zeros(1, 100)
    targets[0, :40] = 1
    embeddings = torch.where(targets[0, :, None].bool(), u, v).T.reshape(1, 2, 10, 10)
    for max_pixels, negatives in ((10, 5), (11, 5), (64, 32), (200, 60)):
        value = pixel_pixel_alignment_loss(embeddings, targets, temperature, max_pixels, torch.Generator().manual_seed(1))
        expected = F.softplus(torch.tensor(math.log(negatives) + (0.6 - 1.0) / temperature)).item()
        assert value.item() == pytest.approx(expected, rel=1e-5), max_pixels


def test_pixel_pixel_loss_needs_two_targets_and_a_background_pixel():
    embeddings = torch.randn(3, 4, 2, 2, requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0] * 4, [0.0] * 4])
    value = pixel_pixel_alignment_loss(embeddings, targets, 0.1, max_pixels=8)
    assert value.item() == 0 and value.requires_grad
    value.backward()
    assert torch.isfinite(embeddings.grad).all()


# ------------------------------------------------------------------------------------------------------------------
# Loading and saving
# ------------------------------------------------------------------------------------------------------------------


def test_checkpoint_without_the_head_loads_silently_and_initialises_it(tmp_path):
    source = tiny_model(seed=5)
    # what a converted released checkpoint looks like: no Mask Grounding weights, default config (head on)
    released = {k: v for k, v in source.state_dict().items() if not k.startswith("mask_grounding.")}
    source.save_pretrained(tmp_path, state_dict=released)
    loaded, info = MagNetForReferringSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert torch.equal(loaded.text_projection.weight, source.text_projection.weight)
    head = loaded.mask_grounding
    assert all(torch.isfinite(p).all() for p in head.parameters())
    std = loaded.config.init_std
    predictor = head.token_predictor
    for linear in (
        head.language_projection[0], head.visual_projection[0], predictor.output_projection,
        predictor.encoder.layer[0].intermediate.dense, predictor.encoder.layer[1].attention.self.query,
        predictor.head.transform.dense,
    ):
        assert abs(linear.weight.std().item() - std) < 0.25 * std and torch.all(linear.bias == 0)
    assert abs(head.modality_embeddings.std().item() - std) < 0.5 * std
    assert torch.all(head.mask_norm.weight == 1) and torch.all(predictor.head.bias == 0)
    # the vocabulary projection is the loaded word embedding matrix itself
    assert predictor.head.decoder.weight is loaded.model.text_encoder.embeddings.word_embeddings.weight
    assert torch.equal(predictor.head.decoder.weight, source.model.text_encoder.embeddings.word_embeddings.weight)
    # the initialised head trains: its loss is finite
    assert torch.isfinite(loaded.eval()(**training_batch()).loss_dict["loss_mask_grounding"])


def test_trained_head_is_saved_and_ignored_by_the_base_model(tmp_path):
    model = tiny_model(seed=6)
    with torch.no_grad():
        model.mask_grounding.token_predictor.head.bias.add_(0.5)  # as after training
    model.save_pretrained(tmp_path)
    loaded = MagNetForReferringSegmentation.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    base, info = MagNetModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    # a model without the head reads the trained checkpoint without complaint (inference or an ablation)
    without, info = MagNetForReferringSegmentation.from_pretrained(tmp_path, use_mask_grounding=False, output_loading_info=True)
    assert without.mask_grounding is None and not info["unexpected_keys"]


def test_auxiliary_losses_work_from_hub_remote_code(tmp_path):
    """The saved folder's flat copy of the modelling code brings the loss module along."""
    import os
    import subprocess
    import sys
    import textwrap

    model = tiny_model(seed=7)
    batch = training_batch()
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "losses_magnet.py").is_file()
    torch.manual_seed(0)  # the pixel-to-pixel sampling draws from the global generator
    with torch.no_grad():
        expected = model(**batch).loss_dict
    torch.save((batch, {key: expected[key] for key in AUXILIARY_KEYS}), tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForImageSegmentation
        model = AutoModelForImageSegmentation.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True).eval()
        assert "magnet_hf" not in sys.modules
        batch, expected = torch.load({str(tmp_path / 'io.pt')!r})
        torch.manual_seed(0)
        with torch.no_grad():
            losses = model(**batch).loss_dict
        for key, value in expected.items():
            torch.testing.assert_close(losses[key], value, rtol=1e-5, atol=1e-6)
        print("ok", sorted(expected))
    """)
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok ['loss_mask_grounding', 'loss_pixel_pixel', 'loss_pixel_text']" in result.stdout
