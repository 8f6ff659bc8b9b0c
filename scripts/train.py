#!/usr/bin/env python
# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Train or fine-tune MagNet; see `python scripts/train.py --help` and the README's Training section.

One process:       python scripts/train.py --dataset synthetic --preset magnet-tiny --output-dir runs/tiny
Several (GPU):     accelerate launch --num_processes 2 scripts/train.py ...
Several (CPU):     python -m torch.distributed.run --nproc_per_node 2 scripts/train.py --cpu ...
"""

import sys

from magnet_hf.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
