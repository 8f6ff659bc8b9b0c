import pytest

from magnet_hf import MagNetConfig, PRESETS


def test_base_preset_is_the_released_magnet_b():
    config = MagNetConfig.from_preset("magnet-base")
    assert (config.embed_dim, config.depths, config.num_heads, config.window_size) == (128, [2, 2, 18, 2], [4, 8, 16, 32], 12)
    assert config.stage_dims == [128, 256, 512, 1024]
    assert config.text_config.hidden_size == 768 and config.text_config.num_hidden_layers == 12
    assert config.text_stage_end_layers == [3, 6, 9, 12]
    assert config.decoder_layers == 9 and config.decoder_hidden_size == 256 and config.pixel_decoder_layers == 4
    assert config.released_language_masking is True and config.image_size == 480


def test_tiny_preset_has_a_few_million_parameters():
    import torch

    from magnet_hf import MagNetForReferringSegmentation

    with torch.device("meta"):
        model = MagNetForReferringSegmentation(MagNetConfig.from_preset("magnet-tiny"))
    assert 2e6 < sum(p.numel() for p in model.parameters()) < 1e7


def test_round_trip_through_json(tmp_path):
    config = MagNetConfig.from_preset("magnet-tiny", released_language_masking=False)
    config.save_pretrained(tmp_path)
    loaded = MagNetConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.text_config.hidden_size == 64


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_heads": [3, 8, 16, 32]}, "num_heads"),
        ({"text_stage_end_layers": [3, 3, 9, 12]}, "text_stage_end_layers"),
        ({"text_stage_end_layers": [3, 6, 9, 11]}, "text_stage_end_layers"),
        ({"depths": [2, 2, 18]}, "depths"),
        ({"decoder_hidden_size": 100}, "decoder_hidden_size"),
        ({"decoder_num_heads": 7}, "decoder_num_heads"),
        ({"num_queries": 5}, "num_queries"),
        ({"image_size": 479}, "image_size"),
        ({"window_size": 0}, "window_size"),
        ({"fusion_pool_sizes": []}, "fusion_pool_sizes"),
        ({"drop_path_rate": 1.5}, "drop_path_rate"),
        ({"embed_dim": 126, "num_heads": [3, 6, 9, 18]}, "embed_dim"),
        ({"use_mask_grounding": "yes"}, "use_mask_grounding"),
        ({"use_alignment_loss": 1}, "use_alignment_loss"),
        ({"mask_grounding_loss_weight": -0.1}, "mask_grounding_loss_weight"),
        ({"pixel_pixel_loss_weight": float("nan")}, "pixel_pixel_loss_weight"),
        ({"pixel_text_loss_weight": "1"}, "pixel_text_loss_weight"),
        ({"pixel_text_temperature": 0.0}, "pixel_text_temperature"),
        ({"pixel_pixel_temperature": float("inf")}, "pixel_pixel_temperature"),
        ({"mask_grounding_hidden_size": 90, "mask_grounding_num_heads": 5}, "mask_grounding_hidden_size"),
        ({"mask_grounding_num_heads": 3}, "mask_grounding_num_heads"),
        ({"mask_grounding_layers": 0}, "mask_grounding_layers"),
        ({"alignment_max_pixels": 2}, "alignment_max_pixels"),
    ],
)
def test_impossible_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"MagNetConfig\.{field}:"):
        MagNetConfig(**overrides)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="magnet-base"):
        MagNetConfig.from_preset("magnet-huge")
    assert set(PRESETS) == {"magnet-base", "magnet-tiny"}


def test_auxiliary_loss_defaults_and_the_tiny_preset():
    base, tiny = MagNetConfig.from_preset("magnet-base"), MagNetConfig.from_preset("magnet-tiny")
    assert base.use_mask_grounding and base.use_alignment_loss
    assert (base.mask_grounding_hidden_size, base.mask_grounding_layers, base.mask_grounding_num_heads) == (256, 2, 8)
    assert (tiny.mask_grounding_hidden_size, tiny.mask_grounding_num_heads) == (64, 4)
    assert 0 < base.pixel_text_temperature <= 0.1 and 0 < base.pixel_pixel_temperature <= 0.1
    # a config saved before these fields existed loads with the defaults
    legacy = {k: v for k, v in tiny.to_dict().items() if "grounding" not in k and "alignment" not in k and "pixel_" not in k}
    assert MagNetConfig.from_dict(legacy).use_mask_grounding is True
