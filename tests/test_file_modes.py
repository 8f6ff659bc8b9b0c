"""Written files and folders get the modes the umask asks for, not the private ones of temporary files."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest
from PIL import Image

from magnet_hf.atomic import (
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
    from magnet_hf.demo import save_png_atomically

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
