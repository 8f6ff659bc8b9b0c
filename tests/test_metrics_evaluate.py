"""Tests for the packaged `evaluate` module: offline loading and agreement with `magnet_hf.evaluation.metrics`."""

import re
import socket

import numpy as np
import pytest
import torch

from magnet_hf.evaluation.metrics import (
    EVALUATE_METRIC_PATH,
    ReferringSegmentationMetric,
    batched_intersection_and_union,
    load_evaluate_metric,
    referring_segmentation_metrics,
)

from test_metrics import HAND_COUNTS, assert_hand_expected, hand_case, random_masks


evaluate = pytest.importorskip("evaluate")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the evaluate module tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def metric(no_network, tmp_path):
    return load_evaluate_metric(cache_dir=str(tmp_path))


def test_module_file_is_self_contained():
    # `evaluate` copies only this file into its cache, so a relative or package import would break loading.
    source = (EVALUATE_METRIC_PATH / "referring_segmentation.py").read_text()
    imported = re.findall(r"^(?:from|import)\s+([\w.]+)", source, flags=re.MULTILINE)
    assert set(imported) <= {"math", "numbers", "datasets", "evaluate", "numpy"}
    assert (EVALUATE_METRIC_PATH / "README.md").is_file()


def test_load_by_folder_path_offline(no_network, tmp_path):
    loaded = evaluate.load(str(EVALUATE_METRIC_PATH), cache_dir=str(tmp_path))
    assert loaded.name == "referring_segmentation"
    preds, refs = hand_case()
    assert_hand_expected(loaded.compute(predictions=preds, references=refs))


def test_add_batch_matches_library_on_mixed_sizes(metric):
    preds, refs = random_masks(7)
    # Mixed sizes within one batch, numpy and torch inputs, plus single `add` calls.
    metric.add_batch(predictions=preds[:25], references=refs[:25])
    metric.add_batch(predictions=[torch.from_numpy(p) for p in preds[25:50]], references=refs[25:50])
    for pred, ref in zip(preds[50:], refs[50:]):
        metric.add(prediction=pred.astype(np.uint8), reference=ref)
    assert metric.compute() == referring_segmentation_metrics(preds, refs)


def test_stacked_inputs_counts_and_thresholds(metric):
    preds, refs = hand_case()
    assert_hand_expected(metric.compute(predictions=torch.from_numpy(np.stack(preds)), references=np.stack(refs)))
    # Counts gathered elsewhere (e.g. on the GPU) can be fed directly.
    inter, union = batched_intersection_and_union(
        torch.from_numpy(np.stack(preds[:3])), torch.from_numpy(np.stack(refs[:3]))
    )
    metric.add_batch(intersections=inter, unions=union)
    metric.add_batch(intersections=HAND_COUNTS[0][3:], unions=HAND_COUNTS[1][3:])
    result = metric.compute(thresholds=[0.7, 0.25])
    # IoUs 0.5, 1, 0, 0, 0, 0.7: >= 0.7 -> 2 of 6, >= 0.25 -> 3 of 6.
    assert (result["precision@0.7"], result["precision@0.25"]) == (2 / 6, 3 / 6)
    assert list(result) == ["overall_iou", "mean_iou", "precision@0.7", "precision@0.25", "num_samples"]


def test_agrees_with_streaming_metric(metric):
    preds, refs = random_masks(8)
    streaming = ReferringSegmentationMetric(thresholds=(0.5, 0.95))
    for start in range(0, len(preds), 16):
        streaming.update(preds[start : start + 16], refs[start : start + 16])
        metric.add_batch(predictions=preds[start : start + 16], references=refs[start : start + 16])
    assert metric.compute(thresholds=(0.5, 0.95)) == streaming.compute()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"predictions": [np.full((2, 2), 0.7)], "references": [np.zeros((2, 2))]}, "threshold it first"),
        (
            {"predictions": [np.zeros((2, 3), bool)], "references": [np.zeros((3, 2), bool)]},
            "Sample 0: prediction shape (2, 3) does not match reference shape (3, 2)",
        ),
        ({"predictions": [np.zeros((2, 2))] * 2, "references": [np.zeros((2, 2))]}, "Got 2 predictions but 1 ref"),
        ({"predictions": [], "references": []}, "No samples to evaluate"),
        ({"intersections": [5], "unions": [3]}, "0 <= intersection <= union"),
    ],
)
def test_validation_messages(metric, kwargs, message):
    with pytest.raises(ValueError) as excinfo:
        metric.compute(**kwargs)
    assert message in str(excinfo.value)


def test_threshold_validation(metric):
    preds, refs = hand_case()
    metric.add_batch(predictions=preds, references=refs)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        metric.compute(thresholds=[50])
