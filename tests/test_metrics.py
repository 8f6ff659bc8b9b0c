"""Tests for `magnet_hf.evaluation.metrics` (library function, streaming metric, torch counting, table)."""

import numpy as np
import pytest
import torch

from magnet_hf.evaluation.metrics import (
    ReferringSegmentationMetric,
    batched_intersection_and_union,
    format_metrics_table,
    intersection_and_union,
    metrics_from_counts,
    referring_segmentation_metrics,
)


def _mask(shape, pixels):
    mask = np.zeros(shape, dtype=bool)
    for r, c in pixels:
        mask[r, c] = True
    return mask


def hand_case():
    """Six 4x4 samples whose counts are worked out by hand (see comments)."""
    rows01 = [(r, c) for r in range(2) for c in range(4)]  # 8 pixels
    row0 = [(0, c) for c in range(4)]  # 4 pixels, inside rows01
    three = [(3, 0), (3, 1), (3, 2)]
    five = [(1, 1), (1, 2), (2, 1), (2, 2), (3, 3)]
    two = [(0, 0), (3, 3)]
    ten = [(r, c) for r in range(2) for c in range(4)] + [(2, 0), (2, 1)]  # 10 pixels
    seven = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (2, 0)]  # 7 pixels, inside `ten`
    preds = [
        _mask((4, 4), rows01),  # s0: I = 4 (row 0), U = 8  -> IoU 0.5
        _mask((4, 4), three),  # s1: identical masks, I = U = 3 -> IoU 1
        _mask((4, 4), []),  # s2: empty prediction, I = 0, U = 5 -> IoU 0
        _mask((4, 4), two),  # s3: empty target, I = 0, U = 2 -> IoU 0
        _mask((4, 4), []),  # s4: both empty, I = U = 0 -> IoU 0 by the released convention
        _mask((4, 4), ten),  # s5: I = 7, U = 10 -> IoU exactly 0.7 (checks ">=" at a threshold)
    ]
    refs = [
        _mask((4, 4), row0),
        _mask((4, 4), three),
        _mask((4, 4), five),
        _mask((4, 4), []),
        _mask((4, 4), []),
        _mask((4, 4), seven),
    ]
    return preds, refs


# sum I = 4 + 3 + 0 + 0 + 0 + 7 = 14, sum U = 8 + 3 + 5 + 2 + 0 + 10 = 28 -> oIoU = 14 / 28 = 0.5
# mIoU = (0.5 + 1 + 0 + 0 + 0 + 0.7) / 6 = 2.2 / 6 = 11 / 30
# IoU >= 0.5: s0, s1, s5 -> 3/6; >= 0.6 and >= 0.7: s1, s5 -> 2/6; >= 0.8 and >= 0.9: s1 -> 1/6
HAND_EXPECTED = {
    "overall_iou": 0.5,
    "mean_iou": 11 / 30,
    "precision@0.5": 3 / 6,
    "precision@0.6": 2 / 6,
    "precision@0.7": 2 / 6,
    "precision@0.8": 1 / 6,
    "precision@0.9": 1 / 6,
    "num_samples": 6,
}
HAND_COUNTS = ([4, 3, 0, 0, 0, 7], [8, 3, 5, 2, 0, 10])


def assert_hand_expected(result):
    assert list(result) == list(HAND_EXPECTED)
    for key, value in HAND_EXPECTED.items():
        if key == "mean_iou":
            assert result[key] == pytest.approx(value, abs=1e-15)
        else:
            assert result[key] == value, key
    assert all(type(result[k]) is float for k in result if k != "num_samples")
    assert type(result["num_samples"]) is int


def reference_metrics(preds, refs, thresholds):
    """Plain-loop re-derivation of the published protocol, independent of the library code."""
    inters, unions = [], []
    for pred, ref in zip(preds, refs):
        i = u = 0
        for r in range(ref.shape[0]):
            for c in range(ref.shape[1]):
                p, g = bool(pred[r, c]), bool(ref[r, c])
                i += p and g
                u += p or g
        inters.append(i)
        unions.append(u)
    ious = [i / u if u > 0 else 0.0 for i, u in zip(inters, unions)]
    out = {"overall_iou": sum(inters) / sum(unions) if sum(unions) else 0.0, "mean_iou": sum(ious) / len(ious)}
    for t in thresholds:
        out[f"precision@{t}"] = sum(iou >= t for iou in ious) / len(ious)
    out["num_samples"] = len(ious)
    return out, inters, unions


def random_masks(seed, n=60):
    rng = np.random.default_rng(seed)
    preds, refs = [], []
    for k in range(n):
        shape = tuple(int(s) for s in rng.integers(1, 24, size=2))
        # Densities include 0 and 1 so empty and full masks (hence U == 0 and IoU == 1) occur.
        p_density, g_density = rng.choice([0.0, 0.1, 0.5, 0.9, 1.0], size=2)
        gt = rng.random(shape) < g_density
        pred = gt.copy() if k % 7 == 0 else rng.random(shape) < p_density
        preds.append(pred)
        refs.append(gt)
    return preds, refs


# ------------------------------------------------------------------------------------------------ batch form


def test_hand_computed_numbers():
    preds, refs = hand_case()
    assert [intersection_and_union(p, g) for p, g in zip(preds, refs)] == list(zip(*HAND_COUNTS))
    assert_hand_expected(referring_segmentation_metrics(preds, refs))
    assert_hand_expected(metrics_from_counts(*HAND_COUNTS))


def test_accepts_stacked_arrays_tensors_and_binary_numbers():
    preds, refs = hand_case()
    stacked_p, stacked_g = np.stack(preds), np.stack(refs)
    assert_hand_expected(referring_segmentation_metrics(stacked_p, stacked_g))
    assert_hand_expected(referring_segmentation_metrics(torch.from_numpy(stacked_p), torch.from_numpy(stacked_g)))
    assert_hand_expected(referring_segmentation_metrics(stacked_p.astype(np.uint8), stacked_g.astype(np.int64)))
    assert_hand_expected(referring_segmentation_metrics(stacked_p.astype(np.float32), list(stacked_g)))
    mixed_p = [torch.from_numpy(p).to(torch.bfloat16) if i % 2 else p for i, p in enumerate(preds)]
    assert_hand_expected(referring_segmentation_metrics(mixed_p, refs))


def test_both_empty_scores_zero_and_all_empty_is_zero():
    empty = np.zeros((3, 5), dtype=bool)
    # I = U = 0 for every sample: oIoU falls back to 0, each IoU is 0 by convention.
    result = referring_segmentation_metrics([empty, empty], [empty, empty])
    assert result == {
        "overall_iou": 0.0,
        "mean_iou": 0.0,
        **{f"precision@{t}": 0.0 for t in (0.5, 0.6, 0.7, 0.8, 0.9)},
        "num_samples": 2,
    }


def test_custom_thresholds_keys_printed_as_given():
    preds, refs = hand_case()
    result = referring_segmentation_metrics(preds, refs, thresholds=(0.75, 0, 1))
    # IoUs are 0.5, 1, 0, 0, 0, 0.7: >= 0.75 -> 1 sample; >= 0 -> all 6; >= 1 -> 1 sample.
    assert [k for k in result if k.startswith("precision")] == ["precision@0.75", "precision@0", "precision@1"]
    assert (result["precision@0.75"], result["precision@0"], result["precision@1"]) == (1 / 6, 1.0, 1 / 6)
    as_array = referring_segmentation_metrics(preds, refs, thresholds=np.array([0.6]))
    assert as_array["precision@0.6"] == 2 / 6  # s1 and s5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_plain_loop_reference_on_random_mixed_sizes(seed):
    preds, refs = random_masks(seed)
    thresholds = (0.5, 0.6, 0.7, 0.8, 0.9, 0.25)
    expected, inters, unions = reference_metrics(preds, refs, thresholds)
    assert 0 in unions and any(i == u > 0 for i, u in zip(inters, unions))  # the edge cases really occur
    result = referring_segmentation_metrics(preds, refs, thresholds)
    assert list(result) == list(expected)
    for key, value in expected.items():
        # Only mIoU may differ, by summation order (the library sums exactly with fsum).
        assert result[key] == (pytest.approx(value, rel=1e-12) if key == "mean_iou" else value), key


def test_result_is_independent_of_sample_order():
    preds, refs = random_masks(3)
    order = np.random.default_rng(0).permutation(len(preds))
    assert referring_segmentation_metrics(preds, refs) == referring_segmentation_metrics(
        [preds[i] for i in order], [refs[i] for i in order]
    )


# --------------------------------------------------------------------------------------------- streaming form


def test_streaming_equals_batch_form_exactly():
    preds, refs = random_masks(4)
    expected = referring_segmentation_metrics(preds, refs)
    metric = ReferringSegmentationMetric()
    for start in range(0, len(preds), 7):
        metric.update(preds[start : start + 7], refs[start : start + 7])
    metric.update([], [])  # an empty last shard adds nothing
    assert len(metric) == metric.num_samples == len(preds)
    assert metric.intersections.dtype == metric.unions.dtype == np.int64
    assert metric.compute() == expected


def test_add_counts_merges_processes_exactly():
    preds, refs = random_masks(5)
    expected = referring_segmentation_metrics(preds, refs)
    # Two "processes" each see an interleaved shard, as a distributed sampler would give them.
    shards = [(preds[0::2], refs[0::2]), (preds[1::2], refs[1::2])]
    workers = [ReferringSegmentationMetric() for _ in shards]
    for worker, (p, g) in zip(workers, shards):
        for start in range(0, len(p), 5):
            worker.update(p[start : start + 5], g[start : start + 5])
    main = ReferringSegmentationMetric()
    for worker in workers:  # what travels between processes: two int64 vectors
        main.add_counts(torch.from_numpy(worker.intersections), worker.unions.tolist())
    assert main.compute() == expected
    main.reset()
    assert len(main) == 0
    main.add_counts(*HAND_COUNTS)
    assert_hand_expected(main.compute())


def test_streaming_with_stacked_tensor_batches_and_thresholds():
    preds, refs = hand_case()
    metric = ReferringSegmentationMetric(thresholds=(0.7,))
    metric.update(torch.from_numpy(np.stack(preds[:3])), torch.from_numpy(np.stack(refs[:3])))
    metric.update(np.stack(preds[3:]), np.stack(refs[3:]))
    np.testing.assert_array_equal(metric.intersections, HAND_COUNTS[0])
    np.testing.assert_array_equal(metric.unions, HAND_COUNTS[1])
    # IoUs 0.5, 1, 0, 0, 0, 0.7: two samples reach 0.7.
    assert metric.compute()["precision@0.7"] == 2 / 6
    assert list(metric.compute()) == ["overall_iou", "mean_iou", "precision@0.7", "num_samples"]


# ------------------------------------------------------------------------------------------- torch counting


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
def test_batched_intersection_and_union_matches_numpy(device):
    generator = torch.Generator().manual_seed(0)
    preds = torch.rand(9, 13, 17, generator=generator) < 0.4
    refs = torch.rand(9, 13, 17, generator=generator) < 0.6
    preds[0] = False
    refs[0] = False  # U == 0 sample
    refs[1] = preds[1]  # I == U sample
    inter, union = batched_intersection_and_union(preds.to(device), refs.to(device).float())
    assert inter.dtype == union.dtype == torch.int64
    assert inter.shape == union.shape == (9,)
    assert inter.device.type == union.device.type == device
    p, g = preds.numpy(), refs.numpy()
    np.testing.assert_array_equal(inter.cpu().numpy(), [np.logical_and(a, b).sum() for a, b in zip(p, g)])
    np.testing.assert_array_equal(union.cpu().numpy(), [np.logical_or(a, b).sum() for a, b in zip(p, g)])
    assert (inter[0].item(), union[0].item()) == (0, 0)
    assert inter[1].item() == union[1].item() == p[1].sum()


def test_batched_intersection_and_union_stays_on_device():
    # The meta device holds no data: any attempt to copy masks to the host would fail.
    preds = torch.empty(4, 8, 8, dtype=torch.bool, device="meta")
    inter, union = batched_intersection_and_union(preds, preds)
    assert inter.device.type == union.device.type == "meta"
    assert inter.shape == (4,) and inter.dtype == torch.int64


# ------------------------------------------------------------------------------------------ input validation


@pytest.mark.parametrize(
    "preds, refs, error, message",
    [
        ([np.zeros((2, 2), bool)] * 3, [np.zeros((2, 2), bool)] * 2, ValueError, "Got 3 predictions but 2 references"),
        (
            [np.zeros((2, 2), bool), np.zeros((4, 5), bool)],
            [np.zeros((2, 2), bool), np.zeros((5, 4), bool)],
            ValueError,
            "Sample 1: prediction shape (4, 5) does not match reference shape (5, 4)",
        ),
        ([np.zeros((1, 2, 2), bool)], [np.zeros((1, 2, 2), bool)], ValueError, "Prediction 0 must be a 2-D"),
        ([np.zeros((2, 2), bool)], [np.zeros(4, bool)], ValueError, "Reference 0 must be a 2-D (height, width) mask"),
        ([], [], ValueError, "No samples to evaluate"),
        (np.zeros((0, 3, 3), bool), np.zeros((0, 3, 3), bool), ValueError, "No samples to evaluate"),
        (np.zeros((2, 2), bool), np.zeros((2, 2), bool), ValueError, "single 2-D mask of shape (2, 2)"),
        ([np.full((2, 2), 0.7)], [np.zeros((2, 2))], ValueError, "contains 0.7; threshold it first"),
        ([torch.full((2, 2), 0.3)], [np.zeros((2, 2))], ValueError, "Prediction 0 must be a binary mask"),
        ([np.zeros((2, 2))], [np.full((2, 2), 255, np.uint8)], ValueError, "Reference 0 must be a binary mask"),
        ([np.array([["a", "b"]])], [np.zeros((1, 2))], TypeError, "bool, integer or float dtype"),
        ("masks", "masks", TypeError, "must be a sequence of masks"),
    ],
)
def test_input_validation_messages(preds, refs, error, message):
    with pytest.raises(error) as excinfo:
        referring_segmentation_metrics(preds, refs)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    "thresholds, error, message",
    [
        ((0.5, 50), ValueError, "must lie in [0, 1] (IoU fractions, not percent), got 50"),
        ((-0.1,), ValueError, "must lie in [0, 1]"),
        ((float("nan"),), ValueError, "must lie in [0, 1]"),
        ((0.5, 0.5), ValueError, "duplicates"),
        ((True,), TypeError, "must contain numbers"),
        (0.5, TypeError, "must be a sequence"),
    ],
)
def test_threshold_validation(thresholds, error, message):
    preds, refs = hand_case()
    with pytest.raises(error) as excinfo:
        referring_segmentation_metrics(preds, refs, thresholds=thresholds)
    assert message in str(excinfo.value)
    with pytest.raises(error):
        ReferringSegmentationMetric(thresholds=thresholds)


def test_counts_and_streaming_validation():
    metric = ReferringSegmentationMetric()
    with pytest.raises(ValueError, match="call `update` or `add_counts` before `compute`"):
        metric.compute()
    with pytest.raises(ValueError, match="Got 2 intersections but 1 unions"):
        metric.add_counts([1, 2], [3])
    with pytest.raises(ValueError, match="0 <= intersection <= union"):
        metric.add_counts([4], [3])
    with pytest.raises(TypeError, match="integer pixel counts"):
        metric.add_counts([0.5], [1.0])
    assert len(metric) == 0  # rejected counts were not kept
    with pytest.raises(ValueError, match=r"Prediction shape \(2, 3, 3\) does not match reference shape \(2, 3, 4\)"):
        batched_intersection_and_union(torch.zeros(2, 3, 3), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"\(batch_size, height, width\) tensors"):
        batched_intersection_and_union(torch.zeros(3, 3), torch.zeros(3, 3))
    with pytest.raises(TypeError, match="must both be torch tensors"):
        batched_intersection_and_union(np.zeros((1, 3, 3)), torch.zeros(1, 3, 3))


# ----------------------------------------------------------------------------------------------- formatting


def test_format_metrics_table():
    preds, refs = hand_case()
    table = format_metrics_table(referring_segmentation_metrics(preds, refs))
    # Percentages of HAND_EXPECTED: 50, 36.666.., 50, 33.33.., 33.33.., 16.66.., 16.66..
    assert table == (
        "| oIoU  | mIoU  | P@0.5 | P@0.6 | P@0.7 | P@0.8 | P@0.9 |\n"
        "|-------|-------|-------|-------|-------|-------|-------|\n"
        "| 50.00 | 36.67 | 50.00 | 33.33 | 33.33 | 16.67 | 16.67 |"
    )
    # Precision columns are ordered by threshold value, whatever the dict order.
    shuffled = {"precision@0.9": 0.1, "precision@0.5": 0.9, "mean_iou": 1.0, "overall_iou": 0.12345}
    assert format_metrics_table(shuffled).splitlines()[0] == "| oIoU  | mIoU   | P@0.5 | P@0.9 |"
    assert format_metrics_table(shuffled).splitlines()[2] == "| 12.35 | 100.00 | 90.00 | 10.00 |"
    with pytest.raises(ValueError, match="No metrics to format"):
        format_metrics_table({"num_samples": 3})
