"""Every kind of MagNet folder runs the README's `pipeline(model=FOLDER, trust_remote_code=True)` offline, in a
process that never imports magnet_hf: converted, `train.py` output (final and `best/`), the embedded demo model and a
pipeline's `save_pretrained`."""

from __future__ import annotations

import json
import re
import textwrap

import numpy as np
import pytest
from pipeline_fixtures import run_without_magnet_hf, scene_images

from magnet_hf.demo.segmentation import demo_model_path, load_segmenter

EXPRESSIONS = ["the red circle", "the big square"]
TASK = "referring-image-segmentation"


@pytest.fixture(scope="module")
def folders(official_fixtures, tokenizer_dir, tmp_path_factory):
    from magnet_hf.hub.conversion import convert_official_checkpoint
    from magnet_hf.commands.train import parse_args
    from magnet_hf.training import train

    root = tmp_path_factory.mktemp("folders")
    converted = convert_official_checkpoint(
        official_fixtures / "official-tiny" / "official_state_dict.safetensors",
        root / "converted",
        official_config=official_fixtures / "official-tiny" / "official_config.json",
        tokenizer=tokenizer_dir,
    )
    trained = root / "trained"
    train(parse_args([
        "--dataset", "synthetic", "--synthetic-images", "20", "--preset", "magnet-tiny", "--image-size", "32",
        "--batch-size", "4", "--max-steps", "2", "--eval-strategy", "steps", "--eval-steps", "2",
        "--max-eval-samples", "4", "--no-progress", "--report-to", "none", "--output-dir", str(trained),
    ]))
    pipeline_saved = root / "pipeline-saved"
    load_segmenter(None, device="cpu").save_pretrained(pipeline_saved)
    return {
        "converted": converted,
        "train.py final": trained,
        "train.py best/": trained / "best",
        "demo model": demo_model_path(),
        "pipeline save_pretrained": pipeline_saved,
    }


@pytest.mark.parametrize("kind", ["converted", "train.py final", "train.py best/", "demo model", "pipeline save_pretrained"])
def test_folder_records_the_pipeline_task_and_carries_its_remote_code(folders, kind):
    folder = folders[kind]
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"][TASK]["impl"] == "pipeline_magnet.MagNetReferringSegmentationPipeline"
    assert config["auto_map"]["AutoModel"] == "modeling_magnet.MagNetModel"
    assert config["auto_map"]["AutoConfig"] == "configuration_magnet.MagNetConfig"
    names = {path.name for path in folder.iterdir()}
    # Every relative import of the remote code must be in the folder, or loading it fails.
    for module in folder.glob("*.py"):
        for imported in re.findall(r"^\s*from \.(\w+) import", module.read_text(), flags=re.M):
            assert f"{imported}.py" in names, f"{kind}: {module.name} imports .{imported}, which is missing"
    assert {"pipeline_magnet.py", "modeling_magnet.py", "processing_magnet.py"} <= names


def test_readme_pipeline_example_works_offline_on_every_kind_of_folder(folders, tmp_path):
    image = scene_images()[0]
    image.save(tmp_path / "scene.png")
    listed = {kind: str(folder) for kind, folder in folders.items()}
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from transformers import pipeline
        report = {{}}
        for kind, folder in {listed!r}.items():
            segmenter = pipeline(model=folder, trust_remote_code=True, device="cpu")
            results = segmenter({str(tmp_path / 'scene.png')!r}, text={EXPRESSIONS!r}, batch_size=2)
            np.save(kind.replace(" ", "_").replace("/", "") + ".npy", np.stack([np.asarray(r["mask"]) for r in results]))
            report[kind] = {{"task": segmenter.task, "pipeline": type(segmenter).__name__,
                            "labels": [r["label"] for r in results], "scores": [r["score"] for r in results]}}
        report["magnet_hf imported"] = "magnet_hf" in sys.modules
        print(json.dumps(report))
    """)
    result = run_without_magnet_hf(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report.pop("magnet_hf imported") is False
    for kind, folder in folders.items():
        remote = report[kind]
        assert remote["task"] == TASK and remote["pipeline"] == "MagNetReferringSegmentationPipeline", kind
        assert remote["labels"] == EXPRESSIONS, kind
        local = load_segmenter(folder, device="cpu")(image, text=EXPRESSIONS, batch_size=2)
        masks = np.load(tmp_path / (kind.replace(" ", "_").replace("/", "") + ".npy"))
        for mask, expected, score in zip(masks, local, remote["scores"]):
            assert mask.shape == (image.height, image.width), kind
            assert np.mean(mask != np.asarray(expected["mask"])) < 1e-3, kind
            assert score == pytest.approx(expected["score"], abs=1e-5), kind
