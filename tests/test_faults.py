"""Faults and hostile or careless inputs (issue 13): planted pickles, --overwrite over inputs, crafted masks and
sizes, non-finite training state, broken model folders, and the one-line `error:` with its own exit status."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from data_fixtures import make_refer_tree
from pipeline_fixtures import save_model_folder
from PIL import Image

from magnet_hf import exit_status
from magnet_hf.data import ReferDataError, decode_segmentation, prepare_refer_dataset
from magnet_hf.commands.train import main as train_main
from magnet_hf.commands.train import parse_args

REPOSITORY = Path(__file__).resolve().parents[1]
QUIET = ["--no-progress", "--report-to", "none"]
SHORT = ["--dataset", "synthetic", "--synthetic-images", "30", "--preset", "magnet-tiny", "--image-size", "32",
         "--batch-size", "4", "--eval-strategy", "no", *QUIET]


class _Payload:
    """Unpickling this creates `path`: proof that code from the file ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_Payload(marker)))


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_model_folder(tmp_path_factory.mktemp("faults") / "model")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4."""
    output = tmp_path_factory.mktemp("run") / "run"
    assert train_main([*SHORT, "--max-steps", "4", "--save-steps", "2", "--output-dir", str(output)]) == 0
    return output


def _copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for name in ("config.json", "model.safetensors"):  # as if killed before the end, so --resume has work to do
        (copy / name).unlink()
    return copy


# ------------------------------------------------------------------------------------ 1: no code from a checkpoint


def test_checkpoints_hold_only_safetensors_and_json(finished_run):
    checkpoint = finished_run / "checkpoints" / "step-000004"
    files = [path for path in checkpoint.iterdir() if path.is_file()]
    suffixes = {path.suffix for path in files}
    assert suffixes <= {".safetensors", ".json", ".txt", ".py"}, suffixes  # .txt: the tokenizer's vocabulary
    # .py: the model's own Hub remote code that every saved folder carries; resume builds the classes from the
    # installed package and never imports these copies.
    assert all(path.name.endswith("_magnet.py") for path in files if path.suffix == ".py")


@pytest.mark.parametrize("planted", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_a_planted_pickle_is_refused_and_never_unpickled(finished_run, tmp_path, capsys, planted):
    run = _copy_run(finished_run, tmp_path)
    marker = tmp_path / "payload-ran"
    checkpoint = run / "checkpoints" / "step-000004"
    _plant(checkpoint / planted, marker)
    code = train_main([*SHORT, "--max-steps", "4", "--save-steps", "2", "--output-dir", str(run), "--resume", str(checkpoint)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == exit_status.BAD_INPUT and error[-1].startswith("error: ") and "pickle" in error[-1]
    assert planted in error[-1] and not marker.exists()


def test_resume_latest_falls_back_to_the_previous_good_checkpoint_with_a_warning(finished_run, tmp_path, caplog):
    run = _copy_run(finished_run, tmp_path)
    (run / "checkpoints" / "step-000004" / "trainer_state.json").write_text('{"global_step": 4, "total')  # truncated
    from magnet_hf.training import train

    with caplog.at_level("WARNING"):
        result = train(parse_args([*SHORT, "--max-steps", "4", "--save-steps", "2", "--output-dir", str(run), "--resume", "latest"]))
    assert any("skipping checkpoint step-000004" in record.getMessage() for record in caplog.records)
    assert result.global_step == 4 and (run / "model.safetensors").is_file()
    # It continued from step 2: the final weights are those of the uninterrupted run, bit for bit.
    from safetensors.torch import load_file

    expected, resumed = load_file(str(finished_run / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert all(torch.equal(resumed[name], tensor) for name, tensor in expected.items())


def test_a_truncated_model_in_the_latest_checkpoint_is_skipped(finished_run, tmp_path):
    from magnet_hf.training.checkpoints import latest_good_checkpoint

    run = _copy_run(finished_run, tmp_path)
    weights = run / "checkpoints" / "step-000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert latest_good_checkpoint(run, warn=False).name == "step-000002"


# --------------------------------------------------------------------- 2, 3: --overwrite never destroys an input


def test_train_overwrite_with_a_bad_dataset_keeps_the_old_run(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    before = sorted(str(path.relative_to(run)) for path in run.rglob("*"))
    code = train_main(["--dataset", str(tmp_path / "nope"), "--preset", "magnet-tiny", "--output-dir", str(run), "--overwrite", *QUIET])
    assert code == exit_status.BAD_INPUT and capsys.readouterr().err.startswith("error: ")
    assert sorted(str(path.relative_to(run)) for path in run.rglob("*")) == before


def test_train_overwrite_refuses_an_output_holding_the_model_to_fine_tune(model_folder, tmp_path, capsys):
    parent = tmp_path / "work"
    model = parent / "model"
    shutil.copytree(model_folder, model)
    code = train_main([*SHORT[:4], "--model", str(model), "--output-dir", str(parent), "--overwrite", *QUIET])
    assert code == exit_status.BAD_INPUT and "--model" in capsys.readouterr().err
    assert (model / "model.safetensors").is_file() and (model / "config.json").is_file()


def test_push_local_dir_that_holds_the_model_is_refused(model_folder, tmp_path, capsys):
    from magnet_hf.commands.push_to_hub import main as push_main

    parent = tmp_path / "work"
    model = parent / "models" / "m"
    shutil.copytree(model_folder, model)
    (model / "README.md").write_text("# card\n")
    code = push_main(["--model", str(model), "--repo", "me/m", "--local-dir", str(parent), "--overwrite"])
    assert code == exit_status.BAD_INPUT and "holds the input of --model" in capsys.readouterr().err
    assert (model / "model.safetensors").is_file()


def test_push_refuses_a_card_that_is_not_markdown_and_a_dangling_output_link(model_folder, tmp_path):
    from magnet_hf.hub.publishing import HubPublishError, build_hub_folder

    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(HubPublishError, match="not a Markdown"):
        build_hub_folder(model_folder, tmp_path / "out", card=secret)
    card = tmp_path / "card.md"
    card.write_text("# card\n")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(HubPublishError, match="already exists"):
        build_hub_folder(model_folder, link, card=card)
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_replacing_a_linked_folder_leaves_no_backup_link_behind(tmp_path):
    from magnet_hf.files import replace_directory

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep.txt").write_text("kept")
    (tmp_path / "hublink").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "new").mkdir()
    replace_directory(tmp_path / "new", tmp_path / "hublink")
    assert (tmp_path / "hublink").is_dir() and not (tmp_path / "hublink").is_symlink()
    assert not list(tmp_path.glob(".hublink.replaced-*"))
    assert (tmp_path / "elsewhere" / "keep.txt").read_text() == "kept"  # the link's target is not deleted


# ------------------------------------------------------------------------------------ 4, 5: bounded mask decoding


@pytest.mark.parametrize("coordinate", [1e12, 1e8, float("nan"), float("inf")])
def test_a_crafted_polygon_is_refused_before_pycocotools_allocates(coordinate):
    with pytest.raises(ReferDataError, match="polygon coordinates must be finite and near"):
        decode_segmentation([[0.0, 0.0, coordinate, 0.0, 5.0, 5.0]], 30, 40)


def test_polygons_slightly_outside_the_image_still_decode():
    mask = decode_segmentation([[-2.0, -2.0, 45.0, -1.0, 44.0, 33.0]], 30, 40)
    assert mask.shape == (30, 40) and 0 < mask.sum() < 30 * 40


def test_a_huge_claimed_image_size_is_refused():
    with pytest.raises(ReferDataError, match="larger than"):
        decode_segmentation([[0.0, 0.0, 1.0, 0.0, 1.0, 1.0]], 1_000_000, 1_000_000)


@pytest.mark.parametrize(
    "segmentation",
    [{"counts": "", "size": [30, 40]}, {"counts": [5], "size": [30, 40]}, {"counts": [600, -10, 610], "size": [30, 40]},
     {"counts": "zz", "size": [30, 40]}, {"counts": "0", "size": [30, 40]}],
)
def test_a_malformed_rle_is_refused_instead_of_reading_uninitialised_memory(segmentation):
    with pytest.raises(ReferDataError, match="RLE"):
        decode_segmentation(segmentation, 30, 40)


def test_a_valid_compressed_rle_still_decodes_exactly():
    from pycocotools import mask as mask_utils

    expected = np.zeros((30, 40), dtype=np.uint8, order="F")
    expected[5:10, 3:30] = 1
    encoded = mask_utils.encode(expected)
    decoded = decode_segmentation({"counts": encoded["counts"].decode(), "size": [30, 40]}, 30, 40)
    assert np.array_equal(decoded, expected)


# ------------------------------------------------------------------------- 6: finite hyperparameters and states


@pytest.mark.parametrize(
    "flags", [["--learning-rate", "inf"], ["--learning-rate", "nan"], ["--weight-decay", "nan"],
              ["--max-grad-norm", "nan"], ["--poly-power", "nan"], ["--weight-decay", "inf"]],
)
def test_non_finite_hyperparameters_are_refused(flags, tmp_path, capsys):
    code = train_main([*SHORT, *flags, "--output-dir", str(tmp_path / "run")])
    assert code == exit_status.BAD_INPUT and "finite" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_non_finite_state_is_never_saved_as_a_checkpoint(tmp_path):
    from magnet_hf.training.state import NonFiniteStateError, save_training_state

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteStateError, match="weight"):
        save_training_state(tmp_path, model, optimizer, scheduler, None, rank=0, is_main=True)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------- 7: memory bounded by the model


def test_tiled_post_processing_equals_the_full_interpolation(monkeypatch):
    import magnet_hf.image_processing_magnet as image_processing

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 1, 16, 12, generator=generator) * 4
    outputs = type("Outputs", (), {"pred_masks": logits, "pred_logits": torch.zeros(1, 1, 2)})()
    monkeypatch.setattr(image_processing, "_POST_PROCESS_TILE_ELEMENTS", 997)  # many uneven tiles
    (result,) = image_processing.MagNetImageProcessor().post_process_referring_segmentation(outputs, [(613, 401)])
    probability = F.interpolate(logits, size=(613, 401), mode="bilinear", align_corners=True).sigmoid()[0, 0]
    assert torch.equal(result["mask"], probability > 0.5)
    assert result["score"] == pytest.approx(probability[probability > 0.5].mean().item(), rel=1e-6)


def test_post_processing_a_10000_pixel_target_stays_within_the_mask_memory():
    script = """
import resource, torch
from magnet_hf.image_processing_magnet import MagNetImageProcessor
outputs = type("O", (), {"pred_masks": torch.randn(1, 1, 32, 32), "pred_logits": torch.zeros(1, 1, 2)})()
processor = MagNetImageProcessor()
processor.post_process_referring_segmentation(outputs, [(64, 64)])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
(result,) = processor.post_process_referring_segmentation(outputs, [(10000, 10000)])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, int(result["mask"].sum()))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPOSITORY / "src"), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    grown_mb, pixels = map(int, completed.stdout.split())
    # The bool mask is 95 MiB; full-resolution float32 maps (logits, sigmoid, product) were 380 MiB each.
    assert grown_mb < 200, grown_mb
    assert 0 < pixels < 10000 * 10000


def test_a_processor_size_beyond_the_bound_and_a_zero_std_are_refused(model_folder, tmp_path):
    from magnet_hf.model_folder import ModelFolderError, load_processor

    for name, edit in (("size", {"size": {"height": 60000, "width": 60000}}), ("std", {"image_std": [0.0, 0.2, 0.2]})):
        folder = tmp_path / name
        shutil.copytree(model_folder, folder)
        config_file = folder / "processor_config.json"
        config = json.loads(config_file.read_text())
        config["image_processor"].update(edit)
        config_file.write_text(json.dumps(config))
        with pytest.raises(ModelFolderError, match="60000x60000|image_std"):
            load_processor(folder)


# ------------------------------------------------------------------------------------------- 8: empty splits


def test_an_empty_split_after_skip_missing_is_saved_loadable(tmp_path):
    from datasets import load_from_disk

    tree = make_refer_tree(tmp_path)
    (tree["coco_images"] / tree["instances"]["images"][1]["file_name"]).unlink()  # the only image of "val"
    prepare_refer_dataset(tree["refer_root"], tree["coco_images"], tmp_path / "out", skip_missing=True)
    loaded = load_from_disk(str(tmp_path / "out"))
    assert loaded["val"].num_rows == 0 and loaded["train"].num_rows == 2


# --------------------------------------------------------------------------- 9: one-line errors, distinct codes


def _rewrite(tree, refs_edit=None, instances_edit=None):
    if refs_edit:
        refs = pickle.loads(tree["refs_path"].read_bytes())
        refs_edit(refs)
        tree["refs_path"].write_bytes(pickle.dumps(refs, protocol=2))
    if instances_edit:
        instances = json.loads(tree["instances_path"].read_text())
        instances_edit(instances)
        tree["instances_path"].write_text(json.dumps(instances))


@pytest.mark.parametrize(
    "refs_edit, instances_edit, message",
    [
        (lambda refs: refs[0].update(ref_id="abc"), None, "non-integer ref_id='abc'"),
        (lambda refs: refs[0].update(ann_id=[11]), None, "non-integer ann_id=[11]"),
        (lambda refs: refs[0]["sentences"][0].update(sent="\u200b\x07 "), None, "empty sentence"),
        (None, lambda inst: inst["images"].__setitem__(0, 101), "integer 'id'"),
        (None, lambda inst: inst["annotations"][0].pop("bbox"), "bbox"),
        (None, lambda inst: inst["images"][0].pop("file_name"), "file_name None"),
        (None, lambda inst: inst["images"][0].update(height="thirty"), "positive integer 'height'"),
        (None, lambda inst: inst["images"][0].update(file_name="../../etc/hostname"), "relative path inside"),
        (None, lambda inst: inst["images"][0].update(file_name="/etc/hostname"), "relative path inside"),
    ],
)
def test_bad_refs_and_instances_end_in_one_line_errors(tmp_path, capsys, refs_edit, instances_edit, message):
    from magnet_hf.commands.prepare_data import main as prepare_main

    tree = make_refer_tree(tmp_path)
    _rewrite(tree, refs_edit, instances_edit)
    code = prepare_main(["--dataset", "refcoco", "--split-by", "unc", "--refer-root", str(tree["refer_root"]),
                         "--coco-images", str(tree["coco_images"]), "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == exit_status.BAD_INPUT and error[-1].startswith("error: ") and message in error[-1]
    assert not (tmp_path / "out").exists()


def _broken_model(model_folder: Path, tmp_path: Path, kind: str, marker: Path) -> Path:
    folder = tmp_path / kind
    shutil.copytree(model_folder, folder)
    weights = folder / "model.safetensors"
    if kind == "pickle":
        weights.unlink()
        _plant(folder / "pytorch_model.bin", marker)
    elif kind == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "shape":
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(weights))
        # A weight of the network itself (not a training head, which MagNetModel would ignore as unexpected).
        name = next(key for key, value in sorted(tensors.items()) if key.startswith("model.pixel_decoder") and value.ndim == 2 and value.shape[0] > 4)
        tensors[name] = tensors[name][:4].clone()
        save_file(tensors, str(weights), metadata={"format": "pt"})
    else:
        config = json.loads((folder / "config.json").read_text())
        field, value = {"vocab0": ("vocab_size", 0), "hidden_neg": ("hidden_size", -64), "hidden_str": ("hidden_size", "4")}[kind]
        config["text_config"][field] = value
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("kind", ["pickle", "truncated", "shape", "vocab0", "hidden_neg", "hidden_str"])
def test_segment_on_a_broken_model_folder_is_a_one_line_error(model_folder, tmp_path, capsys, kind):
    from magnet_hf.commands.magnet_hf_cli import main

    marker = tmp_path / "payload-ran"
    folder = _broken_model(model_folder, tmp_path, kind, marker)
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 30), (200, 20, 20)).save(image)
    code = main(["segment", "--image", str(image), "--text", "the red square", "--model", str(folder), "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == exit_status.BAD_INPUT and error[-1].startswith("error: ") and "Traceback" not in "\n".join(error), error
    assert not marker.exists() and not list(tmp_path.glob("out/*.png"))


def test_push_on_a_planted_pickle_model_is_a_one_line_error(model_folder, tmp_path, capsys):
    from magnet_hf.commands.push_to_hub import main as push_main

    marker = tmp_path / "payload-ran"
    folder = _broken_model(model_folder, tmp_path, "pickle", marker)
    (folder / "README.md").write_text("# card\n")
    code = push_main(["--model", str(folder), "--repo", "me/m", "--local-dir", str(tmp_path / "upload")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == exit_status.BAD_INPUT and error[-1].startswith("error: ") and "pickle" in error[-1]
    assert not marker.exists() and not (tmp_path / "upload").exists()


def test_converter_refuses_a_zero_vocabulary_and_nan_or_integer_weights():
    from magnet_hf.hub.conversion import MAGNET_BASE_BUILD_ARGUMENTS, ConversionError, _check_weight_values, config_from_official

    with pytest.raises(ConversionError, match="positive integers"):
        config_from_official({**MAGNET_BASE_BUILD_ARGUMENTS, "vocab": 0})
    reference = {"a.weight": torch.zeros(2), "a.index": torch.zeros(2, dtype=torch.long)}
    _check_weight_values({"a.weight": torch.ones(2), "a.index": torch.ones(2, dtype=torch.long)}, reference, "ckpt")
    with pytest.raises(ConversionError, match="NaN or infinite"):
        _check_weight_values({"a.weight": torch.tensor([1.0, float("nan")])}, reference, "ckpt")
    with pytest.raises(ConversionError, match="stored as integers"):
        _check_weight_values({"a.weight": torch.ones(2, dtype=torch.int32)}, reference, "ckpt")


def test_out_of_disk_and_memory_end_with_their_own_status(capsys):
    @exit_status.guard_resources
    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out.png")

    @exit_status.guard_resources
    def out_of_memory():
        raise MemoryError()

    assert full_disk() == exit_status.OUT_OF_RESOURCES and "no space left" in capsys.readouterr().err
    assert out_of_memory() == exit_status.OUT_OF_RESOURCES and capsys.readouterr().err.startswith("error: out of memory")
    assert len({exit_status.BAD_INPUT, exit_status.UPLOAD_FAILED, exit_status.DIVERGED, exit_status.OUT_OF_RESOURCES, 1}) == 5


def test_segment_checks_that_the_output_is_writable_before_running_the_model(model_folder, tmp_path, monkeypatch, capsys):
    from magnet_hf import files as atomic
    from magnet_hf.commands.magnet_hf_cli import main

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "NamedTemporaryFile", refuse)
    ran = []
    from magnet_hf.pipeline_magnet import MagNetReferringSegmentationPipeline

    monkeypatch.setattr(MagNetReferringSegmentationPipeline, "__call__", lambda self, *a, **k: ran.append(1))
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 30)).save(image)
    code = main(["segment", "--image", str(image), "--text", "the square", "--model", str(model_folder), "--output", str(tmp_path / "out")])
    assert code == exit_status.BAD_INPUT and "Read-only file system" in capsys.readouterr().err and not ran


# ----------------------------------------------------------------------------------- 10: silently accepted nonsense


@pytest.mark.parametrize("dtype", ["int8", "bool", torch.complex64, torch.float64])
def test_pipeline_refuses_dtypes_it_would_silently_run_in_fp32(dtype):
    from magnet_hf.pipeline_magnet import _as_dtype

    with pytest.raises(ValueError, match="not supported"):
        _as_dtype(dtype)
    assert _as_dtype("bfloat16") is torch.bfloat16


def test_an_expression_of_control_and_zero_width_characters_is_refused(model_folder, tmp_path, capsys):
    from magnet_hf.commands.magnet_hf_cli import main

    image = tmp_path / "image.png"
    Image.new("RGB", (40, 30)).save(image)
    code = main(["segment", "--image", str(image), "--text", "\u200b\u200d\x07", "--model", str(model_folder), "--output", str(tmp_path / "out")])
    assert code == exit_status.BAD_INPUT and "words" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_an_unknown_config_override_is_refused(tmp_path, capsys):
    code = train_main([*SHORT, "--max-steps", "1", "--config-override", "drop_path_rat=0", "--output-dir", str(tmp_path / "run")])
    assert code == exit_status.BAD_INPUT and "drop_path_rat" in capsys.readouterr().err


def test_a_run_logged_to_a_file_prints_its_losses_without_being_asked(tmp_path, capsys):
    # With the default progress bar and no terminal (output redirected to a log), tqdm hides the bar: the step lines
    # must be printed instead, or a batch job's log shows no loss at all.
    arguments = [flag for flag in SHORT if flag != "--no-progress"]
    assert train_main([*arguments, "--max-steps", "2", "--logging-steps", "1", "--output-dir", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert [line.split(":")[0] for line in printed.splitlines() if line.startswith("step ")] == ["step 1/2", "step 2/2"]
