# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Conversion of the released MagNet checkpoints (`magnet_*.pth`, weights under `"model"`) to magnet_hf folders.

Every key of a released checkpoint is either mapped onto [`MagNetForReferringSegmentation`] or dropped on purpose
(`DROPPED_KEY_PATTERNS` says which and why). A checkpoint that does not match the target architecture is refused with
a report of its missing, unexpected and mis-shaped keys, and nothing is written.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import refuse_existing_output, refuse_replacing_inputs, replacing_directory

if TYPE_CHECKING:
    import torch

    from ..configuration_magnet import MagNetConfig

# torch, transformers and the model are imported inside the functions, so that `convert --help` and argument errors
# answer without loading them.

#: Tokenizer of the released weights (their language stream is BERT-base, uncased); taken from the Hub cache.
DEFAULT_TOKENIZER = "bert-base-uncased"
# "owner/name:path/in/repo.pth" (optionally "@revision" after the name): a file of a Hub model repository.
_HUB_FILE_REFERENCE = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+))?:(?P<filename>[^:]+)$")


class ConversionError(ValueError):
    """A checkpoint or official config that cannot be converted; the message says what is wrong."""


# Released weights that the inference network never reads. Each is dropped on purpose.
DROPPED_KEY_PATTERNS: dict[str, str] = {
    r"^image_model\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index$": "a buffer, rebuilt from the window size",
    r"^image_model\.norm\d+\.(weight|bias)$": "per-stage output norms of the Swin backbone, unused by MagNet's forward",
    r"^language_model\.norms\.\d+\.(weight|bias)$": "norms of the language fusion residuals, whose outputs feed nothing",
    r"^language_model\.pooler\.": "BERT's pooler, removed in the released model",
    r"^language_model\.embeddings\.position_ids$": "a buffer of older transformers versions",
}
# The last stage's image gate output fed nothing in the release; its weights are dropped (see `_last_stage_gate`).

_PIXEL_WORD_ATTENTION = {
    "vis_project.0": "visual_projection",
    "image_lang_att.f_query.0": "query_projection",
    "image_lang_att.f_query.1": "query_norm",
    "image_lang_att.f_key.0": "key_projection",
    "image_lang_att.f_value.0": "value_projection",
    "image_lang_att.W.0": "output_projection",
    "image_lang_att.W.1": "output_norm",
    "project_mm.0": "fusion_projection",
}
_PYRAMID = {"1": "expand", "2": "norm", "3": "reduce", "5": "squeeze"}
_GATE = {"0": "in_proj", "2": "out_proj"}
_PIXEL_DECODER_LAYER = {
    "self_attn": "self_attn",
    "norm1": "self_attn_layer_norm",
    "linear1": "fc1",
    "linear2": "fc2",
    "norm2": "final_layer_norm",
}
_DECODER_LAYER = {
    "transformer_cross_attention_layers": {"multihead_attn": "cross_attn", "norm": "cross_attn_layer_norm"},
    "transformer_self_attention_layers": {"self_attn": "self_attn", "norm": "self_attn_layer_norm"},
    "transformer_ffn_layers": {"linear1": "fc1", "linear2": "fc2", "norm": "final_layer_norm"},
}
_DECODER_SINGLE = {
    "decoder_norm": "transformer_decoder.decoder.layernorm",
    "query_feat": "transformer_decoder.queries_features",
    "query_embed": "transformer_decoder.queries_embedder",
    "level_embed": "transformer_decoder.level_embed",
    "class_embed": "class_predictor",
}


def _squeeze_pointwise(tensor: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution's weight `(out, in, 1[, 1])` as the equivalent `nn.Linear` weight `(out, in)`."""
    return tensor.reshape(tensor.shape[0], tensor.shape[1]) if tensor.dim() > 2 else tensor


def _map_submodule(rest: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return None


def _map_key(key: str, num_stages: int) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] | None:
    """New key(s) and the transform of the tensor for one released key; `None` when the key is unknown."""
    keep = lambda t: t  # noqa: E731
    if key == "lang_proj.weight" or key == "lang_proj.bias":
        return [("text_projection." + key.split(".")[-1], keep)]
    if key.startswith("image_model."):
        return _map_image_key(key[len("image_model.") :], num_stages)
    if key.startswith("language_model."):
        return _map_language_key(key[len("language_model.") :])
    if key.startswith("classifier.pixel_decoder."):
        return _map_pixel_decoder_key(key[len("classifier.pixel_decoder.") :])
    if key.startswith("classifier.predictor."):
        return _map_predictor_key(key[len("classifier.predictor.") :])
    return None


def _map_image_key(key: str, num_stages: int):
    keep = lambda t: t  # noqa: E731
    if key.startswith("patch_embed."):
        return [("model.image_encoder." + key, keep)]
    match = re.match(r"layers\.(\d+)\.(.+)$", key)
    if not match:
        return None
    stage, rest = int(match.group(1)), match.group(2)
    if rest.startswith("blocks."):
        return [(f"model.image_encoder.layers.{stage}.{rest}", keep)]
    if rest.startswith("downsample."):  # released: end of stage k; timm: start of stage k + 1
        return [(f"model.image_encoder.layers.{stage + 1}.{rest}", keep)]
    fusion = f"model.image_fusions.{stage}"
    if rest.startswith("fusion."):
        new = _map_submodule(rest[len("fusion.") :], _PIXEL_WORD_ATTENTION)
        return [(f"{fusion}.pixel_word_attention.{new}", _squeeze_pointwise)] if new else None
    if rest.startswith("res_gate."):
        index, name = rest[len("res_gate.") :].split(".", 1)
        return [(f"{fusion}.gate.{_GATE[index]}.{name}", keep)] if index in _GATE else None
    match = re.match(r"pyramids\.(\d+)\.(\d+)\.(.+)$", rest)
    if match and match.group(2) in _PYRAMID:
        return [(f"{fusion}.pyramid.{match.group(1)}.{_PYRAMID[match.group(2)]}.{match.group(3)}", _squeeze_pointwise)]
    match = re.match(r"fusions\.(\d+)\.(.+)$", rest)
    if match:
        new = _map_submodule(match.group(2), _PIXEL_WORD_ATTENTION)
        return [(f"{fusion}.pyramid.{match.group(1)}.pixel_word_attention.{new}", _squeeze_pointwise)] if new else None
    if rest.startswith("mixer."):
        return [(f"{fusion}.{rest}", keep)]
    return None


def _map_language_key(key: str):
    keep = lambda t: t  # noqa: E731
    if key.startswith(("embeddings.", "encoder.")):
        return [("model.text_encoder." + key, keep)]
    match = re.match(r"pwams\.(\d+)\.(.+)$", key)
    if match:
        new = _map_submodule(match.group(2), _PIXEL_WORD_ATTENTION)
        if new is None or new.startswith(("query_norm", "output_norm")):
            return None
        return [(f"model.language_fusions.{match.group(1)}.word_pixel_attention.{new}", _squeeze_pointwise)]
    match = re.match(r"res_gates\.(\d+)\.(\d+)\.(.+)$", key)
    if match and match.group(2) in _GATE:
        return [(f"model.language_fusions.{match.group(1)}.gate.{_GATE[match.group(2)]}.{match.group(3)}", keep)]
    return None


def _map_pixel_decoder_key(key: str):
    keep = lambda t: t  # noqa: E731
    if key.startswith("input_proj."):
        return [("model.pixel_decoder.input_projections." + key[len("input_proj.") :], keep)]
    if key == "transformer.level_embed":
        return [("model.pixel_decoder.level_embed", keep)]
    if key.startswith("mask_features."):
        return [("model.pixel_decoder.mask_projection." + key[len("mask_features.") :], keep)]
    match = re.match(r"transformer\.encoder\.layers\.(\d+)\.(.+)$", key)
    if match:
        new = _map_submodule(match.group(2), _PIXEL_DECODER_LAYER)
        return [(f"model.pixel_decoder.layers.{match.group(1)}.{new}", keep)] if new else None
    return None


def _split_in_projection(name: str):
    """nn.MultiheadAttention's packed q/k/v projection as transformers' separate q_proj/k_proj/v_proj."""
    parameter = "weight" if name == "in_proj_weight" else "bias"
    return lambda prefix: [
        (f"{prefix}.{projection}.{parameter}", lambda t, i=i: t.chunk(3, dim=0)[i].clone())
        for i, projection in enumerate(("q_proj", "k_proj", "v_proj"))
    ]


def _map_predictor_key(key: str):
    keep = lambda t: t  # noqa: E731
    match = re.match(r"(transformer_\w+_layers)\.(\d+)\.(.+)$", key)
    if match and match.group(1) in _DECODER_LAYER:
        kind, layer, rest = match.groups()
        prefix = f"model.transformer_decoder.decoder.layers.{layer}"
        if kind == "transformer_self_attention_layers" and rest in ("self_attn.in_proj_weight", "self_attn.in_proj_bias"):
            return _split_in_projection(rest.split(".")[-1])(f"{prefix}.self_attn")
        new = _map_submodule(rest, _DECODER_LAYER[kind])
        return [(f"{prefix}.{new}", keep)] if new else None
    match = re.match(r"mask_embed\.layers\.(\d+)\.(weight|bias)$", key)
    if match:
        return [(f"model.transformer_decoder.decoder.mask_predictor.mask_embedder.{match.group(1)}.0.{match.group(2)}", keep)]
    for old, new in _DECODER_SINGLE.items():
        if key.startswith(old + "."):
            return [(f"model.{new}{key[len(old):]}", keep)]
    return None


def _is_dropped(key: str, num_stages: int) -> bool:
    if any(re.match(pattern, key) for pattern in DROPPED_KEY_PATTERNS):
        return True
    return _last_stage_gate(key, num_stages)


def is_training_only(key: str) -> bool:
    """A magnet_hf key that no release carries (the Mask Grounding head, never published): left out of converted
    folders, and initialised by `from_pretrained` without a warning."""
    from ..modeling_magnet import MagNetForReferringSegmentation

    return any(re.search(pattern, key) for pattern in MagNetForReferringSegmentation._keys_to_ignore_on_load_missing)


def _last_stage_gate(key: str, num_stages: int) -> bool:
    return re.match(rf"^image_model\.layers\.{num_stages - 1}\.res_gate\.", key) is not None


def convert_state_dict(
    official: dict[str, torch.Tensor], expected_shapes: dict[str, tuple[int, ...]], num_stages: int = 4
) -> dict[str, torch.Tensor]:
    """
    Maps a released state dict onto magnet_hf names. `expected_shapes` are the target model's parameter shapes; its
    training-only keys ([`is_training_only`]) are not looked for. Raises [`ConversionError`] listing missing,
    unexpected and mis-shaped keys if the checkpoint does not fit.
    """
    converted: dict[str, torch.Tensor] = {}
    source_of: dict[str, str] = {}
    unexpected: list[str] = []
    for key, tensor in official.items():
        if _is_dropped(key, num_stages):
            continue
        targets = _map_key(key, num_stages)
        if targets is None or any(new_key not in expected_shapes for new_key, _ in targets):
            unexpected.append(key)
            continue
        for new_key, transform in targets:
            converted[new_key] = transform(tensor)
            source_of[new_key] = key
    missing = sorted(key for key in set(expected_shapes) - set(converted) if not is_training_only(key))
    mis_shaped = sorted(
        f"{source_of[k]} -> {k}: checkpoint {tuple(converted[k].shape)}, model {tuple(expected_shapes[k])}"
        for k in converted
        if tuple(converted[k].shape) != tuple(expected_shapes[k])
    )
    if missing or unexpected or mis_shaped:
        raise ConversionError(_mismatch_report(missing, unexpected, mis_shaped))
    return converted


def _mismatch_report(missing: list[str], unexpected: list[str], mis_shaped: list[str], shown: int = 10) -> str:
    lines = ["The checkpoint does not match the MagNet architecture (is it a MagNet checkpoint, and the right config?)."]
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if keys:
            lines.append(f"  {len(keys)} {title}: " + "; ".join(keys[:shown]) + (" ..." if len(keys) > shown else ""))
    return "\n".join(lines)


OFFICIAL_BUILD_KEYS = (
    "embed_dim", "depths", "heads", "window", "text_dim", "bert_layers", "bert_heads", "bert_inter", "vocab",
    "hidden", "enc_layers", "dec_layers", "nheads", "ffn",
)
MAGNET_BASE_BUILD_ARGUMENTS = {
    "embed_dim": 128, "depths": [2, 2, 18, 2], "heads": [4, 8, 16, 32], "window": 12, "text_dim": 768,
    "bert_layers": 12, "bert_heads": 12, "bert_inter": 3072, "vocab": 30522, "hidden": 256, "enc_layers": 4,
    "dec_layers": 10, "nheads": 8, "ffn": 2048,
}


def config_from_official(build_arguments: dict, max_position_embeddings: int = 512, image_size: int = 480) -> MagNetConfig:
    """A [`MagNetConfig`] from the released builder's arguments (schema of `official_config.json`)."""
    from transformers import BertConfig

    from ..configuration_magnet import MagNetConfig

    missing = [key for key in OFFICIAL_BUILD_KEYS if key not in build_arguments]
    if missing:
        raise ConversionError(f"official_build_arguments lacks {missing}.")
    bad = {
        key: build_arguments[key] for key in OFFICIAL_BUILD_KEYS
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                   for v in (build_arguments[key] if isinstance(build_arguments[key], list) else [build_arguments[key]]))
    }
    if bad:
        raise ConversionError(f"official_build_arguments must be positive integers; got {bad}.")
    layers = build_arguments["bert_layers"]
    if layers % 4:
        raise ConversionError(f"bert_layers={layers} cannot be cut into four equal fusion stages.")
    if build_arguments["dec_layers"] < 2:
        raise ConversionError("dec_layers must be at least 2 (the released builder makes dec_layers - 1 layers).")
    try:
        text_config = BertConfig(
            vocab_size=build_arguments["vocab"],
            hidden_size=build_arguments["text_dim"],
            num_hidden_layers=layers,
            num_attention_heads=build_arguments["bert_heads"],
            intermediate_size=build_arguments["bert_inter"],
            max_position_embeddings=max_position_embeddings,
            layer_norm_eps=1e-12,
        )
        return MagNetConfig(
            text_config=text_config,
            image_size=image_size,
            embed_dim=build_arguments["embed_dim"],
            depths=build_arguments["depths"],
            num_heads=build_arguments["heads"],
            window_size=build_arguments["window"],
            text_stage_end_layers=[layers // 4 * (i + 1) for i in range(4)],
            decoder_hidden_size=build_arguments["hidden"],
            pixel_decoder_layers=build_arguments["enc_layers"],
            pixel_decoder_num_heads=build_arguments["nheads"],
            pixel_decoder_feedforward_size=1024,  # fixed in every released config
            decoder_layers=build_arguments["dec_layers"] - 1,
            decoder_num_heads=build_arguments["nheads"],
            decoder_feedforward_size=build_arguments["ffn"],
        )
    except Exception as error:  # transformers' strict config dataclasses raise their own types too
        raise ConversionError(f"The official build arguments describe an impossible model: {error}") from None


def read_official_config(path: str | Path | None) -> dict:
    """The `official_build_arguments` of an official-config JSON; MagNet-B's when `path` is `None`."""
    if path is None:
        return dict(MAGNET_BASE_BUILD_ARGUMENTS)
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"Official config {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(f"Official config {path} is not readable JSON: {error}") from error
    if not isinstance(content, dict) or not isinstance(content.get("official_build_arguments"), dict):
        raise ConversionError(f"Official config {path} has no 'official_build_arguments' object.")
    return content["official_build_arguments"]


def load_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a released `.pth` (weights under `"model"`, loaded with `weights_only=True`) or a `.safetensors` file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Checkpoint {path} does not exist or is not a file.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise ConversionError(f"{path} is not a readable safetensors file: {error}") from error
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or unsafe pickles
        raise ConversionError(
            f"{path} could not be read as a PyTorch checkpoint with weights_only=True ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})."
        ) from error
    if isinstance(content, dict) and isinstance(content.get("model"), dict):
        content = content["model"]
    if not isinstance(content, dict) or not content or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise ConversionError(f"{path} holds no state dict (expected tensors, or a dict with them under 'model').")
    return content


def _check_weight_values(state_dict: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], source) -> None:
    """Refuses NaN/inf weights and integer tensors where the model has floating-point ones: `load_state_dict` would
    cast them silently, giving a model that loads and predicts nonsense."""
    import torch

    not_float = sorted(
        key for key, value in state_dict.items()
        if key in reference and reference[key].is_floating_point() and not value.is_floating_point()
    )
    if not_float:
        raise ConversionError(
            f"{source}: {len(not_float)} weight(s) are stored as integers where the model has floating-point "
            f"parameters (first: {not_float[:3]}, {state_dict[not_float[0]].dtype}); this is not a trained checkpoint."
        )
    non_finite = sorted(
        key for key, value in state_dict.items() if value.is_floating_point() and not bool(torch.isfinite(value).all())
    )
    if non_finite:
        raise ConversionError(f"{source}: {len(non_finite)} weight(s) hold NaN or infinite values (first: {non_finite[:3]}).")


def convert_official_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    official_config: str | Path | None = None,
    tokenizer: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """
    Converts a released checkpoint into a `save_pretrained` folder (safetensors + config, and processor files when a
    `tokenizer` folder or Hub id is given). The folder is written next to `output_dir` and renamed into place only
    when complete; an existing `output_dir` is refused unless `overwrite`. Returns the output path.
    """
    import torch

    from ..modeling_magnet import MagNetForReferringSegmentation

    flag = "overwrite=True (--overwrite)"
    output_dir = refuse_existing_output(output_dir, overwrite, error=ConversionError, flag=flag)
    inputs = {"--checkpoint": checkpoint, "--official-config": official_config, "--tokenizer": tokenizer}
    refuse_replacing_inputs(output_dir, inputs, error=ConversionError)
    checkpoint_file = resolve_checkpoint(checkpoint)
    official = load_official_checkpoint(checkpoint_file)
    build_arguments = read_official_config(official_config)
    position_table = official.get("language_model.embeddings.position_embeddings.weight")
    config = config_from_official(
        build_arguments, max_position_embeddings=position_table.shape[0] if position_table is not None else 512
    )
    with torch.device("meta"):
        reference = MagNetForReferringSegmentation(config).state_dict()
    expected = {k: tuple(v.shape) for k, v in reference.items()}
    state_dict = convert_state_dict(official, expected, num_stages=len(config.depths))
    _check_weight_values(state_dict, reference, checkpoint)

    processor = _build_processor(tokenizer, config) if tokenizer is not None else None
    model = MagNetForReferringSegmentation(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if unexpected or not all(is_training_only(key) for key in missing):  # convert_state_dict has checked both
        raise ConversionError(_mismatch_report(sorted(missing), sorted(unexpected), []))
    model.eval()
    released = {key: value for key, value in model.state_dict().items() if not is_training_only(key)}

    with replacing_directory(output_dir) as staging:
        model.save_pretrained(staging, state_dict=released)
        if processor is not None:
            processor.save_pretrained(staging)
        (staging / "README.md").write_text(converted_model_card(checkpoint_file, official_config is not None))
    return output_dir


def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """
    The local file of `checkpoint`: a path, or a Hub file reference `owner/name:file` (`owner/name@revision:file`),
    e.g. `yxchng/magnet_weights:magnet_refcoco.pth`, downloaded with `huggingface_hub` into its cache (offline, the
    cached copy is used).
    """
    path = Path(checkpoint).expanduser()
    match = _HUB_FILE_REFERENCE.match(str(checkpoint))
    if path.exists() or match is None:
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(match["repo"], match["filename"], revision=match["revision"]))
    except LocalEntryNotFoundError:
        raise ConversionError(
            f"{checkpoint} is neither a local file nor in the Hub cache, and the Hub cannot be reached; download "
            f"{match['filename']} and pass its path to --checkpoint."
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise ConversionError(f"Could not download {checkpoint} from the Hub: {str(error).splitlines()[0]}") from None


def converted_model_card(checkpoint_file: Path, reduced_architecture: bool = False) -> str:
    """The card of a converted folder: the released checkpoint's own card when the file is one of the release's,
    otherwise a short card naming the source file and the licence of the released weights."""
    from .model_cards import RELEASED_CHECKPOINTS, released_checkpoint_card

    for released in RELEASED_CHECKPOINTS:
        if checkpoint_file.name == released.weight_file and not reduced_architecture:
            return released_checkpoint_card(released)
    return (
        "---\nlibrary_name: transformers\npipeline_tag: image-segmentation\ntags:\n- referring-image-segmentation\n"
        "- magnet\n---\n\n"
        f"# MagNet converted from `{checkpoint_file.name}`\n\n"
        "MagNet (Mask Grounding for Referring Image Segmentation, CVPR 2024) converted to a transformers folder by "
        "`magnet-hf convert`. Weights converted from the released checkpoints keep the licence under which they were "
        "published (the release is AGPL-3.0).\n"
    )


def _build_processor(tokenizer: str | Path, config: MagNetConfig):
    from transformers import BertTokenizer

    from ..image_processing_magnet import MagNetImageProcessorPil
    from ..processing_magnet import MagNetProcessor

    try:
        loaded = BertTokenizer.from_pretrained(str(tokenizer))  # MagNet's language stream is always BERT
    except Exception as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConversionError(
            f"Could not load the tokenizer {str(tokenizer)!r} ({first_line}). Offline, it must be in the Hub cache; "
            "otherwise pass --tokenizer with a local BERT tokenizer folder, or --no-processor to write the model only."
        ) from None
    # The PIL backend is the released evaluation transform, bit for bit; the processor saves it as its backend.
    image_processor = MagNetImageProcessorPil(size={"height": config.image_size, "width": config.image_size})
    return MagNetProcessor(image_processor=image_processor, tokenizer=loaded)
