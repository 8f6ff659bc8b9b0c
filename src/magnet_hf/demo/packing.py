# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""The embedded demo model's folder (`demo/demo_model/`): packed from a training run, and its remote code kept equal
to the package's modules.

`pack_demo_model` turns a trained folder (a run's `best/`) into the shipped one: float16 weights (half the bytes),
no Mask Grounding head (a training-only loss head that inference never reads), `dtype: float32` in the config (so the
weights load as float32, in which the model runs on CPU), the card and its pictures kept from the folder it
replaces, and the remote code written by `refresh_remote_code`.

`refresh_remote_code` rewrites a folder's config, processor files and remote code from the current source; the
weights stay untouched. The folder carries copies of the flat Hub-facing modules (`REMOTE_CODE_MODULES`) so that
`pipeline(model=folder, trust_remote_code=True)` works in a process that never imports magnet_hf;
`tests/test_demo_model.py` fails when those copies differ from the package's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..files import (
    make_staging_directory,
    move_into,
    refuse_existing_output,
    refuse_replacing_inputs,
    replacing_directory,
    write_atomically,
    write_json_atomically,
)

#: The package's flat modules that a folder's remote code consists of (`auto_map` and `custom_pipelines` name
#: classes in them, and they import each other); copied as they are.
REMOTE_CODE_MODULES = (
    "configuration_magnet.py",
    "deformable_attention_magnet.py",
    "fast_path_magnet.py",
    "image_processing_magnet.py",
    "losses_magnet.py",
    "modeling_magnet.py",
    "pipeline_magnet.py",
    "processing_magnet.py",
)
#: Files of the folder a pack replaces that the pack keeps: the model card and the pictures it shows.
CARD_SUFFIXES = (".md", ".png")
#: The prefix of the Mask Grounding head's weights, which the packed model leaves out.
MASK_GROUNDING_PREFIX = "mask_grounding."
PACKAGE_DIR = Path(__file__).resolve().parents[1]


class DemoPackingError(ValueError):
    """A source or destination folder the packing tools cannot use; the message says which and why."""


def _check_model_folder(folder: Path, flag: str) -> None:
    if not (folder / "config.json").is_file():
        raise DemoPackingError(f"{flag} {folder} has no config.json; give a saved MagNet folder.")


def _model_class(config):
    from ..modeling_magnet import MagNetForReferringSegmentation, MagNetModel

    architecture = (config.architectures or ["MagNetForReferringSegmentation"])[0]
    return MagNetModel if architecture == "MagNetModel" else MagNetForReferringSegmentation


def refresh_remote_code(folder: str | os.PathLike) -> list[str]:
    """Rewrites `folder`'s config, processor files and remote code (`REMOTE_CODE_MODULES`); returns the names
    written. The weights on disk stay as they are."""
    from ..configuration_magnet import MagNetConfig
    from ..processing_magnet import MagNetProcessor

    folder = Path(folder)
    _check_model_folder(folder, "--folder")
    config = MagNetConfig.from_pretrained(folder)
    # Only the code and the recorded task and auto_map are wanted: save_pretrained writes them again.
    config.auto_map, config.custom_pipelines = None, None
    processor = MagNetProcessor.from_pretrained(folder)
    staging = make_staging_directory(folder)
    try:
        _model_class(config)(config).save_pretrained(staging)
        processor.save_pretrained(staging)
        for generated in [*staging.glob("*.py"), *staging.glob("*.safetensors")]:
            generated.unlink()
        for name in REMOTE_CODE_MODULES:
            shutil.copyfile(PACKAGE_DIR / name, staging / name)
        for stale in folder.glob("*.py"):
            stale.unlink()
        return move_into(staging, folder, last=["config.json"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def pack_demo_model(
    source: str | os.PathLike, destination: str | os.PathLike, *, overwrite: bool = False
) -> dict[str, int]:
    """
    Writes the trained MagNet folder `source` (model and processor) to `destination` as an embedded demo model:
    float16 weights without the Mask Grounding head, a float32 config, the card files (`CARD_SUFFIXES`) of the
    folder it replaces, and fresh remote code. `destination` is replaced whole, and only with `overwrite`.

    Returns:
        `{"dropped_tensors": ..., "bytes": ...}`: the Mask Grounding tensors left out and the folder's size.

    Raises:
        DemoPackingError: `source` is not a saved model, holds weights other than the model's and its Mask Grounding
            head, or `destination` exists (without `overwrite`) or holds `source`.
    """
    import torch
    from safetensors import safe_open

    from ..configuration_magnet import MagNetConfig
    from ..modeling_magnet import MagNetForReferringSegmentation
    from ..processing_magnet import MagNetProcessor

    source, destination = Path(source), Path(destination)
    _check_model_folder(source, "--source")
    weights = source / "model.safetensors"
    if not weights.is_file():
        raise DemoPackingError(f"--source {source} has no model.safetensors (a single, unsharded safetensors file).")
    refuse_existing_output(destination, overwrite, error=DemoPackingError)
    refuse_replacing_inputs(destination, {"--source": source}, error=DemoPackingError, output_flag="--destination")
    config = MagNetConfig.from_pretrained(source)
    config.use_mask_grounding = False
    model = MagNetForReferringSegmentation.from_pretrained(source, config=config).eval()
    with safe_open(str(weights), framework="pt") as saved:
        dropped = set(saved.keys()) - set(model.state_dict())
    unexpected = sorted(key for key in dropped if not key.startswith(MASK_GROUNDING_PREFIX))
    if unexpected:
        raise DemoPackingError(f"--source {source} holds weights the model does not use: {unexpected[:3]}.")
    model = model.to(torch.float16)
    with replacing_directory(destination) as staging:
        model.save_pretrained(staging)
        MagNetProcessor.from_pretrained(source).save_pretrained(staging)
        config_file = staging / "config.json"
        write_json_atomically(config_file, {**_read_json(config_file), "dtype": "float32"}, sort_keys=True)
        for kept in sorted(destination.iterdir()) if destination.is_dir() else []:
            if kept.suffix in CARD_SUFFIXES and kept.is_file():
                write_atomically(staging / kept.name, lambda target, kept=kept: shutil.copyfile(kept, target))
        refresh_remote_code(staging)
    return {"dropped_tensors": len(dropped), "bytes": sum(path.stat().st_size for path in destination.iterdir())}


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


__all__ = ["CARD_SUFFIXES", "REMOTE_CODE_MODULES", "DemoPackingError", "pack_demo_model", "refresh_remote_code"]
