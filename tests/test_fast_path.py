"""The fast path (`fast_path_magnet.py`) and the fast kernels against the reference computations they replace, in
float64; the switch that selects them (`MagNetConfig.magnet_implementation`) and the sizes they derive from the cache."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock, window_partition
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    multi_scale_deformable_attention,
)

from magnet_hf import (
    MagNetConfig,
    MagNetForReferringSegmentation,
    MagNetModel,
    deformable_attention_magnet,
    fast_path_magnet,
)
from magnet_hf.deformable_attention_magnet import (
    MagNetMultiscaleDeformableAttention,
    multi_scale_deformable_attention_gather,
    padded_value_table,
    weighted_row_sum,
)
from magnet_hf.fast_path_magnet import (
    FastPathBackwardError,
    FastPathTuning,
    batch_groups,
    last_level_cache_bytes,
    normalize_over_positions_in_place,
    run_in_groups,
    selects_fast_path,
    swin_block_forward,
    uses_fast_path,
    window_attention,
    window_index,
)
from magnet_hf.modeling_magnet import (
    MagNetImageFusion,
    MagNetLanguageFusion,
    MagNetPixelDecoder,
    MagNetPixelDecoderLayer,
    MagNetSwinBlock,
    normalize_over_positions,
)

TOLERANCE = 1e-10  # float64: the fast path may only reorder roundings


def tiny_inputs(batch=3, size=128, seed=0):
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(batch, 20, dtype=torch.long)
    attention_mask[0, 6:] = 0
    input_ids = torch.randint(5, 30, (batch, 20), generator=generator) * attention_mask
    return torch.randn(batch, 3, size, size, generator=generator, dtype=torch.float64), input_ids, attention_mask


def max_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return (actual - expected).abs().max().item()


# --------------------------------------------------------------------------------------------------------------------
# The switch
# --------------------------------------------------------------------------------------------------------------------


# (selected: gathered windows; eval-mode path: in-place residuals, chunks, groups)
@pytest.mark.parametrize(
    "choice, device, selected",
    [("auto", "cpu", True), ("auto", "meta", False), ("reference", "cpu", False), ("fast", "cpu", True), ("fast", "meta", True)],
)  # meta stands in for an accelerator
@pytest.mark.parametrize("training", [False, True])
def test_the_switch_resolves_from_the_choice_the_device_and_the_mode(choice, device, selected, training):
    config = MagNetConfig.from_preset("magnet-tiny", magnet_implementation=choice)
    module = torch.nn.Linear(2, 2).train(training)
    tensor = torch.empty(2, 2, device=device)
    for grad_mode in (True, False):  # grad mode is never consulted
        with torch.set_grad_enabled(grad_mode):
            assert selects_fast_path(config, tensor) is selected
            assert uses_fast_path(config, module, tensor) is (selected and not training)


def test_unknown_choices_are_refused():
    with pytest.raises(ValueError, match="magnet_implementation"):
        MagNetConfig.from_preset("magnet-tiny", magnet_implementation="turbo")
    with pytest.raises(ValueError, match="cpu_cache_bytes"):
        MagNetConfig.from_preset("magnet-tiny", cpu_cache_bytes=0)


def test_training_on_the_fast_path_gives_the_reference_gradients():
    torch.manual_seed(0)
    model = MagNetModel(MagNetConfig.from_preset("magnet-tiny")).double().train()
    for module in model.modules():  # no randomness, so that both paths compute the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    pixel_values, input_ids, attention_mask = tiny_inputs(batch=2, size=80)  # 10, 5 and 3 maps are padded
    gradients = {}
    for choice in ("reference", "fast"):
        model.config.magnet_implementation = choice
        model.zero_grad()
        model(pixel_values, input_ids, attention_mask).pred_masks.square().sum().backward()
        gradients[choice] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert gradients["fast"].keys() == gradients["reference"].keys()
    assert any("image_encoder.layers.3" in name for name in gradients["fast"])
    for name, expected in gradients["reference"].items():
        assert max_difference(gradients["fast"][name], expected) < TOLERANCE * (1 + expected.abs().max().item()), name


def _count_fast_blocks(monkeypatch) -> list[int]:
    calls = []
    original = fast_path_magnet.swin_block_forward

    def counting(block, hidden_states):
        calls.append(1)
        return original(block, hidden_states)

    monkeypatch.setattr("magnet_hf.modeling_magnet.swin_block_forward", counting)
    return calls


def test_grad_mode_does_not_select_the_path_and_the_mode_does(monkeypatch):
    torch.manual_seed(0)
    model = MagNetModel(MagNetConfig.from_preset("magnet-tiny")).eval()
    pixel_values, input_ids, attention_mask = tiny_inputs(batch=2)
    pixel_values = pixel_values.float()
    calls = _count_fast_blocks(monkeypatch)
    blocks = sum(model.config.depths)
    with torch.no_grad():
        expected = model(pixel_values, input_ids, attention_mask).pred_masks
    assert len(calls) == blocks
    with_grad = model(pixel_values, input_ids, attention_mask).pred_masks  # eval mode, grad enabled: still fast
    assert len(calls) == 2 * blocks
    torch.testing.assert_close(with_grad.detach(), expected, atol=1e-6, rtol=0)  # SDPA may pick another kernel
    with pytest.raises(FastPathBackwardError, match="magnet_implementation='reference'"):
        with_grad.sum().backward()
    model.train()
    model(pixel_values, input_ids, attention_mask).pred_masks.sum().backward()  # training mode: differentiable
    assert len(calls) == 2 * blocks


def test_fast_path_marks_run_under_inference_mode_and_block_only_backward():
    with torch.inference_mode():
        assert torch.equal(fast_path_magnet.inference_only(torch.ones(3)), torch.ones(3))
    leaf = torch.ones(3, requires_grad=True)
    marked = fast_path_magnet.inference_only(leaf * 2)
    assert torch.equal(marked, torch.full((3,), 2.0)) and marked.requires_grad
    with pytest.raises(FastPathBackwardError):
        marked.sum().backward()


def test_from_pretrained_takes_the_switch(tmp_path):
    torch.manual_seed(0)
    MagNetForReferringSegmentation(MagNetConfig.from_preset("magnet-tiny")).save_pretrained(tmp_path)
    model = MagNetForReferringSegmentation.from_pretrained(tmp_path, magnet_implementation="reference").eval()
    assert model.config.magnet_implementation == "reference"
    block = model.model.image_encoder.layers[0].blocks[0]
    assert block.config is model.config  # modules read the one config at every forward
    assert not uses_fast_path(block.config, block, torch.empty(1))
    pixel_values, input_ids, attention_mask = tiny_inputs(batch=1)
    model(pixel_values.float(), input_ids, attention_mask).pred_masks.sum().backward()  # eval mode, differentiable
    assert block.attn.qkv.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------------------------
# Sizes from the cache
# --------------------------------------------------------------------------------------------------------------------


def test_sizes_derive_from_the_cache_and_reproduce_the_measured_ones():
    tuning = FastPathTuning(32 * 2**20)
    assert (tuning.group_elements, tuning.chunk_elements, tuning.samples_per_chunk) == (2**22, 2**21, 2**17)
    assert tuning.rows_per_chunk(512) == 4096
    small = FastPathTuning(2 * 2**20)  # a 2 MB cache gets sixteen times smaller pieces
    assert small.group_elements == 2**18 and small.samples_per_chunk == 2**13


def test_cache_size_is_read_from_sysfs(tmp_path):
    for index, (level, kind, size) in enumerate(
        [(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K"), (3, "Unified", "36M")]
    ):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(f"{level}\n")
        (folder / "type").write_text(f"{kind}\n")
        (folder / "size").write_text(f"{size}\n")
    assert last_level_cache_bytes(tmp_path) == 36 * 2**20
    assert last_level_cache_bytes(tmp_path / "absent") > 0  # os.sysconf, or the fallback


def test_the_user_sets_the_cache_budget_and_accelerators_have_none():
    config = MagNetConfig.from_preset("magnet-tiny", cpu_cache_bytes=4096)
    assert FastPathTuning.for_device(torch.device("cpu"), config).cache_bytes == 4096
    assert FastPathTuning.for_device(torch.device("meta"), config).cache_bytes == 4096
    assert FastPathTuning.for_device(torch.device("cpu")).cache_bytes == last_level_cache_bytes()
    assert FastPathTuning.for_device(torch.device("meta")).group_elements > 2**50


def test_batch_groups_are_equal_sized_and_only_cpu_inference_runs_in_groups():
    tuning = FastPathTuning(8 * 2**21)  # 2**21 elements per group
    assert batch_groups(5, 2**20, tuning) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert batch_groups(8, 2**21 // 6, tuning) == [slice(0, 4), slice(4, 8)]  # 4 + 4, not 6 + 2
    assert batch_groups(5, 2**23, tuning) == [slice(i, i + 1) for i in range(5)]
    config = MagNetConfig.from_preset("magnet-tiny", cpu_cache_bytes=8 * 2**21)
    seen = []

    def record(batch):
        seen.append(len(batch))
        return batch

    module = torch.nn.Linear(2, 2).eval()
    assert run_in_groups(record, (torch.zeros(5, 3),), 2**20, config, module).shape == (5, 3)
    assert seen == [2, 2, 1]
    seen.clear()
    run_in_groups(record, (torch.zeros(5, 3, device="meta"),), 2**20, config, module)
    run_in_groups(record, (torch.zeros(5, 3),), 2**20, config, module.train())
    assert seen == [5, 5]


# --------------------------------------------------------------------------------------------------------------------
# Swin: the released order in the network, gathered windows on the fast path
# --------------------------------------------------------------------------------------------------------------------


def _block(size, shift, config=None) -> MagNetSwinBlock:
    """A block running the reference, unless given another config."""
    config = config or MagNetConfig.from_preset("magnet-tiny", magnet_implementation="reference")
    torch.manual_seed(0)
    block = MagNetSwinBlock(config, dim=16, input_resolution=size, num_heads=2, window_size=4, shift_size=shift)
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()
        block.attn.qkv.bias.normal_()
    return block.double().eval()


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 10), (3, 3)])
def test_reference_attention_pads_before_the_shift(shift, size):
    block = _block(size, shift)
    hidden = torch.randn(2, *size, 16, dtype=torch.float64)
    with torch.no_grad():
        released, timm = block._attn(hidden), SwinTransformerBlock._attn(block, hidden)
    assert released.shape == hidden.shape
    if size == (8, 8) or shift == 0:  # no padding, or no shift: timm's order gives the same numbers
        assert max_difference(released, timm) < TOLERANCE
    else:
        assert max_difference(released, timm) > 1e-3


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 10), (3, 3)])
def test_gathered_window_attention_matches_the_reference(shift, size):
    block = _block(size, shift)
    hidden = torch.randn(2, *size, 16, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(2, *size, 16, dtype=torch.float64)
    parameters = [hidden, block.attn.qkv.weight, block.attn.qkv.bias, block.attn.relative_position_bias_table]
    expected = block._attn(hidden)
    actual = window_attention(block, hidden)
    assert max_difference(actual, expected) < TOLERANCE
    # The gathered windows themselves are differentiable, with the reference's gradients.
    expected_grads = torch.autograd.grad((expected * cotangent).sum(), parameters)
    actual_grads = torch.autograd.grad((actual * cotangent).sum(), parameters)
    for a, e in zip(actual_grads, expected_grads):
        assert max_difference(a, e) < TOLERANCE


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 10), (3, 3)])
def test_window_index_is_pad_shift_partition_and_its_inverse(shift, size):
    block = _block(size, shift)
    height, width = size
    gather, scatter, padding = window_index(height, width, block.window_size, block.shift_size, torch.device("cpu"))
    # The same layout built the slow way: token ids on the map, zero-padded (-1), rolled, partitioned.
    ids = torch.arange(height * width, dtype=torch.float64).view(1, height, width, 1)
    padded_height, padded_width = block._padded_size(height, width)
    grid = F.pad(ids, (0, 0, 0, padded_width - width, 0, padded_height - height), value=-1.0)
    grid = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2))
    expected = window_partition(grid, block.window_size).reshape(-1).long()
    assert gather.shape == expected.shape
    is_padding = expected < 0
    assert torch.equal(gather[~is_padding], expected[~is_padding])
    assert (padding is None) == (not is_padding.any())
    if padding is not None:
        assert torch.equal(padding, is_padding.nonzero().view(-1))
    assert torch.equal(gather[scatter], torch.arange(height * width))  # scatter undoes gather on real tokens
    assert window_index(height, width, block.window_size, block.shift_size, torch.device("cpu"))[0] is gather


# A 64-wide MLP: 7 tokens per chunk with a 7 * 64 * 16-byte budget (a short last chunk), and one image per group.
@pytest.mark.parametrize("cache_bytes", [7 * 64 * 16, 2**40])
@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 10)])
def test_fast_swin_block_matches_the_reference_block(size, shift, cache_bytes):
    config = MagNetConfig.from_preset("magnet-tiny", cpu_cache_bytes=cache_bytes)
    block = _block(size, shift, config=config)
    hidden = torch.randn(3, *size, 16, dtype=torch.float64)
    before = hidden.clone()
    with torch.no_grad():
        config.magnet_implementation = "reference"
        expected = block(hidden)
        config.magnet_implementation = "fast"
        actual = block(hidden)
        assert max_difference(swin_block_forward(block, hidden), expected) < TOLERANCE
    assert torch.equal(hidden, before)  # the input is never written to
    assert max_difference(actual, expected) < TOLERANCE


# --------------------------------------------------------------------------------------------------------------------
# Language fusion and pixel decoder
# --------------------------------------------------------------------------------------------------------------------


def test_in_place_instance_norm_matches_and_overwrites():
    hidden = torch.randn(2, 5000, 24, dtype=torch.float64) * 3 + 1
    expected = normalize_over_positions(hidden)
    work = hidden.clone()
    actual = normalize_over_positions_in_place(work, FastPathTuning(2048 * 24 * 16))  # 2048 positions per chunk
    assert actual.data_ptr() == work.data_ptr()
    assert max_difference(actual, expected) < TOLERANCE
    assert actual.mean(dim=1).abs().max() < 1e-12 and (actual.var(dim=1, unbiased=False) - 1).abs().max() < 1e-4


def test_fast_pixel_decoder_layer_matches_the_reference():
    torch.manual_seed(0)
    config = MagNetConfig.from_preset("magnet-tiny", cpu_cache_bytes=11 * 128 * 8)  # 11 tokens per FFN chunk
    layer = MagNetPixelDecoderLayer(config, 2).double().eval()
    for parameter in layer.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    shapes = [(3, 4), (6, 8)]
    hidden = torch.randn(2, 60, config.decoder_hidden_size, dtype=torch.float64)
    position = torch.randn(1, 60, config.decoder_hidden_size, dtype=torch.float64)
    arguments = (position, MagNetPixelDecoder.reference_points(shapes, hidden.device), shapes, torch.tensor([0, 12]))
    before = hidden.clone()
    with torch.no_grad():
        config.magnet_implementation = "reference"
        expected = layer(hidden, *arguments)
        config.magnet_implementation = "fast"
        actual = layer(hidden, *arguments)
    assert torch.equal(hidden, before)
    assert max_difference(actual, expected) < TOLERANCE


# An image fusion's group budget is pixels x 2 x dim elements per image (12 x 9 x 2 x 32 here), 8 bytes an element.
@pytest.mark.parametrize("cache_bytes, image_groups", [(8, [1, 1, 1]), (8 * 2 * 12 * 9 * 2 * 32, [2, 1])])
@pytest.mark.parametrize("has_gate", [True, False])
def test_fusions_in_groups_match_the_reference_whole_batch(has_gate, cache_bytes, image_groups):
    config = MagNetConfig.from_preset("magnet-tiny", cpu_cache_bytes=cache_bytes)
    torch.manual_seed(0)
    image_fusion = MagNetImageFusion(32, 24, [1, 2, 3, 6], 0.0, has_gate=has_gate).double().eval()
    language_fusion = MagNetLanguageFusion(24, 32, 0.0, True, config).double().eval()
    for parameter in [*image_fusion.parameters(), *language_fusion.parameters()]:
        torch.nn.init.normal_(parameter, std=0.3)
    visual = torch.randn(3, 12, 9, 32, dtype=torch.float64)
    words = torch.randn(3, 7, 24, dtype=torch.float64)
    word_mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] * 5 + [0] * 2])
    seen_batches = []
    image_fusion.pixel_word_attention.register_forward_hook(lambda module, args, out: seen_batches.append(len(out)))

    def run(choice):
        config.magnet_implementation = choice
        with torch.no_grad():
            gated, fused = run_in_groups(image_fusion, (visual, words, word_mask), 12 * 9 * 2 * 32, config, image_fusion)
            return gated, fused, language_fusion(words, visual.flatten(1, 2), word_mask)

    reference, fast = run("reference"), run("fast")
    assert seen_batches == [3, *image_groups]
    assert (reference[0] is None) == (not has_gate) == (fast[0] is None)
    for expected, actual in zip(reference, fast):
        if expected is not None:
            assert max_difference(actual, expected) < TOLERANCE


# --------------------------------------------------------------------------------------------------------------------
# The whole network
# --------------------------------------------------------------------------------------------------------------------


# A budget far below one image (every module one image at a time, chunks of a few tokens), and one that takes the
# whole batch everywhere.
@pytest.mark.parametrize("cache_bytes", [2**12, 2**40])
def test_fast_network_matches_the_reference_network(tiny_model, cache_bytes):
    model = copy.deepcopy(tiny_model).double()
    pixel_values, input_ids, attention_mask = tiny_inputs(batch=3)
    group_sizes = []
    model.model.pixel_decoder.register_forward_hook(lambda module, args, out: group_sizes.append(len(out[0])))

    def run(choice):
        model.config.magnet_implementation = choice
        with torch.no_grad():
            return model(pixel_values, input_ids, attention_mask, output_hidden_states=True)

    reference = run("reference")
    model.config.cpu_cache_bytes = cache_bytes
    fast = run("auto")  # eval mode on CPU: the fast path
    assert group_sizes == ([3, 1, 1, 1] if cache_bytes < 2**20 else [3, 3])
    pairs = [(reference.pred_masks, fast.pred_masks), (reference.pred_logits, fast.pred_logits)]
    pairs += [(reference.mask_features, fast.mask_features), (reference.text_features, fast.text_features)]
    pairs += list(zip(reference.fused_features, fast.fused_features))
    for expected, actual in zip(reference.auxiliary_predictions, fast.auxiliary_predictions):
        pairs += [(expected["pred_masks"], actual["pred_masks"]), (expected["pred_logits"], actual["pred_logits"])]
    for expected, actual in pairs:
        assert max_difference(actual, expected) < TOLERANCE


# --------------------------------------------------------------------------------------------------------------------
# Deformable attention: one gather over all levels and points against transformers' per-level grid_sample
# --------------------------------------------------------------------------------------------------------------------


def _sampling_inputs(shapes, batch_size=2, num_queries=37, num_heads=4, head_dim=8, num_points=3, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    length = sum(h * w for h, w in shapes)
    value = torch.randn(batch_size, length, num_heads, head_dim, generator=generator, dtype=dtype)
    # Locations in [-0.3, 1.3]: a good share falls outside the map, partly (bilinear with the zero border) or wholly.
    locations = torch.rand(batch_size, num_queries, num_heads, len(shapes), num_points, 2, generator=generator, dtype=dtype)
    locations = locations * 1.6 - 0.3
    weights = torch.rand(batch_size, num_queries, num_heads, len(shapes), num_points, generator=generator, dtype=dtype)
    return value, locations, weights.softmax(-1)


SHAPES = [[(7, 9), (4, 5), (2, 3), (1, 1)], [(30, 30), (15, 15)], [(1, 6), (5, 1)]]


@pytest.mark.parametrize("shapes", SHAPES)
def test_gather_sampling_matches_grid_sample(shapes):
    value, locations, weights = _sampling_inputs(shapes)
    outside = ((locations < 0) | (locations > 1)).any(-1)
    assert 0.2 < outside.float().mean() < 0.8  # the case of points outside the map is exercised
    expected = multi_scale_deformable_attention(value, shapes, locations, weights)
    actual = multi_scale_deformable_attention_gather(value, shapes, locations, weights)
    assert actual.shape == expected.shape == (2, 37, 4 * 8)
    assert (actual - expected).abs().max().item() < 1e-5
    expected64 = multi_scale_deformable_attention(value.double(), shapes, locations.double(), weights.double())
    actual64 = multi_scale_deformable_attention_gather(value.double(), shapes, locations.double(), weights.double())
    assert actual64.dtype == torch.float64
    assert max_difference(actual64, expected64) < 1e-12


def test_gather_sampling_far_outside_reads_zero():
    shapes = [(4, 4), (2, 2)]
    value, locations, weights = _sampling_inputs(shapes)
    far = torch.where(torch.rand(locations.shape, generator=torch.Generator().manual_seed(1)) < 0.5, -5.0, 7.0)
    actual = multi_scale_deformable_attention_gather(value, shapes, far, weights)
    assert actual.abs().max().item() == 0.0


def test_gather_sampling_gradients_match_grid_sample():
    shapes = SHAPES[0]
    inputs = [t.double().requires_grad_() for t in _sampling_inputs(shapes, num_queries=11)]
    cotangent = torch.randn(2, 11, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = torch.autograd.grad((multi_scale_deformable_attention(inputs[0], shapes, *inputs[1:]) * cotangent).sum(), inputs)
    actual = torch.autograd.grad((multi_scale_deformable_attention_gather(inputs[0], shapes, *inputs[1:]) * cotangent).sum(), inputs)
    for name, a, e in zip(("value", "locations", "weights"), actual, expected):
        assert (a - e).abs().max().item() < 1e-9, name


@pytest.mark.parametrize("slice_elements", [1 << 18, 100], ids=["one-slice", "slices-of-1-bag"])
@pytest.mark.parametrize("needs", [("table", "weights"), ("table",), ("weights",)])
def test_weighted_row_sum_backward_equals_embedding_bags(needs, slice_elements, monkeypatch):
    monkeypatch.setattr(deformable_attention_magnet, "_BACKWARD_SLICE_ELEMENTS", slice_elements)
    generator = torch.Generator().manual_seed(3)
    # 40 rows, 30 bags of 12 samples drawn from the first 25 rows: rows read many times and rows never read.
    rows = torch.randint(0, 25, (30, 12), generator=generator, dtype=torch.int32)
    table = torch.randn(40, 6, generator=generator, dtype=torch.float64, requires_grad="table" in needs)
    weights = torch.randn(30, 12, generator=generator, dtype=torch.float64, requires_grad="weights" in needs)
    cotangent = torch.randn(30, 6, generator=generator, dtype=torch.float64)
    wanted = [t for t in (table, weights) if t.requires_grad]
    expected_output = F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")
    expected = torch.autograd.grad((expected_output * cotangent).sum(), wanted)
    output = weighted_row_sum(rows, table, weights)
    actual = torch.autograd.grad((output * cotangent).sum(), wanted)
    assert torch.equal(output, expected_output)  # the same forward kernel
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and max_difference(a, e) < 1e-12
    if table.requires_grad:
        assert actual[0][25:].abs().max().item() == 0.0 and actual[0][:25].abs().min().item() > 0


@pytest.mark.parametrize("with_graph", [False, True])
@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("training", [True, False], ids=["training-mode", "eval-mode-fast-path"])
def test_deformable_attention_module_keeps_parameters_and_outputs(with_graph, batch_size, training):
    torch.manual_seed(0)
    reference = Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(embed_dim=32, num_heads=4, n_levels=2, n_points=3)
    # Chunks of 5 queries (4 heads x 6 samples each) of one image: 39 queries per image in 8 chunks, the last short.
    config = MagNetConfig.from_preset("magnet-tiny", cpu_cache_bytes=256 * 4 * 6 * 5)
    fast = MagNetMultiscaleDeformableAttention(embed_dim=32, num_heads=4, n_levels=2, n_points=3, config=config)
    assert fast.state_dict().keys() == reference.state_dict().keys()
    fast.load_state_dict(reference.state_dict())
    fast.train(training)  # eval mode on CPU runs the fast path: chunks written into one output, corners in place
    shapes = [(6, 5), (3, 3)]
    tokens = sum(h * w for h, w in shapes)
    hidden = torch.randn(batch_size, tokens, 32)
    position = torch.randn(1, tokens, 32)  # one image's position embedding, broadcast over the batch
    reference_points = torch.rand(1, tokens, 2, 2)
    kwargs = dict(
        encoder_hidden_states=hidden, reference_points=reference_points,
        spatial_shapes_list=shapes, level_start_index=torch.tensor([0, 30]),
    )
    expected, expected_weights = reference(hidden, position_embeddings=position.expand(batch_size, -1, -1), **kwargs)
    with torch.set_grad_enabled(with_graph):
        actual, actual_weights = fast(hidden, position_embeddings=position, output_attentions=True, **kwargs)
        _, no_weights = fast(hidden, position_embeddings=position, **kwargs)
    assert actual.requires_grad == with_graph
    assert (actual - expected).abs().max().item() < 1e-5
    assert (actual_weights - expected_weights).abs().max().item() < 1e-6
    assert no_weights is None  # only asked-for weights are kept, as in transformers' attention modules
    if with_graph and training:  # joined chunks keep the gradients of the unchunked module
        cotangent = torch.randn_like(actual)
        expected_grads = torch.autograd.grad((expected * cotangent).sum(), list(reference.parameters()))
        actual_grads = torch.autograd.grad((actual * cotangent).sum(), list(fast.parameters()))
        for a, e in zip(actual_grads, expected_grads):
            assert (a - e).abs().max().item() < 1e-4
    elif with_graph:  # computed without autograd: a backward says so rather than leave the parameters without gradient
        with pytest.raises(FastPathBackwardError, match="magnet_implementation='reference'"):
            actual.sum().backward()


def test_padded_value_table_layout():
    value = torch.arange(2 * 7 * 3 * 2, dtype=torch.float64).view(2, 7, 3, 2)  # levels 2x3 and 1x1, 3 heads
    table = padded_value_table(value, [(2, 3), (1, 1)])
    assert table.shape == (2, 3, 5 * 6 + 4 * 4, 2)
    first = table[:, :, : 5 * 6].view(2, 3, 5, 6, 2)
    assert torch.equal(first[:, :, 1:3, 1:4], value[:, :6].view(2, 2, 3, 3, 2).permute(0, 3, 1, 2, 4))
    second = table[:, :, 5 * 6 :].view(2, 3, 4, 4, 2)
    assert torch.equal(second[:, :, 1, 1], value[:, 6])
    assert table.abs().sum() == value.abs().sum()  # everything else is the zero border
