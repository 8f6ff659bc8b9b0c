"""MagNet model: outputs, save/load, remote code, pretrained backbones, input validation, training loss."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from magnet_hf import MagNetConfig, MagNetForReferringSegmentation, MagNetModel

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_inputs(batch=2, size=128, seed=0):
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(batch, 20, dtype=torch.long)
    attention_mask[0, 6:] = 0
    input_ids = torch.randint(5, 30, (batch, 20), generator=generator) * attention_mask
    return torch.randn(batch, 3, size, size, generator=generator), input_ids, attention_mask


def test_output_shapes(tiny_model):
    pixel_values, input_ids, attention_mask = tiny_inputs()
    with torch.no_grad():
        out = tiny_model(pixel_values, input_ids, attention_mask, output_hidden_states=True)
    assert out.pred_masks.shape == (2, 1, 32, 32) and out.pred_logits.shape == (2, 1, 2)
    assert len(out.auxiliary_predictions) == tiny_model.config.decoder_layers  # before layer 1 and after each but the last
    assert out.auxiliary_predictions[0]["pred_masks"].shape == (2, 1, 32, 32)
    assert [f.shape[1:] for f in out.fused_features] == [(32, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4)]
    assert out.text_features.shape == (2, 20, 64) and out.mask_features.shape == (2, 64, 32, 32)
    assert tiny_model(pixel_values, input_ids, attention_mask).fused_features is None
    with torch.no_grad():
        as_tuple = tiny_model(pixel_values, input_ids, attention_mask, return_dict=False)
    assert torch.equal(as_tuple[0], out.pred_masks)
    tiny_model.config.magnet_implementation = "reference"  # the readable modules, differentiable in eval mode
    with_grad = tiny_model(pixel_values, input_ids, attention_mask).pred_masks
    torch.testing.assert_close(with_grad.detach(), out.pred_masks, atol=1e-6, rtol=0)


def test_batching_does_not_change_a_sample(tiny_model):
    pixel_values, input_ids, attention_mask = tiny_inputs()
    with torch.no_grad():
        both = tiny_model(pixel_values, input_ids, attention_mask).pred_masks
        alone = tiny_model(pixel_values[1:], input_ids[1:], attention_mask[1:]).pred_masks
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)


def test_save_and_load_reproduce_outputs_exactly(tiny_model, tmp_path):
    pixel_values, input_ids, attention_mask = tiny_inputs()
    tiny_model.save_pretrained(tmp_path)
    loaded = MagNetForReferringSegmentation.from_pretrained(tmp_path).eval()
    base = MagNetModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = tiny_model(pixel_values, input_ids, attention_mask).pred_masks
        assert torch.equal(loaded(pixel_values, input_ids, attention_mask).pred_masks, expected)
        assert torch.equal(base(pixel_values, input_ids, attention_mask).pred_masks, expected)
    index = loaded.model.image_encoder.layers[0].blocks[0].attn.relative_position_index
    assert index.max().item() == (2 * 4 - 1) ** 2 - 1  # the non-persistent buffer was rebuilt, not left empty


def test_remote_code_loads_in_a_fresh_process_without_magnet_hf(tiny_model, tiny_processor, tmp_path):
    pixel_values, input_ids, attention_mask = tiny_inputs()
    tiny_model.save_pretrained(tmp_path / "model")
    tiny_processor.save_pretrained(tmp_path / "model")
    with torch.no_grad():
        torch.save(tiny_model(pixel_values, input_ids, attention_mask).pred_masks, tmp_path / "expected.pt")
    torch.save((pixel_values, input_ids, attention_mask), tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModel, AutoModelForImageSegmentation, AutoProcessor
        folder = {str(tmp_path / 'model')!r}
        model = AutoModelForImageSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
        base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        assert "magnet_hf" not in sys.modules, "magnet_hf was imported"
        inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
        expected = torch.load({str(tmp_path / 'expected.pt')!r})
        with torch.no_grad():
            assert torch.equal(model(*inputs).pred_masks, expected)
            assert torch.equal(base(*inputs).pred_masks, expected)
        batch = processor(images=torch.rand(3, 40, 50), text="the red circle")
        print(type(model).__name__, type(base).__name__, type(processor).__name__, tuple(batch["pixel_values"].shape))
    """)
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MagNetForReferringSegmentation MagNetModel MagNetProcessor (1, 3, 128, 128)" in result.stdout


def swin_state_in_microsoft_layout(model):
    """The image encoder's weights as the original Swin release names them (patch merging at the end of a stage)."""
    state = {}
    for key, value in model.model.image_encoder.state_dict().items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        state[key] = value.clone()
    return {"model": state}


def test_pretrained_swin_and_bert_survive_construction(tmp_path):
    from transformers import BertModel

    config = MagNetConfig.from_preset("magnet-tiny")
    torch.manual_seed(1)
    donor = MagNetForReferringSegmentation(config)
    torch.save(swin_state_in_microsoft_layout(donor), tmp_path / "swin.pth")
    bert = BertModel(config.text_config, add_pooling_layer=False)
    bert.save_pretrained(tmp_path / "bert")

    torch.manual_seed(2)
    model = MagNetForReferringSegmentation(config)  # post_init has run
    model.load_pretrained_image_encoder(tmp_path / "swin.pth")
    model.load_pretrained_text_encoder(tmp_path / "bert")
    for key, value in donor.model.image_encoder.state_dict().items():
        assert torch.equal(model.model.image_encoder.state_dict()[key], value), key
    for key, value in bert.state_dict().items():
        assert torch.equal(model.model.text_encoder.state_dict()[key], value), key
    # and they stay through a save / from_pretrained cycle
    model.save_pretrained(tmp_path / "saved")
    reloaded = MagNetForReferringSegmentation.from_pretrained(tmp_path / "saved")
    assert torch.equal(reloaded.model.image_encoder.patch_embed.proj.weight, donor.model.image_encoder.patch_embed.proj.weight)


def test_pretrained_swin_errors_are_clear(tmp_path, tiny_model):
    torch.save({"model": {"something.else": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="Cannot load Swin weights .* missing"):
        tiny_model.load_pretrained_image_encoder(tmp_path / "other.pth")
    with pytest.raises(ValueError, match="is a folder"):
        tiny_model.load_pretrained_image_encoder(tmp_path)


@pytest.mark.parametrize(
    ("pixel_shape", "ids_shape", "message"),
    [
        ((2, 1, 128, 128), (2, 20), r"pixel_values.*\(batch, 3"),
        ((2, 3, 128, 128), (3, 20), "batch of `pixel_values`"),
        ((2, 3, 16, 16), (2, 20), "at least 32x32"),
        ((2, 3, 128, 128), (2, 80), "exceed BERT's 64 positions"),
    ],
)
def test_bad_inputs_are_explained(tiny_model, pixel_shape, ids_shape, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(torch.zeros(pixel_shape), torch.ones(ids_shape, dtype=torch.long))


def test_non_square_inputs_run(tiny_model):
    with torch.no_grad():
        out = tiny_model(torch.randn(1, 3, 96, 160), torch.tensor([[2, 7, 8, 3]]))
    assert out.pred_masks.shape == (1, 1, 24, 40)


def test_training_loss_trains_the_whole_network(tiny_model):
    pixel_values, input_ids, attention_mask = tiny_inputs()
    labels = torch.zeros(2, 128, 128)
    labels[:, 32:96, 32:96] = 1
    tiny_model.train()
    out = tiny_model(pixel_values, input_ids, attention_mask, labels=labels)
    assert set(out.loss_dict) == {
        "loss_mask", "loss_dice", "loss_class", "loss_total_auxiliary", "loss_pixel_text", "loss_pixel_pixel"
    }  # no masked sentence given, so no Mask Grounding term (tests/test_losses.py covers it)
    out.loss.backward()
    without_grad = [n for n, p in tiny_model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # the gates start at zero, so only their second matrix gets a gradient on the first step; the Mask Grounding head
    # needs a masked sentence, not given here; with a single query, self-attention weights are softmax over one key
    # (= 1), so its query and key projections are inert. With the released masking, the language fusion's scores (its
    # query and key projections) matter only on padding rows, whose -1e4-scaled scores saturate the softmax: gradients
    # of 1e-38 to 1e-5, exactly zero for some seeds.
    inert = (
        r"gate\.in_proj|^mask_grounding\.|decoder\.layers\.\d+\.self_attn\.(q|k)_proj"
        r"|language_fusions\.\d+\.word_pixel_attention\.(query|key)_projection"
    )
    unexpected = [n for n in without_grad if not re.search(inert, n)]
    assert unexpected == []
    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = tiny_model(pixel_values, input_ids, attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0] and losses == sorted(losses, reverse=True), losses


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model):
    pixel_values, input_ids, attention_mask = tiny_inputs()
    labels = (torch.rand(2, 128, 128, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    tiny_model.train()
    for module in tiny_model.modules():
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    torch.manual_seed(0)  # BERT's dropout draws the same masks in both runs
    tiny_model(pixel_values, input_ids, attention_mask, labels=labels).loss.backward()
    reference = {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}
    tiny_model.zero_grad()
    tiny_model.activation_checkpointing_enable()
    assert tiny_model.model.image_encoder.layers[0].blocks[0].gradient_checkpointing
    torch.manual_seed(0)
    tiny_model(pixel_values, input_ids, attention_mask, labels=labels).loss.backward()
    for name, gradient in reference.items():
        torch.testing.assert_close(dict(tiny_model.named_parameters())[name].grad, gradient, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_keep_the_language_fusion_in_float32(dtype):
    # from_pretrained(dtype=half) keeps the language fusion in fp32 and runs the rest in half precision: the trained
    # demo model's masks on a synthetic scene then match its fp32 masks; a plain cast is refused with a clear error.
    from magnet_hf import MagNetProcessor
    from magnet_hf.demo.segmentation import demo_model_path
    from magnet_hf.demo.synthetic_demo import pick_demo_scenes

    folder = demo_model_path()
    reference = MagNetForReferringSegmentation.from_pretrained(folder).eval()
    half = MagNetForReferringSegmentation.from_pretrained(folder, dtype=dtype).eval()
    assert {p.dtype for n, p in half.named_parameters() if "language_fusions" in n} == {torch.float32}
    assert half.model.pixel_decoder.mask_projection.weight.dtype == dtype
    processor = MagNetProcessor.from_pretrained(folder)
    ((_, scene, choice),) = pick_demo_scenes(1, 0, reference.config.image_size, 1, 3)
    texts = [text for _, text, _ in choice]
    inputs = processor(images=[scene.image] * len(texts), text=texts, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**inputs).pred_masks > 0
        actual = half(**{**inputs, "pixel_values": inputs["pixel_values"].to(dtype)}).pred_masks
    assert actual.dtype == dtype
    actual = actual > 0
    iou = (expected & actual).sum() / (expected | actual).sum()
    assert expected.sum() > 0 and iou >= 0.9
    with pytest.raises(ValueError, match="language fusion's weights are"):
        with torch.no_grad():
            reference.to(dtype)(**{**inputs, "pixel_values": inputs["pixel_values"].to(dtype)})


def test_a_checkpoint_missing_the_decoder_cross_attention_gets_it_initialised(tiny_model, tmp_path):
    # torch's MultiheadAttention keeps in_proj as bare parameters; missing from a checkpoint they must be drawn like
    # torch draws them (xavier-uniform weight, zero bias), not left as uninitialised memory (seen: values of 1e38).
    import math

    state = {k: v for k, v in tiny_model.state_dict().items() if "cross_attn.in_proj" not in k}
    tiny_model.save_pretrained(tmp_path, state_dict=state)
    loaded, info = MagNetForReferringSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    missing = sorted(info["missing_keys"])
    assert missing and all("cross_attn.in_proj" in k for k in missing)
    for layer in loaded.model.transformer_decoder.decoder.layers:
        weight, bias = layer.cross_attn.in_proj_weight, layer.cross_attn.in_proj_bias
        bound = math.sqrt(6 / (weight.shape[0] + weight.shape[1]))
        assert weight.abs().max() <= bound and abs(weight.std().item() - bound / math.sqrt(3)) < 0.1 * bound
        assert torch.all(bias == 0)
