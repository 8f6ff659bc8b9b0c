#!/usr/bin/env python
# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Train one setting with and without Mask Grounding and the alignment loss over seeds and print the oIoU table.

    python scripts/ablate.py --dataset synthetic --preset magnet-tiny --output-dir runs/ablation --seeds 0 1 ...
"""

import sys

from magnet_hf.training.ablation import main

if __name__ == "__main__":
    sys.exit(main())
