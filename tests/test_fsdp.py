"""FSDP2 with `accelerate_configs/fsdp2.yaml`, on one CPU process.

`accelerate launch --config_file accelerate_configs/fsdp2.yaml` cannot train on CPU processes with this accelerate
(1.15): `AcceleratorState` switches to `DistributedType.FSDP` only from an accelerator's distributed type (MULTI_GPU,
MULTI_NPU, MULTI_XPU, MULTI_HPU, ...), never from MULTI_CPU, and `accelerate launch --cpu` takes its one-process
simple launcher. torch's `fully_shard` itself runs on CPU over gloo. So this test runs everything of that path but the
launcher on one CPU process: the config parsed by accelerate's own launch parser into the environment `accelerate
launch` exports, the FSDP plugin accelerate builds from it, and accelerate's own `fsdp2_prepare_model` (transformer
auto-wrap by `_no_split_modules`) on magnet-tiny, which then trains and checkpoints. The GPU check is one command in
the README ("FSDP, DeepSpeed and several machines").
"""

from __future__ import annotations

import copy
import types
from pathlib import Path

import pytest
import torch

from magnet_hf import MagNetConfig, MagNetForReferringSegmentation

CONFIG = Path(__file__).resolve().parents[1] / "accelerate_configs" / "fsdp2.yaml"


def fsdp_plugin_from_config(monkeypatch):
    """The `FullyShardedDataParallelPlugin` a process started by `accelerate launch --config_file fsdp2.yaml` builds."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIG), "--num_processes", "1", "train.py"])
    _validate_launch_command(args)
    assert args.use_fsdp and str(args.fsdp_version) == "2"
    # fp32: FSDP's mixed-precision policy would cast the fp32-only language fusion too (see the config's comment).
    assert args.mixed_precision == "no"
    environment = prepare_multi_gpu_env(args)
    for name, value in environment.items():
        if name.startswith("FSDP_") or name == "ACCELERATE_USE_FSDP":
            monkeypatch.setenv(name, value)
    return FullyShardedDataParallelPlugin()


def training_batch(size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(2, 20, dtype=torch.long)
    attention_mask[0, 6:] = 0
    input_ids = torch.randint(5, 30, (2, 20), generator=generator) * attention_mask
    labels = torch.zeros(2, size, size)
    labels[:, 16:48, 8:40] = 1
    masked = torch.zeros_like(input_ids, dtype=torch.bool)
    masked[:, 1:3] = True
    return {
        "pixel_values": torch.randn(2, 3, size, size, generator=generator),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "masked_input_ids": input_ids.masked_fill(masked, 4),
        "mlm_labels": input_ids.masked_fill(~masked, -100),
    }


@pytest.fixture
def process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


# torch warns that a wrapped Swin block or fusion returns a view, which an in-place op downstream would detach from
# FSDP's backward hook; none follows in training (every gradient is compared with the unsharded one below).
@pytest.mark.filterwarnings("ignore:FSDP2-wrapped module")
def test_fsdp2_config_wraps_the_no_split_modules_and_trains_like_one_process(monkeypatch, process_group, tmp_path):
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy, fsdp2_prepare_model
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from magnet_hf.training.optimization import build_optimizer_and_scheduler
    from magnet_hf.training.state import load_training_state, save_training_state

    plugin = fsdp_plugin_from_config(monkeypatch)
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    torch.manual_seed(0)
    model = MagNetForReferringSegmentation(MagNetConfig.from_preset("magnet-tiny", drop_path_rate=0.0)).train()
    reference = copy.deepcopy(model)

    # The config's TRANSFORMER_BASED_WRAP without a class list wraps every module named in _no_split_modules.
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = {type(module).__name__ for module in model.modules() if policy(module)}
    assert wrapped == set(model._no_split_modules)
    assert {"MagNetSwinBlock", "BertLayer", "MagNetImageFusion", "MagNetLanguageFusion"} <= wrapped
    assert "BertEmbeddings" not in wrapped  # the word embeddings are tied to the Mask Grounding head: one unit
    units = sum(policy(module) for module in model.modules())

    # accelerate's own preparation, given what an Accelerator would hand it on one process without mixed precision.
    accelerator = types.SimpleNamespace(
        state=types.SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=None, parallelism_config=None,
        device=torch.device("cpu"), mixed_precision="no", is_main_process=True,
    )
    model = fsdp2_prepare_model(accelerator, model)
    assert isinstance(model, FSDPModule)
    assert sum(isinstance(module, FSDPModule) for module in model.modules()) >= units + 1
    assert all(isinstance(parameter, DTensor) for parameter in model.parameters())
    head = model.mask_grounding.token_predictor.head
    assert head.decoder.weight is model.get_input_embeddings().weight  # the tie survives sharding

    batch = training_batch()
    optimizers = []
    for network in (model, reference):
        optimizers.append(
            build_optimizer_and_scheduler(network, learning_rate=1e-3, weight_decay=0.01, total_steps=10, warmup_steps=0, poly_power=0.9)
        )
    sharded_parameters = dict(model.named_parameters())
    for step in range(2):
        losses = []
        for network in (model, reference):
            torch.manual_seed(step)  # the pixel-to-pixel term samples from the global stream in training
            loss = network(**batch).loss
            loss.backward()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5), (step, losses)
        for name, parameter in reference.named_parameters():  # every gradient, gathered, equals the unsharded one
            gradient = sharded_parameters[name].grad
            assert (gradient is None) == (parameter.grad is None), name
            if gradient is not None:
                torch.testing.assert_close(
                    gradient.full_tensor(), parameter.grad, rtol=1e-3, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
                )
        for optimizer, scheduler in optimizers:
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    # AdamW divides each gradient element by its own running scale, so rounding noise in a gradient that is zero in
    # exact arithmetic (an attention key bias) moves that weight by up to the learning rate per step.
    full = {name: parameter.full_tensor() for name, parameter in model.named_parameters()}
    for name, parameter in reference.named_parameters():
        torch.testing.assert_close(full[name], parameter.detach(), rtol=0, atol=2 * 1e-3, msg=lambda m, n=name: f"{n}: {m}")

    # The trainer's final and best folders: save_pretrained of the gathered weights (what the trainer passes).
    from magnet_hf.training.state import full_model_state

    model.save_pretrained(tmp_path / "saved", state_dict=full_model_state(model))
    loaded = MagNetForReferringSegmentation.from_pretrained(tmp_path / "saved")
    for name, parameter in loaded.named_parameters():
        torch.testing.assert_close(parameter.detach(), full[name], rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}")

    # Checkpoints hold the full (unsharded) state in the same safetensors + JSON files as without FSDP: a sharded run's
    # checkpoint resumes unsharded and sharded alike.
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    optimizer, scheduler = optimizers[0]
    save_training_state(folder, model, optimizer, scheduler, None, 0, True)
    torch.manual_seed(1)
    plain = MagNetForReferringSegmentation(model.config).train()
    plain_optimizer, plain_scheduler = build_optimizer_and_scheduler(
        plain, learning_rate=1e-3, weight_decay=0.01, total_steps=10, warmup_steps=0, poly_power=0.9
    )
    load_training_state(folder, plain, plain_optimizer, plain_scheduler, None, 0)
    for name, parameter in plain.named_parameters():
        torch.testing.assert_close(parameter.detach(), full[name], rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}")
    plain_state, reference_state = plain_optimizer.state_dict()["state"], optimizers[1][0].state_dict()["state"]
    assert sorted(plain_state) == sorted(reference_state)
    for index, values in reference_state.items():  # the moments, in the unsharded optimizer's own indexing
        assert int(plain_state[index]["step"]) == int(values["step"]) == 2
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(plain_state[index][key], values[key], rtol=1e-3, atol=1e-6)
    resumed = fsdp2_prepare_model(accelerator, copy.deepcopy(plain))
    resumed_optimizer, resumed_scheduler = build_optimizer_and_scheduler(
        resumed, learning_rate=1e-3, weight_decay=0.01, total_steps=10, warmup_steps=0, poly_power=0.9
    )
    load_training_state(folder, resumed, resumed_optimizer, resumed_scheduler, None, 0)
    losses = []
    for network, optimizer in ((resumed, resumed_optimizer), (reference, optimizers[1][0])):
        torch.manual_seed(2)
        loss = network(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # the resumed sharded run continues the unsharded one
    for name, parameter in reference.named_parameters():
        resumed_parameter = dict(resumed.named_parameters())[name].full_tensor()
        torch.testing.assert_close(resumed_parameter, parameter.detach(), rtol=0, atol=3 * 1e-3, msg=lambda m, n=name: f"{n}: {m}")

    # Resuming never unpickles: a file in the layout accelerate's FSDP save_state writes (torch.save) is refused, not
    # loaded (check_training_state runs before anything is read).
    from magnet_hf.training.arguments import TrainingError

    (folder / "pytorch_model_fsdp.bin").write_bytes(b"planted")
    with pytest.raises(TrainingError, match="pickle-format"):
        load_training_state(folder, resumed, resumed_optimizer, resumed_scheduler, None, 0)
