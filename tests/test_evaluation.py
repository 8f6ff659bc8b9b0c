"""Evaluation: numbers against an independent per-sample computation, CLI outputs, model card and input errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from magnet_hf import MagNetConfig, MagNetForReferringSegmentation
from magnet_hf.data import build_synthetic_dataset, explode_sentences
from magnet_hf.commands.evaluate import main
from magnet_hf.evaluation.evaluator import EvaluationError, evaluate_referring_segmentation
from magnet_hf.hub.model_cards import update_model_card

# Non-square images, so that "original" and "released" scoring really differ.
IMAGE_HW = (96, 112)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return MagNetForReferringSegmentation(MagNetConfig.from_preset("magnet-tiny")).eval()


@pytest.fixture(scope="module")
def split():
    dataset = build_synthetic_dataset({"test": 6}, image_size=IMAGE_HW, seed=3, refs_per_image=1, sentences_per_ref=2)
    return dataset["test"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, tiny_processor):
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# My MagNet\n\nHand-written notes.\n")
    return folder


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, split):
    folder = tmp_path_factory.mktemp("data") / "synthetic"
    from datasets import DatasetDict

    DatasetDict({"test": split}).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def direct(model, tiny_processor, split):
    """Per-sample (intersection, union) for both protocols, computed one sample at a time with plain NumPy."""
    counts = {"released": [], "original": []}
    size = model.config.image_size
    with torch.no_grad():
        for row in explode_sentences(split):
            inputs = tiny_processor(images=row["image"], text=row["sentences"][0], return_tensors="pt")
            outputs = model(
                pixel_values=inputs["pixel_values"],
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
            )
            gt_original = np.asarray(row["mask"]) == 1
            gt_released = np.asarray(row["mask"].resize((size, size), Image.NEAREST)) == 1
            for resolution, gt in (("released", gt_released), ("original", gt_original)):
                (result,) = tiny_processor.post_process_referring_segmentation(outputs, [gt.shape])
                pred = result["mask"].numpy()
                counts[resolution].append((np.sum(pred & gt), np.sum(pred | gt)))
    return counts


def expected_metrics(counts):
    inter = np.array([c[0] for c in counts], dtype=np.int64)
    union = np.array([c[1] for c in counts], dtype=np.int64)
    iou = [i / u if u else 0.0 for i, u in zip(inter.tolist(), union.tolist())]
    return {
        "overall_iou": inter.sum() / union.sum(),
        "mean_iou": math.fsum(iou) / len(iou),
        "precision@0.5": sum(v >= 0.5 for v in iou) / len(iou),
    }


@pytest.mark.parametrize("resolution", ["released", "original"])
def test_matches_direct_computation(model, tiny_processor, split, direct, resolution):
    metrics = evaluate_referring_segmentation(
        model, tiny_processor, split, batch_size=4, resolution=resolution, progress=False
    )
    expected = expected_metrics(direct[resolution])
    num_sentences = sum(len(sentences) for sentences in split["sentences"])
    assert metrics["num_samples"] == num_sentences == len(direct[resolution])
    assert num_sentences > split.num_rows  # several sentences per ref really were exploded
    assert metrics["overall_iou"] == expected["overall_iou"]
    assert metrics["mean_iou"] == expected["mean_iou"]
    assert metrics["precision@0.5"] == expected["precision@0.5"]
    # The random model predicts something: the comparison is not between two empty masks.
    assert 0.0 < metrics["overall_iou"] < 1.0


def test_protocols_differ(direct):
    # Same predictions scored at two sizes: the unions live on different pixel grids.
    released = [u for _, u in direct["released"]]
    original = [u for _, u in direct["original"]]
    assert released != original


def test_cli_json_refusal_and_model_card(model_dir, dataset_dir, direct, capsys, tmp_path):
    output = tmp_path / "results.json"
    argv = ["--model", str(model_dir), "--dataset", str(dataset_dir), "--split", "test", "--batch-size", "3",
            "--output", str(output), "--update-model-card", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    expected = expected_metrics(direct["released"])
    assert f"{100 * expected['overall_iou']:.2f}" in printed and "oIoU" in printed

    results = json.loads(output.read_text())
    assert results["model"] == str(model_dir) and results["split"] == "test"
    assert results["dataset"] == str(dataset_dir) and results["resolution"] == "released"
    assert results["num_samples"] == len(direct["released"])
    assert results["metrics"]["overall_iou"] == expected["overall_iou"]
    assert results["metrics"]["mean_iou"] == expected["mean_iou"]
    assert not [p for p in tmp_path.iterdir() if p.name != "results.json"]  # no temporary file left behind

    from huggingface_hub import ModelCard

    card = ModelCard.load(model_dir / "README.md")
    assert "Hand-written notes." in card.text and card.data.license == "apache-2.0"
    by_metric = {r.metric_type: r for r in card.data.eval_results}
    assert by_metric["overall_iou"].metric_value == round(100 * expected["overall_iou"], 2)
    assert by_metric["mean_iou"].metric_value == round(100 * expected["mean_iou"], 2)
    assert by_metric["overall_iou"].dataset_split == "test"
    assert by_metric["overall_iou"].metric_config == "released"
    assert len(card.data.eval_results) == 7  # oIoU, mIoU, 5 precisions

    # An existing file is refused, untouched, before any evaluation runs.
    before = output.read_text()
    assert main(argv[:-2]) == 2
    assert "already exists" in capsys.readouterr().err
    assert output.read_text() == before

    # --overwrite replaces it; re-recording the same evaluation replaces the card entries instead of adding more.
    assert main([*argv, "--overwrite", "--max-samples", "2"]) == 0
    results = json.loads(output.read_text())
    assert results["num_samples"] == 2
    assert results["metrics"]["overall_iou"] == expected_metrics(direct["released"][:2])["overall_iou"]
    card = ModelCard.load(model_dir / "README.md")
    assert len(card.data.eval_results) == 7
    overall = [r for r in card.data.eval_results if r.metric_type == "overall_iou"]
    assert overall[0].metric_value == round(100 * expected_metrics(direct["released"][:2])["overall_iou"], 2)


def test_model_card_created_when_missing(tmp_path):
    metrics = {"overall_iou": 0.5, "mean_iou": 0.25, "precision@0.5": 0.125, "num_samples": 8}
    path = update_model_card(tmp_path, metrics, dataset="refcoco", split="val", resolution="original")
    from huggingface_hub import ModelCard

    card = ModelCard.load(path)
    assert card.data.model_name == tmp_path.name
    assert {(r.metric_type, r.metric_value, r.metric_config) for r in card.data.eval_results} == {
        ("overall_iou", 50.0, "original"),
        ("mean_iou", 25.0, "original"),
        ("precision@0.5", 12.5, "original"),
    }
    # Another resolution is a separate entry, not a replacement.
    update_model_card(tmp_path, metrics, dataset="refcoco", split="val", resolution="released")
    assert len(ModelCard.load(path).data.eval_results) == 6


def test_missing_model_folder(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nope"), "--dataset", "synthetic", "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_unknown_split_lists_available(model_dir, dataset_dir, capsys):
    assert main(["--model", str(model_dir), "--dataset", str(dataset_dir), "--split", "testB"]) == 2
    err = capsys.readouterr().err
    assert "no split 'testB'" in err and "['test']" in err


def test_dataset_without_required_columns(model_dir, tmp_path, capsys, split):
    from datasets import DatasetDict

    DatasetDict({"val": split.remove_columns("mask")}).save_to_disk(str(tmp_path / "bad"))
    assert main(["--model", str(model_dir), "--dataset", str(tmp_path / "bad"), "--split", "val"]) == 2
    assert "lacks the column(s) ['mask']" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_bad_batch_size(model_dir, value, capsys):
    assert main(["--model", str(model_dir), "--dataset", "synthetic", "--split", "val", "--batch-size", value]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_library_rejects_bad_arguments(model, tiny_processor, split):
    with pytest.raises(EvaluationError, match="batch_size"):
        evaluate_referring_segmentation(model, tiny_processor, split, batch_size=0)
    with pytest.raises(EvaluationError, match="resolution"):
        evaluate_referring_segmentation(model, tiny_processor, split, resolution="full")



def test_two_processes_give_the_single_process_numbers(model_dir, dataset_dir, direct, tmp_path):
    # 12 samples over 2 processes with batch size 5: the last batches are padded with duplicates, which
    # gather_for_metrics must drop for the numbers to equal the single-process (direct) ones.
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "evaluate.py"
    output = tmp_path / "two.json"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), "--model", str(model_dir),
         "--dataset", str(dataset_dir), "--split", "test", "--batch-size", "5", "--no-progress", "--output", str(output)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads(output.read_text())
    assert written["num_samples"] == len(direct["released"])
    expected = expected_metrics(direct["released"])
    assert {key: written["metrics"][key] for key in expected} == pytest.approx(expected, abs=1e-12)


def test_synthetic_evaluation_defaults_to_scenes_training_never_drew():
    from magnet_hf.evaluation.evaluator import load_evaluation_split

    def fingerprints(split):
        return {np.asarray(image.convert("RGB")).tobytes() for image in split["image"]}

    training = build_synthetic_dataset({"train": 20}, image_size=64, seed=0)["train"]  # training's default seed
    evaluated = load_evaluation_split("synthetic", "val", synthetic_images=20, image_size=64)
    assert len(fingerprints(evaluated)) == 20
    assert not fingerprints(training) & fingerprints(evaluated)
    same_seed = load_evaluation_split("synthetic", "val", synthetic_images=20, synthetic_seed=0, image_size=64)
    assert fingerprints(same_seed) == fingerprints(training)  # the check above can see an overlap


def test_synthetic_evaluation_reports_each_expression_kind(model_dir, model, tiny_processor, tmp_path, capsys):
    from magnet_hf.data import expression_kind
    from magnet_hf.data.synthetic import EXPRESSION_KINDS
    from magnet_hf.evaluation.evaluator import load_evaluation_split

    output = tmp_path / "kinds.json"
    arguments = ["--model", str(model_dir), "--dataset", "synthetic", "--synthetic-images", "4", "--synthetic-seed", "3"]
    assert main([*arguments, "--split", "test", "--output", str(output), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    results = json.loads(output.read_text())
    by_kind = results["by_kind"]
    assert set(by_kind) <= set(EXPRESSION_KINDS) and len(by_kind) >= 3
    assert sum(entry["num_samples"] for entry in by_kind.values()) == results["num_samples"]
    # Each kind scored on its own, as a separate evaluation of only its expressions, gives the same numbers.
    samples = explode_sentences(load_evaluation_split("synthetic", "test", synthetic_images=4, synthetic_seed=3))
    for kind, entry in by_kind.items():
        subset = samples.filter(lambda row: expression_kind(row["sentences"][0]) == kind)
        alone = evaluate_referring_segmentation(model, tiny_processor, subset, progress=False)
        assert entry["num_samples"] == alone["num_samples"]
        for key in ("overall_iou", "mean_iou", "precision@0.5"):
            assert entry[key] == pytest.approx(alone[key], abs=1e-12)
        assert f"| {kind} | {100 * entry['overall_iou']:.2f} |" in printed
