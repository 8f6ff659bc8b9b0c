# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""magnet_hf: MagNet (Mask Grounding for Referring Image Segmentation, CVPR 2024) for Hugging Face transformers.

Importing the package registers MagNet with the Auto classes and the `referring-image-segmentation` pipeline task,
and marks the classes for Hub remote code so that a saved folder loads with `trust_remote_code=True` in a process that
never imports magnet_hf.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageSegmentation,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_magnet import PRESETS, MagNetConfig
from .demo import DemoModelMissingError, demo_model_path
from .image_processing_magnet import MagNetImageError, MagNetImageProcessor, MagNetImageProcessorPil
from .modeling_magnet import (
    MagNetForReferringSegmentation,
    MagNetModel,
    MagNetModelOutput,
    MagNetPreTrainedModel,
    MagNetReferringSegmentationOutput,
)
from .pipeline_magnet import REFERRING_SEGMENTATION_TASK, MagNetReferringSegmentationPipeline
from .processing_magnet import MagNetProcessor

__version__ = "0.1.0"

AutoConfig.register(MagNetConfig.model_type, MagNetConfig, exist_ok=True)
AutoModel.register(MagNetConfig, MagNetModel, exist_ok=True)
AutoModelForImageSegmentation.register(MagNetConfig, MagNetForReferringSegmentation, exist_ok=True)
AutoImageProcessor.register(
    MagNetConfig,
    image_processor_classes={"torchvision": MagNetImageProcessor, "pil": MagNetImageProcessorPil},
    exist_ok=True,
)
AutoProcessor.register(MagNetConfig, MagNetProcessor, exist_ok=True)

MagNetConfig.register_for_auto_class()
MagNetModel.register_for_auto_class("AutoModel")
MagNetForReferringSegmentation.register_for_auto_class("AutoModelForImageSegmentation")
MagNetImageProcessor.register_for_auto_class("AutoImageProcessor")
MagNetImageProcessorPil.register_for_auto_class("AutoImageProcessor")
MagNetProcessor.register_for_auto_class("AutoProcessor")

# AutoModel gives the inference network; a folder saved from MagNetForReferringSegmentation loads into it too.
PIPELINE_REGISTRY.register_pipeline(
    REFERRING_SEGMENTATION_TASK,
    pipeline_class=MagNetReferringSegmentationPipeline,
    pt_model=AutoModel,
    type="multimodal",
)

__all__ = [
    "PRESETS",
    "REFERRING_SEGMENTATION_TASK",
    "DemoModelMissingError",
    "MagNetConfig",
    "MagNetForReferringSegmentation",
    "MagNetImageError",
    "MagNetImageProcessor",
    "MagNetImageProcessorPil",
    "MagNetModel",
    "MagNetModelOutput",
    "MagNetPreTrainedModel",
    "MagNetProcessor",
    "MagNetReferringSegmentationOutput",
    "MagNetReferringSegmentationPipeline",
    "demo_model_path",
]
