# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Model cards of the released MagNet checkpoints after conversion (the files in the repository's `model_cards/`).

The published numbers are the authors' (paper and release README; oIoU in %). Their `model-index` entries carry
`metric_config: published` so that numbers measured later with `scripts/evaluate.py --update-model-card`
(`metric_config: released` or `original`) sit beside them instead of replacing them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import refuse_existing_output, write_text_atomically

PAPER_URL = "https://arxiv.org/abs/2312.12198"
RELEASE_WEIGHTS_REPO = "yxchng/magnet_weights"
_METRIC_NAMES = {"overall_iou": "oIoU", "mean_iou": "mIoU"}

#: The authors' published overall IoU (%) of MagNet, per (dataset, split).
PUBLISHED_OIOU: dict[tuple[str, str], float] = {
    ("refcoco", "val"): 75.24,
    ("refcoco", "testA"): 78.24,
    ("refcoco", "testB"): 71.05,
    ("refcoco+", "val"): 66.16,
    ("refcoco+", "testA"): 71.32,
    ("refcoco+", "testB"): 58.14,
    ("refcocog_umd", "val"): 65.36,
    ("refcocog_umd", "test"): 66.03,
    ("refcocog_google", "val"): 63.13,
}
_DATASET_NAMES = {
    "refcoco": "RefCOCO (UNC)",
    "refcoco+": "RefCOCO+ (UNC)",
    "refcocog_umd": "RefCOCOg (UMD)",
    "refcocog_google": "RefCOCOg (Google)",
}
_PREPARE_ARGUMENTS = {
    "refcoco": ("refcoco", "unc"),
    "refcoco+": ("refcoco+", "unc"),
    "refcocog_umd": ("refcocog", "umd"),
    "refcocog_google": ("refcocog", "google"),
}


@dataclass(frozen=True)
class ReleasedCheckpoint:
    """One released weight file and the datasets whose published numbers it stands for."""

    name: str  # card and converted-folder name
    weight_file: str
    datasets: tuple[str, ...]  # keys of PUBLISHED_OIOU's first element; empty: no published number of its own


RELEASED_CHECKPOINTS: tuple[ReleasedCheckpoint, ...] = (
    ReleasedCheckpoint("magnet-refcoco", "magnet_refcoco.pth", ("refcoco",)),
    ReleasedCheckpoint("magnet-refcoco+", "magnet_refcoco+.pth", ("refcoco+",)),
    ReleasedCheckpoint("magnet-refcocog-umd", "magnet_refcocog_umd.pth", ("refcocog_umd",)),
    ReleasedCheckpoint("magnet-refcocog-google", "magnet_refcocog_google.pth", ("refcocog_google",)),
    ReleasedCheckpoint("magnet-all", "magnet_all.pth", ()),
)


def _model_index(checkpoint: ReleasedCheckpoint) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    results = [
        EvalResult(
            task_type="image-segmentation",
            task_name="Referring image segmentation",
            dataset_type=dataset,
            dataset_name=_DATASET_NAMES[dataset],
            dataset_split=split,
            metric_type="overall_iou",
            metric_name="oIoU",
            metric_config="published",
            metric_value=value,
            verified=False,
            source_name="MagNet paper (CVPR 2024) and release README",
            source_url=PAPER_URL,
        )
        for (dataset, split), value in PUBLISHED_OIOU.items()
        if dataset in checkpoint.datasets
    ]
    data = ModelCardData(
        license="agpl-3.0",
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=["referring-image-segmentation", "magnet", "custom_code"],
        model_name=checkpoint.name,
        eval_results=results or None,
    )
    return data.to_yaml()


def _published_table() -> str:
    header = "| " + " | ".join(f"{_DATASET_NAMES[d]} {s}" for d, s in PUBLISHED_OIOU) + " |"
    rule = "|" + "---|" * len(PUBLISHED_OIOU)
    values = "| " + " | ".join(f"{v:.2f}" for v in PUBLISHED_OIOU.values()) + " |"
    return "\n".join([header, rule, values])


def released_checkpoint_card(checkpoint: ReleasedCheckpoint) -> str:
    """The model card (`README.md`) of a converted released checkpoint."""
    if checkpoint.datasets:
        dataset = checkpoint.datasets[0]
        columns = ", ".join(f"{s} {PUBLISHED_OIOU[(d, s)]:.2f}" for d, s in PUBLISHED_OIOU if d == dataset)
        published = (
            f"The authors publish, for MagNet on {_DATASET_NAMES[dataset]}, an overall IoU of {columns} (%). The "
            f"release does not say in so many words which weight file produced which column; `{checkpoint.weight_file}` "
            "is the file named after this dataset. These numbers are in the `model-index` above with "
            "`metric_config: published`; reproduce them with the commands below before quoting them for this upload."
        )
        dataset_name, (prepare_dataset, split_by) = dataset, _PREPARE_ARGUMENTS[dataset]
        splits = [s for d, s in PUBLISHED_OIOU if d == dataset]
    else:
        published = (
            f"`{checkpoint.weight_file}` was released without a number of its own (the published table, below, is "
            "per dataset); evaluate it on the split you care about with the commands below."
        )
        dataset_name, prepare_dataset, split_by, splits = "refcoco", "refcoco", "unc", ["val"]
    evaluate_lines = "\n".join(
        f"python scripts/evaluate.py --model converted/{checkpoint.name} --dataset data/{dataset_name} "
        f"--split {split} --output results/{checkpoint.name}_{split}.json --update-model-card"
        for split in splits
    )
    return f"""---
{_model_index(checkpoint).strip()}
---

# {checkpoint.name}

MagNet ("Mask Grounding for Referring Image Segmentation", Chng et al., CVPR 2024, [{PAPER_URL}]({PAPER_URL})):
an image and a free-form expression give the mask of the object the expression refers to. These are the authors'
released weights `{checkpoint.weight_file}` (Hub repository `{RELEASE_WEIGHTS_REPO}`), converted to a `transformers`
model by magnet_hf with `scripts/convert_official_checkpoint.py`; the converted network
reproduces the released one (mask logits within 1.4e-4 in float32 on the parity fixtures).

**Architecture**: MagNet-B, Swin-B (window 12) image encoder at 480x480, BERT-base (`bert-base-uncased` tokenizer,
expressions cut and padded to 20 tokens as in the release), fusion after each of four stages, Mask2Former pixel and
one-query transformer decoders; 297 M parameters.

## Licence

The weights are the authors' work, published under **AGPL-3.0** with their code; this converted copy keeps that
licence. magnet_hf's code (the `*_magnet.py` files here) is Apache-2.0.

## Use

```python
from transformers import pipeline

segmenter = pipeline(model="OWNER/{checkpoint.name}", trust_remote_code=True)
results = segmenter("street.jpg", text=["the man in the red shirt", "the bus on the left"])
results[0]["mask"]  # PIL "L" image (0/255) at the image's size; results[0]["score"], results[0]["label"]
```

or, with magnet_hf installed, `magnet-hf segment --image street.jpg --text "the bus on the left" --model OWNER/{checkpoint.name} --output out/`.

## Published results

{published}

The MagNet row of the authors' table (oIoU, %):

{_published_table()}

## Reproducing the evaluation

Every sentence of every referred object is one sample; oIoU = total intersection / total union, scored at 480x480
against nearest-resized ground truth (the released protocol).

```bash
python scripts/convert_official_checkpoint.py --checkpoint {checkpoint.weight_file} --tokenizer bert-base-uncased \\
    --output converted/{checkpoint.name}
python scripts/prepare_refcoco.py --dataset {prepare_dataset} --split-by {split_by} --refer-root data/refer \\
    --coco-images data/coco/train2014 --output data/{dataset_name}
{evaluate_lines}
```

`--update-model-card` records the measured numbers in this card's `model-index` (`metric_config: released`).

## Limitations

Trained on RefCOCO-family expressions over COCO images: English, short expressions (20 tokens at most, longer ones are
cut), everyday objects. One mask per expression; an expression that names nothing still yields a mask.

## Citation

```bibtex
@inproceedings{{chng2024mask,
  title={{Mask Grounding for Referring Image Segmentation}},
  author={{Chng, Yong Xien and Zheng, Henry and Han, Yizeng and Qiu, Xuchong and Huang, Gao}},
  booktitle={{CVPR}},
  year={{2024}}
}}
```
"""


class ModelCardError(ValueError):
    """Bad input to the card tools (missing template or results file, malformed JSON, existing output)."""


def card_from_evaluations(
    template: str | os.PathLike,
    results_files: list[str | os.PathLike],
    output: str | os.PathLike,
    *,
    replacements: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """
    Writes a model card from `template` (e.g. `model_cards/magnet-trained.md`) with the metrics of evaluation JSON
    files (as `scripts/evaluate.py --output` writes them) in its `model-index` metadata.

    Args:
        template: card text with `<placeholder>`s.
        results_files: evaluation JSON files; each adds (or replaces) its dataset/split/resolution entries.
        output: the card file to write (atomically; an existing one is refused unless `overwrite`).
        replacements: `{"<model-name>": "magnet-refcoco-ft", ...}` applied to the template text.
    """
    from huggingface_hub import ModelCard

    template, output = Path(template), Path(output)
    if not template.is_file():
        raise ModelCardError(f"Card template {str(template)!r} does not exist.")
    refuse_existing_output(output, overwrite, error=ModelCardError, flag="overwrite=True")
    if not output.parent.is_dir():
        raise ModelCardError(f"The folder of {output} does not exist.")
    if not results_files:
        raise ModelCardError("No evaluation results were given.")
    results = []
    for path in map(Path, results_files):
        try:
            data = json.loads(path.read_text())
            results.append((data["dataset"], data["split"], data["resolution"], dict(data["metrics"])))
        except FileNotFoundError:
            raise ModelCardError(f"Evaluation results {str(path)!r} do not exist.") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ModelCardError(
                f"{path} is not an evaluation JSON of scripts/evaluate.py (needs dataset, split, resolution, "
                f"metrics): {error}"
            ) from None
    text = template.read_text()
    for placeholder, value in (replacements or {}).items():
        text = text.replace(placeholder, value)
    card = ModelCard(text)
    if not card.data.model_name:  # a model-index needs one
        card.data.model_name = (replacements or {}).get("<model-name>") or output.parent.resolve().name
    for dataset, split, resolution, metrics in results:
        add_evaluation_results(card, metrics, dataset=dataset, split=split, resolution=resolution)
    return write_text_atomically(output, str(card))


def add_evaluation_results(
    card: Any, metrics: dict[str, Any], *, dataset: str, split: str, resolution: str, dataset_name: str | None = None
) -> Any:
    """Records `metrics` (fractions, as `evaluate_referring_segmentation` returns them) in the `model-index` of the
    `huggingface_hub.ModelCard` `card`, as percentages.

    An entry with the same task, dataset, split, metric and resolution (stored as `metric_config`) is replaced, so
    re-running an evaluation never duplicates it.
    """
    from huggingface_hub import EvalResult

    new = [
        EvalResult(
            task_type="image-segmentation",
            task_name="Referring image segmentation",
            dataset_type=dataset,
            dataset_name=dataset_name or dataset,
            dataset_split=split,
            metric_type=key,
            metric_name=_METRIC_NAMES.get(key, key.replace("precision@", "P@")),
            metric_config=resolution,
            metric_value=round(100 * float(value), 2),
        )
        for key, value in metrics.items()
        if key != "num_samples"
    ]

    def identity(result: Any) -> tuple:
        return (result.task_type, result.dataset_type, result.dataset_split, result.metric_type, result.metric_config)

    replaced = {identity(result) for result in new}
    kept = [result for result in (card.data.eval_results or []) if identity(result) not in replaced]
    card.data.eval_results = kept + new
    return card


def update_model_card(
    model_dir: str | os.PathLike,
    metrics: dict[str, Any],
    *,
    dataset: str,
    split: str,
    resolution: str,
    dataset_name: str | None = None,
) -> Path:
    """Records `metrics` in the `model-index` metadata of `model_dir/README.md` ([`add_evaluation_results`]),
    keeping the rest of the card; a minimal card is created when the folder has none."""
    from huggingface_hub import ModelCard, ModelCardData

    path = Path(model_dir) / "README.md"
    if path.is_file():
        card = ModelCard.load(path)
    else:
        data = ModelCardData(library_name="transformers", pipeline_tag="image-segmentation")
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {Path(model_dir).name}\n\nA MagNet referring segmentation model.\n")
    if not card.data.model_name:
        card.data.model_name = Path(model_dir).resolve().name
    add_evaluation_results(card, metrics, dataset=dataset, split=split, resolution=resolution, dataset_name=dataset_name)
    return write_text_atomically(path, str(card))


__all__ = [
    "PUBLISHED_OIOU",
    "RELEASED_CHECKPOINTS",
    "ModelCardError",
    "ReleasedCheckpoint",
    "add_evaluation_results",
    "card_from_evaluations",
    "released_checkpoint_card",
    "update_model_card",
]
