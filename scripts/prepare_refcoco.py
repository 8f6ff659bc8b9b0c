#!/usr/bin/env python
"""Prepare RefCOCO / RefCOCO+ / RefCOCOg as a ``datasets.DatasetDict`` from the official refer files.

Example::

    python scripts/prepare_refcoco.py --dataset refcoco --split-by unc \
        --refer-root data/refer --coco-images data/coco/train2014 --output data/refcoco_unc
"""

import sys

from magnet_hf.commands.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
