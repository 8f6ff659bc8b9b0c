# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""magnet_hf: MagNet (Mask Grounding for Referring Image Segmentation, CVPR 2024) for Hugging Face transformers.

Importing the package registers MagNet with the Auto classes and the `referring-image-segmentation` pipeline task,
and marks the classes for Hub remote code so that a saved folder loads with `trust_remote_code=True` in a process that
never imports magnet_hf.

The import itself is cheap (no torch, no transformers), so that `magnet-hf --help` answers at once:

- the public names below are resolved on first access (PEP 562 `__getattr__`, as transformers' `_LazyModule` does);
- each registration runs when the transformers module it registers with has been imported (by the user, by
  transformers itself, or already before magnet_hf): AutoConfig when `configuration_auto` loads, AutoModel when
  `modeling_auto` loads, the pipeline task when `transformers.pipelines` loads. transformers' Auto classes all import
  torch, so registering them eagerly would make every command pay for torch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> submodule that defines it.
_LAZY_NAMES: dict[str, str] = {
    "PRESETS": "configuration_magnet",
    "MagNetConfig": "configuration_magnet",
    "DemoModelMissingError": "demo.segmentation",
    "demo_model_path": "demo.segmentation",
    "MagNetImageError": "image_processing_magnet",
    "MagNetImageProcessor": "image_processing_magnet",
    "MagNetImageProcessorPil": "image_processing_magnet",
    "MagNetForReferringSegmentation": "modeling_magnet",
    "MagNetModel": "modeling_magnet",
    "MagNetModelOutput": "modeling_magnet",
    "MagNetPreTrainedModel": "modeling_magnet",
    "MagNetReferringSegmentationOutput": "modeling_magnet",
    "REFERRING_SEGMENTATION_TASK": "pipeline_magnet",
    "MagNetReferringSegmentationPipeline": "pipeline_magnet",
    "MagNetProcessor": "processing_magnet",
}

__all__ = sorted(_LAZY_NAMES)

if TYPE_CHECKING:
    from .configuration_magnet import PRESETS, MagNetConfig
    from .demo.segmentation import DemoModelMissingError, demo_model_path
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


def __getattr__(name: str) -> Any:
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))


# ------------------------------------------------------------------------------------------- registration


def _register_config() -> None:
    from transformers.models.auto.configuration_auto import AutoConfig

    from .configuration_magnet import MagNetConfig

    AutoConfig.register(MagNetConfig.model_type, MagNetConfig, exist_ok=True)


def _register_models() -> None:
    from transformers.models.auto.modeling_auto import AutoModel, AutoModelForImageSegmentation

    from .configuration_magnet import MagNetConfig
    from .modeling_magnet import MagNetForReferringSegmentation, MagNetModel

    AutoModel.register(MagNetConfig, MagNetModel, exist_ok=True)
    AutoModelForImageSegmentation.register(MagNetConfig, MagNetForReferringSegmentation, exist_ok=True)


def _register_image_processor() -> None:
    from transformers.models.auto import image_processing_auto

    from .configuration_magnet import MagNetConfig
    from .image_processing_magnet import MagNetImageProcessor, MagNetImageProcessorPil

    # As transformers 5 names them: the torchvision backend is the default class, `...Pil` the PIL one. Both save
    # the same `image_processor_type`, and AutoImageProcessor picks the backend at load time (torchvision unless
    # `backend="pil"`); MagNetProcessor records its image processor's backend and loads it again.
    image_processing_auto.AutoImageProcessor.register(
        MagNetConfig,
        image_processor_classes={"torchvision": MagNetImageProcessor, "pil": MagNetImageProcessorPil},
        exist_ok=True,
    )


def _register_processor() -> None:
    from transformers.models.auto.processing_auto import AutoProcessor

    from .configuration_magnet import MagNetConfig
    from .processing_magnet import MagNetProcessor

    AutoProcessor.register(MagNetConfig, MagNetProcessor, exist_ok=True)


def _register_pipeline() -> None:
    from transformers.models.auto.modeling_auto import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    from .pipeline_magnet import REFERRING_SEGMENTATION_TASK, MagNetReferringSegmentationPipeline

    # AutoModel gives the inference network; a folder saved from MagNetForReferringSegmentation loads into it too.
    PIPELINE_REGISTRY.register_pipeline(
        REFERRING_SEGMENTATION_TASK,
        pipeline_class=MagNetReferringSegmentationPipeline,
        pt_model=AutoModel,
        type="multimodal",
    )


def _mark_config_for_remote_code() -> None:
    sys.modules[f"{__name__}.configuration_magnet"].MagNetConfig.register_for_auto_class()


def _mark_models_for_remote_code() -> None:
    module = sys.modules[f"{__name__}.modeling_magnet"]
    module.MagNetModel.register_for_auto_class("AutoModel")
    module.MagNetForReferringSegmentation.register_for_auto_class("AutoModelForImageSegmentation")


def _mark_image_processor_for_remote_code() -> None:
    module = sys.modules[f"{__name__}.image_processing_magnet"]
    module.MagNetImageProcessor.register_for_auto_class("AutoImageProcessor")
    module.MagNetImageProcessorPil.register_for_auto_class("AutoImageProcessor")


def _mark_processor_for_remote_code() -> None:
    sys.modules[f"{__name__}.processing_magnet"].MagNetProcessor.register_for_auto_class("AutoProcessor")


#: Module -> what to run once it has been imported completely.
_AFTER_IMPORT: dict[str, Callable[[], None]] = {
    "transformers.models.auto.configuration_auto": _register_config,
    "transformers.models.auto.modeling_auto": _register_models,
    "transformers.models.auto.image_processing_auto": _register_image_processor,
    "transformers.models.auto.processing_auto": _register_processor,
    "transformers.pipelines": _register_pipeline,
    f"{__name__}.configuration_magnet": _mark_config_for_remote_code,
    f"{__name__}.modeling_magnet": _mark_models_for_remote_code,
    f"{__name__}.image_processing_magnet": _mark_image_processor_for_remote_code,
    f"{__name__}.processing_magnet": _mark_processor_for_remote_code,
}
_done: set[str] = set()
_pending: list[str] = []
# Registrations wait until no transformers or magnet_hf module is half-imported: registering imports magnet_hf's
# modules, which import transformers, and transformers' own modules import each other in chains (loading
# configuration_magnet imports modeling_auto, for one); running in the middle of a chain would meet half-initialised
# modules.
_watched_prefixes = ("transformers.", f"{__name__}.")
_loading_depth = 0
_flushing = False


def _flush_pending() -> None:
    global _flushing
    if _flushing or _loading_depth:
        return
    _flushing = True
    try:
        while _pending:
            name = _pending.pop(0)
            if name not in _done:
                _done.add(name)
                _AFTER_IMPORT[name]()
    finally:
        _flushing = False


class _HookedLoader(importlib.abc.Loader):
    """Counts the watched modules being imported and queues the registration of those in `_AFTER_IMPORT`; delegates
    everything else to the module's own loader."""

    def __init__(self, loader: importlib.abc.Loader, name: str):
        self._loader, self._name = loader, name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        global _loading_depth
        _loading_depth += 1
        try:
            self._loader.exec_module(module)
        finally:
            _loading_depth -= 1
        if self._name in _AFTER_IMPORT and self._name not in _done:
            _pending.append(self._name)
        _flush_pending()

    def __getattr__(self, attribute: str) -> Any:  # get_source, get_resource_reader, is_package...
        return getattr(self._loader, attribute)


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Finds transformers' and magnet_hf's modules through the other finders and wraps their loaders."""

    def find_spec(self, fullname, path, target=None):
        if not (fullname == "transformers" or fullname.startswith(_watched_prefixes)):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookedLoader(spec.loader, fullname)
                return spec
        return None


def _install_registration_hooks() -> None:
    if not any(isinstance(finder, _AfterImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImportFinder())
    # Modules imported before magnet_hf (transformers loaded first) register now.
    for name in _AFTER_IMPORT:
        module = sys.modules.get(name)
        if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
            _pending.append(name)
    _flush_pending()


_install_registration_hooks()
