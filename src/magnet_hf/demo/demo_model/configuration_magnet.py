# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""MagNet model configuration."""

from __future__ import annotations

import math

from transformers import BertConfig, PreTrainedConfig


#: `separate`: segmentation on the unmasked sentence plus a second fused pass on the masked one; `shared`: one pass
#: on the masked sentence serves both.
MASK_GROUNDING_MODES = ("separate", "shared")
MASK_GROUNDING_MASK_TOKENS = ("concatenate", "add")
MASK_GROUNDING_VISUAL_NORMS = ("none", "instance")

#: See `MagNetConfig.magnet_implementation` (the fast path itself is `fast_path_magnet.py`).
MAGNET_IMPLEMENTATIONS = ("auto", "reference", "fast")


class MagNetConfig(PreTrainedConfig):
    r"""
    Configuration of a MagNet referring-segmentation model ("Mask Grounding for Referring Image Segmentation",
    CVPR 2024). The defaults build MagNet-B exactly as released (Swin-B at 480x480, BERT-base, Mask2Former-style
    decoders with one query).

    Args:
        text_config (`dict` or `BertConfig`, *optional*):
            The BERT language encoder. Defaults to `bert-base-uncased`'s architecture.
        image_size (`int`, *optional*, defaults to 480):
            Side of the square image the processor resizes to (the released weights were trained at 480).
        num_channels (`int`, *optional*, defaults to 3):
            Input image channels.
        patch_size (`int`, *optional*, defaults to 4):
            Swin patch size.
        embed_dim (`int`, *optional*, defaults to 128):
            Swin stage-1 width C; stages are C, 2C, 4C, 8C wide.
        depths (`list[int]`, *optional*, defaults to `[2, 2, 18, 2]`):
            Swin blocks per stage (exactly four stages).
        num_heads (`list[int]`, *optional*, defaults to `[4, 8, 16, 32]`):
            Swin attention heads per stage.
        window_size (`int`, *optional*, defaults to 12):
            Swin window; the shift is `window_size // 2`.
        mlp_ratio (`float`, *optional*, defaults to 4.0):
            Swin MLP expansion.
        drop_path_rate (`float`, *optional*, defaults to 0.3):
            Stochastic depth of the Swin blocks (training only).
        text_stage_end_layers (`list[int]`, *optional*, defaults to `[3, 6, 9, 12]`):
            BERT layer after which each of the four fusion stages happens (strictly increasing, last = all layers).
        fusion_pool_sizes (`list[int]`, *optional*, defaults to `[1, 2, 3, 6]`):
            Output sizes of the adaptive pools of the image-side pyramid branch.
        fusion_dropout (`float`, *optional*, defaults to 0.0):
            Dropout inside the fusion modules.
        released_language_masking (`bool`, *optional*, defaults to `True`):
            Reproduce the released language-side fusion, which multiplies its queries by BERT's *additive* mask
            (0 for words, -10000 for padding). The released weights need it. `False` uses a binary mask and
            normalises over real words only; only for training new models.
        decoder_hidden_size (`int`, *optional*, defaults to 256):
            Width of the pixel decoder, of the mask features and of the transformer decoder.
        pixel_decoder_layers (`int`, *optional*, defaults to 4):
            Deformable-attention encoder layers of the pixel decoder.
        pixel_decoder_num_heads (`int`, *optional*, defaults to 8):
            Heads of the deformable attention.
        pixel_decoder_num_points (`int`, *optional*, defaults to 4):
            Sampling points per head and level.
        pixel_decoder_feedforward_size (`int`, *optional*, defaults to 1024):
            FFN width of the pixel decoder.
        decoder_layers (`int`, *optional*, defaults to 9):
            Masked-attention transformer decoder layers actually built (the released config says 10 and its
            builder uses 10 - 1).
        decoder_num_heads (`int`, *optional*, defaults to 8):
            Heads of the transformer decoder.
        decoder_feedforward_size (`int`, *optional*, defaults to 2048):
            FFN width of the transformer decoder.
        num_queries (`int`, *optional*, defaults to 1):
            Object queries. MagNet predicts one mask per expression, so only 1 is supported.
        init_std (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initialiser.
        magnet_implementation (`str`, *optional*, defaults to `"auto"`):
            Which computation the modules run, read at every forward like `attn_implementation` (and like it, a
            `from_pretrained` option): `"reference"`, the readable modules of `modeling_magnet.py`; `"fast"`, the
            fast path of `fast_path_magnet.py` (same numbers): in training mode its gathered Swin windows (which are
            differentiable), in eval mode also residuals in place, chunks and batch groups (no gradients: a backward
            raises); `"auto"`, the fast path on CPU and the reference elsewhere. Grad mode never decides: to
            differentiate a model in eval mode, choose `"reference"`.
        cpu_cache_bytes (`int`, *optional*):
            The cache budget that the fast path's groups and chunks (and the deformable attention's chunks) are sized
            for. Defaults to the CPU's last-level cache as the operating system reports it.
        mask_loss_weight, dice_loss_weight, class_loss_weight (`float`, *optional*, defaults to 5.0, 5.0, 2.0):
            Weights of the mask BCE, mask dice and class cross-entropy terms (Mask2Former's defaults; MagNet's
            were not published).

        The training-only auxiliaries below are *reconstructed from the paper; exact values unpublished* (no training
        code was released). Each can be switched off for ablations; none of them changes inference.

        use_mask_grounding (`bool`, *optional*, defaults to `True`):
            Build the Mask Grounding head (`MagNetForReferringSegmentation.mask_grounding`) and add its loss when a
            masked sentence (`masked_input_ids`, `mlm_labels`) and `labels` are given.
        mask_grounding_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the Mask Grounding cross-entropy. It starts near ln(vocabulary size) (about 10 for BERT), the
            size of one deeply supervised prediction's weighted segmentation loss, so 1.0 makes it roughly a tenth of
            the segmentation signal (ten predictions) instead of drowning it or vanishing.
        mask_grounding_mode (`str`, *optional*, defaults to `"separate"`):
            How the masked sentence reaches the two-stream fused encoder. `"separate"`: segmentation reads the
            unmasked sentence and a second fused pass (image and language streams with all fusions, no decoders)
            reads the masked one. `"shared"`: one forward on the masked sentence serves segmentation and Mask
            Grounding (OVR-CNN's way; inference always reads the unmasked sentence). Either way Mask Grounding never
            sees an original word at a masked position.
        mask_grounding_visual_stride (`int`, *optional*, defaults to 16):
            Stride (4, 8, 16 or 32) of the fused stage map whose pixels are the visual tokens, and the grid of the
            mask tokens: 16 gives 8x8 tokens at 128x128 and 30x30 at 480x480.
        mask_grounding_mask_tokens (`str`, *optional*, defaults to `"concatenate"`):
            How the Masked Token Predictor receives the mask tokens. `"concatenate"` (the paper's description): as
            tokens of their own beside the visual tokens, so that reading the target's visual features takes a
            masked word two attention hops (find the mask, then the visual token at its place). `"add"`: each mask
            token is added to the visual token at its place, one token per place, so that one hop reads them.
        mask_grounding_visual_norm (`str`, *optional*, defaults to `"none"`):
            `"instance"` normalises each channel of the visual tokens' fused map over its places, per image, before
            the projection. Trained fused maps carry channels that are nearly the same for every image (measured:
            they vary by 0.1-1.5 % across scenes at strides 8-32), and through the projection and its layer norm
            those constants drown what differs between scenes, so that the predictor can learn to ignore the image.
        mask_grounding_mask_probability (`float`, *optional*, defaults to 0.15):
            Each non-special token of a training sentence is chosen for Mask Grounding independently with this
            probability (OVR-CNN's rule, which the authors point to); a sentence that draws none adds no loss.
        mask_grounding_replace_probability (`float`, *optional*, defaults to 0.9):
            A chosen token becomes [MASK] with this probability and keeps its id otherwise.
        mask_grounding_hidden_size (`int`, *optional*, defaults to 256):
            Width of the Masked Token Predictor (a multiple of 4: the sine position encoding splits it in four).
        mask_grounding_layers (`int`, *optional*, defaults to 2):
            BERT layers of the Masked Token Predictor.
        mask_grounding_num_heads (`int`, *optional*, defaults to 8):
            Attention heads of the Masked Token Predictor.
        mask_grounding_intermediate_size (`int`, *optional*):
            Feed-forward width of the Masked Token Predictor's BERT layers; defaults to 4x its hidden size.
        tie_word_embeddings (`bool`, *optional*, defaults to `True`):
            Tie the Masked Token Predictor's vocabulary projection to the text encoder's word embeddings, as
            `BertForMaskedLM` does.
        use_alignment_loss (`bool`, *optional*, defaults to `True`):
            Add the cross-modal alignment loss (pixel-to-text and pixel-to-pixel contrastive terms) when `labels`
            are given.
        pixel_text_loss_weight, pixel_pixel_loss_weight (`float`, *optional*, defaults to 1.0, 1.0):
            Weights of the two alignment terms; each starts near ln(number of background pixels), like one
            prediction's segmentation loss (see `mask_grounding_loss_weight`).
        pixel_text_temperature (`float`, *optional*, defaults to 0.07):
            Temperature of the pixel-to-text term (CLIP's initial value).
        pixel_pixel_temperature (`float`, *optional*, defaults to 0.1):
            Temperature of the pixel-to-pixel term (supervised contrastive learning's value).
        alignment_max_pixels (`int`, *optional*, defaults to 1024):
            Pixels sampled per sample for the pixel-to-pixel term (half target, half background where the mask
            allows); bounds its quadratic memory. At least 3.
    """

    model_type = "magnet"
    sub_configs = {"text_config": BertConfig}

    def __init__(
        self,
        text_config: dict | BertConfig | None = None,
        image_size: int = 480,
        num_channels: int = 3,
        patch_size: int = 4,
        embed_dim: int = 128,
        depths: list[int] | tuple[int, ...] = (2, 2, 18, 2),
        num_heads: list[int] | tuple[int, ...] = (4, 8, 16, 32),
        window_size: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.3,
        text_stage_end_layers: list[int] | tuple[int, ...] = (3, 6, 9, 12),
        fusion_pool_sizes: list[int] | tuple[int, ...] = (1, 2, 3, 6),
        fusion_dropout: float = 0.0,
        released_language_masking: bool = True,
        decoder_hidden_size: int = 256,
        pixel_decoder_layers: int = 4,
        pixel_decoder_num_heads: int = 8,
        pixel_decoder_num_points: int = 4,
        pixel_decoder_feedforward_size: int = 1024,
        decoder_layers: int = 9,
        decoder_num_heads: int = 8,
        decoder_feedforward_size: int = 2048,
        num_queries: int = 1,
        init_std: float = 0.02,
        magnet_implementation: str = "auto",
        cpu_cache_bytes: int | None = None,
        mask_loss_weight: float = 5.0,
        dice_loss_weight: float = 5.0,
        class_loss_weight: float = 2.0,
        use_mask_grounding: bool = True,
        mask_grounding_loss_weight: float = 1.0,
        mask_grounding_mode: str = "separate",
        mask_grounding_visual_stride: int = 16,
        mask_grounding_mask_tokens: str = "concatenate",
        mask_grounding_visual_norm: str = "none",
        mask_grounding_mask_probability: float = 0.15,
        mask_grounding_replace_probability: float = 0.9,
        mask_grounding_hidden_size: int = 256,
        mask_grounding_layers: int = 2,
        mask_grounding_num_heads: int = 8,
        mask_grounding_intermediate_size: int | None = None,
        tie_word_embeddings: bool = True,
        use_alignment_loss: bool = True,
        pixel_text_loss_weight: float = 1.0,
        pixel_pixel_loss_weight: float = 1.0,
        pixel_text_temperature: float = 0.07,
        pixel_pixel_temperature: float = 0.1,
        alignment_max_pixels: int = 1024,
        **kwargs,
    ):
        if text_config is None:
            text_config = BertConfig()
        elif isinstance(text_config, dict):
            text_config = BertConfig(**text_config)
        elif not isinstance(text_config, BertConfig):
            raise TypeError(f"text_config must be a dict or a BertConfig, got {type(text_config).__name__}.")
        self.text_config = text_config
        self.image_size = image_size
        self.num_channels = num_channels
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depths = list(depths)
        self.num_heads = list(num_heads)
        self.window_size = window_size
        self.mlp_ratio = mlp_ratio
        self.drop_path_rate = drop_path_rate
        self.text_stage_end_layers = list(text_stage_end_layers)
        self.fusion_pool_sizes = list(fusion_pool_sizes)
        self.fusion_dropout = fusion_dropout
        self.released_language_masking = released_language_masking
        self.decoder_hidden_size = decoder_hidden_size
        self.pixel_decoder_layers = pixel_decoder_layers
        self.pixel_decoder_num_heads = pixel_decoder_num_heads
        self.pixel_decoder_num_points = pixel_decoder_num_points
        self.pixel_decoder_feedforward_size = pixel_decoder_feedforward_size
        self.decoder_layers = decoder_layers
        self.decoder_num_heads = decoder_num_heads
        self.decoder_feedforward_size = decoder_feedforward_size
        self.num_queries = num_queries
        self.init_std = init_std
        self.magnet_implementation = magnet_implementation
        self.cpu_cache_bytes = cpu_cache_bytes
        self.mask_loss_weight = mask_loss_weight
        self.dice_loss_weight = dice_loss_weight
        self.class_loss_weight = class_loss_weight
        self.use_mask_grounding = use_mask_grounding
        self.mask_grounding_loss_weight = mask_grounding_loss_weight
        self.mask_grounding_mode = mask_grounding_mode
        self.mask_grounding_visual_stride = mask_grounding_visual_stride
        self.mask_grounding_mask_tokens = mask_grounding_mask_tokens
        self.mask_grounding_visual_norm = mask_grounding_visual_norm
        self.mask_grounding_mask_probability = mask_grounding_mask_probability
        self.mask_grounding_replace_probability = mask_grounding_replace_probability
        self.mask_grounding_hidden_size = mask_grounding_hidden_size
        self.mask_grounding_layers = mask_grounding_layers
        self.mask_grounding_num_heads = mask_grounding_num_heads
        self.mask_grounding_intermediate_size = (
            4 * mask_grounding_hidden_size if mask_grounding_intermediate_size is None else mask_grounding_intermediate_size
        )
        self.use_alignment_loss = use_alignment_loss
        self.tie_word_embeddings = tie_word_embeddings
        self.pixel_text_loss_weight = pixel_text_loss_weight
        self.pixel_pixel_loss_weight = pixel_pixel_loss_weight
        self.pixel_text_temperature = pixel_text_temperature
        self.pixel_pixel_temperature = pixel_pixel_temperature
        self.alignment_max_pixels = alignment_max_pixels
        super().__init__(**kwargs)
        self._check_architecture()

    @property
    def mask_grounding_strides(self) -> tuple[int, ...]:
        """Strides of the four fused stage maps (4, 8, 16, 32 with patch size 4)."""
        return tuple(self.patch_size * 2**i for i in range(len(self.depths)))

    @property
    def mask_grounding_stage(self) -> int:
        """Index of the fused stage map that gives Mask Grounding its visual tokens."""
        return self.mask_grounding_strides.index(self.mask_grounding_visual_stride)

    @property
    def stage_dims(self) -> list[int]:
        """Widths of the four image stages (C, 2C, 4C, 8C)."""
        return [self.embed_dim * 2**i for i in range(len(self.depths))]

    def _check_architecture(self) -> None:
        """Refuses impossible values at construction, naming the field, instead of failing deep in `forward`."""

        def fail(field: str, message: str) -> None:
            raise ValueError(f"MagNetConfig.{field}: {message}")

        def positive_int(field: str) -> None:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(field, f"must be a positive integer, got {value!r}.")

        for field in (
            "image_size", "num_channels", "patch_size", "embed_dim", "window_size", "decoder_hidden_size",
            "pixel_decoder_layers", "pixel_decoder_num_heads", "pixel_decoder_num_points",
            "pixel_decoder_feedforward_size", "decoder_layers", "decoder_num_heads", "decoder_feedforward_size",
            "mask_grounding_hidden_size", "mask_grounding_layers", "mask_grounding_num_heads",
            "mask_grounding_intermediate_size", "alignment_max_pixels",
        ):
            positive_int(field)
        for field in ("depths", "num_heads", "text_stage_end_layers"):
            values = getattr(self, field)
            if len(values) != 4:
                fail(field, f"MagNet has four fusion stages, so exactly four values are needed, got {values}.")
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                fail(field, f"every value must be a positive integer, got {values}.")
        for stage, (dim, heads) in enumerate(zip(self.stage_dims, self.num_heads)):
            if dim % heads:
                fail("num_heads", f"stage {stage + 1} is {dim} wide, which {heads} heads do not divide.")
        if self.embed_dim % 4:
            fail("embed_dim", f"the pyramid branch works at a quarter of each stage's width; {self.embed_dim} is not divisible by 4.")
        if self.image_size % self.patch_size:
            fail("image_size", f"{self.image_size} is not a multiple of patch_size {self.patch_size}.")
        ends = self.text_stage_end_layers
        if any(b <= a for a, b in zip(ends, ends[1:])):
            fail("text_stage_end_layers", f"stage cuts must be strictly increasing, got {ends}.")
        if ends[-1] != self.text_config.num_hidden_layers:
            fail(
                "text_stage_end_layers",
                f"the last stage must end after the last BERT layer ({self.text_config.num_hidden_layers}), got {ends}.",
            )
        if not self.fusion_pool_sizes or any(
            isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in self.fusion_pool_sizes
        ):
            fail("fusion_pool_sizes", f"needs positive integers, got {self.fusion_pool_sizes}.")
        hidden = self.decoder_hidden_size
        if hidden % 32:
            fail("decoder_hidden_size", f"the pixel decoder's GroupNorm uses 32 groups; {hidden} is not divisible by 32.")
        if hidden % 2:
            fail("decoder_hidden_size", "the sine position encoding splits the width in two; it must be even.")
        for field in ("pixel_decoder_num_heads", "decoder_num_heads"):
            if hidden % getattr(self, field):
                fail(field, f"{getattr(self, field)} heads do not divide decoder_hidden_size {hidden}.")
        if self.num_queries != 1:
            fail("num_queries", f"MagNet predicts one mask per expression; only 1 is supported, got {self.num_queries}.")
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "max_position_embeddings"):
            value = getattr(self.text_config, field, None)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail("text_config", f"{field} must be a positive integer, got {value!r}.")
        text_hidden, text_heads = self.text_config.hidden_size, self.text_config.num_attention_heads
        if text_hidden % text_heads:
            fail("text_config", f"hidden_size {text_hidden} is not divisible by num_attention_heads {text_heads}.")
        def is_number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        for field in (
            "mask_loss_weight", "dice_loss_weight", "class_loss_weight", "mask_grounding_loss_weight",
            "pixel_text_loss_weight", "pixel_pixel_loss_weight",
        ):
            value = getattr(self, field)
            if not (is_number(value) and 0 <= value < math.inf):
                fail(field, f"must be a non-negative number, got {value!r}.")
        for field in ("pixel_text_temperature", "pixel_pixel_temperature"):
            value = getattr(self, field)
            if not (is_number(value) and 0 < value < math.inf):
                fail(field, f"must be a positive number, got {value!r}.")
        for field in ("use_mask_grounding", "use_alignment_loss"):
            if not isinstance(getattr(self, field), bool):
                fail(field, f"must be True or False, got {getattr(self, field)!r}.")
        grounding_width = self.mask_grounding_hidden_size
        if grounding_width % 4:
            fail(
                "mask_grounding_hidden_size",
                f"the sine position encoding of the visual and mask tokens splits the width in four; {grounding_width} "
                "is not divisible by 4.",
            )
        if grounding_width % self.mask_grounding_num_heads:
            fail(
                "mask_grounding_num_heads",
                f"{self.mask_grounding_num_heads} heads do not divide mask_grounding_hidden_size {grounding_width}.",
            )
        for field, choices in (
            ("mask_grounding_mode", MASK_GROUNDING_MODES),
            ("mask_grounding_mask_tokens", MASK_GROUNDING_MASK_TOKENS),
            ("mask_grounding_visual_norm", MASK_GROUNDING_VISUAL_NORMS),
        ):
            if getattr(self, field) not in choices:
                fail(field, f"must be one of {choices}, got {getattr(self, field)!r}.")
        strides = self.mask_grounding_strides
        if self.mask_grounding_visual_stride not in strides:
            fail(
                "mask_grounding_visual_stride",
                f"must be the stride of a fused stage map, one of {strides}, got {self.mask_grounding_visual_stride!r}.",
            )
        for field in ("mask_grounding_mask_probability", "mask_grounding_replace_probability"):
            value = getattr(self, field)
            if not (is_number(value) and 0.0 <= value <= 1.0):
                fail(field, f"must be a probability in [0, 1], got {value!r}.")
        if self.magnet_implementation not in MAGNET_IMPLEMENTATIONS:
            fail("magnet_implementation", f"must be one of {MAGNET_IMPLEMENTATIONS}, got {self.magnet_implementation!r}.")
        if self.cpu_cache_bytes is not None:
            positive_int("cpu_cache_bytes")
        if self.alignment_max_pixels < 3:
            fail(
                "alignment_max_pixels",
                f"the pixel-to-pixel term needs two target pixels and one background pixel; got {self.alignment_max_pixels}.",
            )
        for field in ("drop_path_rate", "fusion_dropout"):
            if not 0.0 <= getattr(self, field) < 1.0:
                fail(field, f"must lie in [0, 1), got {getattr(self, field)}.")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MagNetConfig":
        """Builds a named preset: `magnet-base` (the released MagNet-B at 480x480) or `magnet-tiny` (tests, demo)."""
        if name not in PRESETS:
            raise ValueError(f"Unknown MagNet preset {name!r}; choose one of {sorted(PRESETS)}.")
        settings = {**PRESETS[name], **overrides}
        return cls(**settings)


PRESETS: dict[str, dict] = {
    "magnet-base": {},
    # A few million parameters: fast enough on a 2-core CPU for tests, demos and short training runs.
    "magnet-tiny": {
        "text_config": {
            "vocab_size": 1000,
            "hidden_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "max_position_embeddings": 64,
        },
        "image_size": 128,
        "embed_dim": 32,
        "depths": [2, 2, 2, 2],
        "num_heads": [1, 2, 4, 8],
        "window_size": 4,
        "drop_path_rate": 0.1,
        "text_stage_end_layers": [1, 2, 3, 4],
        "decoder_hidden_size": 64,
        "pixel_decoder_layers": 2,
        "pixel_decoder_num_heads": 4,
        "pixel_decoder_feedforward_size": 128,
        "decoder_layers": 3,
        "decoder_num_heads": 4,
        "decoder_feedforward_size": 128,
        "mask_grounding_hidden_size": 64,
        "mask_grounding_num_heads": 4,
        "alignment_max_pixels": 256,
    },
}


__all__ = ["MagNetConfig", "PRESETS"]
