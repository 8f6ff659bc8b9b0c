"""`scripts/compare_image_backends.py` (`magnet_hf.commands.compare_image_backends`) on the embedded demo model."""

from __future__ import annotations

import json

from magnet_hf.commands.compare_image_backends import main


def test_the_two_backends_agree_closely_and_the_report_is_written_once(tmp_path, capsys):
    output = tmp_path / "backends.json"
    assert main(["--scenes", "1", "--scene-size", "160", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert report["pairs"] == 3 and report["scene_size"] == 160
    # Downscaling, the backends differ by at most one 8-bit level per pixel (README "Image processing backends").
    assert report["pixel_max_abs_difference_8bit_levels"] <= 1.0 + 1e-3
    assert report["pixel_mean_abs_difference"] < 1e-3
    assert report["mask_iou_between_backends_overall"] > 0.99
    assert main(["--scenes", "1", "--output", str(output)]) == 2  # never replaced without --overwrite
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert json.loads(output.read_text()) == report
