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
    ],
)
def test_impossible_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"MagNetConfig\.{field}:"):
        MagNetConfig(**overrides)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="magnet-base"):
        MagNetConfig.from_preset("magnet-huge")
    assert set(PRESETS) == {"magnet-base", "magnet-tiny"}
