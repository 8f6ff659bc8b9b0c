# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Multi-scale deformable attention for MagNet's pixel decoder, sampled with one gather over all levels and points.

transformers' reference implementation runs `grid_sample` once per level, materialises every sampled value
`(batch * heads, head_dim, queries, levels * points)` and only then applies the attention weights: at 480x480 that is
~300 MB written, stacked and re-read per layer, and it dominated MagNet's CPU inference time. Bilinear sampling followed
by a weighted sum is linear in the values, so the four bilinear corner weights can be folded into the attention weights
and the whole thing becomes one weighted gather-and-sum per (query, head): exactly what `embedding_bag` computes, with a
fused kernel on CPU and CUDA and a backward for training. Results equal `grid_sample`'s up to float rounding order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
)

def _corners(operation, operands) -> torch.Tensor:
    """`torch.stack([operation(a, b) for a, b in operands], dim=3)`, written in place when no gradient is needed: the
    stacked copy of these ~10M-element tensors costs as much as computing them."""
    first = operands[0][0]
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for pair in operands for t in pair):
        return torch.stack([operation(a, b) for a, b in operands], dim=3)
    output = first.new_empty(*first.shape[:3], len(operands), *first.shape[3:])
    for index, (a, b) in enumerate(operands):
        operation(a, b, out=output[:, :, :, index])
    return output


def multi_scale_deformable_attention_gather(
    value: torch.Tensor,
    value_spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """
    Drop-in replacement for transformers' `multi_scale_deformable_attention` (bilinear sampling, zero padding,
    `align_corners=False`).

    Args:
        value (`torch.Tensor` of shape `(batch, sum(H_l * W_l), heads, head_dim)`): the levels flattened and concatenated.
        value_spatial_shapes (`list[tuple[int, int]]`): `(H_l, W_l)` of every level, in the order of `value`.
        sampling_locations (`torch.Tensor` of shape `(batch, queries, heads, levels, points, 2)`): `(x, y)` in [0, 1]
            relative to each level (points outside the map read zeros).
        attention_weights (`torch.Tensor` of shape `(batch, queries, heads, levels, points)`).

    Returns: `torch.Tensor` of shape `(batch, queries, heads * head_dim)`, in the dtype of `value` promoted to fp32.
    """
    batch_size, num_values, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    if len(value_spatial_shapes) != num_levels:
        raise ValueError(f"{num_levels} levels in `sampling_locations` but {len(value_spatial_shapes)} spatial shapes.")
    dtype = torch.promote_types(value.dtype, torch.float32)
    device = value.device
    value = value.to(dtype)

    # Zero padding the way grid_sample does it, without masks: every level gets a border of zeros (one row/column
    # before, two after) and coordinates are clamped to [-1, size], so an out-of-map corner either lands on the border
    # or carries zero weight. Heads go first so each (batch, head) owns one contiguous table of rows.
    padded_shapes = [(height + 3, width + 3) for height, width in value_spatial_shapes]
    levels = value.split([height * width for height, width in value_spatial_shapes], dim=1)
    table = torch.cat(
        [
            F.pad(level.permute(0, 2, 3, 1).reshape(batch_size, num_heads, head_dim, height, width), (1, 2, 1, 2))
            .flatten(3)
            .transpose(2, 3)
            for level, (height, width) in zip(levels, value_spatial_shapes)
        ],
        dim=2,
    )  # (batch, heads, padded positions, head_dim)
    table_length = table.shape[2]

    # Per-level constants, broadcast over (batch, queries, heads, levels, points).
    per_level = (1, 1, 1, num_levels, 1)
    shapes = torch.tensor(value_spatial_shapes, dtype=dtype, device=device)
    heights, widths = shapes[:, 0].view(per_level), shapes[:, 1].view(per_level)
    padded_widths = torch.tensor([width for _, width in padded_shapes], dtype=torch.int32, device=device)
    padded_sizes = torch.tensor([height * width for height, width in padded_shapes], dtype=torch.int32, device=device)
    # Row of the padded map's (0, 0) corner plus the one-pixel border offset, so (x0, y0) index it directly.
    origins = (torch.cumsum(padded_sizes, 0) - padded_sizes + padded_widths + 1).view(per_level)
    padded_widths = padded_widths.view(per_level)

    # Pixel coordinates as grid_sample derives them (align_corners=False).
    grids = 2 * sampling_locations.to(dtype) - 1
    x = ((grids[..., 0] + 1) * widths - 1) / 2  # (batch, queries, heads, levels, points)
    y = ((grids[..., 1] + 1) * heights - 1) / 2
    x = x.clamp(min=-1).minimum(widths)
    y = y.clamp(min=-1).minimum(heights)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0

    # The four bilinear corners, each computed on (batch, queries, heads, levels, points) and placed at its slot of the
    # bags, (batch, queries, heads, 4, levels, points).
    attention_weights = attention_weights.to(dtype)
    weight_top, weight_bottom = (1 - fy) * attention_weights, fy * attention_weights
    weight_left, weight_right = 1 - fx, fx
    weights = _corners(
        torch.mul,
        ((weight_top, weight_left), (weight_top, weight_right), (weight_bottom, weight_left), (weight_bottom, weight_right)),
    )
    table_offset = torch.arange(batch_size * num_heads, dtype=torch.int32, device=device) * table_length
    top_left = origins + y0.to(torch.int32) * padded_widths + x0.to(torch.int32)
    top_left += table_offset.view(batch_size, 1, num_heads, 1, 1)
    rows = _corners(torch.add, ((top_left, 0), (top_left, 1), (top_left, padded_widths), (top_left, padded_widths + 1)))

    bag_size = num_levels * num_points * 4
    output = F.embedding_bag(
        rows.reshape(-1, bag_size),
        table.reshape(-1, head_dim),
        per_sample_weights=weights.reshape(-1, bag_size),
        mode="sum",
    )  # (batch * queries * heads, head_dim)
    return output.view(batch_size, num_queries, num_heads * head_dim)


class MagNetMultiscaleDeformableAttention(Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
    """
    transformers' Mask2Former pixel-decoder deformable attention (same parameters and names, so checkpoints load
    unchanged) computing its samples with [`multi_scale_deformable_attention_gather`] instead of a per-level
    `grid_sample` loop. The locations, attention weights and sampling always run in fp32 at least, as released: under
    bf16 autocast a bf16 offset would move a sampling point by up to a pixel on the 120x120 level.
    """

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        position_embeddings: torch.Tensor | None = None,
        reference_points: torch.Tensor | None = None,
        spatial_shapes_list: list[tuple[int, int]] | None = None,
        level_start_index: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if reference_points is None or reference_points.shape[-1] != 2:
            raise ValueError("MagNet's deformable attention takes (x, y) reference points of shape (..., levels, 2).")
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        batch_size, num_queries, _ = hidden_states.shape
        sequence_length = encoder_hidden_states.shape[1]
        if sum(height * width for height, width in spatial_shapes_list) != sequence_length:
            raise ValueError("The spatial shapes do not add up to the sequence length of the encoder hidden states.")
        if position_embeddings is not None:
            hidden_states = hidden_states + position_embeddings

        value = self.value_proj(encoder_hidden_states)
        if attention_mask is not None:
            value = value.masked_fill(attention_mask[..., None], 0.0)
        value = value.view(batch_size, sequence_length, self.n_heads, self.d_model // self.n_heads)

        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            queries = hidden_states.to(torch.promote_types(hidden_states.dtype, torch.float32))
            sampling_offsets = F.linear(
                queries, self.sampling_offsets.weight.to(queries.dtype), self.sampling_offsets.bias.to(queries.dtype)
            ).view(batch_size, num_queries, self.n_heads, self.n_levels, self.n_points, 2)
            attention_weights = F.linear(
                queries, self.attention_weights.weight.to(queries.dtype), self.attention_weights.bias.to(queries.dtype)
            ).view(batch_size, num_queries, self.n_heads, self.n_levels * self.n_points)
            attention_weights = attention_weights.softmax(-1).view(
                batch_size, num_queries, self.n_heads, self.n_levels, self.n_points
            )
            # Offsets are in pixels of each level; dividing by (W, H) puts them in the [0, 1] frame of the references.
            normalizer = torch.tensor(
                [[width, height] for height, width in spatial_shapes_list], dtype=queries.dtype, device=queries.device
            )
            sampling_locations = (
                reference_points[:, :, None, :, None, :].to(queries.dtype)
                + sampling_offsets / normalizer[None, None, None, :, None, :]
            )
            output = multi_scale_deformable_attention_gather(
                value, spatial_shapes_list, sampling_locations, attention_weights
            )
        output = self.output_proj(output)
        return output, attention_weights
