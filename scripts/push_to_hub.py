#!/usr/bin/env python
# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Publish a MagNet folder (model, processor, remote code, pipeline, model card) on the Hub.

    python scripts/push_to_hub.py --model converted/magnet-refcoco --repo me/magnet-refcoco \
        --card model_cards/magnet-refcoco.md [--private]
    python scripts/push_to_hub.py --model DIR --repo me/magnet --local-dir upload/   # write, do not upload
"""

import sys

from magnet_hf.commands.push_to_hub import main

if __name__ == "__main__":
    sys.exit(main())
