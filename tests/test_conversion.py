"""The converter maps every released key, refuses what does not fit, and never leaves half-written output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from magnet_hf import MagNetConfig, MagNetForReferringSegmentation
from magnet_hf.commands.convert import main
from magnet_hf.hub.conversion import (
    ConversionError,
    _is_dropped,
    convert_official_checkpoint,
    convert_state_dict,
    is_training_only,
)

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def meta_shapes(config):
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in MagNetForReferringSegmentation(config).state_dict().items()}


def test_full_size_checkpoint_layout_converts_with_every_key_accounted_for(official_fixtures):
    keys = json.loads((official_fixtures / "official-keys-magnet-base.json").read_text())
    assert len(keys) == 1310
    official = {key: torch.empty(shape, device="meta") for key, shape in keys.items()}
    expected = meta_shapes(MagNetConfig.from_preset("magnet-base"))
    converted = convert_state_dict(official, expected)  # raises on any missing, unexpected or mis-shaped key
    training_only = {key for key in expected if is_training_only(key)}
    assert training_only and all(key.startswith("mask_grounding.") for key in training_only)
    assert set(converted) == set(expected) - training_only
    dropped = [key for key in keys if _is_dropped(key, 4)]
    # 4 Swin output norms x2, 4 language residual norms x2, the last image gate x2, 24 relative-position indices
    assert len(dropped) == 8 + 8 + 2 + 24
    assert all(tuple(converted[k].shape) == expected[k] for k in converted)


def fixture_checkpoint(official_fixtures):
    return official_fixtures / "official-tiny" / "official_state_dict.safetensors"


def fixture_config(official_fixtures):
    return official_fixtures / "official-tiny" / "official_config.json"


def test_wrong_model_checkpoint_gets_a_key_report(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, str(path))
    output = tmp_path / "out"
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(path, output)
    message = str(error.value)
    assert "does not match the MagNet architecture" in message
    assert "2 unexpected: conv1.weight; fc.weight" in message and "missing" in message
    assert not output.exists() and list(tmp_path.iterdir()) == [path]


def test_wrong_shapes_are_reported_and_nothing_is_written(official_fixtures, tmp_path):
    state = load_file(str(fixture_checkpoint(official_fixtures)))
    state["classifier.predictor.class_embed.weight"] = torch.zeros(3, 64)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ConversionError, match=r"1 mis-shaped: classifier\.predictor\.class_embed\.weight -> model\.class_predictor\.weight: checkpoint \(3, 64\), model \(2, 64\)"):
        convert_official_checkpoint(path, tmp_path / "out", official_config=fixture_config(official_fixtures))
    assert not (tmp_path / "out").exists()


def test_fixture_checkpoint_against_the_full_size_config_is_refused(official_fixtures, tmp_path):
    with pytest.raises(ConversionError, match="mis-shaped"):
        convert_official_checkpoint(fixture_checkpoint(official_fixtures), tmp_path / "out")


def test_existing_output_is_kept_unless_overwrite(official_fixtures, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("precious")
    arguments = dict(official_config=fixture_config(official_fixtures))
    with pytest.raises(ConversionError, match="already exists; pass overwrite=True"):
        convert_official_checkpoint(fixture_checkpoint(official_fixtures), output, **arguments)
    assert (output / "keep.txt").read_text() == "precious"
    convert_official_checkpoint(fixture_checkpoint(official_fixtures), output, overwrite=True, **arguments)
    assert not (output / "keep.txt").exists() and (output / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or backup folders left behind


def test_pth_with_model_key_converts_like_safetensors(official_fixtures, tmp_path):
    state = load_file(str(fixture_checkpoint(official_fixtures)))
    torch.save({"model": state, "epoch": 39}, tmp_path / "magnet.pth")
    convert_official_checkpoint(tmp_path / "magnet.pth", tmp_path / "a", official_config=fixture_config(official_fixtures))
    convert_official_checkpoint(fixture_checkpoint(official_fixtures), tmp_path / "b", official_config=fixture_config(official_fixtures))
    assert load_file(str(tmp_path / "a" / "model.safetensors")).keys() == load_file(str(tmp_path / "b" / "model.safetensors")).keys()
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited",))


def test_malicious_and_corrupt_checkpoints_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(ConversionError, match="weights_only=True"):
        convert_official_checkpoint(tmp_path / "evil.pth", tmp_path / "out")
    assert not (tmp_path / "exploited").exists()
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="could not be read"):
        convert_official_checkpoint(tmp_path / "corrupt.pth", tmp_path / "out")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ConversionError, match="not a readable safetensors"):
        convert_official_checkpoint(tmp_path / "corrupt.safetensors", tmp_path / "out")
    with pytest.raises(ConversionError, match="does not exist"):
        convert_official_checkpoint(tmp_path / "missing.pth", tmp_path / "out")


def test_bad_official_config_is_explained(official_fixtures, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"official_build_arguments": {"embed_dim": 32}}))
    with pytest.raises(ConversionError, match="lacks"):
        convert_official_checkpoint(fixture_checkpoint(official_fixtures), tmp_path / "out", official_config=config)
    config.write_text("{not json")
    with pytest.raises(ConversionError, match="not readable JSON"):
        convert_official_checkpoint(fixture_checkpoint(official_fixtures), tmp_path / "out", official_config=config)


def test_cli_reports_errors_without_traceback(tmp_path):
    (tmp_path / "corrupt.pth").write_bytes(b"junk")
    result = subprocess.run(
        [sys.executable, os.path.join(REPOSITORY, "scripts", "convert_official_checkpoint.py"),
         "--checkpoint", str(tmp_path / "corrupt.pth"), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.path.join(REPOSITORY, "src")},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_cli_converts_with_tokenizer(official_fixtures, tokenizer_dir, tmp_path, capsys):
    code = main([
        "--checkpoint", str(fixture_checkpoint(official_fixtures)), "--official-config", str(fixture_config(official_fixtures)),
        "--tokenizer", str(tokenizer_dir), "--output", str(tmp_path / "out"),
    ])
    assert code == 0 and "Converted" in capsys.readouterr().out
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "modeling_magnet.py"} <= names
    # The released transform is the PIL backend's, bit for bit: the converted processor records it and loads with it.
    from transformers import AutoProcessor

    from magnet_hf import MagNetImageProcessorPil, MagNetProcessor

    assert json.loads((tmp_path / "out" / "processor_config.json").read_text())["image_processor_backend"] == "pil"
    assert type(MagNetProcessor.from_pretrained(tmp_path / "out").image_processor) is MagNetImageProcessorPil
    assert type(AutoProcessor.from_pretrained(tmp_path / "out").image_processor) is MagNetImageProcessorPil


def test_converted_folder_lacks_only_the_training_head_and_loads_without_warnings(official_fixtures, tmp_path):
    output = convert_official_checkpoint(
        fixture_checkpoint(official_fixtures), tmp_path / "out", official_config=fixture_config(official_fixtures)
    )
    saved = load_file(str(output / "model.safetensors"))
    assert not any(key.startswith("mask_grounding.") for key in saved) and "text_projection.weight" in saved
    model, info = MagNetForReferringSegmentation.from_pretrained(output, output_loading_info=True)
    assert model.config.use_mask_grounding and model.mask_grounding is not None
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert all(torch.isfinite(p).all() for p in model.mask_grounding.parameters())
    assert all(torch.equal(model.state_dict()[key], value) for key, value in saved.items())


def _hub_cache_with(cache, repo_id, files):
    # The layout huggingface_hub itself writes: refs/main names the snapshot that holds the files.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for source in files:
        (snapshot / source.name).write_bytes(source.read_bytes())


def test_cli_defaults_take_the_checkpoint_and_tokenizer_from_the_hub_cache_offline(official_fixtures, tokenizer_dir, tmp_path):
    cache = tmp_path / "hub-cache"
    _hub_cache_with(cache, "someone/magnet_weights", [fixture_checkpoint(official_fixtures)])
    _hub_cache_with(cache, "bert-base-uncased", list(tokenizer_dir.iterdir()))
    env = {**os.environ, "PYTHONPATH": os.path.join(REPOSITORY, "src"), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "magnet_hf.commands.magnet_hf_cli", "convert", "--official-config", str(fixture_config(official_fixtures))]
    result = subprocess.run(
        command + ["--checkpoint", "someone/magnet_weights:official_state_dict.safetensors", "--output", str(tmp_path / "out")],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model.safetensors", "processor_config.json", "tokenizer_config.json", "README.md"} <= names
    assert "official_state_dict.safetensors" in (tmp_path / "out" / "README.md").read_text()
    from magnet_hf import MagNetProcessor

    assert MagNetProcessor.from_pretrained(tmp_path / "out").tokenizer.vocab_size == len(
        (tokenizer_dir / "vocab.txt").read_text().split()
    )
    missing = subprocess.run(
        command + ["--checkpoint", "someone/other:magnet_refcoco.pth", "--output", str(tmp_path / "out2")],
        capture_output=True, text=True, env=env,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr
    assert "someone/other:magnet_refcoco.pth" in missing.stderr and "--checkpoint" in missing.stderr
    assert not (tmp_path / "out2").exists()


def test_missing_tokenizer_is_explained_with_the_flags_to_use(official_fixtures, tmp_path):
    with pytest.raises(ConversionError, match="--tokenizer .*--no-processor"):
        convert_official_checkpoint(
            fixture_checkpoint(official_fixtures), tmp_path / "out", official_config=fixture_config(official_fixtures),
            tokenizer=tmp_path / "no-such-tokenizer",
        )
    assert not (tmp_path / "out").exists()


def test_released_file_names_get_their_released_card(tmp_path):
    from magnet_hf.hub.conversion import converted_model_card
    from magnet_hf.hub.model_cards import RELEASED_CHECKPOINTS, released_checkpoint_card

    released = RELEASED_CHECKPOINTS[0]
    assert converted_model_card(tmp_path / released.weight_file) == released_checkpoint_card(released)
    assert "AGPL-3.0" in converted_model_card(tmp_path / "my_weights.pth")
    # A reduced architecture under a released name is not that checkpoint: its published numbers do not apply.
    assert converted_model_card(tmp_path / released.weight_file, reduced_architecture=True) != released_checkpoint_card(released)
