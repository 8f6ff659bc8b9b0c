#!/usr/bin/env python
# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Packs a trained run's best model as the embedded demo model: float16 weights, no Mask Grounding head, a float32
config, the card kept, fresh remote code (`magnet_hf.demo.packing.pack_demo_model`).

    python scripts/pack_demo_model.py --source runs/demo/best --overwrite
"""

import sys

from magnet_hf.commands.demo_model import pack_main

if __name__ == "__main__":
    sys.exit(pack_main())
