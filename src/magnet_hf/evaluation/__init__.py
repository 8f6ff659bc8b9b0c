# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Scoring referring segmentation: oIoU, mIoU and precision@t.

- `metrics`: the metric itself (`ReferringSegmentationMetric`, `referring_segmentation_metrics`), from counts of
  intersection and union.
- `evaluator`: a model scored on a split (`evaluate_referring_segmentation`, one or several processes), its inputs
  (`load_evaluation_split`) and its results file (`write_results`).
- `evaluate_metric/referring_segmentation`: the same metric as an `evaluate` module (`evaluate.load(path)`).

`magnet_hf.commands.evaluate` is the command line (`scripts/evaluate.py`, `magnet-hf evaluate`).
"""
