#!/usr/bin/env python
# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Re-writes the embedded demo model's config, processor files and Hub remote code from the current source; the
weights stay untouched.

    python scripts/refresh_demo_model_code.py [--folder src/magnet_hf/demo/demo_model]

The embedded folder carries copies of the `*_magnet.py` modules so that `pipeline(model=folder,
trust_remote_code=True)` works in a process that never imports magnet_hf; `tests/test_demo_model.py` fails when
those copies differ from the package's modules. The files come from `save_pretrained` (the path conversion and
training use), run on a model built from the folder's config and on the folder's processor; everything but the
weights is kept.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import magnet_hf
from magnet_hf.configuration_magnet import MagNetConfig
from magnet_hf.modeling_magnet import MagNetForReferringSegmentation, MagNetModel
from magnet_hf.processing_magnet import MagNetProcessor


def refresh(folder: Path) -> list[str]:
    """Rewrites `folder`'s config, processor files and `*.py` remote code; returns the names written."""
    if not (folder / "config.json").is_file():
        raise SystemExit(f"error: {folder} has no config.json; give the embedded demo model's folder.")
    config = MagNetConfig.from_pretrained(folder)
    # Only the code and the recorded task and auto_map are wanted: the weights on disk stay as they are.
    config.auto_map, config.custom_pipelines = None, None
    architecture = (config.architectures or ["MagNetForReferringSegmentation"])[0]
    model_class = MagNetModel if architecture == "MagNetModel" else MagNetForReferringSegmentation
    model = model_class(config)
    processor = MagNetProcessor.from_pretrained(folder)
    written = []
    with tempfile.TemporaryDirectory(prefix=".refresh-", dir=folder.parent) as scratch:
        model.save_pretrained(scratch)
        processor.save_pretrained(scratch)
        for stale in folder.glob("*.py"):
            stale.unlink()
        for source in sorted(Path(scratch).iterdir()):
            if source.suffix != ".safetensors":
                os.replace(source, folder / source.name)
                written.append(source.name)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=Path(magnet_hf.__file__).parent / "demo" / "demo_model")
    args = parser.parse_args()
    written = refresh(args.folder)
    print(f"Wrote {', '.join(written)} to {args.folder}; weights unchanged.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
