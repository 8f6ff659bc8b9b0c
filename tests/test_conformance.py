"""MagNet under the installed transformers version's own common tests.

`ModelTesterMixin` runs on both model classes, `ConfigTester` on the config and `ImageProcessingTestMixin` on both
image-processor backends, exactly as transformers runs them on its own models; they come from the sdist of the
installed version (see `transformers_suite.py`), downloaded into a cache at test time. A common test is overridden
only where it cannot apply to MagNet, each with its reason.
"""

from __future__ import annotations

import unittest

import pytest
import torch

from transformers_suite import SuiteUnavailable, load

try:
    modeling_common = load("test_modeling_common")
    configuration_common = load("test_configuration_common")
    image_processing_common = load("test_image_processing_common")
    processing_common = load("test_processing_common")
except SuiteUnavailable as error:
    pytest.skip(str(error), allow_module_level=True)

from magnet_hf import (  # noqa: E402
    MagNetConfig,
    MagNetForReferringSegmentation,
    MagNetImageProcessor,
    MagNetImageProcessorPil,
    MagNetModel,
    MagNetProcessor,
    demo_model_path,
)

from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES  # noqa: E402

ModelTesterMixin = modeling_common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
ImageProcessingTestMixin = image_processing_common.ImageProcessingTestMixin
ImageProcessingTester = image_processing_common.ImageProcessingTester
ProcessorTesterMixin = processing_common.ProcessorTesterMixin
floats_tensor, ids_tensor = modeling_common.floats_tensor, modeling_common.ids_tensor


class MagNetModelTester:
    """The smallest MagNet that keeps every part: four fusion stages (so four BERT layers), a shifted Swin block, one
    deformable layer and two masked-attention layers."""

    def __init__(self, parent, batch_size=2, image_size=64, seq_length=7, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.vocab_size = 99
        self.hidden_size = 32  # the text encoder's width: hidden_states follow BERT's layout
        self.num_hidden_layers = 4
        self.num_attention_heads = 2
        self.num_channels = 3

    def get_config(self) -> MagNetConfig:
        return MagNetConfig(
            text_config={
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "num_hidden_layers": self.num_hidden_layers,
                "num_attention_heads": self.num_attention_heads,
                "intermediate_size": 37,
                "max_position_embeddings": 32,
                "hidden_dropout_prob": 0.0,
                "attention_probs_dropout_prob": 0.0,
            },
            image_size=self.image_size,
            embed_dim=8,
            depths=[1, 2, 1, 1],
            num_heads=[1, 2, 2, 4],
            window_size=4,
            drop_path_rate=0.0,
            text_stage_end_layers=[1, 2, 3, 4],
            fusion_pool_sizes=[1, 2],
            decoder_hidden_size=32,
            pixel_decoder_layers=1,
            pixel_decoder_num_heads=4,
            pixel_decoder_num_points=2,
            pixel_decoder_feedforward_size=64,
            decoder_layers=2,
            decoder_num_heads=4,
            decoder_feedforward_size=64,
            mask_grounding_hidden_size=32,
            mask_grounding_layers=1,
            mask_grounding_num_heads=4,
            alignment_max_pixels=32,
        )

    # output_hidden_states adds four fields: hidden_states, image_hidden_states, fused_features, text_features.
    num_hidden_states_types = 4

    @property
    def expected_num_hidden_layers(self) -> int:
        return self.num_hidden_layers + 1  # the embeddings, then every BERT layer

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = torch.ones(self.batch_size, self.seq_length, dtype=torch.long)
        attention_mask[0, -2:] = 0  # some padding
        input_ids[0, -2:] = 0
        return self.get_config(), pixel_values, input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


class MagNetModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MagNetModel, MagNetForReferringSegmentation)
    # `attentions` are BERT's self-attention maps (the text encoder's layers, one per `num_hidden_layers`), returned
    # under eager attention as in BERT; Swin, fusion and decoder attentions are not returned (README, "Conformance").
    has_attentions = True
    # Inputs besides `pixel_values` that the mixin's eager-vs-SDPA test must pass (its hook for two-input models).
    additional_model_inputs = ["input_ids"]
    # A composite model: MagNetConfig holds BERT's config as its `text_config` sub-config.
    _is_composite = True

    @classmethod
    def setUpClass(cls):
        # The mixin recognises base models (which have no loss) by transformers' static table of model names;
        # `AutoModel.register` records MagNet in the Auto mapping only, so it is added to that table while these
        # tests run, which is where a model inside transformers would be.
        super().setUpClass()
        cls._added_to_model_names = "magnet" not in MODEL_MAPPING_NAMES
        MODEL_MAPPING_NAMES.setdefault("magnet", "MagNetModel")

    @classmethod
    def tearDownClass(cls):
        if cls._added_to_model_names:
            MODEL_MAPPING_NAMES.pop("magnet", None)
        super().tearDownClass()

    def setUp(self):
        self.model_tester = MagNetModelTester(self)
        self.config_tester = ConfigTester(self, config_class=MagNetConfig, has_text_modality=False)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is MagNetForReferringSegmentation:
            size = self.model_tester.image_size
            labels = torch.zeros(self.model_tester.batch_size, size, size)
            labels[:, size // 4 : size // 2, size // 4 : 3 * size // 4] = 1
            inputs_dict["labels"] = labels
            # A masked sentence too, so that training runs the Mask Grounding head and every parameter gets a gradient.
            input_ids = inputs_dict["input_ids"]
            masked = torch.zeros_like(input_ids, dtype=torch.bool)
            masked[:, 1:3] = True
            inputs_dict["masked_input_ids"] = input_ids.masked_fill(masked, 3)
            inputs_dict["mlm_labels"] = input_ids.masked_fill(~masked, -100)
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_num_layers_is_small(self):
        # Reason: four fusion stages need at least four BERT layers (transformers' exceptional_num_hidden_layers
        # case); everything else is as small as the mixin asks.
        self.assertLessEqual(self.model_tester.num_hidden_layers, 4)
        self.assertEqual(self.model_tester.get_config().text_stage_end_layers, [1, 2, 3, 4])


class MagNetImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent, **kwargs):
        kwargs.setdefault("size", {"height": 48, "width": 48})
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self):
        # transformers finds its own models' classes by the test file's folder name; MagNet's are given here.
        return {"torchvision": MagNetImageProcessor, "pil": MagNetImageProcessorPil}


class MagNetImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = MagNetImageProcessingTester


class MagNetProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = MagNetProcessor

    @classmethod
    def _setup_tokenizer(cls):
        from transformers import AutoTokenizer

        # A small BERT WordPiece tokenizer (the demo model's), offline; MagNet's language stream is always BERT.
        return AutoTokenizer.from_pretrained(demo_model_path())

    @classmethod
    def _setup_image_processor(cls):
        # The default backend, which AutoImageProcessor reloads (the PIL one is ImageProcessingTestMixin's too).
        return MagNetImageProcessor(size={"height": 48, "width": 48})
