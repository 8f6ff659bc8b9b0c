#!/usr/bin/env python
# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Convert a released MagNet checkpoint (magnet_*.pth) into a transformers folder loadable with from_pretrained.

Example:
    python scripts/convert_official_checkpoint.py --checkpoint magnet_refcoco.pth \
        --tokenizer bert-base-uncased --output converted/magnet-refcoco
"""

import sys

from magnet_hf.commands.convert import main

if __name__ == "__main__":
    sys.exit(main())
