"""What transformers users rely on, checked on magnet-tiny with numbers: the hidden-states contract, attention
outputs, embedding resizing (Mask Grounding head included), fp32 creation of the language fusion, deterministic
eval-mode losses, both gradient-checkpointing modes and the attention implementations."""

from __future__ import annotations

import pytest
import torch
from transformers.testing_utils import CaptureLogger

from magnet_hf import MagNetConfig, MagNetForReferringSegmentation, MagNetModel


def tiny_batch(batch=2, size=128, seed=0):
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(batch, 20, dtype=torch.long)
    attention_mask[0, 6:] = 0
    input_ids = torch.randint(5, 30, (batch, 20), generator=generator) * attention_mask
    labels = torch.zeros(batch, size, size)
    labels[:, 30:90, 20:70] = 1
    return {
        "pixel_values": torch.randn(batch, 3, size, size, generator=generator),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
    }, labels


def masked_sentence(input_ids: torch.Tensor, new_id: int | None = None) -> dict[str, torch.Tensor]:
    masked = torch.zeros_like(input_ids, dtype=torch.bool)
    masked[:, 1:3] = True
    mlm_labels = input_ids.masked_fill(~masked, -100)
    if new_id is not None:
        mlm_labels[:, 1] = new_id
    return {"masked_input_ids": input_ids.masked_fill(masked, 4), "mlm_labels": mlm_labels}


def test_hidden_states_follow_the_documented_contract(tiny_model):
    inputs, _ = tiny_batch()
    config = tiny_model.config
    with torch.no_grad():
        out = tiny_model(**inputs, output_hidden_states=True)
        plain = tiny_model(**inputs)
    text_layers, text_width = config.text_config.num_hidden_layers, config.text_config.hidden_size
    assert len(out.hidden_states) == text_layers + 1
    assert all(state.shape == (2, 20, text_width) for state in out.hidden_states)
    # Entry 0 is BERT's embedding output, entry 1 BERT's first layer on it (magnet-tiny's first stage ends there,
    # and the state is taken before that stage's language fusion).
    bert = tiny_model.model.text_encoder
    embeddings = bert.embeddings(input_ids=inputs["input_ids"], token_type_ids=torch.zeros_like(inputs["input_ids"]))
    torch.testing.assert_close(out.hidden_states[0], embeddings)
    from transformers.masking_utils import create_bidirectional_mask

    mask = create_bidirectional_mask(config=bert.config, inputs_embeds=embeddings, attention_mask=inputs["attention_mask"])
    with torch.no_grad():
        torch.testing.assert_close(out.hidden_states[1], bert.encoder.layer[0](embeddings, attention_mask=mask))
    widths = [config.embed_dim, *config.stage_dims]
    sides = [32, 32, 16, 8, 4]
    assert [tuple(s.shape) for s in out.image_hidden_states] == [(2, w, h, h) for w, h in zip(widths, sides)]
    assert out.text_features.shape == (2, 20, text_width) and len(out.fused_features) == 4
    assert plain.hidden_states is None and plain.image_hidden_states is None
    torch.testing.assert_close(out.pred_masks, plain.pred_masks)  # collecting states changes nothing


@pytest.mark.parametrize("model_class", [MagNetModel, MagNetForReferringSegmentation])
def test_attentions_are_bert_attention_maps_under_eager_and_explained_otherwise(model_class):
    config = MagNetConfig.from_preset("magnet-tiny")
    inputs, _ = tiny_batch(batch=2)
    torch.manual_seed(0)
    model = model_class._from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    text = config.text_config
    assert len(out.attentions) == text.num_hidden_layers
    for maps in out.attentions:
        assert maps.shape == (2, text.num_attention_heads, 20, 20)
        torch.testing.assert_close(maps.sum(-1), torch.ones(2, text.num_attention_heads, 20))  # probabilities
        assert torch.all(maps[0, :, :, 6:] < 1e-6)  # padding of sample 0 gets no attention
    with torch.no_grad():
        assert model(**inputs).attentions is None
    torch.manual_seed(0)
    sdpa_model = model_class._from_config(config, attn_implementation="sdpa").eval()
    from transformers.utils import logging as transformers_logging

    from magnet_hf import modeling_magnet

    transformers_logging.get_logger(modeling_magnet.__name__).warning_once.cache_clear()
    with CaptureLogger(transformers_logging.get_logger(modeling_magnet.__name__)) as captured, torch.no_grad():
        assert sdpa_model(**inputs, output_attentions=True).attentions is None
    assert "attn_implementation='eager'" in captured.out


def test_resize_token_embeddings_resizes_bert_and_the_mask_grounding_vocabulary():
    torch.manual_seed(0)
    model = MagNetForReferringSegmentation(MagNetConfig.from_preset("magnet-tiny")).train()
    old_vocab = model.config.text_config.vocab_size
    head = model.mask_grounding.token_predictor.head
    assert model.get_output_embeddings() is head.decoder
    old_embeddings = model.get_input_embeddings().weight.detach().clone()
    with torch.no_grad():
        head.bias.copy_(torch.linspace(-1, 1, old_vocab))
    old_bias = head.bias.detach().clone()
    embeddings = model.resize_token_embeddings(old_vocab + 10)
    assert embeddings is model.model.text_encoder.embeddings.word_embeddings
    assert embeddings.weight.shape == (old_vocab + 10, 64) and model.config.text_config.vocab_size == old_vocab + 10
    assert torch.equal(embeddings.weight[:old_vocab], old_embeddings)
    # The tied head follows: one weight matrix with the embeddings, and its bias resized with the old values kept.
    head = model.mask_grounding.token_predictor.head
    assert model.get_output_embeddings() is head.decoder and head.decoder.out_features == old_vocab + 10
    assert head.decoder.weight is embeddings.weight
    assert head.decoder.bias is None and head.bias.shape == (old_vocab + 10,)  # the one bias: see the predictor
    assert torch.equal(head.bias[:old_vocab], old_bias) and not head.bias[old_vocab:].any()
    inputs, labels = tiny_batch()
    new_id = old_vocab + 7  # a token only the resized vocabulary has
    out = model(**inputs, labels=labels, **masked_sentence(inputs["input_ids"], new_id))
    assert torch.isfinite(out.loss_dict["loss_mask_grounding"])
    out.loss.backward()
    # The Mask Grounding scores are tied to the word embeddings: the new token's row learns from its label.
    assert embeddings.weight.grad[new_id].abs().sum() > 0
    with pytest.raises(ValueError, match="mlm_labels"):
        model(**inputs, labels=labels, **masked_sentence(inputs["input_ids"], old_vocab + 10))
    model.resize_token_embeddings(old_vocab - 5)  # shrinking works the same way
    head = model.mask_grounding.token_predictor.head
    assert head.decoder.weight is model.get_input_embeddings().weight and head.bias.shape == (old_vocab - 5,)
    assert torch.equal(head.bias, old_bias[: old_vocab - 5]) and head.decoder.bias is None
    assert model.model(**inputs).pred_masks.shape == (2, 1, 32, 32)
    out = model(**inputs, labels=labels, **masked_sentence(inputs["input_ids"], old_vocab - 6))
    assert torch.isfinite(out.loss)


def test_model_built_in_bfloat16_keeps_the_language_fusion_in_float32_and_runs():
    config = MagNetConfig.from_preset("magnet-tiny")
    torch.manual_seed(0)
    model = MagNetModel._from_config(config, dtype=torch.bfloat16).eval()
    dtypes = {name.split(".")[0]: set() for name, _ in model.named_parameters()}
    for name, parameter in model.named_parameters():
        dtypes[name.split(".")[0]].add(parameter.dtype)
    assert dtypes.pop("language_fusions") == {torch.float32}
    assert all(found == {torch.bfloat16} for found in dtypes.values()), dtypes
    inputs, _ = tiny_batch()
    with torch.no_grad():
        out = model(**{**inputs, "pixel_values": inputs["pixel_values"].bfloat16()})
    assert out.pred_masks.dtype == torch.bfloat16 and torch.isfinite(out.pred_masks.float()).all()


def test_eval_mode_losses_are_deterministic(tiny_model):
    inputs, labels = tiny_batch()
    extra = masked_sentence(inputs["input_ids"])
    with torch.no_grad():
        as_dict = tiny_model(**inputs, labels=labels, **extra)
        torch.rand(100)  # whatever the global stream does in between
        as_tuple = tiny_model(**inputs, labels=labels, **extra, return_dict=False)
    def same(a, b) -> bool:
        if isinstance(a, torch.Tensor):
            return torch.equal(a, b)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))

    assert same(as_dict.to_tuple(), as_tuple)
    assert as_dict.loss_dict["loss_pixel_pixel"] > 0
    # Training keeps drawing from the global stream (which checkpoints restore for an exact resume).
    tiny_model.train()
    for module in tiny_model.modules():
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    with torch.no_grad():
        torch.manual_seed(1)
        first = tiny_model(**inputs, labels=labels).loss_dict["loss_pixel_pixel"]
        torch.manual_seed(2)
        second = tiny_model(**inputs, labels=labels).loss_dict["loss_pixel_pixel"]
        torch.manual_seed(1)
        again = tiny_model(**inputs, labels=labels).loss_dict["loss_pixel_pixel"]
    assert first != second and torch.equal(first, again)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_both_gradient_checkpointing_modes_give_the_same_gradients(tiny_model, use_reentrant):
    inputs, labels = tiny_batch()
    extra = masked_sentence(inputs["input_ids"])
    tiny_model.train()
    for module in tiny_model.modules():
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    torch.manual_seed(0)
    tiny_model(**inputs, labels=labels, **extra).loss.backward()
    reference = {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}
    tiny_model.zero_grad()
    tiny_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    # A module inside a checkpointed Swin block runs twice: in the forward and again in the backward's recompute
    # (reentrant mode runs the first time without autograd).
    calls = []
    tiny_model.model.image_encoder.layers[2].blocks[1].mlp.register_forward_pre_hook(
        lambda *_: calls.append(torch.is_grad_enabled())
    )
    torch.manual_seed(0)
    tiny_model(**inputs, labels=labels, **extra).loss.backward()
    # Mask Grounding's separate mode runs the fused encoder a second time, on the masked sentence.
    passes = 2 if tiny_model.config.mask_grounding_mode == "separate" else 1
    assert calls == ([False] * passes + [True] * passes if use_reentrant else [True] * 2 * passes)
    assert reference.keys() == {n for n, p in tiny_model.named_parameters() if p.grad is not None}
    for name, parameter in tiny_model.named_parameters():
        if name in reference:
            torch.testing.assert_close(parameter.grad, reference[name], atol=1e-4, rtol=1e-3)


def test_eager_and_sdpa_attention_are_both_honoured():
    config = MagNetConfig.from_preset("magnet-tiny")
    inputs, _ = tiny_batch()
    outputs = {}
    for implementation in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = MagNetModel._from_config(config, attn_implementation=implementation).eval()
        assert model.config._attn_implementation == implementation
        assert model.text_encoder.config._attn_implementation == implementation
        calls = []
        handle = torch.nn.functional.scaled_dot_product_attention
        try:
            def counting(*args, **kwargs):
                calls.append(1)
                return handle(*args, **kwargs)

            torch.nn.functional.scaled_dot_product_attention = counting
            with torch.no_grad():
                outputs[implementation] = model(**inputs).pred_masks
        finally:
            torch.nn.functional.scaled_dot_product_attention = handle
        if implementation == "eager":
            assert calls == []  # neither Swin nor BERT ran torch's fused attention
        else:
            assert len(calls) > 0
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], atol=1e-4, rtol=1e-4)
