#!/usr/bin/env python
# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Train one setting once per variant (Mask Grounding and its mode, the alignment loss, the language masking) and
seed, score every run on held-out synthetic scenes and print the report (also written to OUTPUT_DIR/ablation.md).

    python scripts/ablate.py --dataset synthetic --preset magnet-tiny --output-dir runs/ablation --seeds 0 1 2 ...
"""

import sys

from magnet_hf.commands.ablate import main

if __name__ == "__main__":
    sys.exit(main())
