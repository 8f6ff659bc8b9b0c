"""Tests for `magnet_hf.benchmark` (tiny preset, CPU) and the fast kernels it measures (gather-based deformable
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

from magnet_hf import benchmark
from magnet_hf.benchmark import CONFIGURATION_KEYS, BenchmarkSettings, run_benchmark, write_json
from magnet_hf.deformable_attention_magnet import (
    MagNetMultiscaleDeformableAttention,
    multi_scale_deformable_attention_gather,
)
from magnet_hf.modeling_magnet import MagNetSwinBlock


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


def test_deformable_attention_module_keeps_parameters_and_outputs():
    torch.manual_seed(0)
    reference = Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(embed_dim=32, num_heads=4, n_levels=2, n_points=3)
    fast = MagNetMultiscaleDeformableAttention(embed_dim=32, num_heads=4, n_levels=2, n_points=3)
    assert fast.state_dict().keys() == reference.state_dict().keys()
    fast.load_state_dict(reference.state_dict())
    shapes = [(6, 5), (3, 3)]
    tokens = sum(h * w for h, w in shapes)
    hidden = torch.randn(2, tokens, 32)
    position = torch.randn(2, tokens, 32)
    reference_points = torch.rand(1, tokens, 2, 2)
    kwargs = dict(
        encoder_hidden_states=hidden, position_embeddings=position, reference_points=reference_points,
        spatial_shapes_list=shapes, level_start_index=torch.tensor([0, 30]),
    )
    expected, expected_weights = reference(hidden, **kwargs)
    actual, actual_weights = fast(hidden, **kwargs)
    assert (actual - expected).abs().max().item() < 1e-5
    assert (actual_weights - expected_weights).abs().max().item() < 1e-6


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
