# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""MagNet's fast path: the same numbers as the reference modules of `modeling_magnet.py`, computed with less memory
traffic on CPU.

What it does, and why each pays on a CPU:

- **Batch grouping** ([`run_in_groups`]): a batch runs through a module a group of images at a time, each group as
  large as keeps the module's largest per-pixel tensor within a cache-sized budget. Large maps (Swin stages 1-2 and
  the pixel decoder at 480x480) go one image at a time, small ones several at a time, where batching amortises
  reading the weights.
- **Gathered windows** ([`window_attention`], differentiable): Swin's zero padding, cyclic shift and window
  partition are one row gather with an index built once per map size, and the way back one more; the qkv and output
  projections run on the real tokens only (a zero-padded token projects to the qkv bias).
- **In-place residuals and chunking**: residuals are added into fresh outputs, and the Swin MLP, the pixel decoder's
  FFN and the language fusion's instance norms run a cache-sized chunk of tokens at a time, so that each large
  tensor is written once.

Selection: `MagNetConfig.magnet_implementation`, read at every forward ([`selects_fast_path`]): `"auto"` (the
default) takes the fast path on CPU, `"fast"` on every device, `"reference"` never. The module's mode then decides
what runs ([`uses_fast_path`]), never grad mode: in training mode only the gathered windows, which are differentiable
and keep timm's dropout and stochastic depth; in eval mode all of it. The eval-mode path computes no gradients: a
backward through it raises [`FastPathBackwardError`]; load with `"reference"` to differentiate in eval mode.

Sizes: every group and chunk size derives from one cache budget ([`FastPathTuning`]), the CPU's last-level cache as
the operating system reports it, or `MagNetConfig.cpu_cache_bytes` when set.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_magnet import MAGNET_IMPLEMENTATIONS


# Used where the operating system reports no cache size: the 32 MB last-level cache the sizes were first measured on.
FALLBACK_CACHE_BYTES = 32 * 2**20

CPU_CACHE_FOLDER = Path("/sys/devices/system/cpu/cpu0/cache")


# --------------------------------------------------------------------------------------------------------------------
# Selection and sizes
# --------------------------------------------------------------------------------------------------------------------


def selects_fast_path(config, tensor: torch.Tensor) -> bool:
    """Whether `config.magnet_implementation` selects the fast path for `tensor`'s device: `"reference"` never,
    `"fast"` always, `"auto"` on CPU."""
    choice = getattr(config, "magnet_implementation", "auto")
    if choice not in MAGNET_IMPLEMENTATIONS:
        raise ValueError(f"magnet_implementation must be one of {MAGNET_IMPLEMENTATIONS}, got {choice!r}.")
    return choice == "fast" or (choice == "auto" and tensor.device.type == "cpu")


def uses_fast_path(config, module: nn.Module, tensor: torch.Tensor) -> bool:
    """Whether `module` runs its eval-mode fast path (in-place residuals, chunks, groups) on `tensor`: the fast path
    is selected ([`selects_fast_path`]) and `module` is in eval mode. Training mode keeps the reference forward."""
    return not module.training and selects_fast_path(config, tensor)


@functools.lru_cache(maxsize=None)
def last_level_cache_bytes(cache_folder: Path = CPU_CACHE_FOLDER) -> int:
    """The largest data or unified cache of CPU 0: from sysfs (`index*/level`, `type`, `size`), else `os.sysconf`,
    else [`FALLBACK_CACHE_BYTES`]. sysfs comes first because inside a virtual machine `os.sysconf` may report the
    host's cache rather than the share this machine has."""
    sizes = {}
    for index in sorted(cache_folder.glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        if kind not in ("Data", "Unified"):
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        try:
            sizes[level] = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        except ValueError:
            continue
    if sizes:
        return sizes[max(sizes)]
    for name in ("SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        try:
            size = os.sysconf(name)
        except (ValueError, OSError, AttributeError):
            continue
        if size > 0:
            return size
    return FALLBACK_CACHE_BYTES


@dataclass(frozen=True)
class FastPathTuning:
    """
    Group and chunk sizes of the fast path, all derived from one cache budget `cache_bytes` (the last-level cache).
    With the 32 MB cache they were measured on: groups of 2**22 elements (16 MB of fp32, half the cache), chunks of
    2**21 elements, deformable-attention chunks of 2**17 samples (~100 bytes of temporaries each).
    """

    cache_bytes: int

    @property
    def group_elements(self) -> int:
        """Elements a group's largest per-pixel tensor may hold ([`batch_groups`])."""
        return max(1, self.cache_bytes // 8)

    @property
    def chunk_elements(self) -> int:
        """Elements of a chunk's largest temporary where a module runs its tokens piecewise."""
        return max(1, self.cache_bytes // 16)

    @property
    def samples_per_chunk(self) -> int:
        """Deformable-attention samples (queries x heads x levels x points) computed at once."""
        return max(1, self.cache_bytes // 256)

    def rows_per_chunk(self, elements_per_row: int) -> int:
        """Rows (tokens, positions) per chunk when each row's largest temporary holds `elements_per_row` elements."""
        return max(1, self.chunk_elements // max(elements_per_row, 1))

    @classmethod
    def for_device(cls, device: torch.device, config=None) -> "FastPathTuning":
        """`config.cpu_cache_bytes` when set, else the detected cache on CPU; on an accelerator no budget binds (its
        parallelism wants whole tensors)."""
        override = getattr(config, "cpu_cache_bytes", None)
        if override is not None:
            return cls(override)
        if device.type != "cpu":
            return cls(2**62)
        return cls(last_level_cache_bytes())


# --------------------------------------------------------------------------------------------------------------------
# Batch grouping
# --------------------------------------------------------------------------------------------------------------------


def batch_groups(batch_size: int, elements_per_image: int, tuning: FastPathTuning) -> list[slice]:
    """Slices of a batch run one after the other: groups of equal size (8 images at most 6 together: 4 + 4, not
    6 + 2), the larger ones first, each holding at most `tuning.group_elements` of the per-image tensor."""
    largest_group = max(1, tuning.group_elements // max(elements_per_image, 1))
    num_groups = -(-batch_size // largest_group)
    sizes = [batch_size // num_groups + (index < batch_size % num_groups) for index in range(num_groups)]
    starts = [0, *itertools.accumulate(sizes)]
    return [slice(start, start + size) for start, size in zip(starts, sizes)]


def _concatenate(outputs: list):
    """Joins per-group outputs along the batch: tensors, `None`, and tuples or lists of them (nested)."""
    first = outputs[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    return type(first)(_concatenate(list(parts)) for parts in zip(*outputs))


def run_in_groups(
    function: Callable,
    inputs: Sequence[torch.Tensor],
    elements_per_image: int,
    config,
    owner: nn.Module,
):
    """
    `function(*inputs)` (every input batch first); on the fast path ([`uses_fast_path`] of `owner`) a group of images
    at a time ([`batch_groups`]), the outputs concatenated along the batch. Every image is computed alone, so the
    numbers are those of the whole batch.
    """
    batch_size = inputs[0].shape[0]
    if batch_size == 1 or not uses_fast_path(config, owner, inputs[0]):
        return function(*inputs)
    groups = batch_groups(batch_size, elements_per_image, FastPathTuning.for_device(inputs[0].device, config))
    if len(groups) == 1:
        return function(*inputs)
    return _concatenate([function(*(tensor[group] for tensor in inputs)) for group in groups])


# --------------------------------------------------------------------------------------------------------------------
# No gradients
# --------------------------------------------------------------------------------------------------------------------


class FastPathBackwardError(RuntimeError):
    """A backward reached a tensor computed on the fast path."""


def _refuse_backward():
    raise FastPathBackwardError(
        "MagNet's fast path (magnet_implementation='fast', or 'auto' in eval mode on CPU) computes no gradients. "
        "Build or load the model with magnet_implementation='reference' to differentiate in eval mode, or train "
        "in training mode."
    )


class _NoBackward(torch.autograd.Function):
    """Identity forward; a backward raises. Marks fast-path outputs, whose in-place work has overwritten what autograd
    saved, so that a backward stops here with a clear message instead of a version-counter error deeper in."""

    @staticmethod
    def forward(ctx, tensor):
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        _refuse_backward()


class _WithoutAutograd(torch.autograd.Function):
    """Runs `function()` with autograd off (as every `Function.forward` does); its outputs depend on `computed_from`
    for autograd, so a backward that would reach those raises instead of leaving them silently without gradient."""

    @staticmethod
    def forward(ctx, function, *computed_from):
        return function()

    @staticmethod
    def backward(ctx, *grads):
        _refuse_backward()


def inference_only(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, marked so that a backward through it raises [`FastPathBackwardError`]."""
    return _NoBackward.apply(tensor)


def without_autograd(function: Callable, *computed_from: torch.Tensor):
    """`function()` computed without autograd (free to write in place and through `out=`), its outputs marked so that
    a backward to any of `computed_from` (the inputs and parameters it read) raises [`FastPathBackwardError`]. Unlike
    [`inference_only`] the outputs are fresh tensors, so later fast-path steps may modify them in place."""
    return _WithoutAutograd.apply(function, *computed_from)


# --------------------------------------------------------------------------------------------------------------------
# Swin block: gathered windows, residuals in place, MLP in chunks
# --------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def window_index(
    height: int, width: int, window: tuple[int, int], shift: tuple[int, int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """
    Index tensors of the released Swin order (zero-pad to whole windows, then shift cyclically, then partition) for a
    `height` x `width` map, built once per size:

    - `gather` `(padded_height * padded_width,)`: for every token of the windows (window-major, row-major inside a
      window), the row-major index of the map token it holds; padding points at token 0 and is overwritten.
    - `scatter` `(height * width,)`: for every map token, its position among the window tokens (the inverse).
    - `padding` (`None` on a map of whole windows): the positions among the window tokens that hold padding.
    """
    window_height, window_width = window
    padded_height = height + (window_height - height % window_height) % window_height
    padded_width = width + (window_width - width % window_width) % window_width
    # Shifting by -s: position i of the shifted map holds position (i + s) mod size of the padded map.
    rows = (torch.arange(padded_height) + shift[0]) % padded_height
    columns = (torch.arange(padded_width) + shift[1]) % padded_width
    is_padding = (rows[:, None] >= height) | (columns[None, :] >= width)
    source = (rows[:, None] * width + columns[None, :]).masked_fill(is_padding, 0)

    def window_major(grid: torch.Tensor) -> torch.Tensor:
        grid = grid.view(padded_height // window_height, window_height, padded_width // window_width, window_width)
        return grid.transpose(1, 2).reshape(-1)

    gather, is_padding = window_major(source), window_major(is_padding)
    positions = torch.arange(gather.numel())
    scatter = torch.empty(height * width, dtype=torch.long)
    scatter[gather[~is_padding]] = positions[~is_padding]
    padding = positions[is_padding].to(device) if bool(is_padding.any()) else None
    return gather.to(device), scatter.to(device), padding


def window_attention(block: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """
    The numbers of `MagNetSwinBlock._attn` (timm's `WindowAttention` on the zero-padded, shifted map) with less work:
    projections on the real tokens only, windows gathered straight from the projected tokens, attention on strided
    views of them through `scaled_dot_product_attention` (or explicit products under eager attention) with bias and
    shift mask as one additive mask. Differentiable. `(batch, height, width, channels)` -> same shape.
    """
    attention = block.attn
    batch_size, height, width, channels = hidden_states.shape
    num_heads = attention.num_heads
    head_dim = attention.qkv.out_features // (3 * num_heads)
    gather, scatter, padding = window_index(height, width, block.window_size, block.shift_size, hidden_states.device)
    num_window_tokens = gather.numel()
    num_windows = num_window_tokens // block.window_area

    qkv = attention.qkv(hidden_states).view(batch_size, height * width, 3 * channels)
    windows = qkv.index_select(1, gather)  # (batch, windows * area, 3 * channels)
    del qkv
    if padding is not None:
        windows[:, padding] = attention.qkv.bias.to(windows.dtype) if attention.qkv.bias is not None else 0.0
    windows = windows.view(batch_size, num_windows, block.window_area, 3, num_heads, head_dim)
    mask = block._shift_mask(hidden_states, *block._padded_size(height, width))  # (windows, area, area) or None
    bias = attention._get_rel_pos_bias()  # (1, heads, area, area)
    if mask is not None:
        bias = bias + mask[:, None].to(bias.dtype)
    bias = bias.to(windows.dtype)
    dropout = attention.attn_drop.p if block.training else 0.0
    eager = block._uses_eager_attention()
    # One image at a time: the shift mask varies over windows and the bias over heads, and neither broadcasts over a
    # (batch x windows) axis that is not contiguous in memory.
    attended = []
    for image in windows.unbind(0):
        query, key, value = (t.transpose(1, 2) for t in image.unbind(2))  # each (windows, heads, area, head_dim)
        if eager:
            weights = torch.matmul(query * head_dim**-0.5, key.transpose(-2, -1)) + bias
            weights = F.dropout(weights.softmax(dim=-1), p=dropout, training=block.training)
            output = torch.matmul(weights, value)
        else:
            output = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout)
        attended.append(output.transpose(1, 2).reshape(num_window_tokens, channels))
    del windows, image, query, key, value
    # Back to map order, each image's rows copied once into its place of one (batch * tokens + 1, channels) table;
    # padding rows land on the spare last row.
    map_tokens = height * width
    destination = torch.full((num_window_tokens,), batch_size * map_tokens, dtype=torch.long, device=scatter.device)
    destination[scatter] = torch.arange(map_tokens, device=scatter.device)
    tokens = hidden_states.new_empty(batch_size * map_tokens + 1, channels, dtype=attended[0].dtype)
    for image_index, output in enumerate(attended):
        offset = torch.where(destination < batch_size * map_tokens, destination + image_index * map_tokens, destination)
        tokens.index_copy_(0, offset, output)
    del attended
    tokens = tokens[: batch_size * map_tokens].view(batch_size, map_tokens, channels)
    return attention.proj_drop(attention.proj(tokens)).view(batch_size, height, width, channels)


def _add_feedforward_in_place(hidden_states: torch.Tensor, feedforward: Callable, rows_per_chunk: int) -> None:
    """`hidden_states += feedforward(hidden_states)` row-wise, a chunk of rows at a time, into `hidden_states`."""
    flat = hidden_states.view(-1, hidden_states.shape[-1])
    for start in range(0, flat.shape[0], rows_per_chunk):
        part = flat[start : start + rows_per_chunk]
        part += feedforward(part)


def swin_block_forward(block: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """
    `MagNetSwinBlock.forward` at inference: `x + attn(norm1(x))` then `+ mlp(norm2(.))`, with gathered windows
    ([`window_attention`]), the residuals added in place into the attention output and the MLP run a chunk of tokens
    at a time, in groups of images. `(batch, height, width, channels)` -> same shape; the input is never written.
    """
    batch_size, height, width, channels = hidden_states.shape
    tuning = FastPathTuning.for_device(hidden_states.device, block.config)
    # A 120x120 map's qkv alone is 22 MB per image: the group budget.
    groups = batch_groups(batch_size, height * width * block.attn.qkv.out_features, tuning)
    rows_per_chunk = tuning.rows_per_chunk(block.mlp.fc1.out_features)

    def feedforward(part: torch.Tensor) -> torch.Tensor:
        return block.mlp(block.norm2(part))

    output = None
    for group in groups:
        inputs = hidden_states[group]
        attended = window_attention(block, block.norm1(inputs))
        if len(groups) == 1 and attended.dtype == inputs.dtype:
            block_output = attended  # a fresh tensor: the residual goes into it (x + a == a + x exactly)
            block_output += inputs
        else:  # several groups, or under autocast a low-precision attention output joining a float32 stream
            if output is None:
                dtype = torch.promote_types(inputs.dtype, attended.dtype)
                output = hidden_states.new_empty(hidden_states.shape, dtype=dtype)
            block_output = output[group]
            block_output.copy_(attended)
            block_output += inputs
        del attended
        _add_feedforward_in_place(block_output, feedforward, rows_per_chunk)
    return inference_only(block_output if output is None else output)


# --------------------------------------------------------------------------------------------------------------------
# Language fusion: instance norm in place
# --------------------------------------------------------------------------------------------------------------------


def normalize_over_positions_in_place(hidden_states: torch.Tensor, tuning: FastPathTuning) -> torch.Tensor:
    """`modeling_magnet.normalize_over_positions(hidden_states)` (no mask) written into `hidden_states`: saves two
    copies of a pixel-sized projection. The squares are summed a chunk of positions at a time, so that no second
    full-size tensor is written."""
    mean = hidden_states.mean(dim=1, keepdim=True)
    centered = hidden_states.sub_(mean)
    rows = tuning.rows_per_chunk(centered.shape[-1])
    squares = sum(
        centered[:, start : start + rows].square().sum(dim=1, keepdim=True)
        for start in range(0, centered.shape[1], rows)
    )
    return inference_only(centered.div_(torch.sqrt(squares / centered.shape[1] + 1e-5)))


# --------------------------------------------------------------------------------------------------------------------
# Pixel decoder layer: residuals, norms and FFN in place, in chunks
# --------------------------------------------------------------------------------------------------------------------


def pixel_decoder_post_attention(layer: nn.Module, hidden_states: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """
    What `MagNetPixelDecoderLayer.forward` does after the deformable attention,
    `final_norm(y + fc2(relu(fc1(y))))` with `y = self_attn_norm(x + attended)`, written into `attended` a chunk of
    tokens at a time (every step acts per token): one token-sized tensor instead of six.
    """
    if attended.dtype == hidden_states.dtype:
        attended += hidden_states  # x + a == a + x exactly
    else:  # autocast: a low-precision attention output joins a float32 stream
        attended = hidden_states + attended
    tuning = FastPathTuning.for_device(attended.device, layer.config)
    rows = max(1, tuning.group_elements // layer.fc1.out_features)  # the FFN's inner activation is the largest tensor
    flat = attended.view(-1, attended.shape[-1])
    for start in range(0, flat.shape[0], rows):
        part = flat[start : start + rows]
        normed = layer.self_attn_layer_norm(part)
        part.copy_(layer.final_layer_norm(normed + layer.fc2(layer.fc1(normed).relu_())))
    return inference_only(attended)


__all__ = [
    "MAGNET_IMPLEMENTATIONS",
    "FastPathBackwardError",
    "FastPathTuning",
    "batch_groups",
    "last_level_cache_bytes",
    "normalize_over_positions_in_place",
    "pixel_decoder_post_attention",
    "run_in_groups",
    "without_autograd",
    "swin_block_forward",
    "uses_fast_path",
    "window_attention",
    "window_index",
]
