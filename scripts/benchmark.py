#!/usr/bin/env python
# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Benchmark MagNet with random weights; see `magnet_hf.commands.benchmark_measure` for what is measured.

    python scripts/benchmark.py --preset magnet-base --batch-size 1 8 --repeats 5 --json base.json
    python scripts/benchmark.py --preset magnet-base --dtype bfloat16
    python scripts/benchmark.py --preset magnet-tiny --batch-size 2 --repeats 3
"""

import sys

from magnet_hf.commands.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
