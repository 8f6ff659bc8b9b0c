#!/usr/bin/env python
# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Evaluate MagNet on a referring segmentation split; see `python scripts/evaluate.py --help`.

Single process:  python scripts/evaluate.py --model DIR --dataset DIR --split val
Several:         accelerate launch scripts/evaluate.py --model DIR --dataset DIR --split val
"""

import sys

from magnet_hf.commands.evaluate import main


if __name__ == "__main__":
    sys.exit(main())
