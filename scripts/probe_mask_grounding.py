#!/usr/bin/env python
# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Whether a trained model's Mask Grounding head reads the scene or only the sentence; see
`magnet_hf.commands.probe_mask_grounding`.

    python scripts/probe_mask_grounding.py --model FOLDER [--heldout-seed 1] [--output FILE]
"""

import sys

from magnet_hf.commands.probe_mask_grounding import main

if __name__ == "__main__":
    sys.exit(main())
