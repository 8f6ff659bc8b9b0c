#!/usr/bin/env python
# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Measures how far MagNet's two image-processor backends are apart (pixel values and predicted masks); see
`magnet_hf.commands.compare_image_backends`.

    python scripts/compare_image_backends.py [--model FOLDER] [--scenes 8] [--scene-size 320] [--output FILE]
"""

import sys

from magnet_hf.commands.compare_image_backends import main

if __name__ == "__main__":
    sys.exit(main())
