"""Mask Grounding as the paper describes it: the masked sentence through the fused encoder, no leak of the answer,
its gradient in every fusion, nothing of it at inference, the predictor's inputs and its tied vocabulary head."""

from __future__ import annotations

import pytest
import torch

from magnet_hf import MagNetConfig, MagNetForReferringSegmentation
from magnet_hf.losses_magnet import IGNORE_INDEX

MODES = ["separate", "shared"]
MASK_TOKEN_ID = 4


def tiny_model(seed: int = 0, **overrides) -> MagNetForReferringSegmentation:
    torch.manual_seed(seed)
    # eval(): no dropout or drop-path, so that two forwards can be compared bit for bit; the reference modules, which
    # (unlike the fast path's eval-mode computation) give gradients in eval mode
    overrides.setdefault("magnet_implementation", "reference")
    return MagNetForReferringSegmentation(MagNetConfig.from_preset("magnet-tiny", **overrides)).eval()


def masked_batch(size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two samples; sample 0 has two masked words, sample 1 one (a [MASK] and a kept token)."""
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(2, 10, dtype=torch.long)
    attention_mask[0, 7:] = 0
    input_ids = torch.randint(5, 40, (2, 10), generator=generator) * attention_mask
    masked_input_ids, mlm_labels = input_ids.clone(), torch.full_like(input_ids, IGNORE_INDEX)
    for row, position, replace in ((0, 2, True), (0, 4, True), (1, 3, False)):
        mlm_labels[row, position] = input_ids[row, position]
        if replace:
            masked_input_ids[row, position] = MASK_TOKEN_ID
    labels = torch.zeros(2, size, size)
    labels[0, 8 : size // 2, 10 : size - 8] = 1
    labels[1, size // 2 :, : size // 3] = 1
    return {
        "pixel_values": torch.randn(2, 3, size, size, generator=generator),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "masked_input_ids": masked_input_ids,
        "mlm_labels": mlm_labels,
    }


def only_mask_grounding(**overrides) -> dict:
    weights = dict.fromkeys(
        ["mask_loss_weight", "dice_loss_weight", "class_loss_weight", "pixel_text_loss_weight", "pixel_pixel_loss_weight"],
        0.0,
    )
    return {**weights, "mask_grounding_loss_weight": 1.0, **overrides}


@pytest.mark.parametrize("mode", MODES)
def test_the_original_word_at_a_masked_position_never_reaches_mask_grounding(mode):
    # Two batches that differ only in the original word under a [MASK] (same masked sentence, same targets, same
    # image) must give the same Mask Grounding loss, bit for bit: the predictor may only see the masked sentence.
    model = tiny_model(mask_grounding_mode=mode)
    batch = masked_batch()
    other = {key: value.clone() for key, value in batch.items()}
    other["input_ids"][0, 2] = 39 if batch["input_ids"][0, 2] != 39 else 38
    assert other["masked_input_ids"][0, 2] == MASK_TOKEN_ID and torch.equal(other["mlm_labels"], batch["mlm_labels"])
    with torch.no_grad():
        first = model(**batch).loss_dict["loss_mask_grounding"]
        second = model(**other).loss_dict["loss_mask_grounding"]
    assert torch.equal(first, second), (first.item(), second.item())


@pytest.mark.parametrize("mode", MODES)
def test_mask_grounding_alone_trains_every_fusion_and_nothing_of_the_decoders(mode):
    model = tiny_model(mask_grounding_mode=mode, **only_mask_grounding())
    model.zero_grad()
    model(**masked_batch()).loss.backward()
    norms = {name: (p.grad.abs().sum().item() if p.grad is not None else 0.0) for name, p in model.named_parameters()}

    def reached(prefix: str) -> bool:
        return any(value > 0 for name, value in norms.items() if name.startswith(prefix))

    stage = model.config.mask_grounding_stage  # stride 16: the third fused map gives the visual tokens
    assert stage == 2
    for index in range(4):
        assert reached(f"model.language_fusions.{index}."), index  # the fused language stream of every stage
        assert reached(f"model.text_encoder.encoder.layer.{index}."), index
    for index in range(stage + 1):
        # stages 1-2 through the gated visual stream that the later language fusions read, stage 3 through its map
        assert reached(f"model.image_fusions.{index}."), index
        assert reached(f"model.image_encoder.layers.{index}."), index
    head = {name: value for name, value in norms.items() if name.startswith("mask_grounding.")}
    assert head and all(value > 0 for value in head.values()), [name for name, value in head.items() if value == 0]
    for untouched in ("model.image_fusions.3.", "model.pixel_decoder.", "model.transformer_decoder.", "text_projection."):
        assert not reached(untouched), untouched


def _count_calls(module: torch.nn.Module, calls: dict[str, int], name: str) -> None:
    module.register_forward_hook(lambda *_: calls.__setitem__(name, calls.get(name, 0) + 1))


@pytest.mark.parametrize("mode, encoder_passes", [("separate", 2), ("shared", 1)])
def test_mask_grounding_runs_only_with_a_masked_sentence(mode, encoder_passes):
    model = tiny_model(mask_grounding_mode=mode)
    calls: dict[str, int] = {}
    _count_calls(model.mask_grounding, calls, "head")
    _count_calls(model.model.text_encoder.embeddings, calls, "text_encoder")
    _count_calls(model.model.image_encoder.patch_embed, calls, "image_encoder")
    _count_calls(model.model.language_fusions[3], calls, "last_language_fusion")
    batch = masked_batch()
    plain = {key: value for key, value in batch.items() if key not in ("masked_input_ids", "mlm_labels")}
    with torch.no_grad():
        model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])  # inference
        assert calls == {"text_encoder": 1, "image_encoder": 1}
        calls.clear()
        model(**{**plain, "labels": None})
        assert calls == {"text_encoder": 1, "image_encoder": 1}
        calls.clear()
        assert "loss_mask_grounding" not in model(**plain).loss_dict  # segmentation and alignment only
        assert "head" not in calls and calls["text_encoder"] == calls["image_encoder"] == 1
        calls.clear()
        model(**batch)
    assert calls["head"] == 1
    assert calls["text_encoder"] == calls["image_encoder"] == encoder_passes


def test_shared_mode_segments_the_masked_sentence_and_separate_mode_the_original():
    batch = masked_batch()
    for mode, ids in (("shared", batch["masked_input_ids"]), ("separate", batch["input_ids"])):
        model = tiny_model(seed=1, mask_grounding_mode=mode)
        with torch.no_grad():
            trained = model(**batch).pred_masks
            expected = model(batch["pixel_values"], ids, batch["attention_mask"]).pred_masks
            other = model(batch["pixel_values"], batch["masked_input_ids"] if mode == "separate" else batch["input_ids"],
                          batch["attention_mask"]).pred_masks  # fmt: skip
        assert torch.equal(trained, expected), mode
        assert not torch.equal(trained, other), mode


@pytest.mark.parametrize("mode", MODES)
def test_loss_is_the_cross_entropy_of_the_predictor_on_the_masked_pass(mode):
    model = tiny_model(seed=2, mask_grounding_mode=mode)
    batch = masked_batch()
    with torch.no_grad():
        loss = model(**batch).loss_dict["loss_mask_grounding"]
        fused, words = model.model.encode(
            batch["pixel_values"], batch["masked_input_ids"], batch["attention_mask"], run_last_language_fusion=True
        )
        every_position = torch.ones_like(batch["input_ids"], dtype=torch.bool)
        logits = model.mask_grounding(words, batch["attention_mask"], fused[2], batch["labels"], every_position)
    logits = logits.view(2, 10, -1)
    labels = batch["mlm_labels"]
    masked = [(0, 2), (0, 4), (1, 3)]
    nll = [-torch.log_softmax(logits[row, column], -1)[labels[row, column]].item() for row, column in masked]
    assert loss.item() == pytest.approx(sum(nll) / len(nll), rel=1e-5)


def test_a_sentence_without_masked_tokens_adds_no_loss():
    model = tiny_model(seed=3, use_alignment_loss=False)
    batch = masked_batch()
    batch["mlm_labels"][1] = IGNORE_INDEX  # sample 1 drew no token
    batch["masked_input_ids"][1] = batch["input_ids"][1]
    with torch.no_grad():
        both = model(**batch).loss_dict["loss_mask_grounding"]
        first_only = model(**{key: value[:1] for key, value in batch.items()}).loss_dict["loss_mask_grounding"]
    torch.testing.assert_close(both, first_only, rtol=1e-5, atol=1e-6)
    # a batch in which nothing is masked: zero loss, finite gradients, every head parameter still in the graph
    batch["mlm_labels"][:] = IGNORE_INDEX
    batch["masked_input_ids"] = batch["input_ids"].clone()
    model.zero_grad()
    out = model(**batch)
    assert out.loss_dict["loss_mask_grounding"].item() == 0
    out.loss.backward()
    head = list(model.mask_grounding.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head)


def test_visual_and_mask_tokens_follow_the_configured_stride():
    shapes = []
    for stride, grid in ((16, 8), (8, 16), (32, 4)):
        model = tiny_model(mask_grounding_visual_stride=stride)
        handle = model.mask_grounding.register_forward_hook(lambda module, args, out: shapes.append(args[2].shape))
        with torch.no_grad():
            model(**masked_batch(size=128))
        handle.remove()
        assert shapes[-1][-2:] == (grid, grid) and shapes[-1][1] == model.config.stage_dims[model.config.mask_grounding_stage]
    with pytest.raises(ValueError, match="mask_grounding_visual_stride"):
        MagNetConfig.from_preset("magnet-tiny", mask_grounding_visual_stride=12)
    with pytest.raises(ValueError, match="mask_grounding_mode"):
        MagNetConfig.from_preset("magnet-tiny", mask_grounding_mode="both")
    with pytest.raises(ValueError, match="mask_grounding_mask_probability"):
        MagNetConfig.from_preset("magnet-tiny", mask_grounding_mask_probability=1.5)


def test_mask_tokens_either_stand_beside_the_visual_tokens_or_are_added_to_them():
    # "add" gives one token per place, the sum of the visual and mask tokens that "concatenate" puts side by side
    # (same weights: the layout adds no parameter), so a masked word reads the target's visual features in one hop.
    tokens = {}
    for layout in ("concatenate", "add"):
        model = tiny_model(seed=2, mask_grounding_mask_tokens=layout)
        predictor = model.mask_grounding.token_predictor
        handle = predictor.register_forward_hook(lambda module, args, out, layout=layout: tokens.update({layout: args[0]}))
        with torch.no_grad():
            loss = model(**masked_batch(size=128)).loss_dict["loss_mask_grounding"]
        handle.remove()
        assert torch.isfinite(loss) and loss > 0
    words, places = 10, 8 * 8  # stride 16 at 128 px
    assert tokens["concatenate"].shape[1] == words + 2 * places and tokens["add"].shape[1] == words + places
    concatenated = tokens["concatenate"]
    torch.testing.assert_close(tokens["add"][:, :words], concatenated[:, :words], rtol=0, atol=0)
    torch.testing.assert_close(
        tokens["add"][:, words:], concatenated[:, words : words + places] + concatenated[:, words + places :]
    )
    with pytest.raises(ValueError, match="mask_grounding_mask_tokens"):
        MagNetConfig.from_preset("magnet-tiny", mask_grounding_mask_tokens="interleave")


def test_instance_norm_makes_the_visual_tokens_blind_to_channels_that_are_the_same_for_every_place():
    # A per-channel constant (what trained fused maps carry, nearly the same for every image) must not reach the
    # predictor under "instance"; under "none" it does, and drowns the rest after the layer norm.
    generator = torch.Generator().manual_seed(3)
    language = torch.randn(2, 6, 32, generator=generator)
    attention_mask = torch.ones(2, 6, dtype=torch.long)
    labels = (torch.rand(2, 64, 64, generator=generator) > 0.7).float()
    positions = torch.zeros(2, 6, dtype=torch.bool)
    positions[:, 2] = True
    for norm in ("none", "instance"):
        model = tiny_model(seed=1, mask_grounding_visual_norm=norm, mask_grounding_visual_stride=8)
        head = model.mask_grounding
        channels = model.config.stage_dims[model.config.mask_grounding_stage]
        language_features = language[..., :1].expand(-1, -1, model.config.text_config.hidden_size).contiguous()
        visual = torch.randn(2, channels, 8, 8, generator=generator)
        offset = 50 * torch.randn(1, channels, 1, 1, generator=generator)
        with torch.no_grad():
            plain = head(language_features, attention_mask, visual, labels, positions)
            shifted = head(language_features, attention_mask, visual + offset, labels, positions)
        if norm == "instance":
            torch.testing.assert_close(shifted, plain, rtol=1e-4, atol=1e-4)
        else:
            assert (shifted - plain).abs().max() > 1e-2
    with pytest.raises(ValueError, match="mask_grounding_visual_norm"):
        MagNetConfig.from_preset("magnet-tiny", mask_grounding_visual_norm="batch")


def test_predictor_is_a_bert_stack_with_a_head_tied_to_the_word_embeddings(tmp_path):
    from transformers.models.bert.modeling_bert import BertLayer, BertLMPredictionHead

    model = tiny_model(seed=4, mask_grounding_layers=3, mask_grounding_intermediate_size=96)
    predictor = model.mask_grounding.token_predictor
    assert len(predictor.encoder.layer) == 3 and all(isinstance(layer, BertLayer) for layer in predictor.encoder.layer)
    assert predictor.encoder.layer[0].intermediate.dense.out_features == 96
    assert isinstance(predictor.head, BertLMPredictionHead)
    embeddings = model.model.text_encoder.embeddings.word_embeddings
    assert predictor.head.decoder.weight is embeddings.weight
    model.save_pretrained(tmp_path)
    loaded = MagNetForReferringSegmentation.from_pretrained(tmp_path)
    assert loaded.mask_grounding.token_predictor.head.decoder.weight is loaded.model.text_encoder.embeddings.word_embeddings.weight
    torch.testing.assert_close(loaded.model.text_encoder.embeddings.word_embeddings.weight, embeddings.weight)
    untied = tiny_model(seed=4, tie_word_embeddings=False)
    assert untied.mask_grounding.token_predictor.head.decoder.weight is not untied.model.text_encoder.embeddings.word_embeddings.weight
