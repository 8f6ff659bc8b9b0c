# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""PyTorch MagNet: Mask Grounding for Referring Image Segmentation (Chng et al., CVPR 2024).

The network is LAVT-style early fusion (a Swin image stream and a BERT language stream that read each other after
every stage) followed by Mask2Former's deformable pixel decoder and a one-query masked-attention decoder. Every
behaviour of the released inference network is reproduced, quirks included, so that converted official weights give
the official numbers; `docs/released_network.md` in the repository lists them.

Paper name -> class here -> key prefix of the released checkpoints (`k` = stage, `p` = pyramid pool index):

| paper | class | released keys |
|---|---|---|
| image encoder (Swin) | `MagNetImageEncoder`, `MagNetSwinStage`, `MagNetSwinBlock` | `image_model.patch_embed`, `image_model.layers.k.blocks`, `.downsample` |
| language encoder (BERT) | `transformers.BertModel` (`text_encoder`) | `language_model.embeddings`, `language_model.encoder` |
| Cross-modal Alignment Module (image side) | `MagNetImageFusion` | `image_model.layers.k.{fusion,res_gate,pyramids,fusions,mixer}` |
| Pixel-Word Attention Module (PWAM) | `MagNetPixelWordAttention` | `image_model.layers.k.fusion`, `image_model.layers.k.fusions.p` |
| Language Gate | `MagNetResidualGate` | `image_model.layers.k.res_gate`, `language_model.res_gates.k` |
| multi-scale pyramid branch | `MagNetPyramidBranch` | `image_model.layers.k.pyramids.p` |
| language-side fusion (word-pixel attention) | `MagNetLanguageFusion`, `MagNetWordPixelAttention` | `language_model.pwams.k`, `language_model.res_gates.k` |
| pixel decoder (multi-scale deformable attention) | `MagNetPixelDecoder`, `MagNetPixelDecoderLayer` | `classifier.pixel_decoder` |
| transformer decoder (masked attention) | `Mask2FormerTransformerModule` (`transformer_decoder`) | `classifier.predictor` |
| Cross-modal Alignment Loss, text projection | `text_projection` | `lang_proj` |
| Mask Grounding (training only) | `MagNetMaskGroundingHead` | not released |
| mask encoder | `MagNetMaskEncoder` | not released |
| Masked Token Predictor | `MagNetMaskedTokenPredictor` | not released |
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformerBlock,
    WindowAttention,
    get_relative_position_index,
    window_partition,
    window_reverse,
)
from torch import nn
from transformers import BertConfig, BertModel, Mask2FormerConfig, PreTrainedModel
from transformers import initialization as init
from transformers.dynamic_module_utils import custom_object_save
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertEncoder, BertLMPredictionHead
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerMaskedAttentionDecoderLayer,
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    Mask2FormerSinePositionEmbedding,
    Mask2FormerTransformerModule,
)
from transformers.utils import ModelOutput, logging

from .configuration_magnet import MagNetConfig
from .deformable_attention_magnet import MagNetMultiscaleDeformableAttention
from .fast_path_magnet import (
    FastPathTuning,
    normalize_over_positions_in_place,
    pixel_decoder_post_attention,
    run_in_groups,
    selects_fast_path,
    swin_block_forward,
    uses_fast_path,
    window_attention,
)

logger = logging.get_logger(__name__)

def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors become fp32; fp32 and fp64 stay as they are."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


# The released language fusion multiplies its queries by BERT's additive mask, whose padding value is this.
RELEASED_ADDITIVE_MASK_VALUE = -10000.0


@dataclass
class MagNetModelOutput(ModelOutput):
    r"""
    Outputs of [`MagNetModel`].

    Args:
        pred_masks (`torch.FloatTensor` of shape `(batch_size, 1, height / 4, width / 4)`):
            Mask logits of the final decoder layer for the single query.
        pred_logits (`torch.FloatTensor` of shape `(batch_size, 1, 2)`):
            Class logits (object, no-object) of the final decoder layer.
        auxiliary_predictions (`tuple[dict[str, torch.FloatTensor]]`):
            The `{"pred_masks", "pred_logits"}` of every earlier prediction (before the first decoder layer and after
            each but the last), used for deep supervision.
        mask_features (`torch.FloatTensor` of shape `(batch_size, decoder_hidden_size, height / 4, width / 4)`):
            Per-pixel embeddings that the query's mask embedding is dotted with.
        text_features (`torch.FloatTensor` of shape `(batch_size, sequence_length, text_hidden_size)`, *optional*):
            The language stream after its last fusion; returned with `output_hidden_states=True` or when a caller
            asks for it (training losses).
        fused_features (`tuple[torch.FloatTensor]`, *optional*):
            The four fused maps handed to the pixel decoder (strides 4, 8, 16, 32; widths C, 2C, 4C, 8C); returned
            with `output_hidden_states=True`.
        hidden_states (`tuple[torch.FloatTensor]`, *optional*):
            The language stream in BERT's layout, returned with `output_hidden_states=True`: the embedding output,
            then the output of every BERT layer, `num_hidden_layers + 1` tensors of shape
            `(batch_size, sequence_length, text_hidden_size)`. Each is the layer's own output, before the language
            fusion that follows it at a stage end (the fused stream is what the next layer reads; after the last
            stage it is `text_features`).
        image_hidden_states (`tuple[torch.FloatTensor]`, *optional*):
            The image stream, returned with `output_hidden_states=True`: the patch embedding, then every Swin
            stage's output before its fusion, 5 tensors of shape `(batch_size, C_k, height_k, width_k)` (channels
            first, as Swin's `reshaped_hidden_states`; strides 4, 4, 8, 16, 32).
        attentions (`tuple[torch.FloatTensor]`, *optional*):
            BERT's self-attention maps, one per layer, `(batch_size, num_heads, sequence_length, sequence_length)`;
            returned with `output_attentions=True` under eager attention.
    """

    pred_masks: torch.FloatTensor | None = None
    pred_logits: torch.FloatTensor | None = None
    auxiliary_predictions: tuple[dict[str, torch.FloatTensor], ...] | None = None
    mask_features: torch.FloatTensor | None = None
    text_features: torch.FloatTensor | None = None
    fused_features: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MagNetReferringSegmentationOutput(MagNetModelOutput):
    r"""
    Outputs of [`MagNetForReferringSegmentation`]: those of [`MagNetModel`] plus, when `labels` are given,

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Weighted sum of the training losses.
        loss_dict (`dict[str, torch.FloatTensor]`, *optional*):
            Each unweighted loss term, for logging.
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict[str, torch.FloatTensor] | None = None


def _select_layers(states: list[torch.Tensor] | None, selection) -> tuple[torch.Tensor | None, ...] | None:
    """`output_hidden_states` as transformers reads it: `True` keeps every state, a list of indices (negative ones
    counting from the end) keeps those and leaves `None` in the other places."""
    if not selection:
        return None
    if selection is True:
        return tuple(states)
    kept = {index % len(states) for index in selection}
    return tuple(state if index in kept else None for index, state in enumerate(states))


# --------------------------------------------------------------------------------------------------------------------
# Image stream: timm's Swin modules, run with the released padding order
# --------------------------------------------------------------------------------------------------------------------


class MagNetSwinBlock(GradientCheckpointingLayer, SwinTransformerBlock):
    """
    timm's Swin block (same modules, weight names and forward) with the released padding order in `_attn`: the
    normalised map is zero-padded to whole windows *before* the cyclic shift, the shift mask is built on the padded
    grid, and a map smaller than the window is padded up to it instead of shrinking the window. timm's own block
    rolls first and pads after, and clamps the window to small maps; both give different numbers from the released
    weights' training.

    Input and output: `(batch, height, width, channels)`. On the fast path the attention is
    [`~fast_path_magnet.window_attention`] (same numbers, gathered windows, differentiable), and in eval mode the
    whole forward is [`~fast_path_magnet.swin_block_forward`] (residuals in place, MLP in chunks).

    A transformers `GradientCheckpointingLayer`: `gradient_checkpointing_enable()` checkpoints every block with the
    settings it is given (`use_reentrant` included), as it does BERT's layers.
    """

    def __init__(self, config: MagNetConfig | None = None, **kwargs):
        super().__init__(always_partition=True, dynamic_mask=True, **kwargs)
        # Read at every forward: `attn_implementation` (eager products or torch's SDPA, as timm's `fused_attn`) and
        # `magnet_implementation` (reference or fast path).
        self.config = config
        self._shift_masks: dict[tuple, torch.Tensor] = {}

    def _padded_size(self, height: int, width: int) -> tuple[int, int]:
        window_height, window_width = self.window_size
        return (
            height + (window_height - height % window_height) % window_height,
            width + (window_width - width % window_width) % window_width,
        )

    def _shift_mask(self, reference: torch.Tensor, padded_height: int, padded_width: int) -> torch.Tensor | None:
        """Shift mask `(num_windows, window_area, window_area)` of the padded grid (built once per size and reused),
        or `None` for an unshifted block."""
        if not any(self.shift_size):
            return None
        key = (padded_height, padded_width, reference.device, reference.dtype)
        if key not in self._shift_masks:
            self._shift_masks[key] = self.get_attn_mask(reference.new_zeros(1, padded_height, padded_width, 1))
        return self._shift_masks[key]

    def _uses_eager_attention(self) -> bool:
        return getattr(self.config, "_attn_implementation", None) == "eager"

    def _attn(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # hidden_states: (batch, height, width, channels), normalised by norm1. The released order: pad, then shift.
        if selects_fast_path(self.config, hidden_states):
            return window_attention(self, hidden_states)
        _, height, width, channels = hidden_states.shape
        padded_height, padded_width = self._padded_size(height, width)
        padded = F.pad(hidden_states, (0, 0, 0, padded_width - width, 0, padded_height - height))
        if any(self.shift_size):
            padded = torch.roll(padded, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        windows = window_partition(padded, self.window_size).view(-1, self.window_area, channels)
        mask = self._shift_mask(hidden_states, padded_height, padded_width)
        windows = self.attn(windows, mask=mask)  # (batch * num_windows, window_area, channels)
        windows = windows.view(-1, *self.window_size, channels)
        padded = window_reverse(windows, self.window_size, padded_height, padded_width)
        if any(self.shift_size):
            padded = torch.roll(padded, shifts=self.shift_size, dims=(1, 2))
        return padded[:, :height, :width]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # (batch, height, width, channels) -> same shape.
        if uses_fast_path(self.config, self, hidden_states):
            return swin_block_forward(self, hidden_states)
        self.attn.fused_attn = not self._uses_eager_attention()
        return super().forward(hidden_states)


class MagNetSwinStage(nn.Module):
    """One Swin stage in timm's layout: patch merging first (stages 2-4), then the blocks. Works on NHWC maps."""

    def __init__(self, config: MagNetConfig, stage_index: int, drop_path_rates: list[float]):
        super().__init__()
        dim = config.stage_dims[stage_index]
        resolution = config.image_size // config.patch_size // 2**stage_index
        self.downsample = PatchMerging(dim=dim // 2, out_dim=dim) if stage_index > 0 else nn.Identity()
        self.blocks = nn.Sequential(
            *[
                MagNetSwinBlock(
                    config=config,
                    dim=dim,
                    input_resolution=(resolution, resolution),
                    num_heads=config.num_heads[stage_index],
                    window_size=config.window_size,
                    shift_size=0 if block_index % 2 == 0 else config.window_size // 2,
                    mlp_ratio=config.mlp_ratio,
                    drop_path=drop_path_rates[block_index],
                )
                for block_index in range(config.depths[stage_index])
            ]
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # (batch, height, width, channels_in) -> (batch, height', width', channels)
        hidden_states = self.downsample(hidden_states)
        for block in self.blocks:
            hidden_states = block(hidden_states)  # checkpointed by the block itself when enabled
        return hidden_states


class MagNetImageEncoder(nn.Module):
    """Swin transformer (timm modules and weight names) cut into its four stages so that fusion can run between them."""

    def __init__(self, config: MagNetConfig):
        super().__init__()
        self.patch_embed = PatchEmbed(
            img_size=config.image_size,
            patch_size=config.patch_size,
            in_chans=config.num_channels,
            embed_dim=config.embed_dim,
            norm_layer=nn.LayerNorm,
            output_fmt="NHWC",
            strict_img_size=False,
            dynamic_img_pad=True,
        )
        total = sum(config.depths)  # stochastic depth grows linearly over all blocks (plain Python: works on meta)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(config.depths[:i]) for i in range(len(config.depths))]
        self.layers = nn.ModuleList(
            [
                MagNetSwinStage(config, i, rates[start : start + depth])
                for i, (start, depth) in enumerate(zip(starts, config.depths))
            ]
        )


# --------------------------------------------------------------------------------------------------------------------
# Cross-modal fusion
# --------------------------------------------------------------------------------------------------------------------


class MagNetResidualGate(nn.Module):
    """`x + tanh(W2 act(W1 r)) * r`: how much of a fusion residual `r` enters a stream. Zero-initialised."""

    def __init__(self, dim: int, activation: type[nn.Module], dtype: torch.dtype | None = None):
        super().__init__()
        self.in_proj = nn.Linear(dim, dim, bias=False, dtype=dtype)
        self.activation = activation()
        self.out_proj = nn.Linear(dim, dim, bias=False, dtype=dtype)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        gate = torch.tanh(self.out_proj(self.activation(self.in_proj(residual))))
        return hidden_states + gate * residual


class MagNetPixelWordAttention(nn.Module):
    """
    Image-side pixel-word attention (LAVT's PWAM): every pixel attends over the words with a single full-width head,
    and the attended language gates a projection of the pixel.

    Inputs are `pixels` `(batch, num_pixels, dim)`, `words` `(batch, num_words, text_dim)` and a 0/1 `word_mask`
    `(batch, num_words)`; the output is the fusion residual `(batch, num_pixels, dim)`.
    """

    def __init__(self, dim: int, text_dim: int, dropout: float = 0.0):
        super().__init__()
        self.visual_projection = nn.Linear(dim, dim)
        self.query_projection = nn.Linear(dim, dim)
        self.query_norm = nn.LayerNorm(dim)
        self.key_projection = nn.Linear(text_dim, dim)
        self.value_projection = nn.Linear(text_dim, dim)
        self.output_projection = nn.Linear(dim, dim)
        self.output_norm = nn.LayerNorm(dim)
        self.fusion_projection = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.scale = dim**-0.5

    def forward(self, pixels: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        visual = self.dropout(F.gelu(self.visual_projection(pixels)))
        word_mask = word_mask.to(words.dtype)
        query = self.query_norm(self.query_projection(pixels))  # (batch, num_pixels, dim)
        key = self.key_projection(words) * word_mask[..., None]  # (batch, num_words, dim)
        value = self.value_projection(words) * word_mask[..., None]
        scores = torch.matmul(query, key.transpose(1, 2)) * self.scale  # (batch, num_pixels, num_words)
        scores = scores + (1e4 * word_mask[:, None, :] - 1e4)
        attended = torch.matmul(scores.softmax(dim=-1), value)  # (batch, num_pixels, dim)
        attended = self.output_norm(self.output_projection(attended))
        return self.dropout(F.gelu(self.fusion_projection(visual * attended)))


class MagNetPyramidBranch(nn.Module):
    """Pools the stage map to `pool_size`², runs a narrow pixel-word attention there and upsamples back."""

    def __init__(self, dim: int, text_dim: int, pool_size: int, dropout: float = 0.0):
        super().__init__()
        self.pool_size = pool_size
        self.expand = nn.Linear(dim, 4 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=1e-6)
        self.reduce = nn.Linear(4 * dim, dim, bias=False)
        self.squeeze = nn.Linear(dim, dim // 4, bias=False)
        self.pixel_word_attention = MagNetPixelWordAttention(dim // 4, text_dim, dropout)

    def forward(self, feature_map: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        # feature_map: (batch, dim, height, width) -> (batch, dim / 4, height, width)
        batch_size, _, height, width = feature_map.shape
        pooled = F.adaptive_avg_pool2d(feature_map, self.pool_size).flatten(2).transpose(1, 2)  # (batch, p*p, dim)
        pooled = self.squeeze(F.gelu(self.reduce(self.norm(self.expand(pooled)))))
        pooled = self.pixel_word_attention(pooled, words, word_mask)  # (batch, p*p, dim / 4)
        pooled = pooled.transpose(1, 2).reshape(batch_size, -1, self.pool_size, self.pool_size)
        return F.interpolate(pooled, size=(height, width), mode="bilinear", align_corners=True)


class MagNetImageFusion(nn.Module):
    """
    The paper's image-side Cross-modal Alignment Module for one stage: pixel-word attention at full resolution plus a
    pyramid of pooled ones, mixed into the stage's feature for the decoder; the full-resolution residual also enters
    the image stream through a gate (absent after the last stage, whose gated output fed nothing in the release).
    """

    def __init__(self, dim: int, text_dim: int, pool_sizes: list[int], dropout: float, has_gate: bool):
        super().__init__()
        self.pixel_word_attention = MagNetPixelWordAttention(dim, text_dim, dropout)
        self.gate = MagNetResidualGate(dim, nn.GELU) if has_gate else None
        self.pyramid = nn.ModuleList([MagNetPyramidBranch(dim, text_dim, p, dropout) for p in pool_sizes])
        mixed = dim + len(pool_sizes) * (dim // 4)
        self.mixer = nn.Sequential(nn.Linear(mixed, dim), nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())

    def forward(
        self, visual: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """
        `visual` `(batch, height, width, dim)` is the stage's Swin output before fusion. Returns the gated map for the
        next Swin stage (`None` without a gate) and the fused feature `(batch, dim, height, width)` for the decoder.
        """
        batch_size, height, width, dim = visual.shape
        pixels = visual.reshape(batch_size, height * width, dim)
        residual = self.pixel_word_attention(pixels, words, word_mask)
        feature_map = visual.permute(0, 3, 1, 2)
        mixed = [branch(feature_map, words, word_mask).flatten(2).transpose(1, 2) for branch in self.pyramid]
        fused = self.mixer(torch.cat(mixed + [residual], dim=-1))  # (batch, height * width, dim)
        fused = fused.transpose(1, 2).reshape(batch_size, dim, height, width)
        gated = None
        if self.gate is not None:
            gated = self.gate(pixels, residual).view(batch_size, height, width, dim)
        return gated, fused


def normalize_over_positions(hidden_states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Instance norm of `(batch, positions, channels)` over the positions (no affine, eps 1e-5), optionally only over
    positions where `mask` `(batch, positions)` is 1; masked positions then come out as zeros."""
    if mask is None:
        mean = hidden_states.mean(dim=1, keepdim=True)
        # Two-pass variance of the centred values: `var` over the strided positions axis is several times slower.
        centered = hidden_states - mean
        variance = centered.square().mean(dim=1, keepdim=True)
        return centered / torch.sqrt(variance + 1e-5)
    weights = mask.to(hidden_states.dtype)[..., None]
    count = weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (hidden_states * weights).sum(dim=1, keepdim=True) / count
    variance = ((hidden_states - mean) ** 2 * weights).sum(dim=1, keepdim=True) / count
    return (hidden_states - mean) / torch.sqrt(variance + 1e-5) * weights


class MagNetWordPixelAttention(nn.Module):
    """
    Language-side fusion: every word attends over the pixels (keys and values instance-normalised over pixels), and
    the attended vision gates a projection of the word.

    With `released_masking` (what the released weights need), the queries are multiplied by BERT's *additive* mask:
    real words get an all-zero query (so they average the pixels) and padding positions a query scaled by -1e4; the
    output is instance-normalised over all positions, padding included, so results depend on the padded length. This
    module always runs in fp32: under fp16 the -1e4 x -1e4 products overflow.

    Inputs: `words` `(batch, num_words, text_dim)`, `pixels` `(batch, num_pixels, visual_dim)`, 0/1 `word_mask`
    `(batch, num_words)`. Output: the fusion residual `(batch, num_words, text_dim)`. On the fast path the pixel-sized
    key and value are normalised where they lie ([`~fast_path_magnet.normalize_over_positions_in_place`]).
    """

    def __init__(
        self,
        text_dim: int,
        visual_dim: int,
        dropout: float = 0.0,
        released_masking: bool = True,
        config: MagNetConfig | None = None,
    ):
        super().__init__()
        self.released_masking = released_masking
        self.config = config  # `magnet_implementation` is read at every forward
        # Created in fp32 whatever the default dtype (`_from_config(config, dtype=torch.bfloat16)`): see the class
        # docstring; `_keep_in_fp32_modules_strict` keeps it there when loading.
        fp32 = torch.float32
        self.visual_projection = nn.Linear(text_dim, text_dim, dtype=fp32)
        self.query_projection = nn.Linear(text_dim, text_dim, dtype=fp32)
        self.key_projection = nn.Linear(visual_dim, text_dim, dtype=fp32)
        self.value_projection = nn.Linear(visual_dim, text_dim, dtype=fp32)
        self.output_projection = nn.Linear(text_dim, text_dim, dtype=fp32)
        self.fusion_projection = nn.Linear(text_dim, text_dim, dtype=fp32)
        self.dropout = nn.Dropout(dropout)
        self.scale = text_dim**-0.5

    def forward(self, words: torch.Tensor, pixels: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        if uses_fast_path(self.config, self, pixels):
            tuning = FastPathTuning.for_device(pixels.device, self.config)
            normalize_pixels = functools.partial(normalize_over_positions_in_place, tuning=tuning)
        else:
            normalize_pixels = normalize_over_positions
        with torch.autocast(device_type=words.device.type, enabled=False):
            words, pixels = _at_least_float32(words), _at_least_float32(pixels)
            word_mask = word_mask.to(words.dtype)
            visual = self.dropout(F.gelu(self.visual_projection(words)))
            if self.released_masking:
                query_scale = (1.0 - word_mask) * RELEASED_ADDITIVE_MASK_VALUE  # 0 for words, -1e4 for padding
            else:
                query_scale = word_mask
            query = self.query_projection(words) * query_scale[..., None]  # (batch, num_words, text_dim)
            # The pixel-sized key and value (text_dim wide: 44 MB per image at stage 1 of a 480x480 input) are made
            # one after the other.
            key = normalize_pixels(self.key_projection(pixels))  # (batch, num_pixels, text_dim)
            scores = torch.matmul(query, key.transpose(1, 2)) * self.scale  # (batch, num_words, num_pixels)
            del key
            if self.released_masking:
                # Constant along the softmax axis, so it masks nothing; kept because at fp32 it rounds the padding
                # rows' huge scores exactly as they were rounded when the released weights were trained.
                scores = scores + (1e4 * query_scale[..., None] - 1e4)
            value = normalize_pixels(self.value_projection(pixels))  # (batch, num_pixels, text_dim)
            attended = self.output_projection(torch.matmul(scores.softmax(dim=-1), value))
            del value
            attended = normalize_over_positions(attended, None if self.released_masking else word_mask)
            return self.dropout(F.gelu(self.fusion_projection(visual * attended)))


class MagNetLanguageFusion(nn.Module):
    """Language-side fusion of one stage: word-pixel attention whose residual enters the language stream through a gate.

    Inputs: `words` `(batch, num_words, text_dim)`, `pixels` `(batch, num_pixels, visual_dim)`, 0/1 `word_mask`
    `(batch, num_words)`. Output: the fused language stream, shaped as `words`.
    """

    def __init__(
        self, text_dim: int, visual_dim: int, dropout: float, released_masking: bool, config: MagNetConfig | None = None
    ):
        super().__init__()
        self.config = config
        self.word_pixel_attention = MagNetWordPixelAttention(text_dim, visual_dim, dropout, released_masking, config)
        self.gate = MagNetResidualGate(text_dim, nn.ReLU, dtype=torch.float32)

    def forward(self, words: torch.Tensor, pixels: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        weights_dtype = self.gate.in_proj.weight.dtype
        if weights_dtype in (torch.float16, torch.bfloat16):
            raise ValueError(
                f"The language fusion's weights are {weights_dtype}, but it must run in float32 (its released masking "
                f"overflows half precision). Load with `from_pretrained(..., dtype={weights_dtype})`, which keeps it "
                "in float32, call `.float()` on the model's `language_fusions` after casting, or cast nothing and run "
                "under `torch.autocast`."
            )
        # Fast path: a group of images at a time, sized by the pixel-sized key and value (text_dim wide).
        residual = run_in_groups(
            self.word_pixel_attention,
            (words, pixels, word_mask),
            pixels.shape[1] * self.word_pixel_attention.key_projection.out_features,
            self.config,
            self,
        )
        return self.gate(_at_least_float32(words), residual).to(words.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Pixel decoder: Mask2Former's multi-scale deformable encoder over all four fused maps
# --------------------------------------------------------------------------------------------------------------------


class MagNetPixelDecoderLayer(nn.Module):
    """Post-norm deformable self-attention + ReLU FFN over the flattened multi-scale tokens `(batch, tokens, hidden)`.
    On the fast path everything after the attention runs in place ([`~fast_path_magnet.pixel_decoder_post_attention`])."""

    def __init__(self, config: MagNetConfig, num_levels: int):
        super().__init__()
        self.config = config
        hidden = config.decoder_hidden_size
        self.self_attn = MagNetMultiscaleDeformableAttention(
            embed_dim=hidden,
            num_heads=config.pixel_decoder_num_heads,
            n_levels=num_levels,
            n_points=config.pixel_decoder_num_points,
            config=config,
        )
        self.self_attn_layer_norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, config.pixel_decoder_feedforward_size)
        self.fc2 = nn.Linear(config.pixel_decoder_feedforward_size, hidden)
        self.final_layer_norm = nn.LayerNorm(hidden)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        attended, _ = self.self_attn(
            hidden_states=hidden_states,
            encoder_hidden_states=hidden_states,
            position_embeddings=position_embeddings,
            reference_points=reference_points,
            spatial_shapes_list=spatial_shapes,
            level_start_index=level_start_index,
        )
        if uses_fast_path(self.config, self, hidden_states):
            return pixel_decoder_post_attention(self, hidden_states, attended)
        hidden_states = self.self_attn_layer_norm(hidden_states + attended)
        return self.final_layer_norm(hidden_states + self.fc2(self.fc1(hidden_states).relu()))


class MagNetPixelDecoder(nn.Module):
    """
    Projects the four fused maps to `decoder_hidden_size`, refines them jointly with deformable attention, and returns
    the mask features (stride 4) and the stride-32/16/8 maps the transformer decoder cycles through. No FPN convs: all
    four levels go through the deformable encoder.
    """

    def __init__(self, config: MagNetConfig):
        super().__init__()
        hidden = config.decoder_hidden_size
        self.input_projections = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(dim, hidden, kernel_size=1), nn.GroupNorm(32, hidden)) for dim in config.stage_dims[::-1]]
        )  # coarse to fine
        self.position_embedding = Mask2FormerSinePositionEmbedding(num_position_features=hidden // 2, normalize=True)
        self.level_embed = nn.Parameter(torch.zeros(len(config.stage_dims), hidden))
        self.layers = nn.ModuleList(
            [MagNetPixelDecoderLayer(config, len(config.stage_dims)) for _ in range(config.pixel_decoder_layers)]
        )
        self.mask_projection = nn.Conv2d(hidden, hidden, kernel_size=1)

    @staticmethod
    def reference_points(spatial_shapes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
        """Pixel centres of every level in [0, 1], `(1, tokens, levels, 2)` as (x, y)."""
        points = []
        for height, width in spatial_shapes:
            y, x = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=device),
                torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=device),
                indexing="ij",
            )
            points.append(torch.stack((x.reshape(-1) / width, y.reshape(-1) / height), dim=-1))
        return torch.cat(points, dim=0)[None, :, None, :].expand(-1, -1, len(spatial_shapes), -1)

    def forward(self, fused_features: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`fused_features`: fine to coarse `(batch, C_k, H_k, W_k)`. Returns `(mask_features, [1/32, 1/16, 1/8 maps])`."""
        spatial_shapes = [tuple(feature.shape[-2:]) for feature in fused_features[::-1]]
        sizes = [height * width for height, width in spatial_shapes]
        batch_size = fused_features[0].shape[0]
        hidden_states = position_embeddings = None
        for level, (feature, projection, start) in enumerate(
            zip(fused_features[::-1], self.input_projections, [0, *itertools.accumulate(sizes)])
        ):
            # Under autocast the sampling and GroupNorm stay in fp32 at least, as released; a model whose weights were
            # loaded in half precision runs in its own dtype.
            feature = feature.to(torch.promote_types(feature.dtype, projection[0].weight.dtype))
            source = projection(feature).flatten(2).transpose(1, 2)  # (batch, H_l * W_l, hidden)
            # The sine embedding is the same for every image: computed for one and broadcast over the batch.
            position = self.position_embedding(torch.Size((1, *feature.shape[1:])), feature.device, feature.dtype)
            position = position.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1)
            if hidden_states is None:  # every level written straight into its slice of the token sequence
                hidden_states = source.new_empty(batch_size, sum(sizes), source.shape[-1])
                position_embeddings = position.new_empty(1, sum(sizes), position.shape[-1])
            hidden_states[:, start : start + sizes[level]] = source
            position_embeddings[:, start : start + sizes[level]] = position
            del source, position
        level_start_index = torch.tensor([0] + sizes[:-1], device=hidden_states.device).cumsum(0)
        reference_points = self.reference_points(spatial_shapes, hidden_states.device)
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_embeddings, reference_points, spatial_shapes, level_start_index)
        maps = [
            level.transpose(1, 2).reshape(level.shape[0], -1, height, width)
            for level, (height, width) in zip(hidden_states.split(sizes, dim=1), spatial_shapes)
        ]
        return self.mask_projection(maps[-1]), maps[:3]


# --------------------------------------------------------------------------------------------------------------------
# Pre-trained model and the network
# --------------------------------------------------------------------------------------------------------------------


class MagNetPreTrainedModel(PreTrainedModel):
    config: MagNetConfig
    config_class = MagNetConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    # BERT runs either; Swin's window attention follows the choice too (MagNetSwinBlock). The deformable pixel
    # decoder and Mask2Former's decoder have a single implementation.
    _supports_sdpa = True

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        # transformers' heuristic looks for AttentionInterface use in the module source and finds MagNet's fusion
        # attention (one implementation). Every module that has a choice reads it from its config at each forward (BERT
        # from the text config, the Swin blocks and the Mask Grounding layers from MagNet's), so
        # `set_attn_implementation` takes effect at once.
        return True

    # Units that hold a residual inside (so must stay on one device) and that FSDP wraps one by one.
    _no_split_modules = [
        "MagNetSwinBlock",
        "BertLayer",
        "MagNetImageFusion",
        "MagNetLanguageFusion",
        "MagNetPixelDecoderLayer",
        "Mask2FormerMaskedAttentionDecoderLayer",
    ]
    # Loading with `dtype=torch.bfloat16` (or float16) keeps the language fusion in fp32: its released masking scales
    # queries by -1e4, and the products overflow half precision.
    _keep_in_fp32_modules_strict = ["language_fusions"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, MagNetResidualGate):
            # The gates start closed so that new training begins from the unimodal streams.
            init.zeros_(module.in_proj.weight)
            init.zeros_(module.out_proj.weight)
        elif isinstance(module, Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
            init.constant_(module.sampling_offsets.weight, 0.0)
            thetas = torch.arange(module.n_heads, dtype=torch.float32) * (2.0 * math.pi / module.n_heads)
            grid = torch.stack([thetas.cos(), thetas.sin()], -1)
            grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(module.n_heads, 1, 1, 2)
            grid = grid.repeat(1, module.n_levels, module.n_points, 1)
            grid = grid * torch.arange(1, module.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
            init.copy_(module.sampling_offsets.bias, grid.view(-1))
            init.constant_(module.attention_weights.weight, 0.0)
            init.constant_(module.attention_weights.bias, 0.0)
            init.xavier_uniform_(module.value_proj.weight)
            init.constant_(module.value_proj.bias, 0.0)
            init.xavier_uniform_(module.output_proj.weight)
            init.constant_(module.output_proj.bias, 0.0)
        elif isinstance(module, WindowAttention):
            init.trunc_normal_(module.relative_position_bias_table, std=0.02)
            # A non-persistent buffer: checkpoints do not carry it, so it is rebuilt whenever weights are initialised.
            init.copy_(module.relative_position_index, get_relative_position_index(*module.window_size))
        elif isinstance(module, MagNetPixelDecoder):
            init.normal_(module.level_embed, std=1.0)
        elif isinstance(module, MagNetMaskGroundingHead):
            init.trunc_normal_(module.modality_embeddings, std=std)
        elif isinstance(module, nn.MultiheadAttention):
            # torch's attention (Mask2Former's cross-attention, the Mask Grounding layers) keeps its input projection
            # as a bare parameter that no Linear branch reaches: a checkpoint without it would otherwise leave it
            # uninitialised memory. torch's own initialisation, redrawn.
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
        elif isinstance(module, BertLMPredictionHead):
            init.zeros_(module.bias)  # the vocabulary projection itself is tied to the word embeddings
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=1.0)
        if isinstance(module, MagNetSwinBlock):
            module._shift_masks.clear()

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs) -> None:
        """As in transformers: Swin blocks, BERT layers and the masked-attention decoder layers are checkpointed
        with the settings given, except that the decoder layers always use non-reentrant checkpointing. Mask2Former's
        decoder hands them the per-level position embeddings (which need gradients) inside a list, which reentrant
        checkpointing cannot track: the backward would run through those embeddings twice and fail."""
        super()._set_gradient_checkpointing(enable, *args, **kwargs)
        for module in self.modules():
            if isinstance(module, Mask2FormerMaskedAttentionDecoderLayer):
                module._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)

    def _wants_attentions(self, output_attentions: bool | None) -> bool:
        """`output_attentions` returns BERT's self-attention maps, which only eager attention computes (as in BERT
        itself); under another implementation none are returned and a warning says why."""
        wanted = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        if wanted and self.config.text_config._attn_implementation != "eager":
            logger.warning_once(
                "output_attentions=True returns BERT's attention maps, which only eager attention computes: none are "
                "returned. Load or build the model with attn_implementation='eager' to get them."
            )
            return False
        return wanted

    def save_pretrained(self, save_directory, is_main_process: bool = True, *args, **kwargs):
        """
        As in transformers, and every saved folder also carries its Hub remote code and declares the
        `referring-image-segmentation` pipeline, so that `pipeline(model=folder, trust_remote_code=True)` and the Auto
        classes load it in a process that never imports magnet_hf, whoever wrote it (conversion, training, the demo
        model, the pipeline). transformers records remote code only for classes registered with
        `register_for_auto_class`, and the pipeline task only when the pipeline itself is saved, hence the override.

        `auto_map` names the config and both model classes (`AutoModel`: the network, `AutoModelForImageSegmentation`:
        with training losses); the processor's save records its own.
        """
        # The pipeline module is imported here, not at the top, because it is only needed to save; the import also
        # makes transformers copy it (and the processing modules it imports) with this file as remote code.
        from .pipeline_magnet import REFERRING_SEGMENTATION_TASK, MagNetReferringSegmentationPipeline

        module = __name__.split(".")[-1]
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.setdefault("AutoConfig", f"{MagNetConfig.__module__.split('.')[-1]}.{MagNetConfig.__name__}")
        auto_map.setdefault("AutoModel", f"{module}.MagNetModel")
        auto_map.setdefault("AutoModelForImageSegmentation", f"{module}.MagNetForReferringSegmentation")
        self.config.auto_map = auto_map
        custom_pipelines = dict(getattr(self.config, "custom_pipelines", None) or {})
        # The entry Pipeline.save_pretrained writes for a registered pipeline (see transformers' PipelineRegistry).
        custom_pipelines.setdefault(
            REFERRING_SEGMENTATION_TASK,
            {
                "impl": f"{MagNetReferringSegmentationPipeline.__module__.split('.')[-1]}.{MagNetReferringSegmentationPipeline.__name__}",
                "pt": ["AutoModel"],
                "tf": [],
                "type": "multimodal",
            },
        )
        self.config.custom_pipelines = custom_pipelines
        result = super().save_pretrained(save_directory, is_main_process, *args, **kwargs)
        if is_main_process and Path(save_directory).is_dir():
            # Copies this module, the pipeline module and every module they import relatively.
            custom_object_save(self, save_directory)
        return result


class MagNetModel(MagNetPreTrainedModel):
    """
    The MagNet inference network: image and language streams fused after each of four stages, a deformable pixel
    decoder and a one-query masked-attention decoder. Predicts one mask per (image, expression) pair.
    """

    # Training-only heads of MagNetForReferringSegmentation, present when a full checkpoint is loaded as AutoModel.
    _keys_to_ignore_on_load_unexpected = [r"^text_projection\.", r"^mask_grounding\."]

    def __init__(self, config: MagNetConfig):
        super().__init__(config)
        text_dim = config.text_config.hidden_size
        self.image_encoder = MagNetImageEncoder(config)
        self.text_encoder = BertModel(config.text_config, add_pooling_layer=False)
        num_stages = len(config.stage_dims)
        self.image_fusions = nn.ModuleList(
            [
                MagNetImageFusion(dim, text_dim, config.fusion_pool_sizes, config.fusion_dropout, has_gate=i < num_stages - 1)
                for i, dim in enumerate(config.stage_dims)
            ]
        )
        self.language_fusions = nn.ModuleList(
            [
                MagNetLanguageFusion(text_dim, dim, config.fusion_dropout, config.released_language_masking, config)
                for dim in config.stage_dims
            ]
        )
        self.pixel_decoder = MagNetPixelDecoder(config)
        self.transformer_decoder = Mask2FormerTransformerModule(
            in_features=config.decoder_hidden_size, config=self._mask2former_config(config)
        )
        self.class_predictor = nn.Linear(config.decoder_hidden_size, 2)
        self.post_init()

    @staticmethod
    def _mask2former_config(config: MagNetConfig) -> Mask2FormerConfig:
        """The settings transformers' Mask2Former decoder reads, taken from the MagNet config."""
        return Mask2FormerConfig(
            hidden_dim=config.decoder_hidden_size,
            mask_feature_size=config.decoder_hidden_size,
            feature_size=config.decoder_hidden_size,
            num_queries=config.num_queries,
            # Mask2Former's decoder builds `decoder_layers - 1` layers (the first prediction needs no layer).
            decoder_layers=config.decoder_layers + 1,
            num_attention_heads=config.decoder_num_heads,
            dim_feedforward=config.decoder_feedforward_size,
            pre_norm=False,
            dropout=0.0,
            enforce_input_projection=False,
        )

    def _check_inputs(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        if pixel_values is None or input_ids is None:
            raise ValueError("MagNet needs both `pixel_values` and `input_ids` (use MagNetProcessor to make them).")
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` must be (batch, {self.config.num_channels}, height, width), got {tuple(pixel_values.shape)}."
            )
        if input_ids.dim() != 2 or input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"`input_ids` must be (batch, sequence_length) with the batch of `pixel_values` "
                f"({pixel_values.shape[0]}), got {tuple(input_ids.shape)}."
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` {tuple(attention_mask.shape)} must match `input_ids` {tuple(input_ids.shape)}."
            )
        limit = self.config.text_config.max_position_embeddings
        if input_ids.shape[1] > limit:
            raise ValueError(f"Sequences of {input_ids.shape[1]} tokens exceed BERT's {limit} positions.")
        minimum = self.config.patch_size * 2 ** (len(self.config.depths) - 1)
        if min(pixel_values.shape[-2:]) < minimum:
            raise ValueError(f"Images must be at least {minimum}x{minimum} pixels, got {tuple(pixel_values.shape[-2:])}.")

    def get_input_embeddings(self) -> nn.Embedding:
        """BERT's word embeddings (`resize_token_embeddings` resizes them)."""
        return self.text_encoder.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_encoder.embeddings.word_embeddings = value

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_text_features: bool = False,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> MagNetModelOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images ([`MagNetImageProcessor`]).
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                BERT token ids of one expression per image, padded with id 0 to the training length (20 for the
                released weights: the language fusion normalises over padding, so the length changes results).
            attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                1 on real tokens, 0 on padding. Defaults to all ones.
            output_hidden_states (`bool`, *optional*):
                Also return `hidden_states` (language stream), `image_hidden_states` (image stream),
                `fused_features` and `text_features`; see [`MagNetModelOutput`].
            output_text_features (`bool`, *optional*, defaults to `False`):
                Run the last language fusion and return `text_features` (training losses need it).
            output_attentions (`bool`, *optional*):
                Also return `attentions`, BERT's self-attention maps (needs `attn_implementation="eager"`, as in BERT;
                otherwise a warning and no maps). Swin, fusion and decoder attentions are not returned.

        Returns: [`MagNetModelOutput`], or a tuple of its non-`None` fields when `return_dict=False`.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_attentions = self._wants_attentions(output_attentions)
        self._check_inputs(pixel_values, input_ids, attention_mask)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        want_text = bool(output_hidden_states) or output_text_features
        fused_features, words, text_hidden_states, image_hidden_states, attentions = self._encode(
            pixel_values,
            input_ids,
            attention_mask,
            run_last_language_fusion=want_text,
            output_hidden_states=bool(output_hidden_states),
            output_attentions=output_attentions,
        )
        # Fast path: a group of images at a time, sized by the pixel decoder's token sequence (20 MB per image at 480).
        tokens = sum(feature.shape[-2] * feature.shape[-1] for feature in fused_features)
        mask_features, mask_predictions, query_states = run_in_groups(
            self._decode, fused_features, tokens * self.config.decoder_hidden_size, self.config, self
        )
        class_predictions = [self.class_predictor(hidden) for hidden in query_states]
        auxiliary = tuple(
            {"pred_masks": masks, "pred_logits": logits}
            for masks, logits in zip(mask_predictions[:-1], class_predictions[:-1])
        )
        output = MagNetModelOutput(
            pred_masks=mask_predictions[-1],
            pred_logits=class_predictions[-1],
            auxiliary_predictions=auxiliary,
            mask_features=mask_features,
            text_features=words if want_text else None,
            fused_features=tuple(fused_features) if output_hidden_states else None,
            hidden_states=_select_layers(text_hidden_states, output_hidden_states),
            image_hidden_states=tuple(image_hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()

    def encode(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        run_last_language_fusion: bool = False,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """
        The two-stream fused encoder: Swin and BERT stages side by side, each stage followed by the image-side fusion
        (Cross-modal Alignment Module: Pixel-Word Attention, Language Gate, pyramid branch) and the language-side
        fusion, both reading the other stream's pre-fusion output.

        Args:
            pixel_values: `(batch, 3, H, W)` normalised images.
            input_ids, attention_mask: `(batch, words)` BERT ids and their 1/0 mask.
            run_last_language_fusion: also run the last stage's language fusion, whose output feeds no inference
                path (the training losses read it).

        Returns: the four fused maps `(batch, C_k, H_k, W_k)` at strides 4, 8, 16, 32, and the language stream
        `(batch, words, text_hidden)` after its last fusion (before it when `run_last_language_fusion` is off).
        """
        fused_features, words, _, _, _ = self._encode(
            pixel_values, input_ids, attention_mask, run_last_language_fusion=run_last_language_fusion
        )
        return fused_features, words

    def _encode(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        run_last_language_fusion: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ):
        """[`~MagNetModel.encode`], plus the per-layer language states, the per-stage image states and BERT's
        attention maps (lists, or `None` when not asked for) of [`MagNetModelOutput`]."""
        words = self.text_encoder.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        text_attention_mask = create_bidirectional_mask(
            config=self.text_encoder.config, inputs_embeds=words, attention_mask=attention_mask
        )
        visual = self.image_encoder.patch_embed(pixel_values)  # (batch, H/4, W/4, C)
        text_hidden_states = [words] if output_hidden_states else None
        image_hidden_states = [visual.permute(0, 3, 1, 2)] if output_hidden_states else None
        attentions = [] if output_attentions else None
        # BERT's layers run one by one here, not through BertEncoder, so their attention maps are caught on the way.
        hooks = (
            [
                layer.attention.self.register_forward_hook(lambda _, __, output: attentions.append(output[1]))
                for layer in self.text_encoder.encoder.layer
            ]
            if output_attentions
            else []
        )
        try:
            fused_features, words = self._run_stages(
                visual, words, text_attention_mask, attention_mask, run_last_language_fusion, text_hidden_states, image_hidden_states
            )
        finally:
            for hook in hooks:
                hook.remove()
        return fused_features, words, text_hidden_states, image_hidden_states, attentions

    def _run_stages(
        self,
        visual: torch.Tensor,
        words: torch.Tensor,
        text_attention_mask: torch.Tensor | None,
        attention_mask: torch.Tensor,
        run_last_language_fusion: bool,
        text_hidden_states: list[torch.Tensor] | None,
        image_hidden_states: list[torch.Tensor] | None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The four stages of [`~MagNetModel.encode`] from the patch and word embeddings; appends each layer's
        language output and each stage's image output to the lists given."""
        fused_features = []
        layer_start = 0
        num_stages = len(self.image_encoder.layers)
        for stage, layer_end in enumerate(self.config.text_stage_end_layers):
            visual = self.image_encoder.layers[stage](visual)
            for layer in self.text_encoder.encoder.layer[layer_start:layer_end]:
                words = layer(words, attention_mask=text_attention_mask)
                if text_hidden_states is not None:
                    text_hidden_states.append(words)
            if image_hidden_states is not None:
                image_hidden_states.append(visual.permute(0, 3, 1, 2))
            layer_start = layer_end
            # Both sides read each other's pre-fusion outputs.
            # Fast path: a group of images at a time, sized by the mixer's input (~2 * dim wide).
            height, width, dim = visual.shape[1:]
            gated_visual, fused = run_in_groups(
                self.image_fusions[stage], (visual, words, attention_mask), height * width * 2 * dim, self.config, self
            )
            fused_features.append(fused)
            is_last = stage == num_stages - 1
            if not is_last or run_last_language_fusion:
                pixels = visual.flatten(1, 2)
                words = self.language_fusions[stage](words, pixels, attention_mask)
            if not is_last:
                visual = gated_visual
        return fused_features, words

    def _decode(
        self, *fused_features: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """
        Pixel decoder and transformer decoder over the fused maps (fine to coarse `(batch, C_k, H_k, W_k)`). Returns
        the mask features `(batch, hidden, H/4, W/4)`, every decoder layer's mask logits `(batch, queries, H/4, W/4)`
        and its query states `(batch, queries, hidden)`.
        """
        mask_features, multi_scale_features = self.pixel_decoder(fused_features)
        decoded = self.transformer_decoder(multi_scale_features=multi_scale_features, mask_features=mask_features)
        query_states = [hidden.transpose(0, 1) for hidden in decoded.intermediate_hidden_states]
        return mask_features, list(decoded.masks_queries_logits), query_states

    def load_pretrained_image_encoder(self, name_or_path: str | Path) -> None:
        """Loads Swin weights from a timm model name (downloads) or a local `.pth`/`.bin`/`.safetensors` file (timm or
        original Microsoft layout). Fusion and decoder weights are untouched. Raises `ValueError` if nothing matches."""
        state_dict = load_swin_state_dict(name_or_path, self.image_encoder)
        _load_matching(self.image_encoder, state_dict, f"Swin weights from {name_or_path}")

    def load_pretrained_text_encoder(self, name_or_path: str | Path) -> None:
        """Loads BERT weights from a Hub id or a local folder (`BertModel.from_pretrained`)."""
        source = BertModel.from_pretrained(str(name_or_path), add_pooling_layer=False)
        _load_matching(self.text_encoder, source.state_dict(), f"BERT weights from {name_or_path}")


def load_swin_state_dict(name_or_path: str | Path, image_encoder: MagNetImageEncoder) -> dict[str, torch.Tensor]:
    """Reads Swin weights (timm name, or a local file in timm's or Microsoft's layout) and maps them onto
    `image_encoder`'s names with timm's own filter (moves the original end-of-stage patch merging to timm's
    start-of-stage, resizes position-bias tables to the window)."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    path = Path(name_or_path)
    if path.is_file():
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state_dict = load_file(str(path))
        else:
            try:
                state_dict = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:
                raise ValueError(f"Could not read Swin weights from {path}: {error}") from error
    elif path.exists():
        raise ValueError(f"{path} is a folder; pass a Swin weights file (.pth, .bin or .safetensors) or a timm name.")
    else:
        import timm

        try:
            state_dict = timm.create_model(str(name_or_path), pretrained=True, num_classes=0).state_dict()
        except Exception as error:
            raise ValueError(
                f"{name_or_path!r} is neither a local file nor a loadable timm model ({error}). "
                "Offline, pass the path of a downloaded checkpoint."
            ) from error
    if not isinstance(state_dict, dict):
        raise ValueError(f"{name_or_path} does not hold a state dict.")
    state_dict = checkpoint_filter_fn(state_dict, image_encoder)
    return {k: v for k, v in state_dict.items() if k.startswith(("patch_embed.", "layers."))}


def _load_matching(module: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Copies `state_dict` into `module`, requiring every parameter of `module` to be present with its shape."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    wrong = sorted(k for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape))
    if missing or wrong:
        details = []
        if missing:
            details.append(f"missing {len(missing)} (first: {missing[:5]})")
        if wrong:
            details.append(
                "mis-shaped " + ", ".join(f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:5])
            )
        raise ValueError(f"Cannot load {what}: " + "; ".join(details) + ". Is it the right architecture?")
    module.load_state_dict({k: state_dict[k] for k in own}, strict=True)


# --------------------------------------------------------------------------------------------------------------------
# Training-only heads: Mask Grounding (reconstructed from the paper; no training code was released)
# --------------------------------------------------------------------------------------------------------------------


class MagNetMaskEncoder(nn.Module):
    """
    Encodes the ground-truth mask for Mask Grounding: the mask's coverage of each cell of a grid four times finer than
    the visual tokens goes through two stride-2 convolutions, so the output lands exactly on the visual token grid.

    Input: 0/1 `labels` `(batch, height, width)` at any size and the target `grid` `(h, w)`.
    Output: `(batch, hidden_size, h, w)`.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, hidden_size // 4, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(hidden_size // 4, hidden_size // 2, kernel_size=3, stride=2, padding=1)
        self.projection = nn.Conv2d(hidden_size // 2, hidden_size, kernel_size=1)

    def forward(self, labels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        height, width = grid
        coverage = F.adaptive_avg_pool2d(labels[:, None].to(self.conv1.weight.dtype), (4 * height, 4 * width))
        hidden_states = F.gelu(self.conv1(coverage))  # (batch, hidden / 4, 2h, 2w)
        hidden_states = F.gelu(self.conv2(hidden_states))  # (batch, hidden / 2, h, w)
        return self.projection(hidden_states)


class MagNetMaskedTokenPredictor(nn.Module):
    """
    The paper's Masked Token Predictor: a stack of transformers' `BertLayer`s over the concatenated language, visual
    and mask tokens, then BERT's own masked-LM head (`BertLMPredictionHead`) at the masked language positions. The
    head's vocabulary projection is the text encoder's word embedding matrix itself
    (`MagNetForReferringSegmentation._tied_weights_keys`, as in `BertForMaskedLM`), stored once in checkpoints.

    Input: `tokens` `(batch, tokens, hidden)`, `token_mask` `(batch, tokens)` (1 = attend), `predict_positions`
    `(batch, words)` bool over the first `words` tokens. Output: logits `(num_positions, vocab_size)`.
    """

    def __init__(self, config: MagNetConfig):
        super().__init__()
        text_config = config.text_config
        self.config = BertConfig(
            hidden_size=config.mask_grounding_hidden_size,
            num_hidden_layers=config.mask_grounding_layers,
            num_attention_heads=config.mask_grounding_num_heads,
            intermediate_size=config.mask_grounding_intermediate_size,
            hidden_act=text_config.hidden_act,
            hidden_dropout_prob=text_config.hidden_dropout_prob,  # an MLM transformer: BERT's dropout
            attention_probs_dropout_prob=text_config.attention_probs_dropout_prob,
            layer_norm_eps=text_config.layer_norm_eps,
        )
        self.text_config = text_config  # its attention implementation is followed at every forward
        self.config._attn_implementation = text_config._attn_implementation
        self.encoder = BertEncoder(self.config)
        # BERT's MLM head works at the width of the word embeddings it is tied to.
        self.output_projection = nn.Linear(config.mask_grounding_hidden_size, text_config.hidden_size)
        self.head = BertLMPredictionHead(text_config)
        # One bias parameter, the head's own (`head.bias`, the checkpoint name). BERT's decoder holds the same tensor
        # a second time through a tie, which FSDP would see in two units (the decoder is sharded with the word
        # embeddings it shares its weight with); here the decoder has no bias and the head's is added after it.
        self.head.decoder.bias = None

    def forward(
        self, tokens: torch.Tensor, token_mask: torch.Tensor, predict_positions: torch.Tensor
    ) -> torch.Tensor:
        # The text encoder's choice, also after `set_attn_implementation` (this BertConfig is no sub-config).
        self.config._attn_implementation = self.text_config._attn_implementation
        attention_mask = create_bidirectional_mask(config=self.config, inputs_embeds=tokens, attention_mask=token_mask)
        hidden_states = self.encoder(tokens, attention_mask=attention_mask).last_hidden_state  # (batch, tokens, hidden)
        words = hidden_states[:, : predict_positions.shape[1]][predict_positions]  # (num_positions, hidden)
        return self.head(self.output_projection(words)) + self.head.bias  # (num_positions, vocab_size)


class MagNetMaskGroundingHead(nn.Module):
    """
    The paper's Mask Grounding auxiliary task (training only). It reads one pass of the two-stream fused encoder on
    the *masked* sentence ([`MagNetModel.encode`]), so no original word at a masked position can reach it:

    - language tokens: that pass's language stream after its last fusion `(batch, words, text_hidden)`, which
      carries the Mask Grounding signal back into every language- and image-side fusion;
    - visual tokens: that pass's fused map at `config.mask_grounding_visual_stride` `(batch, C_k, h, w)`;
    - mask tokens: the ground-truth mask through [`MagNetMaskEncoder`] onto the same `h x w` grid.

    Each stream is projected to `mask_grounding_hidden_size`, layer-normalised and tagged with a learned modality
    embedding; visual and mask tokens share a sine position encoding, so a mask token and the visual token at its
    place are aligned; with `config.mask_grounding_mask_tokens="add"` each mask token is added to that visual token
    instead of standing beside it, and with `mask_grounding_visual_norm="instance"` the fused map is normalised per
    image and channel first. [`MagNetMaskedTokenPredictor`] classifies the masked positions over the vocabulary.
    """

    def __init__(self, config: MagNetConfig):
        super().__init__()
        hidden = config.mask_grounding_hidden_size
        visual_dim = config.stage_dims[config.mask_grounding_stage]
        self.language_projection = nn.Sequential(nn.Linear(config.text_config.hidden_size, hidden), nn.LayerNorm(hidden))
        # Per image and channel over the places (no weights): see `MagNetConfig.mask_grounding_visual_norm`.
        self.visual_norm = (
            nn.GroupNorm(visual_dim, visual_dim, affine=False)
            if config.mask_grounding_visual_norm == "instance"
            else nn.Identity()
        )
        self.visual_projection = nn.Sequential(nn.Linear(visual_dim, hidden), nn.LayerNorm(hidden))
        self.mask_encoder = MagNetMaskEncoder(hidden)
        self.mask_norm = nn.LayerNorm(hidden)
        self.modality_embeddings = nn.Parameter(torch.zeros(3, hidden))  # language, visual, mask
        self.position_embedding = Mask2FormerSinePositionEmbedding(num_position_features=hidden // 2, normalize=True)
        self.add_mask_to_visual = config.mask_grounding_mask_tokens == "add"
        self.token_predictor = MagNetMaskedTokenPredictor(config)

    def forward(
        self,
        language_features: torch.Tensor,
        attention_mask: torch.Tensor,
        visual_features: torch.Tensor,
        labels: torch.Tensor,
        predict_positions: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            language_features: `(batch, words, text_hidden)`, the fused language stream of the masked pass.
            attention_mask: `(batch, words)`, 1 on real tokens.
            visual_features: `(batch, channels, h, w)`, the fused map of the masked pass at the configured stride.
            labels: `(batch, height, width)` 0/1 ground-truth masks.
            predict_positions: `(batch, words)` bool, the masked positions to classify.

        Returns: logits `(num_positions, vocab_size)` of the `True` entries of `predict_positions`, in row-major order.
        """
        batch_size = language_features.shape[0]
        grid = tuple(visual_features.shape[-2:])
        language = self.language_projection(language_features) + self.modality_embeddings[0]  # (batch, words, hidden)
        positions = self.position_embedding(
            (batch_size, 1, *grid), visual_features.device, language.dtype
        ).flatten(2).transpose(1, 2)  # (batch, h*w, hidden)
        visual_features = self.visual_norm(visual_features.to(language.dtype))  # (batch, C_k, h, w)
        visual = self.visual_projection(visual_features.flatten(2).transpose(1, 2))
        visual = visual + self.modality_embeddings[1] + positions  # (batch, h*w, hidden)
        mask = self.mask_encoder(labels, grid).flatten(2).transpose(1, 2)  # (batch, h*w, hidden)
        mask = self.mask_norm(mask) + self.modality_embeddings[2] + positions
        if self.add_mask_to_visual:
            tokens = torch.cat([language, visual + mask], dim=1)  # (batch, words + h*w, hidden)
        else:
            tokens = torch.cat([language, visual, mask], dim=1)  # (batch, words + 2*h*w, hidden)
        token_mask = torch.ones(tokens.shape[:2], dtype=attention_mask.dtype, device=tokens.device)
        token_mask[:, : attention_mask.shape[1]] = attention_mask  # language padding is never attended
        return self.token_predictor(tokens, token_mask, predict_positions)


class MagNetForReferringSegmentation(MagNetPreTrainedModel):
    """
    [`MagNetModel`] plus what training needs: `text_projection` (the released `lang_proj`) for the cross-modal
    alignment loss and, with `config.use_mask_grounding`, the Mask Grounding head `mask_grounding`. With `labels` it
    returns the segmentation loss (sigmoid BCE + dice on the mask and class cross-entropy, on every decoder
    prediction) plus the enabled auxiliary losses. Predictions never depend on the training heads.
    """

    # Released checkpoints never had the Mask Grounding head: it is initialised from scratch, without a warning.
    _keys_to_ignore_on_load_missing = [r"^mask_grounding\."]
    # The Masked Token Predictor's vocabulary projection is BERT's word embedding matrix, as in BertForMaskedLM.
    _mask_grounding_tied_weights_keys = {
        "mask_grounding.token_predictor.head.decoder.weight": "model.text_encoder.embeddings.word_embeddings.weight",
    }

    def __init__(self, config: MagNetConfig):
        super().__init__(config)
        self.model = MagNetModel(config)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.decoder_hidden_size)
        self.mask_grounding = MagNetMaskGroundingHead(config) if config.use_mask_grounding else None
        self._tied_weights_keys = dict(self._mask_grounding_tied_weights_keys) if config.use_mask_grounding else {}
        self.post_init()

    def post_init(self):
        super().post_init()
        if self._tied_weights_keys:
            # transformers collects BERT's `BertEmbeddings` as a unit of its own. Here the word embeddings are also the
            # Mask Grounding head's vocabulary projection, and a tied pair must stay in one unit: FSDP sharding one
            # side alone unties them (accelerate's FSDP2 preparation shards tied input and output embeddings
            # together).
            self._no_split_modules.discard("BertEmbeddings")

    def get_input_embeddings(self) -> nn.Embedding:
        """BERT's word embeddings (`resize_token_embeddings` resizes them)."""
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear | None:
        """The Masked Token Predictor's vocabulary projection, tied to the word embeddings (as `BertForMaskedLM`'s
        decoder): `resize_token_embeddings` resizes it, and its per-token bias with it. `None` without the Mask
        Grounding head."""
        if self.mask_grounding is None:
            return None
        return self.mask_grounding.token_predictor.head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        """Installs a resized vocabulary projection; the head's per-token bias (kept outside the projection, see
        [`MagNetMaskedTokenPredictor`]) follows its size: kept entries keep their values, new tokens start at 0."""
        head = self.mask_grounding.token_predictor.head
        head.decoder = new_embeddings
        vocab_size = new_embeddings.out_features
        if head.bias.shape[0] != vocab_size:
            bias = head.bias.new_zeros(vocab_size)
            kept = min(vocab_size, head.bias.shape[0])
            with torch.no_grad():
                bias[:kept] = head.bias[:kept]
            head.bias = nn.Parameter(bias, requires_grad=head.bias.requires_grad)

    def _check_training_inputs(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None,
        masked_input_ids: torch.Tensor | None,
        mlm_labels: torch.Tensor | None,
    ) -> None:
        if (masked_input_ids is None) != (mlm_labels is None):
            raise ValueError(
                "Mask Grounding needs both `masked_input_ids` and `mlm_labels` (DataCollatorForReferringSegmentation "
                "makes them together); got only one."
            )
        if masked_input_ids is None or self.mask_grounding is None:
            return
        if labels is None:
            raise ValueError("Mask Grounding reads the ground-truth mask: pass `labels` with `masked_input_ids`.")
        for name, tensor in (("masked_input_ids", masked_input_ids), ("mlm_labels", mlm_labels)):
            if tuple(tensor.shape) != tuple(input_ids.shape):
                raise ValueError(f"`{name}` {tuple(tensor.shape)} must match `input_ids` {tuple(input_ids.shape)}.")
        from .losses_magnet import IGNORE_INDEX

        vocab_size = self.config.text_config.vocab_size
        if not ((mlm_labels == IGNORE_INDEX) | ((mlm_labels >= 0) & (mlm_labels < vocab_size))).all():
            raise ValueError(f"`mlm_labels` must be token ids in [0, {vocab_size}) or {IGNORE_INDEX} (not masked).")

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.FloatTensor | None = None,
        masked_input_ids: torch.LongTensor | None = None,
        mlm_labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> MagNetReferringSegmentationOutput | tuple:
        r"""
        Args:
            pixel_values, input_ids, attention_mask, output_hidden_states, output_attentions: as in
                [`MagNetModel.forward`]. The segmentation forward always reads the unmasked `input_ids`.
            labels (`torch.FloatTensor` of shape `(batch_size, height, width)`, *optional*):
                0/1 ground-truth masks at any resolution; they are compared with the mask logits at stride 4. They
                switch the losses on: segmentation, plus the alignment loss with `config.use_alignment_loss`.
            masked_input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                `input_ids` with some tokens replaced by [MASK], for Mask Grounding (with `labels` and `mlm_labels`).
                Ignored when the model has no Mask Grounding head (`config.use_mask_grounding=False`), so one data
                collator serves both ablations.
            mlm_labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                The original ids at the masked positions, -100 elsewhere. Give both or neither of the two.

        Returns: [`MagNetReferringSegmentationOutput`], or a tuple of its non-`None` fields when `return_dict=False`.
        `loss_dict` holds `loss_mask`, `loss_dice`, `loss_class`, `loss_total_auxiliary`, and `loss_mask_grounding`,
        `loss_pixel_text`, `loss_pixel_pixel` when those terms ran (unweighted; `loss` has the configured weights).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        self._wants_attentions(output_attentions)
        self._check_training_inputs(input_ids, labels, masked_input_ids, mlm_labels)
        run_grounding = self.mask_grounding is not None and masked_input_ids is not None and labels is not None
        shared = run_grounding and self.config.mask_grounding_mode == "shared"
        run_alignment = self.config.use_alignment_loss and labels is not None
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        outputs = self.model(
            pixel_values,
            masked_input_ids if shared else input_ids,
            attention_mask,
            output_hidden_states=output_hidden_states or shared,  # the shared pass gives Mask Grounding its tokens
            output_text_features=run_alignment or shared,
            output_attentions=output_attentions,
            return_dict=True,
        )
        loss = loss_dict = None
        if labels is not None:
            # `from .module import` form: it is what save_pretrained follows to copy Hub remote code.
            from .losses_magnet import segmentation_losses

            loss, loss_dict = segmentation_losses(outputs, labels, self.config)
            if run_grounding:
                if shared:
                    masked_pass = (list(outputs.fused_features), outputs.text_features)
                else:
                    masked_pass = None
                grounding = self._mask_grounding_loss(
                    pixel_values, attention_mask, labels, masked_input_ids, mlm_labels, masked_pass
                )
                loss = loss + self.config.mask_grounding_loss_weight * grounding
                loss_dict["loss_mask_grounding"] = grounding.detach()
            if run_alignment:
                pixel_text, pixel_pixel = self._alignment_losses(outputs, attention_mask, labels)
                loss = loss + self.config.pixel_text_loss_weight * pixel_text
                loss = loss + self.config.pixel_pixel_loss_weight * pixel_pixel
                loss_dict["loss_pixel_text"] = pixel_text.detach()
                loss_dict["loss_pixel_pixel"] = pixel_pixel.detach()
        fields = dict(outputs)
        if not output_hidden_states:
            for name in ("fused_features", "hidden_states", "image_hidden_states"):
                fields.pop(name, None)
        output = MagNetReferringSegmentationOutput(loss=loss, loss_dict=loss_dict, **fields)
        return output if return_dict else output.to_tuple()

    def _mask_grounding_loss(
        self,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        masked_input_ids: torch.Tensor,
        mlm_labels: torch.Tensor,
        masked_pass: tuple[list[torch.Tensor], torch.Tensor] | None,
    ) -> torch.Tensor:
        """
        Mask Grounding's cross-entropy over the masked tokens of the batch. `masked_pass` is the (fused maps,
        language stream) of the shared forward on the masked sentence; without it (`separate` mode) the fused encoder
        runs again on the masked sentence, for the samples that have a masked token only (with the authors' rule
        about 4 in 10 short sentences draw none, and they add no loss).
        """
        from .losses_magnet import IGNORE_INDEX, mask_grounding_loss

        predict_positions = mlm_labels != IGNORE_INDEX  # (batch, words)
        if masked_pass is None:
            rows = predict_positions.any(1).nonzero().flatten()
            if rows.numel() == 0:
                # One sample with nothing to predict keeps every head parameter in the graph (a zero loss), as
                # distributed data parallel wants the same parameters used in every process.
                rows = torch.zeros(1, dtype=torch.long, device=masked_input_ids.device)
            if rows.numel() < masked_input_ids.shape[0]:  # the whole batch needs no copy
                pixel_values, masked_input_ids, attention_mask = pixel_values[rows], masked_input_ids[rows], attention_mask[rows]
                labels, predict_positions, mlm_labels = labels[rows], predict_positions[rows], mlm_labels[rows]
            fused_features, language_features = self.model.encode(
                pixel_values, masked_input_ids, attention_mask, run_last_language_fusion=True
            )
        else:
            fused_features, language_features = masked_pass
        token_logits = self.mask_grounding(
            language_features,
            attention_mask,
            fused_features[self.config.mask_grounding_stage],
            labels,
            predict_positions,
        )
        return mask_grounding_loss(token_logits, mlm_labels[predict_positions])

    def _alignment_losses(
        self, outputs: MagNetModelOutput, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Pixel-to-text and pixel-to-pixel terms on the mask features. The sentence embedding is `text_projection` of
        the mean of the fused language features over the real tokens ([CLS] and [SEP] included): the network has no
        trained pooler, and the mean is what the fusion modules themselves see of every word.
        """
        from .losses_magnet import (
            alignment_targets,
            evaluation_generator,
            pixel_pixel_alignment_loss,
            pixel_text_alignment_loss,
        )

        word_weights = attention_mask.to(outputs.text_features.dtype)[..., None]  # (batch, words, 1)
        sentence = (outputs.text_features * word_weights).sum(1) / word_weights.sum(1).clamp(min=1.0)
        text_embeddings = self.text_projection(sentence)  # (batch, decoder_hidden)
        mask_features = outputs.mask_features
        targets = alignment_targets(labels, tuple(mask_features.shape[-2:]))
        pixel_text = pixel_text_alignment_loss(
            mask_features, text_embeddings, targets, self.config.pixel_text_temperature
        )
        pixel_pixel = pixel_pixel_alignment_loss(
            mask_features,
            targets,
            self.config.pixel_pixel_temperature,
            self.config.alignment_max_pixels,
            # Training samples from the global stream (which checkpoints restore); evaluation always draws the same
            # pixels, so an eval-mode loss is a function of the inputs alone.
            generator=None if self.training else evaluation_generator(mask_features.device),
        )
        return pixel_text, pixel_pixel

    def load_pretrained_image_encoder(self, name_or_path: str | Path) -> None:
        """See [`MagNetModel.load_pretrained_image_encoder`]."""
        self.model.load_pretrained_image_encoder(name_or_path)

    def load_pretrained_text_encoder(self, name_or_path: str | Path) -> None:
        """See [`MagNetModel.load_pretrained_text_encoder`]."""
        self.model.load_pretrained_text_encoder(name_or_path)


__all__ = ["MagNetModel", "MagNetForReferringSegmentation", "MagNetPreTrainedModel", "MagNetModelOutput",
           "MagNetReferringSegmentationOutput", "MagNetMaskGroundingHead", "MagNetMaskEncoder",
           "MagNetMaskedTokenPredictor"]
