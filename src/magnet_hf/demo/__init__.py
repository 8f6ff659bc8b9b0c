# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""What runs without a network: the embedded demo model and what it is shown on.

- `segmentation`: the embedded model (`demo_model_path`), a loaded segmenter (`load_segmenter`) and its predictions
  written as mask and overlay PNGs (`segment_to_files`).
- `synthetic_demo`: the offline demo on synthetic scenes (`run_demo`), scored and drawn on a contact sheet.
- `overlay`: the drawing (tinted masks, outlines, captions, contact sheets).
- `packing`: the embedded `demo_model/` folder packed from a training run, and its copied remote code refreshed.

The command lines are `magnet-hf segment` and `magnet-hf demo` (`magnet_hf.commands`).
"""
