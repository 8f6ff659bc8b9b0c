# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Publishing a MagNet folder: model, processor, Hub remote code, the pipeline and the model card, together.

`build_hub_folder` assembles exactly what is uploaded: the model re-saved with `auto_map` and `custom_pipelines` in
its config, the flat remote-code modules (modeling, configuration, processing, pipeline and what they import), the
processor files and `README.md`. `push_folder_to_hub` creates the repository and uploads that folder;
`scripts/push_to_hub.py` (`magnet_hf.commands.push_to_hub`) is the command line (`--local-dir` writes the folder instead of uploading).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..files import refuse_existing_output, refuse_replacing_inputs, replacing_directory

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class HubPublishError(ValueError):
    """Bad input to the publishing tools; the message names the input and what to change."""


def validate_repo_id(repo_id: str) -> str:
    """Checks that `repo_id` is a Hub model id, `owner/name` (or `name` for the logged-in user)."""
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hub_validate

    if not isinstance(repo_id, str) or not repo_id or repo_id.count("/") > 1 or repo_id.startswith(("/", ".", "~")):
        raise HubPublishError(f"--repo {repo_id!r} is not a Hub repository id; use owner/name, e.g. me/magnet-refcoco.")
    try:
        hub_validate(repo_id)
    except HFValidationError as error:
        raise HubPublishError(f"--repo {repo_id!r} is not a valid Hub repository id: {error}") from None
    return repo_id


def _check_model_folder(model_dir: Path) -> None:
    if not model_dir.exists():
        raise HubPublishError(f"Model folder {str(model_dir)!r} does not exist.")
    if not model_dir.is_dir():
        raise HubPublishError(f"--model {str(model_dir)!r} is a file; give the folder the model was saved to.")
    if not (model_dir / "config.json").is_file():
        raise HubPublishError(f"{model_dir} has no config.json; it is not a saved model folder.")
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise HubPublishError(f"{model_dir} has no weights ({' or '.join(WEIGHT_FILES[::2])}).")


#: A model card is Markdown text; anything larger is not one (and would be published as the repository's README).
MAX_CARD_BYTES = 1 << 20


def _check_card_text(path: Path) -> Path:
    if path.suffix.lower() not in (".md", ".markdown"):
        raise HubPublishError(f"Model card {str(path)!r} is not a Markdown (.md) file; it would be published as README.md.")
    if path.stat().st_size > MAX_CARD_BYTES:
        raise HubPublishError(f"Model card {str(path)!r} is over {MAX_CARD_BYTES >> 20} MB; a card is a short Markdown text.")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as error:
        raise HubPublishError(f"Model card {str(path)!r} is not readable UTF-8 text ({error}).") from None
    if "\x00" in text:
        raise HubPublishError(f"Model card {str(path)!r} holds NUL bytes; it is not a text file.")
    return path


def _resolve_card(model_dir: Path, card: str | os.PathLike | None) -> Path | None:
    """The card file to publish; `None` when there is none, so that a basic one is written."""
    if card is not None:
        path = Path(card).expanduser()
        if not path.is_file():
            raise HubPublishError(f"Model card {str(card)!r} does not exist (or is not a file).")
        return _check_card_text(path)
    if (model_dir / "README.md").is_file():
        return model_dir / "README.md"
    return None


def _training_metrics(model_dir: Path) -> tuple[dict[str, Any], str, str] | None:
    """`(metrics, dataset, split)` of the final (else best) evaluation in `eval_results.json`, as `train.py` writes
    it; `None` when the folder has no usable one."""
    import json

    try:
        results = json.loads((model_dir / "eval_results.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict):
        return None
    entry = results.get("final") or results.get("best")
    if not isinstance(entry, dict):
        return None
    metrics = {
        key: value for key, value in entry.items()
        if key in ("overall_iou", "mean_iou") or key.startswith("precision@")
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    if not metrics:
        return None
    return metrics, str(results.get("dataset") or "unknown"), str(results.get("eval_split") or "validation")


def write_basic_card(model_dir: Path, target: Path, name: str) -> Path:
    """
    Writes a basic `README.md` into `target`: metadata (library, pipeline tag, tags), what the model is and how to run
    it, and a `model-index` with the metrics of `model_dir/eval_results.json` when there is one (a folder `train.py`
    wrote). transformers' own `push_to_hub` writes a similar minimal card.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from ..files import write_text_atomically
    from .model_cards import add_evaluation_results

    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=["magnet", "referring-image-segmentation"],
        model_name=name,
    )
    text = (
        f"---\n{data.to_yaml()}\n---\n\n# {name}\n\n"
        "A MagNet referring image segmentation model (Mask Grounding for Referring Image Segmentation, CVPR 2024): "
        "an image and an expression give the mask of the object the expression refers to.\n\n"
        "This is a basic card written by magnet_hf's publishing tool, because none was given.\n\n"
        "```python\nfrom transformers import pipeline\n\n"
        f'segmenter = pipeline(model="{name}", trust_remote_code=True)\n'
        'segmenter("image.jpg", text="the man in the red shirt")\n```\n'
    )
    card = ModelCard(text)
    training = _training_metrics(model_dir)
    if training is not None:
        metrics, dataset, split = training
        add_evaluation_results(card, metrics, dataset=dataset, split=split, resolution="released")
    return write_text_atomically(target / "README.md", str(card))


def basic_card_notice(model_dir: str | os.PathLike, card: str | os.PathLike | None) -> str | None:
    """The notice printed when publishing writes a basic card (no `--card` and no `README.md` in the folder)."""
    model_dir = Path(model_dir).expanduser()
    if card is not None or (model_dir / "README.md").is_file():
        return None
    source = " with the metrics of eval_results.json" if _training_metrics(model_dir) else ""
    return (
        f"Note: no --card given and {model_dir} has no README.md; a basic model card{source} was written. "
        "Pass --card FILE to publish your own (templates are in the repository's model_cards/)."
    )


def _load_model_and_processor(model_dir: Path):
    from transformers.utils import logging as transformers_logging

    from ..configuration_magnet import MagNetConfig
    from ..modeling_magnet import MagNetForReferringSegmentation, MagNetModel

    try:
        config = MagNetConfig.from_pretrained(model_dir)
    except Exception as error:  # strict-dataclass, JSON and type errors alike: the file is bad input
        raise HubPublishError(f"{model_dir}/config.json is not a MagNet config: {error}") from None
    # Keep the class the folder was saved from, so that training heads travel with a full checkpoint.
    architecture = (config.architectures or ["MagNetForReferringSegmentation"])[0]
    model_class = MagNetModel if architecture == "MagNetModel" else MagNetForReferringSegmentation
    progress_bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    from ..model_folder import ModelFolderError, load_pretrained
    from ..model_folder import load_processor as load_checked_processor

    try:
        model, info = load_pretrained(model_class, model_dir, dtype="auto")
    except ModelFolderError as error:
        raise HubPublishError(str(error)) from None
    finally:
        if progress_bars:
            transformers_logging.enable_progress_bar()
    problems = {key: sorted(info[key]) for key in ("missing_keys", "unexpected_keys", "mismatched_keys") if info[key]}
    if problems:
        details = "; ".join(f"{key.replace('_', ' ')}: {len(v)} (first: {v[:3]})" for key, v in problems.items())
        raise HubPublishError(f"The weights in {model_dir} do not fit its config ({details}); nothing was written.")
    try:
        processor = load_checked_processor(model_dir)
    except ModelFolderError as error:
        raise HubPublishError(str(error)) from None
    return model, processor


def build_hub_folder(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    card: str | os.PathLike | None = None,
    overwrite: bool = False,
    repo_id: str | None = None,
) -> Path:
    """
    Writes to `output_dir` exactly what a push uploads: the model with `auto_map` and `custom_pipelines` in its
    config, its remote code (the flat `*_magnet.py` modules, `pipeline_magnet.py` included), the processor files and
    the model card as `README.md`.

    The folder is assembled beside `output_dir` and renamed into place only when complete; an existing `output_dir`
    is refused unless `overwrite`.

    Args:
        model_dir: a folder holding a saved MagNet model and its processor.
        output_dir: the folder to create.
        card: model card file; defaults to `model_dir/README.md`, else a basic card ([`write_basic_card`]).
        overwrite: replace an existing `output_dir`.
        repo_id: the repository the folder is for; names the model in a basic card (default: the folder's name).

    Raises:
        HubPublishError: a missing or incomplete model folder, a missing `card` file, or an existing output.
    """
    model_dir, output_dir = Path(model_dir).expanduser(), Path(output_dir).expanduser().absolute()
    _check_model_folder(model_dir)
    card_path = _resolve_card(model_dir, card)
    refuse_existing_output(output_dir, overwrite, error=HubPublishError)
    refuse_replacing_inputs(
        output_dir, {"--model": model_dir, "--card": card_path}, error=HubPublishError, output_flag="--local-dir"
    )
    if not output_dir.parent.is_dir():
        raise HubPublishError(f"The folder that should hold {output_dir.name} does not exist: {output_dir.parent}")
    with replacing_directory(output_dir) as staging:
        _write_hub_files(model_dir, card_path, staging, repo_id or model_dir.resolve().name)
    return output_dir


def _write_hub_files(model_dir: Path, card_path: Path | None, target: Path, name: str) -> None:
    from ..pipeline_magnet import REFERRING_SEGMENTATION_TASK, MagNetReferringSegmentationPipeline

    model, processor = _load_model_and_processor(model_dir)
    pipeline = MagNetReferringSegmentationPipeline(
        model=model, processor=processor, device="cpu", task=REFERRING_SEGMENTATION_TASK
    )
    # Pipeline.save_pretrained writes custom_pipelines into the config and copies pipeline_magnet.py with its relative
    # imports; the model and processor saves add their own remote code and auto_map entries.
    pipeline.save_pretrained(target)
    if card_path is None:
        write_basic_card(model_dir, target, name)
    else:
        shutil.copyfile(card_path, target / "README.md")


def push_folder_to_hub(
    model_dir: str | os.PathLike,
    repo_id: str,
    card: str | os.PathLike | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload MagNet model, processor, remote code and pipeline",
    api: Any = None,
) -> str:
    """
    Creates the Hub repository `repo_id` (if needed) and uploads what [`build_hub_folder`] writes.

    Args:
        api: a `huggingface_hub.HfApi` (default: a new one with `token`).

    Returns:
        The URL of the uploaded commit.
    """
    validate_repo_id(repo_id)
    model_dir = Path(model_dir).expanduser()
    _check_model_folder(model_dir)
    _resolve_card(model_dir, card)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="magnet-hub-") as scratch:
        folder = build_hub_folder(model_dir, Path(scratch) / "upload", card=card, repo_id=repo_id)
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder), commit_message=commit_message)
    return str(getattr(commit, "commit_url", commit))


__all__ = [
    "HubPublishError",
    "basic_card_notice",
    "build_hub_folder",
    "push_folder_to_hub",
    "validate_repo_id",
    "write_basic_card",
]
