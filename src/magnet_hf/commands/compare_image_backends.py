# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Measures how far MagNet's two image-processor backends are apart: pixel values and predicted masks.

    python scripts/compare_image_backends.py [--model FOLDER] [--scenes 8] [--scene-size 320] [--output FILE]

Synthetic scenes drawn at `--scene-size` are resized to the model's input size by `MagNetImageProcessorPil` (PIL's
bilinear filter, the released transform) and by `MagNetImageProcessor` (torchvision's antialiased bilinear filter on
uint8 tensors); the same model segments both. Printed (and written as JSON with `--output`): the largest and mean
absolute pixel-value difference (normalised units and 8-bit levels), the IoU between the two backends' masks
(overall ΣI/ΣU over all pairs, and the lowest per pair) and each backend's overall IoU against the ground truth.
Defaults: the embedded demo model, which is what README "Image processing backends" reports.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence

from .. import exit_status
from .arguments import build_parser, option, parse_dataclasses


@dataclasses.dataclass
class CompareArguments:
    model: str | None = option(None, "model folder (default: the embedded demo model)")
    scenes: int = option(8, minimum=1)
    scene_size: int = option(320, minimum=32)
    output: str | None = option(None, "also write the numbers to this JSON file")
    overwrite: bool = option(False, "replace an existing --output")


def compare(model_folder: str, scenes: int, scene_size: int, expressions_per_scene: int = 3, seed: int = 0) -> dict:
    """The numbers the module docstring lists, for `scenes` synthetic scenes of seed `seed`."""
    import torch

    from ..data.synthetic import generate_scene
    from ..image_processing_magnet import MagNetImageProcessor, MagNetImageProcessorPil
    from ..modeling_magnet import MagNetForReferringSegmentation
    from ..processing_magnet import MagNetProcessor

    model = MagNetForReferringSegmentation.from_pretrained(model_folder).eval()
    processor = MagNetProcessor.from_pretrained(model_folder)
    settings = {k: v for k, v in processor.image_processor.to_dict().items() if k not in ("image_processor_type", "auto_map")}
    backends = {"pil": MagNetImageProcessorPil(**settings), "torchvision": MagNetImageProcessor(**settings)}
    std = torch.tensor(settings["image_std"], dtype=torch.float32).view(1, 3, 1, 1)

    max_difference, max_levels, sum_difference, count = 0.0, 0.0, 0.0, 0
    intersection = union = 0
    per_pair_iou = []
    truth_intersection = {name: 0 for name in backends}
    truth_union = {name: 0 for name in backends}
    for index in range(scenes):
        scene = generate_scene(seed, index, scene_size)
        pairs = [(obj, text) for obj in sorted(scene.expressions) for text in scene.expressions[obj][:1]]
        pairs = pairs[:expressions_per_scene]
        texts = [text for _, text in pairs]
        encoded = processor.encode_text(texts)
        masks, pixels = {}, {}
        for name, image_processor in backends.items():
            pixels[name] = image_processor(scene.image, return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                outputs = model(pixel_values=pixels[name].expand(len(texts), -1, -1, -1), **encoded)
            sizes = [(scene.image.height, scene.image.width)] * len(texts)
            masks[name] = [r["mask"].numpy() for r in image_processor.post_process_referring_segmentation(outputs, sizes)]
        difference = (pixels["pil"] - pixels["torchvision"]).abs()
        max_difference = max(max_difference, float(difference.max()))
        max_levels = max(max_levels, float((difference * std * 255).max()))  # before normalisation, in 8-bit levels
        sum_difference += float(difference.double().sum())
        count += difference.numel()
        for pair, (obj, _) in enumerate(pairs):
            a, b = masks["pil"][pair], masks["torchvision"][pair]
            i, u = int((a & b).sum()), int((a | b).sum())
            intersection, union = intersection + i, union + u
            per_pair_iou.append(i / u if u else 1.0)
            truth = scene.objects[obj].mask.astype(bool)
            for name in backends:
                predicted = masks[name][pair]
                truth_intersection[name] += int((predicted & truth).sum())
                truth_union[name] += int((predicted | truth).sum())
    return {
        "model": str(model_folder),
        "pairs": len(per_pair_iou),
        "scene_size": scene_size,
        "input_size": [settings["size"]["height"], settings["size"]["width"]],
        "pixel_max_abs_difference": max_difference,
        "pixel_max_abs_difference_8bit_levels": max_levels,
        "pixel_mean_abs_difference": sum_difference / count,
        "mask_iou_between_backends_overall": intersection / union if union else 1.0,
        "mask_iou_between_backends_lowest_pair": min(per_pair_iou),
        "overall_iou_vs_ground_truth": {name: truth_intersection[name] / max(truth_union[name], 1) for name in backends},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(CompareArguments, prog="compare_image_backends.py", description=__doc__.split("\n\n")[0])
    (args,) = parse_dataclasses(parser, [CompareArguments], argv)
    from ..files import refuse_existing_output, write_text_atomically

    if args.output is not None:
        try:
            refuse_existing_output(args.output, args.overwrite)
        except FileExistsError as error:
            exit_status.error(error)
            return exit_status.BAD_INPUT
    if args.model is None:
        from ..demo.segmentation import demo_model_path

        args.model = str(demo_model_path())
    text = json.dumps(compare(args.model, args.scenes, args.scene_size), indent=2)
    print(text)
    if args.output is not None:
        write_text_atomically(args.output, text + "\n")
    return exit_status.OK


if __name__ == "__main__":
    sys.exit(main())
