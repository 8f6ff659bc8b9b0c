# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""MagNet and the Hugging Face Hub: the released checkpoints in, finished folders out.

- `conversion`: a released `magnet_*.pth` converted into a transformers folder (`convert_official_checkpoint`).
- `model_cards`: the cards of the released checkpoints, and evaluation results recorded in a card's `model-index`
  (`update_model_card`, `card_from_evaluations`).
- `publishing`: a folder assembled with its remote code, pipeline and card, and pushed (`build_hub_folder`,
  `push_folder_to_hub`).

The command lines are `magnet_hf.commands.convert` and `magnet_hf.commands.push_to_hub`.
"""
