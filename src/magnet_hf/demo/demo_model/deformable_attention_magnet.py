# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Multi-scale deformable attention for MagNet's pixel decoder, sampled with one gather over all levels and points.

transformers' reference implementation runs `grid_sample` once per level, materialises every sampled value
`(batch * heads, head_dim, queries, levels * points)` and only then applies the attention weights: at 480x480 that is
~300 MB written, stacked and re-read per layer, and it dominated MagNet's CPU inference time. Bilinear sampling followed
by a weighted sum is linear in the values, so the four bilinear corner weights can be folded into the attention weights
and the whole thing becomes one weighted gather-and-sum per (query, head): exactly what `embedding_bag` computes, with a
fused kernel on CPU and CUDA (its backward is written out in [`_WeightedRowSum`]). Results equal `grid_sample`'s up to
float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
)

from .fast_path_magnet import FastPathTuning, uses_fast_path, without_autograd


def _per_level(values: list[float], num_points: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One value per level repeated over its points, `(levels * points,)`: broadcasting a constant over the last,
    contiguous axis keeps the elementwise kernels vectorised (a `(levels, 1)` constant would not)."""
    return torch.tensor(values, dtype=dtype, device=device).repeat_interleave(num_points)


def _corners(operation, operands, in_place: bool = False) -> torch.Tensor:
    """`operation(a, b)` for every `(a, b)` of `operands`, stacked on a new axis 3. With `in_place` (the fast path,
    which computes no gradients) each result is written straight into its slot (`out=`) instead of stacked: the
    stacked copy of these ~10M-element tensors costs about as much as computing them."""
    if not in_place:
        return torch.stack([operation(a, b) for a, b in operands], dim=3)
    first = operands[0][0]
    output = first.new_empty(*first.shape[:3], len(operands), *first.shape[3:])
    for index, (a, b) in enumerate(operands):
        operation(a, b, out=output[:, :, :, index])
    return output


_BACKWARD_SLICE_ELEMENTS = 1 << 18  # 1 MB of fp32 temporaries per slice in `_WeightedRowSum.backward`


class _WeightedRowSum(torch.autograd.Function):
    """`embedding_bag(rows, table, per_sample_weights=weights, mode="sum")` with its backward written out. On CPU,
    `embedding_bag`'s own backward sorts the indices and then accumulates one sample at a time, a third of a magnet-tiny
    training step. Here the table's gradient is the transposed gather, itself an `embedding_bag` (the samples sorted
    by row, each row's bag summing the weighted output gradients of the bags that read it), and the weights' gradient
    is one gather and row-wise dot product: 4x faster at 96 px, the forward untouched and the gradients equal up to the
    order of summation."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, table: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows, table, weights)
        return F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        rows, table, weights = ctx.saved_tensors
        bag_size = rows.shape[1]
        flat_rows = rows.reshape(-1)
        grad_table = grad_weights = None
        if ctx.needs_input_grad[1]:
            order = torch.argsort(flat_rows)  # samples grouped by the table row they read
            counts = torch.bincount(flat_rows, minlength=table.shape[0])
            offsets = torch.zeros_like(counts)
            torch.cumsum(counts[:-1], dim=0, out=offsets[1:])
            grad_table = F.embedding_bag(
                torch.div(order, bag_size, rounding_mode="floor"),  # the bag of each sample
                grad_output,
                offsets=offsets,
                per_sample_weights=weights.reshape(-1).index_select(0, order),
                mode="sum",
            )
        if ctx.needs_input_grad[2]:
            # A slice of bags at a time: the gathered rows of a whole call (22 MB at 128 px) would be a fresh mmap,
            # page-faulted in on every call, which cost more than the arithmetic.
            grad_weights = weights.new_empty(weights.shape)
            bags_per_slice = max(1, _BACKWARD_SLICE_ELEMENTS // (bag_size * table.shape[1]))
            for start in range(0, rows.shape[0], bags_per_slice):
                part = slice(start, start + bags_per_slice)
                torch.linalg.vecdot(F.embedding(rows[part], table), grad_output[part, None, :], out=grad_weights[part])
        return None, grad_table, grad_weights


def weighted_row_sum(rows: torch.Tensor, table: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`(bags, head_dim)`: for every bag, the sum of `weights[bag, k] * table[rows[bag, k]]` over `k` (see
    [`_WeightedRowSum`])."""
    return _WeightedRowSum.apply(rows, table, weights)


def padded_value_table(value: torch.Tensor, value_spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
    """
    The values laid out for [`sample_pixel_coordinates`]: `(batch, heads, padded positions, head_dim)`, one contiguous
    table of rows per (batch, head), every level with a border of zeros (one row/column before, two after). With the
    coordinates clamped to [-1, size], a bilinear corner off the map then lands on the border or carries zero weight:
    zero padding without masks. Each level is copied straight into its place (no per-level intermediates).
    """
    batch_size, _, num_heads, head_dim = value.shape
    padded_sizes = [(height + 3) * (width + 3) for height, width in value_spatial_shapes]
    table = value.new_zeros(batch_size, num_heads, sum(padded_sizes), head_dim)
    value_start, table_start = 0, 0
    for (height, width), padded_size in zip(value_spatial_shapes, padded_sizes):
        level = value[:, value_start : value_start + height * width]
        region = table[:, :, table_start : table_start + padded_size]  # slices, not split(): autograd allows their copy_
        interior = region.view(batch_size, num_heads, height + 3, width + 3, head_dim)[:, :, 1 : height + 1, 1 : width + 1]
        interior.copy_(level.view(batch_size, height, width, num_heads, head_dim).permute(0, 3, 1, 2, 4))
        value_start, table_start = value_start + height * width, table_start + padded_size
    return table


def sample_pixel_coordinates(
    table: torch.Tensor,
    value_spatial_shapes: list[tuple[int, int]],
    x: torch.Tensor,
    y: torch.Tensor,
    attention_weights: torch.Tensor,
    in_place: bool = False,
) -> torch.Tensor:
    """
    Attention-weighted bilinear samples at pixel coordinates (zero padding; pixel `i` covers `[i - 0.5, i + 0.5]`).

    Args:
        table (`torch.Tensor`): the values as [`padded_value_table`] lays them out.
        value_spatial_shapes (`list[tuple[int, int]]`): `(H_l, W_l)` of every level.
        x, y (`torch.Tensor` of shape `(batch, queries, heads, levels * points)`): pixel coordinates in each point's level.
        attention_weights (`torch.Tensor` of shape `(batch, queries, heads, levels * points)`).
        in_place (`bool`): build the bilinear corners in place ([`_corners`]); no gradient flows then.

    Returns: `torch.Tensor` of shape `(batch, queries, heads * head_dim)` in the dtype of `x`.
    """
    batch_size, num_heads, table_length, head_dim = table.shape
    num_queries, num_samples = x.shape[1], x.shape[-1]
    num_levels = len(value_spatial_shapes)
    num_points = num_samples // num_levels
    dtype, device = x.dtype, x.device
    table = table.to(dtype)

    heights = [height for height, _ in value_spatial_shapes]
    widths = [width for _, width in value_spatial_shapes]
    padded_widths = [width + 3 for width in widths]
    padded_sizes = [(height + 3) * (width + 3) for height, width in value_spatial_shapes]
    # Row of each level's pixel (0, 0) in the table: the level's start plus the border.
    origins = [sum(padded_sizes[:level]) + padded_widths[level] + 1 for level in range(num_levels)]

    lowest = torch.full((num_samples,), -1.0, dtype=dtype, device=device)
    x = torch.clamp(x, min=lowest, max=_per_level(widths, num_points, dtype, device))
    y = torch.clamp(y, min=lowest, max=_per_level(heights, num_points, dtype, device))
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0

    # The four bilinear corners, each computed on (batch, queries, heads, samples) and placed at its slot of the bags
    # (batch, queries, heads, 4, samples).
    attention_weights = attention_weights.to(dtype)
    weight_top, weight_bottom = (1 - fy) * attention_weights, fy * attention_weights
    weight_left, weight_right = 1 - fx, fx
    weights = _corners(
        torch.mul,
        ((weight_top, weight_left), (weight_top, weight_right), (weight_bottom, weight_left), (weight_bottom, weight_right)),
        in_place,
    )
    strides = _per_level(padded_widths, num_points, torch.int32, device)
    top_left = y0.to(torch.int32) * strides
    top_left += x0.to(torch.int32)
    table_offsets = torch.arange(batch_size * num_heads, dtype=torch.int32, device=device) * table_length
    top_left += table_offsets.view(batch_size, 1, num_heads, 1) + _per_level(origins, num_points, torch.int32, device)
    rows = _corners(torch.add, ((top_left, 0), (top_left, 1), (top_left, strides), (top_left, strides + 1)), in_place)

    bag_size = 4 * num_samples
    output = weighted_row_sum(rows.view(-1, bag_size), table.reshape(-1, head_dim), weights.view(-1, bag_size))
    return output.view(batch_size, num_queries, num_heads * head_dim)  # from (batch * queries * heads, head_dim)


def multi_scale_deformable_attention_gather(
    value: torch.Tensor,
    value_spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """
    Drop-in replacement for transformers' `multi_scale_deformable_attention` (bilinear sampling, zero padding,
    `align_corners=False`), without its per-level loop and intermediate samples.

    Args:
        value (`torch.Tensor` of shape `(batch, sum(H_l * W_l), heads, head_dim)`): the levels flattened and concatenated.
        value_spatial_shapes (`list[tuple[int, int]]`): `(H_l, W_l)` of every level, in the order of `value`.
        sampling_locations (`torch.Tensor` of shape `(batch, queries, heads, levels, points, 2)`): `(x, y)` in [0, 1]
            relative to each level (points outside the map read zeros).
        attention_weights (`torch.Tensor` of shape `(batch, queries, heads, levels, points)`).

    Returns: `torch.Tensor` of shape `(batch, queries, heads * head_dim)`, in the dtype of `value` promoted to fp32.
    """
    batch_size, num_queries, num_heads, num_levels, num_points, _ = sampling_locations.shape
    if len(value_spatial_shapes) != num_levels:
        raise ValueError(f"{num_levels} levels in `sampling_locations` but {len(value_spatial_shapes)} spatial shapes.")
    dtype = torch.promote_types(value.dtype, torch.float32)
    locations = sampling_locations.to(dtype).flatten(3, 4)  # (batch, queries, heads, samples, 2)
    widths = _per_level([width for _, width in value_spatial_shapes], num_points, dtype, value.device)
    heights = _per_level([height for height, _ in value_spatial_shapes], num_points, dtype, value.device)
    x = locations[..., 0] * widths - 0.5
    y = locations[..., 1] * heights - 0.5
    table = padded_value_table(value.to(dtype), value_spatial_shapes)
    return sample_pixel_coordinates(table, value_spatial_shapes, x, y, attention_weights.flatten(3, 4))


def _one_image(tensor: torch.Tensor | None, image: int) -> torch.Tensor | None:
    """Image `image` of a batched tensor, keeping the batch axis; a tensor of batch 1 is shared by every image."""
    if tensor is None or tensor.shape[0] == 1:
        return tensor
    return tensor[image : image + 1]


def _join_image_major(chunks: list[torch.Tensor], batch_size: int) -> torch.Tensor:
    """Concatenates `(1, queries_chunk, ...)` pieces listed image by image into `(batch, queries, ...)` (a single
    piece is returned as it is: `torch.cat` would copy it)."""
    per_image = len(chunks) // batch_size
    images = [
        chunks[i] if per_image == 1 else torch.cat(chunks[i : i + per_image], dim=1)
        for i in range(0, len(chunks), per_image)
    ]
    return images[0] if batch_size == 1 else torch.cat(images)


class MagNetMultiscaleDeformableAttention(Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
    """
    transformers' Mask2Former pixel-decoder deformable attention (same parameters and names, so checkpoints load
    unchanged) computing its samples with [`sample_pixel_coordinates`] instead of a per-level `grid_sample` loop, a
    chunk of queries at a time. Returns `(output, attention_weights)`, the weights only with `output_attentions=True`
    (`None` otherwise, as in transformers' attention modules), and a position embedding of batch 1 is broadcast.

    The queries are taken a chunk at a time, the chunk sized by [`~fast_path_magnet.FastPathTuning`] for the device
    (`config.cpu_cache_bytes` when the module is given a `config`); chunking changes no number.

    The offsets are added in pixels (`reference * size - 0.5 + offset`) rather than through the [0, 1] frame
    (`(reference + offset / size) * size - 0.5`): the same point, rounded once instead of twice. The locations,
    attention weights and sampling run in fp32 at least, as released: under bf16 autocast a bf16 offset would move a
    sampling point by up to half a pixel on the 120x120 level.
    """

    def __init__(self, *args, config=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.config = config  # only its `cpu_cache_bytes` is read

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
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if reference_points is None or reference_points.shape[-1] != 2:
            raise ValueError("MagNet's deformable attention takes (x, y) reference points of shape (..., levels, 2).")
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        batch_size, num_queries, _ = hidden_states.shape
        sequence_length = encoder_hidden_states.shape[1]
        if sum(height * width for height, width in spatial_shapes_list) != sequence_length:
            raise ValueError("The spatial shapes do not add up to the sequence length of the encoder hidden states.")

        device_type = hidden_states.device.type
        num_samples = self.n_levels * self.n_points
        with torch.autocast(device_type=device_type, enabled=False):
            dtype = torch.promote_types(hidden_states.dtype, torch.float32)
            # Rows of the offset projection reordered from (heads, levels, points, xy) to (xy, heads, levels, points),
            # so that the x and the y offsets each come out as contiguous runs.
            offset_weight = self.sampling_offsets.weight.to(dtype).view(-1, 2, self.d_model).transpose(0, 1)
            offset_weight = offset_weight.reshape(-1, self.d_model)
            offset_bias = self.sampling_offsets.bias.to(dtype).view(-1, 2).transpose(0, 1).reshape(-1)
            weight_projection = (self.attention_weights.weight.to(dtype), self.attention_weights.bias.to(dtype))
            # Reference points in pixels of every level, repeated over the points: (batch, queries, 1, samples).
            widths = _per_level([width for _, width in spatial_shapes_list], self.n_points, dtype, hidden_states.device)
            heights = _per_level([height for height, _ in spatial_shapes_list], self.n_points, dtype, hidden_states.device)
            reference_points = reference_points.to(dtype).repeat_interleave(self.n_points, dim=-2)
            reference_x = (reference_points[..., 0] * widths - 0.5)[:, :, None]
            reference_y = (reference_points[..., 1] * heights - 0.5)[:, :, None]

        # A few thousand queries of one image at a time, from the position embedding to the output projection: the
        # sampling's temporaries (~100 bytes per sample, 2.4M samples per image at 480x480) stay in cache-sized pieces,
        # then joined (slices written into one output would cost autograd a copy of the whole output per chunk).
        fast = uses_fast_path(self.config, self, hidden_states)
        samples_per_chunk = FastPathTuning.for_device(hidden_states.device, self.config).samples_per_chunk
        chunk = max(1, samples_per_chunk // (self.n_heads * num_samples))

        def attend_in_chunks():
            output, outputs, all_weights = None, [], []
            for image in range(batch_size):
                # The image's values, projected and laid out for the gather here: one image's table (20 MB at
                # 480x480) is written and read while it is still in cache.
                value = self.value_proj(encoder_hidden_states[image : image + 1])
                if attention_mask is not None:
                    value = value.masked_fill(_one_image(attention_mask, image)[..., None], 0.0)
                value = value.view(1, sequence_length, self.n_heads, self.d_model // self.n_heads)
                with torch.autocast(device_type=device_type, enabled=False):
                    image_table = padded_value_table(value.to(dtype), spatial_shapes_list)
                del value
                image_positions, image_x, image_y = (
                    _one_image(t, image) for t in (position_embeddings, reference_x, reference_y)
                )
                for start in range(0, num_queries, chunk):
                    queries = hidden_states[image : image + 1, start : start + chunk]
                    if image_positions is not None:
                        queries = queries + image_positions[:, start : start + chunk]
                    length = queries.shape[1]
                    with torch.autocast(device_type=device_type, enabled=False):
                        queries = queries.to(dtype)
                        offsets = F.linear(queries, offset_weight, offset_bias).view(1, length, 2, self.n_heads, -1)
                        attention_weights = F.linear(queries, *weight_projection).view(1, length, self.n_heads, -1)
                        attention_weights = attention_weights.softmax(-1)
                        x = offsets[:, :, 0] + image_x[:, start : start + chunk]
                        y = offsets[:, :, 1] + image_y[:, start : start + chunk]
                        sampled = sample_pixel_coordinates(
                            image_table, spatial_shapes_list, x, y, attention_weights, in_place=fast
                        )
                    # Under the caller's autocast, as the unchunked projection was; weights loaded in half precision
                    # get their own dtype.
                    projected = self.output_proj(sampled.to(self.output_proj.weight.dtype))
                    if fast:
                        if output is None:
                            output = projected.new_empty(batch_size, num_queries, projected.shape[-1])
                        output[image : image + 1, start : start + length] = projected
                    else:
                        outputs.append(projected)
                    if output_attentions:
                        all_weights.append(attention_weights)
            weights = _join_image_major(all_weights, batch_size) if output_attentions else None
            return (output if fast else _join_image_major(outputs, batch_size)), weights

        # The eval-mode fast path computes no gradients, so there the chunks are written straight into one output
        # and the bilinear corners built in place (`_corners`): no joined or stacked copies.
        if fast:
            output, attention_weights = without_autograd(
                attend_in_chunks, hidden_states, encoder_hidden_states, *self.parameters()
            )
        else:
            output, attention_weights = attend_in_chunks()
        if not output_attentions:
            return output, None
        return output, attention_weights.view(batch_size, num_queries, self.n_heads, self.n_levels, self.n_points)
