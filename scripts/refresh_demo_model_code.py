#!/usr/bin/env python
# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Re-writes the embedded demo model's config, processor files and Hub remote code from the current source; the
weights stay untouched (`magnet_hf.demo.packing.refresh_remote_code`).

    python scripts/refresh_demo_model_code.py [--folder src/magnet_hf/demo/demo_model]
"""

import sys

from magnet_hf.commands.demo_model import refresh_main

if __name__ == "__main__":
    sys.exit(refresh_main())
