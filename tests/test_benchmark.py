"""Tests for `magnet_hf.commands.benchmark` (tiny preset, CPU) and the fast kernels it measures (gather-based deformable
sampling, SDPA window attention), each checked against the reference computation it replaces."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import window_partition, window_reverse
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    multi_scale_deformable_attention,
)

from magnet_hf import deformable_attention_magnet, modeling_magnet
from magnet_hf.commands import benchmark
from magnet_hf.commands.benchmark_measure import CONFIGURATION_KEYS, BenchmarkSettings, run_benchmark, write_json
from magnet_hf.deformable_attention_magnet import (
    MagNetMultiscaleDeformableAttention,
    multi_scale_deformable_attention_gather,
    padded_value_table,
)
from magnet_hf.modeling_magnet import MagNetSwinBlock, _normalize_over_positions


# --------------------------------------------------------------------------------------------------------------------
# The benchmark library
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_report():
    settings = BenchmarkSettings(
        preset="magnet-tiny", batch_sizes=(1, 2), repeats=2, train_repeats=1, isolate=False, matmul_size=1024
    )
    return run_benchmark(settings)


def test_report_has_documented_keys_and_sane_values(tiny_report):
    assert tiny_report["matmul_gflops"] > 0
    assert tiny_report["matmul_gflops_median"] <= tiny_report["matmul_gflops"]
    configurations = tiny_report["configurations"]
    assert [c["batch_size"] for c in configurations] == [1, 2]
    for result in configurations:
        assert set(CONFIGURATION_KEYS) <= set(result)
        assert len(result["forward_seconds"]) == 2
        assert all(t > 0 for t in result["forward_seconds"])
        assert 0 < result["forward_seconds_min"] <= result["forward_seconds_median"] <= result["forward_seconds_max"]
        assert result["forward_seconds_iqr"] >= 0
        assert result["seconds_per_image"] == pytest.approx(result["forward_seconds_median"] / result["batch_size"])
        assert result["images_per_second"] == pytest.approx(result["batch_size"] / result["forward_seconds_median"])
        assert 0 < result["floor_fraction"] < 1.5
        assert result["floor_seconds"] == pytest.approx(
            result["model_flops"] / (tiny_report["matmul_gflops"] * 1e9)
        )
        # Resident memory includes the interpreter and torch: far above zero, far below the machine.
        assert result["peak_memory_kind"] == "rss"
        assert 50 * 2**20 < result["peak_memory_bytes"] < 16 * 2**30
        assert result["peak_memory_bytes"] >= result["memory_before_forward_bytes"] * 0.9
        assert result["train_step_seconds_median"] > 0
        assert math.isfinite(result["train_loss"])
        assert result["train_images_per_second"] == pytest.approx(result["batch_size"] / result["train_step_seconds_median"])
        # forward + backward of every loss (Mask Grounding's second fused pass included) costs more than 2 forwards
        assert 2 * result["model_flops"] < result["train_step_flops"] < 8 * result["model_flops"]
        assert 0 < result["train_floor_fraction"] < 1.5
        assert result["bf16_mask_logits_max_abs_diff"] is None
    # Every operation acts per image, so the count scales with the batch; a tiny forward is ~0.6 GFLOP.
    one, two = configurations
    assert two["model_flops"] == 2 * one["model_flops"]
    assert 1e8 < one["model_flops"] < 5e9
    json.dumps(tiny_report)  # the report is plain JSON


def test_bfloat16_reports_error_against_fp32_and_trains():
    settings = BenchmarkSettings(
        preset="magnet-tiny", batch_sizes=(2,), dtype="bfloat16", repeats=1, train_repeats=1, isolate=False,
        matmul_size=256,
    )
    (result,) = run_benchmark(settings)["configurations"]
    assert result["dtype"] == "bfloat16"
    # bf16 has 8 mantissa bits: logits move, but by a small fraction of their size, and the masks mostly agree.
    assert 0 < result["bf16_mask_logits_max_abs_diff"] < 1.0
    assert 0.8 < result["bf16_mask_iou"] <= 1.0
    assert result["train_step_seconds_median"] > 0 and math.isfinite(result["train_loss"])


def test_isolated_configuration_runs_in_a_subprocess():
    settings = BenchmarkSettings(
        preset="magnet-tiny", batch_sizes=(1,), repeats=1, train_step=False, isolate=True, matmul_size=256
    )
    (result,) = run_benchmark(settings)["configurations"]
    assert result["forward_seconds_median"] > 0
    assert result["train_step_seconds_median"] is None
    assert 50 * 2**20 < result["peak_memory_bytes"] < 16 * 2**30


def test_json_is_never_overwritten_without_permission(tmp_path):
    path = tmp_path / "report.json"
    write_json({"matmul_gflops": 1.0}, path)
    assert json.loads(path.read_text()) == {"matmul_gflops": 1.0}
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_json({"matmul_gflops": 2.0}, path)
    assert json.loads(path.read_text()) == {"matmul_gflops": 1.0}
    write_json({"matmul_gflops": 3.0}, path, overwrite=True)
    assert json.loads(path.read_text()) == {"matmul_gflops": 3.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary file left behind


def test_cli_refuses_existing_json_before_running(tmp_path, capsys, monkeypatch):
    path = tmp_path / "report.json"
    path.write_text("keep me")
    monkeypatch.setattr(benchmark, "run_benchmark", lambda *a, **k: pytest.fail("must not run"))
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--preset", "magnet-tiny", "--json", str(path)])
    assert exit_info.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert path.read_text() == "keep me"


def test_cli_writes_json_with_configuration_medians(tmp_path, capsys):
    path = tmp_path / "out.json"
    code = benchmark.main(
        ["--preset", "magnet-tiny", "--repeats", "1", "--no-train-step", "--no-isolate", "--matmul-size", "256",
         "--json", str(path)]
    )
    assert code == 0
    report = json.loads(path.read_text())
    assert report["matmul_gflops"] > 0
    assert report["configurations"][0]["forward_seconds_median"] > 0
    assert "of the compute floor" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--repeats", "0"], "positive integer"),
        (["--batch-size", "0"], "positive integer"),
        (["--batch-size", "two"], "positive integer"),
        (["--dtype", "float16"], "invalid choice"),
        (["--preset", "magnet-huge"], "invalid choice"),
        (["--device", "tpu"], "invalid choice"),
        (["--json", "/nonexistent-folder/report.json"], "does not exist"),
    ],
)
def test_cli_validates_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_device_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize(
    "field, value",
    [("preset", "x"), ("batch_sizes", ()), ("batch_sizes", (1, -2)), ("dtype", "int8"), ("repeats", 0),
     ("image_size", 8), ("threads", 0), ("matmul_size", 4)],
)
def test_settings_validation(field, value):
    with pytest.raises(ValueError):
        BenchmarkSettings(**{"preset": "magnet-tiny", field: value}).validate()


# --------------------------------------------------------------------------------------------------------------------
# Gather-based deformable sampling against transformers' per-level grid_sample
# --------------------------------------------------------------------------------------------------------------------


def _sampling_inputs(shapes, batch_size=2, num_queries=37, num_heads=4, head_dim=8, num_points=3, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    length = sum(h * w for h, w in shapes)
    value = torch.randn(batch_size, length, num_heads, head_dim, generator=generator, dtype=dtype)
    # Locations in [-0.3, 1.3]: a good share falls outside the map, partly (bilinear with the zero border) or wholly.
    locations = torch.rand(batch_size, num_queries, num_heads, len(shapes), num_points, 2, generator=generator, dtype=dtype)
    locations = locations * 1.6 - 0.3
    weights = torch.rand(batch_size, num_queries, num_heads, len(shapes), num_points, generator=generator, dtype=dtype)
    return value, locations, weights.softmax(-1)


SHAPES = [[(7, 9), (4, 5), (2, 3), (1, 1)], [(30, 30), (15, 15)], [(1, 6), (5, 1)]]


@pytest.mark.parametrize("shapes", SHAPES)
def test_gather_sampling_matches_grid_sample(shapes):
    value, locations, weights = _sampling_inputs(shapes)
    outside = ((locations < 0) | (locations > 1)).any(-1)
    assert 0.2 < outside.float().mean() < 0.8  # the case of points outside the map is exercised
    expected = multi_scale_deformable_attention(value, shapes, locations, weights)
    actual = multi_scale_deformable_attention_gather(value, shapes, locations, weights)
    assert actual.shape == expected.shape == (2, 37, 4 * 8)
    assert (actual - expected).abs().max().item() < 1e-5
    expected64 = multi_scale_deformable_attention(value.double(), shapes, locations.double(), weights.double())
    actual64 = multi_scale_deformable_attention_gather(value.double(), shapes, locations.double(), weights.double())
    assert actual64.dtype == torch.float64
    assert (actual64 - expected64).abs().max().item() < 1e-12


def test_gather_sampling_far_outside_reads_zero():
    shapes = [(4, 4), (2, 2)]
    value, locations, weights = _sampling_inputs(shapes)
    far = torch.where(torch.rand(locations.shape, generator=torch.Generator().manual_seed(1)) < 0.5, -5.0, 7.0)
    actual = multi_scale_deformable_attention_gather(value, shapes, far, weights)
    assert actual.abs().max().item() == 0.0


def test_gather_sampling_gradients_match_grid_sample():
    shapes = SHAPES[0]
    inputs = [t.double().requires_grad_() for t in _sampling_inputs(shapes, num_queries=11)]
    cotangent = torch.randn(2, 11, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = torch.autograd.grad((multi_scale_deformable_attention(inputs[0], shapes, *inputs[1:]) * cotangent).sum(), inputs)
    actual = torch.autograd.grad((multi_scale_deformable_attention_gather(inputs[0], shapes, *inputs[1:]) * cotangent).sum(), inputs)
    for name, a, e in zip(("value", "locations", "weights"), actual, expected):
        assert (a - e).abs().max().item() < 1e-9, name


@pytest.mark.parametrize("inference", [False, True])
def test_deformable_attention_module_keeps_parameters_and_outputs(inference, monkeypatch):
    torch.manual_seed(0)
    reference = Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(embed_dim=32, num_heads=4, n_levels=2, n_points=3)
    fast = MagNetMultiscaleDeformableAttention(embed_dim=32, num_heads=4, n_levels=2, n_points=3)
    assert fast.state_dict().keys() == reference.state_dict().keys()
    fast.load_state_dict(reference.state_dict())
    # Chunks of 5 queries (4 heads x 6 samples each) of one image: 39 queries per image in 8 chunks, the last short.
    monkeypatch.setattr(deformable_attention_magnet, "SAMPLES_PER_CHUNK", 4 * 6 * 5)
    shapes = [(6, 5), (3, 3)]
    tokens = sum(h * w for h, w in shapes)
    hidden = torch.randn(2, tokens, 32)
    position = torch.randn(1, tokens, 32)  # one image's position embedding, broadcast over the batch
    reference_points = torch.rand(1, tokens, 2, 2)
    kwargs = dict(
        encoder_hidden_states=hidden, reference_points=reference_points,
        spatial_shapes_list=shapes, level_start_index=torch.tensor([0, 30]),
    )
    expected, expected_weights = reference(hidden, position_embeddings=position.expand(2, -1, -1), **kwargs)
    with torch.set_grad_enabled(not inference):
        actual, actual_weights = fast(hidden, position_embeddings=position, output_attentions=True, **kwargs)
        _, no_weights = fast(hidden, position_embeddings=position, **kwargs)
    assert actual.requires_grad == (not inference)
    assert (actual - expected).abs().max().item() < 1e-5
    assert (actual_weights - expected_weights).abs().max().item() < 1e-6
    assert no_weights is None  # only asked-for weights are kept, as in transformers' attention modules


def test_padded_value_table_layout():
    value = torch.arange(2 * 7 * 3 * 2, dtype=torch.float64).view(2, 7, 3, 2)  # levels 2x3 and 1x1, 3 heads
    table = padded_value_table(value, [(2, 3), (1, 1)])
    assert table.shape == (2, 3, 5 * 6 + 4 * 4, 2)
    first = table[:, :, : 5 * 6].view(2, 3, 5, 6, 2)
    assert torch.equal(first[:, :, 1:3, 1:4], value[:, :6].view(2, 2, 3, 3, 2).permute(0, 3, 1, 2, 4))
    second = table[:, :, 5 * 6 :].view(2, 3, 4, 4, 2)
    assert torch.equal(second[:, :, 1, 1], value[:, 6])
    assert table.abs().sum() == value.abs().sum()  # everything else is the zero border


# --------------------------------------------------------------------------------------------------------------------
# Swin window attention (projections on real tokens, SDPA) against the zero-pad-then-shift reference
# --------------------------------------------------------------------------------------------------------------------


def _reference_window_attention(block: MagNetSwinBlock, hidden_states: torch.Tensor) -> torch.Tensor:
    """The released order, with timm's own WindowAttention: zero-pad the normalised map, shift, attend per window."""
    batch_size, height, width, channels = hidden_states.shape
    window_height, window_width = block.window_size
    pad_bottom = (window_height - height % window_height) % window_height
    pad_right = (window_width - width % window_width) % window_width
    padded = F.pad(hidden_states, (0, 0, 0, pad_right, 0, pad_bottom))
    padded_height, padded_width = padded.shape[1:3]
    shifted = any(block.shift_size)
    if shifted:
        padded = torch.roll(padded, shifts=(-block.shift_size[0], -block.shift_size[1]), dims=(1, 2))
    mask = block.get_attn_mask(padded[:1, :, :, :1]) if shifted else None
    windows = window_partition(padded, block.window_size).view(-1, block.window_area, channels)
    block.attn.fused_attn = False
    windows = block.attn(windows, mask=mask).view(-1, window_height, window_width, channels)
    padded = window_reverse(windows, block.window_size, padded_height, padded_width)
    if shifted:
        padded = torch.roll(padded, shifts=block.shift_size, dims=(1, 2))
    return padded[:, :height, :width, :]


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 10), (3, 3)])
def test_window_attention_matches_reference(shift, size):
    torch.manual_seed(0)
    block = MagNetSwinBlock(dim=16, input_resolution=size, num_heads=2, window_size=4, shift_size=shift).eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()
        block.attn.qkv.bias.normal_()
        hidden = torch.randn(2, *size, 16, dtype=torch.float64)
        block.double()
        expected = _reference_window_attention(block, hidden)
        actual = block._attn(hidden)
    assert actual.shape == hidden.shape
    assert (actual - expected).abs().max().item() < 1e-12


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 10), (3, 3)])
def test_window_index_is_pad_shift_partition_and_its_inverse(shift, size):
    block = MagNetSwinBlock(dim=16, input_resolution=size, num_heads=2, window_size=4, shift_size=shift)
    height, width = size
    gather, scatter, padding = block._window_index(height, width, torch.device("cpu"))
    # The same layout built the slow way: token ids on the map, zero-padded (-1), rolled, partitioned.
    ids = torch.arange(height * width, dtype=torch.float64).view(1, height, width, 1)
    padded_height, padded_width = block._padded_size(height, width)
    grid = F.pad(ids, (0, 0, 0, padded_width - width, 0, padded_height - height), value=-1.0)
    grid = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2))
    expected = window_partition(grid, block.window_size).reshape(-1).long()
    assert gather.shape == expected.shape
    is_padding = expected < 0
    assert torch.equal(gather[~is_padding], expected[~is_padding])
    assert (padding is None) == (not is_padding.any())
    if padding is not None:
        assert torch.equal(padding, is_padding.nonzero().view(-1))
    assert torch.equal(gather[scatter], torch.arange(height * width))  # scatter undoes gather on real tokens
    assert block._window_index(height, width, torch.device("cpu"))[0] is gather  # built once per size


@pytest.mark.parametrize("one_image_at_a_time", [False, True])
@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 10)])
def test_swin_block_inference_path_matches_reference(shift, size, one_image_at_a_time, monkeypatch):
    # The inference forward (gathered windows, residuals in place, MLP in chunks, whole batch or image by image)
    # against timm's block forward around the released-order reference attention, in float64, for a batch of 3; then
    # the autograd path.
    torch.manual_seed(0)
    block = MagNetSwinBlock(dim=16, input_resolution=size, num_heads=2, window_size=4, shift_size=shift).double().eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()
        block.attn.qkv.bias.normal_()
    monkeypatch.setattr(MagNetSwinBlock, "MLP_CHUNK_ELEMENTS", 64 * 7)  # 7 tokens per chunk: a short last chunk
    monkeypatch.setattr(modeling_magnet, "INFERENCE_GROUP_ELEMENTS", 1 if one_image_at_a_time else 10**12)
    hidden = torch.randn(3, *size, 16, dtype=torch.float64)
    before = hidden.clone()
    with torch.no_grad():
        shortcut = hidden + _reference_window_attention(block, block.norm1(hidden))
        expected = shortcut + block.mlp(block.norm2(shortcut))
        actual = block(hidden)
    assert torch.equal(hidden, before)  # the input is never written to
    assert (actual - expected).abs().max().item() < 1e-12
    trained = hidden.clone().requires_grad_()
    with_graph = block(trained)
    assert (with_graph.detach() - expected).abs().max().item() < 1e-12
    with_graph.square().sum().backward()
    assert torch.isfinite(trained.grad).all() and block.attn.qkv.bias.grad.abs().sum() > 0
    assert block.attn.relative_position_bias_table.grad.abs().sum() > 0


def test_swin_window_attention_gradients_match_reference():
    torch.manual_seed(0)
    block = MagNetSwinBlock(dim=16, input_resolution=(7, 10), num_heads=2, window_size=4, shift_size=2).double()
    hidden = torch.randn(2, 7, 10, 16, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(2, 7, 10, 16, dtype=torch.float64)
    parameters = [hidden, block.attn.qkv.weight, block.attn.qkv.bias, block.attn.relative_position_bias_table]
    expected = torch.autograd.grad((_reference_window_attention(block, hidden) * cotangent).sum(), parameters)
    actual = torch.autograd.grad((block._attn(hidden) * cotangent).sum(), parameters)
    for a, e in zip(actual, expected):
        assert (a - e).abs().max().item() < 1e-12


# --------------------------------------------------------------------------------------------------------------------
# Inference paths of the fusion and the pixel decoder against their autograd paths
# --------------------------------------------------------------------------------------------------------------------


def test_in_place_instance_norm_matches_and_overwrites():
    hidden = torch.randn(2, 5000, 24, dtype=torch.float64) * 3 + 1  # 5000 positions: three chunks, the last short
    expected = _normalize_over_positions(hidden)
    work = hidden.clone()
    actual = _normalize_over_positions(work, in_place=True)
    assert actual.data_ptr() == work.data_ptr()
    assert (actual - expected).abs().max().item() < 1e-12
    assert actual.mean(dim=1).abs().max() < 1e-12 and (actual.var(dim=1, unbiased=False) - 1).abs().max() < 1e-4


def test_pixel_decoder_layer_inference_path_matches_autograd_path(monkeypatch):
    from magnet_hf import MagNetConfig
    from magnet_hf.modeling_magnet import MagNetPixelDecoder, MagNetPixelDecoderLayer

    torch.manual_seed(0)
    config = MagNetConfig.from_preset("magnet-tiny")
    layer = MagNetPixelDecoderLayer(config, 2).double().eval()
    for parameter in layer.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    monkeypatch.setattr(MagNetPixelDecoderLayer, "FEEDFORWARD_CHUNK", 11)
    shapes = [(3, 4), (6, 8)]
    hidden = torch.randn(2, 60, config.decoder_hidden_size, dtype=torch.float64)
    position = torch.randn(1, 60, config.decoder_hidden_size, dtype=torch.float64)
    arguments = (position, MagNetPixelDecoder.reference_points(shapes, hidden.device), shapes, torch.tensor([0, 12]))
    expected = layer(hidden, *arguments)
    assert expected.requires_grad
    before = hidden.clone()
    with torch.no_grad():
        actual = layer(hidden, *arguments)
    assert torch.equal(hidden, before)
    assert (actual - expected.detach()).abs().max().item() < 1e-12


# An image fusion's group budget is pixels x 2 x dim elements per image (12 x 9 x 2 x 32 here).
@pytest.mark.parametrize("group_elements, image_groups", [(1, [1, 1, 1]), (2 * 12 * 9 * 2 * 32, [2, 1])])
@pytest.mark.parametrize("has_gate", [True, False])
def test_fusion_in_groups_matches_whole_batch(has_gate, group_elements, image_groups, monkeypatch):
    from magnet_hf.modeling_magnet import MagNetImageFusion, MagNetWordPixelAttention

    torch.manual_seed(0)
    image_fusion = MagNetImageFusion(32, 24, [1, 2, 3, 6], 0.0, has_gate=has_gate).double().eval()
    language_fusion = MagNetWordPixelAttention(24, 32).double().eval()
    for parameter in [*image_fusion.parameters(), *language_fusion.parameters()]:
        torch.nn.init.normal_(parameter, std=0.3)
    visual = torch.randn(3, 12, 9, 32, dtype=torch.float64)
    words = torch.randn(3, 7, 24, dtype=torch.float64)
    word_mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] * 5 + [0] * 2])

    seen_batches = []
    image_fusion.pixel_word_attention.register_forward_hook(lambda module, args, out: seen_batches.append(len(out)))

    def run():
        with torch.no_grad():
            gated, fused = image_fusion(visual, words, word_mask)
            return gated, fused, language_fusion(words, visual.flatten(1, 2), word_mask)

    monkeypatch.setattr(modeling_magnet, "INFERENCE_GROUP_ELEMENTS", 10**12)
    whole_batch = run()
    monkeypatch.setattr(modeling_magnet, "INFERENCE_GROUP_ELEMENTS", group_elements)
    image_by_image = run()
    assert seen_batches == [3, *image_groups]
    assert (whole_batch[0] is None) == (not has_gate) == (image_by_image[0] is None)
    for expected, actual in zip(whole_batch, image_by_image):
        if expected is not None:
            assert actual.shape == expected.shape
            assert (actual - expected).abs().max().item() < 1e-12
