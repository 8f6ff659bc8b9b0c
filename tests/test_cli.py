"""The `magnet-hf` command line: segment, demo, the wrapped tools, and clear errors with non-zero exit codes."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from pipeline_fixtures import save_model_folder, scene_images
from PIL import Image

from magnet_hf.demo import segmentation as demo_module
from magnet_hf.demo.synthetic_demo import DEMO_MANIFEST
from magnet_hf.commands.magnet_hf_cli import main
from magnet_hf.data.synthetic import generate_scene
from magnet_hf.demo.overlay import MASK_TINT, caption_box


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_model_folder(tmp_path_factory.mktemp("cli") / "model")


@pytest.fixture()
def image_file(tmp_path):
    path = tmp_path / "street.png"
    scene_images()[0].save(path)
    return path


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    for command in ("segment", "demo", "convert", "evaluate", "prepare-data"):
        assert command in usage


def test_segment_writes_a_mask_and_an_overlay_per_expression(model_folder, image_file, tmp_path, capsys):
    output = tmp_path / "out"
    expressions = ["the red circle", "the small blue square"]
    argv = ["segment", "--image", str(image_file), "--model", str(model_folder), "--output", str(output)]
    assert main(argv + [arg for text in expressions for arg in ("--text", text)]) == 0
    printed = capsys.readouterr().out
    assert "embedded" not in printed
    image = Image.open(image_file).convert("RGB")
    pixels = np.asarray(image).astype(int)

    from magnet_hf.demo.segmentation import load_segmenter

    direct = load_segmenter(str(model_folder), device="cpu")(image, text=expressions)
    for index, (text, result) in enumerate(zip(expressions, direct)):
        slug = text.replace(" ", "-")
        mask_image = Image.open(output / f"street_{index:02d}_{slug}_mask.png")
        overlay = np.asarray(Image.open(output / f"street_{index:02d}_{slug}_overlay.png").convert("RGB")).astype(int)
        assert mask_image.mode == "L" and mask_image.size == image.size
        mask = np.asarray(mask_image) > 127
        assert np.array_equal(mask, np.asarray(result["mask"]) > 127)
        assert 0 < mask.sum() < mask.size
        # Outside the mask and the caption the overlay is the image; inside the mask it moved towards the tint.
        left, top, right, bottom = caption_box(image.width, f"{text} ({result['score']:.2f})")
        outside_caption = np.ones(mask.shape, dtype=bool)
        outside_caption[top : bottom + 1, left : right + 1] = False
        untouched = ~mask & outside_caption
        assert np.array_equal(overlay[untouched], pixels[untouched])
        tinted = mask & outside_caption
        distance_before = np.abs(pixels[tinted] - MASK_TINT).sum(axis=1)
        distance_after = np.abs(overlay[tinted] - MASK_TINT).sum(axis=1)
        assert (distance_after <= distance_before).all() and (distance_after < distance_before).mean() > 0.99
        assert not np.array_equal(overlay[~outside_caption], pixels[~outside_caption])  # the caption was drawn
        assert f"{text!r}" in printed


def test_segment_refuses_to_replace_outputs_without_overwrite(model_folder, image_file, tmp_path, capsys):
    output = tmp_path / "out"
    argv = ["segment", "--image", str(image_file), "--text", "the red circle", "--model", str(model_folder), "--output", str(output)]
    assert main(argv) == 0
    mask_file = output / "street_00_the-red-circle_mask.png"
    mask_file.write_bytes(b"marker")
    assert main(argv) == 2
    assert "already exist" in capsys.readouterr().err
    assert mask_file.read_bytes() == b"marker"
    assert main(argv + ["--overwrite"]) == 0
    assert Image.open(mask_file).mode == "L"
    assert not [p for p in output.iterdir() if p.name.startswith(".")], "temporary files were left behind"


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda tmp: ["--image", str(tmp / "missing.png")], "does not exist"),
        (lambda tmp: ["--image", str((tmp / "broken.png").write_bytes(b"garbage") and tmp / "broken.png")], "not a readable image"),
        (lambda tmp: ["--image", str(tmp)], "not a readable image"),
    ],
)
def test_segment_bad_images_fail_clearly(model_folder, tmp_path, capsys, make_input, message):
    argv = ["segment", *make_input(tmp_path), "--text", "the red circle", "--model", str(model_folder), "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_segment_bad_models_fail_clearly(image_file, tmp_path, capsys):
    base = ["segment", "--image", str(image_file), "--text", "the red circle", "--output", str(tmp_path / "out")]
    assert main(base + ["--model", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(base + ["--model", str(tmp_path / "empty")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(base + ["--model", str(image_file)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_segment_explains_a_folder_without_processor(model_folder, image_file, tmp_path, capsys):
    bare = tmp_path / "converted"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((model_folder / name).read_bytes())
    argv = ["segment", "--image", str(image_file), "--text", "the red circle", "--model", str(bare), "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "no processor" in error and "--tokenizer" in error
    assert "huggingface.co" not in error and not (tmp_path / "out").exists()


def test_segment_argument_errors_exit_non_zero(image_file, tmp_path, capsys):
    assert main(["segment", "--image", str(image_file), "--output", str(tmp_path)]) == 2  # no --text
    assert main(["segment", "--image", str(image_file), "--text", "  ", "--output", str(tmp_path)]) == 2
    assert main(["segment", "--image", str(image_file), "--text", "x", "--output", str(tmp_path), "--threshold", "2"]) == 2
    assert "must have words" in capsys.readouterr().err


def test_without_model_the_embedded_one_is_used_and_its_absence_is_explained(image_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_module, "DEMO_MODEL_DIR", tmp_path / "not-installed")
    argv = ["segment", "--image", str(image_file), "--text", "the red circle", "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "embedded magnet-tiny" in captured.out and "synthetic scenes" in captured.out
    assert "embedded demo model is missing" in captured.err and "--model" in captured.err
    with pytest.raises(demo_module.DemoModelMissingError):
        demo_module.demo_model_path()


def test_demo_model_path_points_at_the_package_folder(tmp_path, monkeypatch):
    folder = tmp_path / "demo_model"
    folder.mkdir()
    monkeypatch.setattr(demo_module, "DEMO_MODEL_DIR", folder)
    (folder / "config.json").write_text("{}")
    with pytest.raises(demo_module.DemoModelMissingError, match="model.safetensors"):
        demo_module.demo_model_path()
    (folder / "model.safetensors").write_bytes(b"")
    assert demo_module.demo_model_path() == folder
    assert demo_module.DEMO_MODEL_DIR.name == "demo_model"


DEMO_ROW = re.compile(r"^(the .+?)\s+(attribute|relation|ordinal|superlative)\s+(\d\.\d{3})\s+(\d\.\d{3})$", flags=re.M)


def test_demo_prints_iou_and_kind_of_every_expression_and_names_the_contact_sheet(model_folder, tmp_path, capsys):
    from magnet_hf.data.synthetic import EXPRESSION_KINDS

    output = tmp_path / "demo"
    assert main(["demo", "--model", str(model_folder), "--output", str(output), "--scenes", "2", "--num-expressions", "6"]) == 0
    printed = capsys.readouterr().out
    scene_files = re.search(r"^Scenes: (.+)$", printed, flags=re.M).group(1).split(", ")
    scenes = {}
    for scene_file in scene_files:
        index = int(re.search(r"scene(\d+)\.png$", scene_file).group(1))
        scenes[index] = generate_scene(demo_module.DEMO_SCENE_SEED, index, 128)
        assert np.array_equal(np.asarray(Image.open(scene_file).convert("RGB")), np.asarray(scenes[index].image))
    assert len(scenes) == 2
    rows = DEMO_ROW.findall(printed)
    assert len(rows) == 6 and {kind for _, kind, _, _ in rows} == set(EXPRESSION_KINDS)
    ious = []
    for expression, kind, iou, _score in rows:
        masks = sorted(output.glob(f"scene*_??_{expression.replace(' ', '-')}_mask.png"))
        assert masks, expression
        mask_file = masks[0]
        scene = scenes[int(re.match(r"scene(\d+)_", mask_file.name).group(1))]
        named = [i for i, texts in scene.expressions.items() if expression in texts]
        assert len(named) == 1, f"{expression!r} names one object of its scene"
        from magnet_hf.data.synthetic import expression_kind

        assert expression_kind(expression) == kind
        mask, truth = np.asarray(Image.open(mask_file)) > 127, scene.objects[named[0]].mask
        union = np.logical_or(mask, truth).sum()
        assert float(iou) == pytest.approx(np.logical_and(mask, truth).sum() / union if union else 0.0, abs=5e-4)
        assert mask_file.with_name(mask_file.name.replace("_mask.png", "_overlay.png")).is_file()
        ious.append(float(iou))
    mean = float(re.search(r"^mean IoU\s+(\d\.\d{3})$", printed, flags=re.M).group(1))
    assert mean == pytest.approx(np.mean(ious), abs=1e-3)
    sheet = re.search(r"^Open the contact sheet: (\S+)$", printed, flags=re.M).group(1)
    assert Image.open(sheet).size[0] > 3 * 384  # a grid of enlarged tiles, several per row


def _folder_state(folder):
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.name != DEMO_MANIFEST}


def test_demo_reruns_in_its_own_folder_and_never_touches_other_files(model_folder, tmp_path, capsys):
    output = tmp_path / "demo"
    output.mkdir()
    (output / "notes.txt").write_text("the user's own file")
    argv = ["demo", "--model", str(model_folder), "--output", str(output), "--scenes", "2"]
    assert main(argv + ["--num-expressions", "6"]) == 0
    first = _folder_state(output)
    assert len(first) == 1 + 1 + 2 + 2 * 6  # notes, contact sheet, two scenes, a mask and an overlay per expression
    assert main(argv + ["--num-expressions", "6"]) == 0  # the same run again replaces its own files
    assert _folder_state(output) == first
    # A smaller run replaces the earlier output: the files it does not write again are removed, notes.txt stays.
    assert main(argv + ["--num-expressions", "4"]) == 0
    second = _folder_state(output)
    assert len(second) == 1 + 1 + 2 + 2 * 4 and second["notes.txt"] == b"the user's own file"
    capsys.readouterr()

    # Files of the same names that the demo did not write are refused, counted exactly, and left as they were.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in sorted(second)[:3]:
        if name != "notes.txt":
            (foreign / name).write_text("not the demo's")
    before = _folder_state(foreign)
    assert main(["demo", "--model", str(model_folder), "--output", str(foreign), "--scenes", "2", "--num-expressions", "4"]) == 2
    error = capsys.readouterr().err
    assert f"{len(before)} of the demo's {len(second) - 1} output files already exist" in error and "--overwrite" in error
    assert _folder_state(foreign) == before
    assert main(["demo", "--model", str(model_folder), "--output", str(foreign), "--scenes", "2", "--num-expressions", "4", "--overwrite"]) == 0
    assert _folder_state(foreign).keys() == second.keys() - {"notes.txt"}


def test_wrapped_commands_hand_over_their_arguments(tmp_path, capsys):
    assert main(["evaluate", "--help"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: magnet-hf evaluate ") and "--update-model-card" in printed
    assert main(["convert", "--checkpoint", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "out")]) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert main(["convert", "--output", str(tmp_path / "out")]) == 2
    assert "usage: magnet-hf convert " in capsys.readouterr().err
    assert main(["prepare-data", "--help"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: magnet-hf prepare-data ") and "--refer-root" in printed


def test_module_entry_point_exits_non_zero_on_bad_input(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "magnet_hf.commands.magnet_hf_cli", "segment", "--image", str(tmp_path / "missing.png"), "--text", "x",
         "--output", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: Image 0: file")
