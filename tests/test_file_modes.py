"""Written files and folders get the modes the umask asks for, not the private ones of temporary files."""

from __future__ import annotations

import contextlib
import json
import os
import stat

import pytest
from PIL import Image

from magnet_hf.files import (
    apply_default_modes,
    current_umask,
    make_staging_directory,
    replace_directory,
    write_text_atomically,
)


@contextlib.contextmanager
def umask(mask):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o002, 0o022, 0o077])
def test_atomic_file_writers_follow_the_umask(tmp_path, mask):
    from magnet_hf.demo.segmentation import save_png_atomically

    with umask(mask):
        assert current_umask() == mask
        png = save_png_atomically(Image.new("RGB", (4, 4)), tmp_path / "image.png")
        text = write_text_atomically(tmp_path / "results.json", "{}\n")
    assert mode(png) == mode(text) == 0o666 & ~mask
    assert Image.open(png).size == (4, 4) and text.read_text() == "{}\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["image.png", "results.json"]  # no temporary left


@pytest.mark.parametrize("mask", [0o002, 0o022])
def test_a_saved_model_folder_put_in_place_follows_the_umask(tiny_model, tmp_path, mask):
    with umask(mask):
        staging = make_staging_directory(tmp_path / "model")
        tiny_model.save_pretrained(staging)
        assert mode(staging) == 0o700  # what mkdtemp gives, and transformers writes its weights 0600
        replace_directory(staging, tmp_path / "model")
    folder = tmp_path / "model"
    assert mode(folder) == 0o777 & ~mask
    files = list(folder.iterdir())
    assert "model.safetensors" in {path.name for path in files}
    assert {path.name: mode(path) for path in files} == {path.name: 0o666 & ~mask for path in files}


def test_executable_bits_are_kept_within_the_umask(tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o755)
    with umask(0o027):
        apply_default_modes(script)
    assert mode(script) == 0o750


def test_every_writer_gives_0644_files_and_0755_folders_under_umask_022(tmp_path):
    from magnet_hf.files import move_into, replacing_directory, write_json_atomically

    with umask(0o022):
        as_json = write_json_atomically(tmp_path / "state.json", {"step": 3}, sync=True)
        with replacing_directory(tmp_path / "folder", sync=True) as staging:
            (staging / "inner").mkdir()
            (staging / "inner" / "weights.bin").write_bytes(b"w")
            os.chmod(staging / "inner" / "weights.bin", 0o600)
        finished = make_staging_directory(tmp_path / "merge")
        (finished / "config.json").write_text("{}")
        os.chmod(finished / "config.json", 0o600)
        (tmp_path / "merged").mkdir()
        assert move_into(finished, tmp_path / "merged", last=["config.json"]) == ["config.json"]
    assert mode(as_json) == mode(tmp_path / "folder" / "inner" / "weights.bin") == mode(tmp_path / "merged" / "config.json") == 0o644
    assert mode(tmp_path / "folder") == mode(tmp_path / "folder" / "inner") == 0o755
    assert json.loads(as_json.read_text()) == {"step": 3}


def test_a_failed_folder_write_leaves_the_old_folder_and_no_staging(tmp_path):
    from magnet_hf.files import replacing_directory

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="half way"):
        with replacing_directory(tmp_path / "out") as staging:
            (staging / "new.txt").write_text("new")
            raise RuntimeError("half way")
    assert [path.name for path in tmp_path.iterdir()] == ["out"]
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["old.txt"]


def test_an_existing_output_or_a_dangling_link_is_refused_without_overwrite(tmp_path):
    from magnet_hf.files import refuse_existing_output

    (tmp_path / "taken").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    for path in (tmp_path / "taken", tmp_path / "link"):
        with pytest.raises(FileExistsError, match=r"already exists; pass --overwrite to replace it\."):
            refuse_existing_output(path, overwrite=False)
        assert refuse_existing_output(path, overwrite=True) == path
    assert refuse_existing_output(tmp_path / "free", overwrite=False) == tmp_path / "free"


def test_an_output_that_is_or_holds_an_input_is_refused(tmp_path):
    from magnet_hf.files import refuse_replacing_inputs

    (tmp_path / "run" / "data").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ValueError, match="--output .* holds the input of --dataset and --model; replacing it"):
        refuse_replacing_inputs(tmp_path / "run", {"--dataset": tmp_path / "run" / "data", "--model": tmp_path / "run"})
    # Inputs elsewhere, missing paths and Hub ids are no concern of the output.
    refuse_replacing_inputs(tmp_path / "run", {"--a": tmp_path / "elsewhere", "--b": "owner/name", "--c": None})
