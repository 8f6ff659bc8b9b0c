"""Tests for `magnet_hf.commands.benchmark` (tiny preset, CPU). The fast kernels it measures are checked against the
reference computations they replace in test_fast_path.py."""

import dataclasses
import json
import math

import pytest
import torch

from magnet_hf.commands import benchmark
from magnet_hf.commands.benchmark_measure import CONFIGURATION_KEYS, BenchmarkSettings, run_benchmark, write_json


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
        (["--config-override", "use_mask_grounding_x=false"], "unknown MagNetConfig field(s) ['use_mask_grounding_x']"),
        (["--config-override", "use_mask_grounding"], "expected KEY=VALUE"),
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


def test_config_overrides_time_an_ablation_variant(tmp_path, capsys):
    # The ablation's step-time overheads are measured this way, one variant per run; the overrides must reach the
    # model: without Mask Grounding the training step loses its second fused pass, the forward is unchanged.
    flags = ["--preset", "magnet-tiny", "--image-size", "64", "--repeats", "1", "--train-repeats", "1", "--no-isolate",
             "--matmul-size", "256"]  # fmt: skip
    variant = ["--config-override", "use_mask_grounding=false", "--config-override", "text_config.hidden_dropout_prob=0"]
    reports, lines = [], []
    for name, extra in (("full", []), ("variant", variant)):
        assert benchmark.main(flags + extra + ["--json", str(tmp_path / f"{name}.json")]) == 0
        lines.append(capsys.readouterr().out.splitlines()[-2])  # the configuration's line, before "wrote ..."
        reports.append(json.loads((tmp_path / f"{name}.json").read_text())["configurations"][0])
    full, without = reports
    assert full["config_overrides"] == {}
    assert without["config_overrides"] == {"use_mask_grounding": False, "text_config.hidden_dropout_prob": 0}
    assert without["model_flops"] == full["model_flops"]
    assert without["train_step_flops"] < 0.9 * full["train_step_flops"]
    assert "use_mask_grounding" not in lines[0]
    assert "magnet-tiny batch 1 float32 cpu use_mask_grounding=false text_config.hidden_dropout_prob=0:" in lines[1]


def test_profile_takes_each_operators_median_so_a_stall_in_one_forward_does_not_count():
    from magnet_hf.commands.benchmark_profile import MATRIX_KIND, profile_forward

    weight, inputs = torch.randn(256, 256), torch.randn(1024, 256)
    big = torch.randn(300_000)
    calls = []

    def forward():
        calls.append(None)
        output = torch.nn.functional.linear(inputs, weight)
        if len(calls) == 2:  # one forward of five is hit by a "stall": work no other forward does
            torch.sort(big)
        return output

    profile = profile_forward(forward, runs=5)
    assert len(calls) == 5 and profile["runs"] == 5
    names = [op["name"] for op in profile["top_operators"]]
    assert "aten::sort" not in names and names[0] == "aten::mm"
    assert profile["shares"][MATRIX_KIND] > 0.5 and sum(profile["shares"].values()) == pytest.approx(1.0)
    # With the stalled forward alone, the sort is there and dominates.
    calls.clear()
    calls.append(None)
    stalled = profile_forward(forward, runs=1)
    assert stalled["top_operators"][0]["name"] == "aten::sort"
    with pytest.raises(ValueError, match="at least one run"):
        profile_forward(forward, runs=0)


def test_profile_accounts_for_the_whole_forward_by_kind_of_work(capsys):
    from magnet_hf.commands.benchmark_profile import MATRIX_KIND, OTHER_KIND, OPERATOR_KINDS

    settings = BenchmarkSettings(
        preset="magnet-tiny", image_size=64, repeats=1, train_step=False, isolate=False, matmul_size=256, profile=True
    )
    (result,) = run_benchmark(settings, log=print)["configurations"]
    profile = result["profile"]
    assert list(profile["shares"]) == [*OPERATOR_KINDS, OTHER_KIND]
    assert sum(profile["shares"].values()) == pytest.approx(1.0)
    assert all(0 <= share <= 1 for share in profile["shares"].values())
    # A MagNet forward is mostly linear layers and convolutions, and their FLOPs give a finite rate.
    assert profile["shares"][MATRIX_KIND] > 0.2
    assert 0 < profile["matrix_gflops_per_second"] < 1e5
    seconds = [op["self_seconds"] for op in profile["top_operators"]]
    assert seconds == sorted(seconds, reverse=True) and len(seconds) == 10
    assert sum(seconds) <= profile["self_seconds"] * (1 + 1e-9)
    assert "aten::addmm" in [op["name"] for op in profile["top_operators"]]
    printed = capsys.readouterr().out
    assert "where the time goes: matrix products and convolutions" in printed and "top operators: " in printed
    json.dumps(result)
    with pytest.raises(ValueError, match="--profile times CPU operators"):
        dataclasses.replace(settings, device="cuda").validate()
    # Without the flag nothing is profiled.
    (plain,) = run_benchmark(dataclasses.replace(settings, profile=False))["configurations"]
    assert plain["profile"] is None
