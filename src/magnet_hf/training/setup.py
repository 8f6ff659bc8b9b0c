# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Building a run's inputs from its arguments: data splits, processor (with tokenizer) and model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .arguments import TrainingArguments, TrainingError

logger = logging.getLogger(__name__)


def load_training_splits(args: TrainingArguments, image_size: int) -> tuple[Any, Any]:
    """The training split (one row per ref) and the evaluation split (one row per sentence).

    `--dataset synthetic` draws `--synthetic-images` scenes at `image_size` (80/10/10 train/val/test); a
    `save_to_disk` folder is loaded as is; anything else goes to `datasets.load_dataset` (or, with
    `--hub-layout jxu124`, through `magnet_hf.data.load_hub_layout`).
    """
    import datasets

    from ..data import ReferDataError, build_synthetic_dataset, explode_sentences, load_hub_layout

    source = args.dataset
    try:
        if source == "synthetic":
            splits = build_synthetic_dataset(args.synthetic_images, image_size=max(64, image_size), seed=args.synthetic_seed)
        elif args.hub_layout:
            splits = load_hub_layout(source, args.hub_layout, coco_images=args.coco_images)
        elif Path(source).is_dir() and any((Path(source) / name).is_file() for name in ("dataset_dict.json", "dataset_info.json")):
            splits = datasets.load_from_disk(source)
        elif Path(source).exists() or source.startswith((".", "/", "~")):
            raise TrainingError(f"--dataset {source!r} is not a save_to_disk folder (no dataset_dict.json).")
        else:
            splits = datasets.load_dataset(source)
    except (ReferDataError, OSError, ValueError) as error:
        if isinstance(error, TrainingError):
            raise
        raise TrainingError(f"could not load --dataset {source!r}: {error}") from error
    if not isinstance(splits, datasets.DatasetDict):
        raise TrainingError(f"--dataset {source!r} must have named splits; it loaded as a single {type(splits).__name__}.")
    for split in (args.train_split, args.eval_split):
        if split not in splits:
            raise TrainingError(f"--dataset {source!r} has no split {split!r}; available: {sorted(splits)}.")
    missing = [c for c in ("image", "mask", "sentences", "ref_id") if c not in splits[args.train_split].column_names]
    if missing:
        raise TrainingError(f"--dataset {source!r} lacks column(s) {missing}; see magnet_hf.data for the expected schema.")
    evaluation = splits[args.eval_split]
    if "sentence_index" not in evaluation.column_names:
        evaluation = explode_sentences(evaluation)
    if args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))
    return splits[args.train_split], evaluation


def _load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise TrainingError(f"could not load tokenizer {name_or_path!r}: {error}") from error


def build_processor(args: TrainingArguments, train_split: Any, image_size: int) -> Any:
    """The processor of a preset run: `--tokenizer`, else the `--text-encoder`'s, else a WordPiece vocabulary
    trained on the training sentences (offline runs from scratch)."""
    from ..data.tokenizer import train_wordpiece_tokenizer
    from ..image_processing_magnet import MagNetImageProcessor
    from ..processing_magnet import MagNetProcessor

    if args.tokenizer or args.text_encoder:
        tokenizer = _load_tokenizer(args.tokenizer or args.text_encoder)
    else:
        sentences = (sentence for row in train_split.select_columns(["sentences"]) for sentence in row["sentences"])
        tokenizer = train_wordpiece_tokenizer(sentences, vocab_size=args.vocab_size)
    if tokenizer.pad_token_id != 0 or tokenizer.mask_token_id is None:
        raise TrainingError("the tokenizer must pad with id 0 and define [MASK] (a BERT WordPiece tokenizer).")
    return MagNetProcessor(MagNetImageProcessor(size={"height": image_size, "width": image_size}), tokenizer)


def split_config_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`--config-override` pairs as (MagNetConfig fields, `text_config.` fields without the prefix); raises
    `TrainingError` naming any key that is neither."""
    from ..configuration_magnet import MagNetConfig

    known, known_text = set(MagNetConfig().to_dict()), set(MagNetConfig().text_config.to_dict())
    unknown = [key for key in overrides if key not in known and not (key.startswith("text_config.") and key[12:] in known_text)]
    if unknown:
        # PretrainedConfig keeps unknown keyword arguments as attributes, so a typo would be saved and ignored.
        raise TrainingError(f"--config-override: unknown MagNetConfig field(s) {unknown}.")
    top = {key: value for key, value in overrides.items() if not key.startswith("text_config.")}
    text = {key[len("text_config."):]: value for key, value in overrides.items() if key.startswith("text_config.")}
    return top, text


def build_config(args: TrainingArguments, processor: Any) -> Any:
    """`MagNetConfig` of a preset run with `--image-size`, `--config-override` and the loss switches applied."""
    from ..configuration_magnet import MagNetConfig, PRESETS

    overrides, text_overrides = split_config_overrides(args.config_overrides)
    text_config = {**PRESETS[args.preset].get("text_config", {}), **text_overrides}
    if args.text_encoder is None:
        # From scratch the embedding table follows the tokenizer; a pretrained BERT keeps its own size.
        text_config["vocab_size"] = len(processor.tokenizer)
    if text_config:
        overrides["text_config"] = text_config
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    try:
        config = MagNetConfig.from_preset(args.preset, **overrides)
    except (TypeError, ValueError) as error:
        raise TrainingError(f"invalid model configuration: {error}") from error
    apply_loss_switches(config, args)
    return config


def apply_loss_switches(config: Any, args: TrainingArguments) -> None:
    """`--no-mask-grounding` / `--no-alignment-loss` turn the auxiliary losses off in the config."""
    config.use_mask_grounding = not args.no_mask_grounding and getattr(config, "use_mask_grounding", True)
    config.use_alignment_loss = not args.no_alignment_loss and getattr(config, "use_alignment_loss", True)


def build_model_and_processor(args: TrainingArguments, train_split: Any) -> tuple[Any, Any]:
    """A fresh run's model and processor: a preset (optionally with pretrained Swin and BERT) or `--model`."""
    from ..modeling_magnet import MagNetForReferringSegmentation

    if args.model is not None:
        path = Path(args.model).expanduser()
        if path.exists() and not (path / "config.json").is_file():
            raise TrainingError(f"--model {args.model!r} is not a saved model folder (no config.json).")
        from ..model_folder import ModelFolderError, check_loading_info, load_pretrained, load_processor

        try:
            model, info = load_pretrained(MagNetForReferringSegmentation, args.model)
            check_loading_info(args.model, {"mismatched_keys": info.get("mismatched_keys")})
            processor = load_processor(args.model)
        except ModelFolderError as error:
            raise TrainingError(f"--model: {error}") from None
        apply_loss_switches(model.config, args)
        return model, processor

    from ..configuration_magnet import PRESETS

    image_size = args.image_size or PRESETS[args.preset].get("image_size", 480)
    processor = build_processor(args, train_split, image_size)
    model = MagNetForReferringSegmentation(build_config(args, processor))
    if args.image_encoder:
        try:
            model.load_pretrained_image_encoder(args.image_encoder)
        except ValueError as error:
            raise TrainingError(f"--image-encoder: {error}") from error
    if args.text_encoder:
        try:
            model.load_pretrained_text_encoder(args.text_encoder)
        except (OSError, ValueError) as error:
            raise TrainingError(f"--text-encoder: {error}") from error
    return model, processor
