"""Publishing: the folder that is uploaded (model, processor, remote code, pipeline, card), its validation, the push."""

from __future__ import annotations

import json
import re
import textwrap

import numpy as np
import pytest
from pipeline_fixtures import run_without_magnet_hf, save_model_folder, scene_images

from magnet_hf.commands.push_to_hub import main
from magnet_hf.hub.publishing import HubPublishError, build_hub_folder, push_folder_to_hub, validate_repo_id

CARD = "---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n\n# test card\n"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = save_model_folder(tmp_path_factory.mktemp("hub") / "model")
    (folder.parent / "card.md").write_text(CARD)
    return folder


@pytest.fixture(scope="module")
def hub_folder(model_folder, tmp_path_factory):
    return build_hub_folder(model_folder, tmp_path_factory.mktemp("upload") / "local", card=model_folder.parent / "card.md")


def test_folder_holds_model_processor_remote_code_pipeline_and_card(hub_folder):
    config = json.loads((hub_folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_magnet.MagNetConfig",
        "AutoModel": "modeling_magnet.MagNetModel",
        "AutoModelForImageSegmentation": "modeling_magnet.MagNetForReferringSegmentation",
    }
    assert config["architectures"] == ["MagNetForReferringSegmentation"]  # the saved class is kept
    assert config["custom_pipelines"]["referring-image-segmentation"]["impl"] == (
        "pipeline_magnet.MagNetReferringSegmentationPipeline"
    )
    processor_config = json.loads((hub_folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_magnet.MagNetProcessor"
    names = {path.name for path in hub_folder.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "README.md", "pipeline_magnet.py", "modeling_magnet.py"} <= names
    assert (hub_folder / "README.md").read_text() == CARD
    # Every relative import of the remote code must be in the folder, or loading fails on the Hub.
    for module in hub_folder.glob("*.py"):
        for imported in re.findall(r"^\s*from \.(\w+) import", module.read_text(), flags=re.M):
            assert f"{imported}.py" in names, f"{module.name} imports .{imported}, which is not uploaded"
    assert not [name for name in names if name.startswith(".")]


def test_weights_survive_the_round_trip(model_folder, hub_folder):
    from safetensors.torch import load_file

    original, uploaded = load_file(model_folder / "model.safetensors"), load_file(hub_folder / "model.safetensors")
    assert original.keys() == uploaded.keys()
    assert all((original[key] == uploaded[key]).all() for key in original)


def test_uploaded_folder_runs_the_pipeline_in_a_fresh_process(hub_folder, model_folder, tmp_path):
    image = scene_images()[1]
    image.save(tmp_path / "image.png")
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from transformers import pipeline
        segmenter = pipeline(model={str(hub_folder)!r}, trust_remote_code=True, device="cpu")
        results = segmenter({str(tmp_path / 'image.png')!r}, text=["the red circle", "the big square"], batch_size=2)
        assert "magnet_hf" not in sys.modules
        np.save("masks.npy", np.stack([np.asarray(r["mask"]) for r in results]))
        print([r["label"] for r in results])
    """)
    result = run_without_magnet_hf(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "['the red circle', 'the big square']" in result.stdout
    from magnet_hf.demo.segmentation import load_segmenter

    local = load_segmenter(str(model_folder), device="cpu")(image, text=["the red circle", "the big square"])
    remote = np.load(tmp_path / "masks.npy")
    for mask, expected in zip(remote, local):
        assert np.mean(mask != np.asarray(expected["mask"])) < 1e-3


def test_existing_local_dir_is_refused_unless_overwrite(model_folder, tmp_path):
    target = tmp_path / "local"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(HubPublishError, match="already exists"):
        build_hub_folder(model_folder, target, card=model_folder.parent / "card.md")
    assert (target / "keep.txt").read_text() == "mine"
    build_hub_folder(model_folder, target, card=model_folder.parent / "card.md", overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local"], "staging or backup folders were left behind"


def test_incomplete_model_folders_are_refused_before_anything_is_written(model_folder, tmp_path):
    card = model_folder.parent / "card.md"
    with pytest.raises(HubPublishError, match="does not exist"):
        build_hub_folder(tmp_path / "nowhere", tmp_path / "out", card=card)
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text((model_folder / "config.json").read_text())
    with pytest.raises(HubPublishError, match="no weights"):
        build_hub_folder(tmp_path / "no-weights", tmp_path / "out", card=card)
    with pytest.raises(HubPublishError, match="card"):
        build_hub_folder(model_folder, tmp_path / "out", card=tmp_path / "missing.md")
    no_processor = tmp_path / "no-processor"
    no_processor.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_processor / name).write_bytes((model_folder / name).read_bytes())
    with pytest.raises(HubPublishError, match="processor"):
        build_hub_folder(no_processor, tmp_path / "out", card=card)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("repo", ["", "a/b/c", "./local", "bad name/x", "me/na--me..", "/abs"])
def test_bad_repository_ids_are_refused(repo):
    with pytest.raises(HubPublishError, match="repo"):
        validate_repo_id(repo)


def test_good_repository_ids_pass():
    assert validate_repo_id("me/magnet-refcoco") == "me/magnet-refcoco"


class RecordingHubApi:
    """Stands in for `huggingface_hub.HfApi`: records the calls and the files of the uploaded folder."""

    def __init__(self):
        self.calls = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        from pathlib import Path

        folder = Path(kwargs["folder_path"])
        files = {path.name: path.read_bytes() for path in folder.iterdir()}
        self.calls.append(("upload_folder", {**kwargs, "files": files}))
        return "https://example.invalid/commit/1"


def test_push_creates_the_repository_and_uploads_the_local_dir_contents(model_folder, hub_folder):
    api = RecordingHubApi()
    url = push_folder_to_hub(model_folder, "me/magnet-test", card=model_folder.parent / "card.md", private=True, api=api)
    assert url == "https://example.invalid/commit/1"
    (create_name, create), (upload_name, upload) = api.calls
    assert create_name == "create_repo" and create["repo_id"] == "me/magnet-test" and create["private"] is True
    assert upload_name == "upload_folder" and upload["repo_id"] == "me/magnet-test"
    expected = {path.name: path.read_bytes() for path in hub_folder.iterdir()}
    assert upload["files"].keys() == expected.keys()
    for name in ("model.safetensors", "README.md", "pipeline_magnet.py", "tokenizer.json"):
        assert upload["files"][name] == expected[name]


def test_push_validates_before_contacting_the_hub(model_folder, tmp_path):
    api = RecordingHubApi()
    with pytest.raises(HubPublishError):
        push_folder_to_hub(model_folder, "a/b/c", card=model_folder.parent / "card.md", api=api)
    with pytest.raises(HubPublishError):
        push_folder_to_hub(tmp_path / "nowhere", "me/x", api=api)
    assert api.calls == []


def test_command_line_local_dir_and_errors(model_folder, tmp_path, capsys):
    card = str(model_folder.parent / "card.md")
    argv = ["--model", str(model_folder), "--repo", "me/magnet-test", "--card", card, "--local-dir", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "nothing uploaded" in capsys.readouterr().out
    assert (tmp_path / "out" / "pipeline_magnet.py").is_file()
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["--model", str(model_folder), "--repo", "a/b/c", "--local-dir", str(tmp_path / "other")]) == 2
    assert "not a Hub repository id" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_without_a_card_a_basic_one_is_written_with_the_training_metrics(model_folder, tmp_path, capsys):
    import shutil

    from huggingface_hub import ModelCard

    from magnet_hf.hub.publishing import write_basic_card

    trained = tmp_path / "trained"
    shutil.copytree(model_folder, trained)
    metrics = {"step": 60, "overall_iou": 0.4321, "mean_iou": 0.4, "precision@0.5": 0.375, "num_samples": 24}
    (trained / "eval_results.json").write_text(
        json.dumps({"final": metrics, "best": metrics, "eval_split": "val", "dataset": "synthetic"})
    )
    assert main(["--model", str(trained), "--repo", "me/magnet-trained", "--local-dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "basic model card with the metrics of eval_results.json" in printed and "--card" in printed
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-segmentation"
    assert 'pipeline(model="me/magnet-trained", trust_remote_code=True)' in card.text
    values = {(r.dataset_type, r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert values == {
        ("synthetic", "val", "overall_iou"): 43.21,
        ("synthetic", "val", "mean_iou"): 40.0,
        ("synthetic", "val", "precision@0.5"): 37.5,
    }
    # A folder without evaluation results gets the card without a model-index.
    (tmp_path / "plain").mkdir()
    plain = ModelCard.load(write_basic_card(model_folder, tmp_path / "plain", "me/plain"))
    assert plain.data.eval_results is None and "me/plain" in plain.text


def test_publishing_prints_no_shard_bar_and_no_backend_warning(model_folder, tmp_path, capfd):
    import logging

    logging.Logger.warning_once.cache_clear()  # transformers warns once per process; an earlier test may have
    card = str(model_folder.parent / "card.md")
    argv = ["--model", str(model_folder), "--repo", "me/quiet", "--card", card, "--local-dir", str(tmp_path / "out")]
    assert main(argv) == 0
    captured = capfd.readouterr()
    assert "nothing uploaded" in captured.out
    assert "Writing model shards" not in captured.err and "Loading weights" not in captured.err
    assert "torchvision backend" not in captured.err
