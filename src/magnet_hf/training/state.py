# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Training state in safetensors and JSON only: model, optimizer, scheduler, gradient scaler and RNG streams.

`accelerate`'s `save_state`/`load_state` would be the library choice, but its loader unpickles (`torch.load` with
`weights_only=False` for custom objects and RNG states, plain `torch.load` for the optimizer), so a checkpoint
folder from anywhere could run code on `--resume`. This module writes the same pieces as tensors and JSON, and
refuses any folder that holds a pickle-format file instead of loading it.

Files of a checkpoint folder (beside the processor, `config.json` and `trainer_state.json`)::

    model.safetensors                     the unwrapped model's parameters and buffers
    optimizer.safetensors, optimizer.json the optimizer's per-parameter tensors / its groups and scalar state
    scheduler.json                        the lr scheduler's `state_dict()`
    scaler.json                           the fp16 gradient scaler's `state_dict()` (fp16 runs only)
    rng_state_<rank>.safetensors/.json    torch (CPU and CUDA), NumPy and Python RNG states of process <rank>

Under FSDP (parameters sharded as DTensors) the same files hold the full, unsharded model and optimizer state,
gathered with torch's `torch.distributed.checkpoint.state_dict` (every process takes part) and scattered back on
resume: a checkpoint does not depend on how the run that wrote it was sharded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .arguments import TrainingError

MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS, OPTIMIZER_JSON = "optimizer.safetensors", "optimizer.json"
SCHEDULER_JSON, SCALER_JSON = "scheduler.json", "scaler.json"
#: Suffixes of files in pickle-based formats (torch.save, pickle, joblib): a checkpoint holding one is refused.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt", ".joblib", ".npy", ".npz")


class NonFiniteStateError(TrainingError):
    """The weights or optimizer state hold NaN/inf: the run diverged, and that state must not become a checkpoint."""


def rng_files(rank: int) -> tuple[str, str]:
    return f"rng_state_{rank}.safetensors", f"rng_state_{rank}.json"


def non_finite_tensors(named_tensors) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [
        name for name, tensor in named_tensors
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def _write_json(data: Any, path: Path) -> None:
    # allow_nan=False: a non-finite hyperparameter must never make it into a "good" checkpoint.
    path.write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TrainingError(f"{path} is unreadable or not JSON ({error}).") from None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own SafetensorError and OSError for truncated files
        raise TrainingError(f"{path} is not a readable safetensors file ({error}).") from None


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model`'s parameters are sharded DTensors (FSDP2's `fully_shard`)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


def _full_state_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Every process gets the full tensors, so that every process can check them (see save_training_state).
    return StateDictOptions(full_state_dict=True, cpu_offload=False)


def _aliases(model: torch.nn.Module) -> dict[str, str]:
    """State-dict names that are another name's tensor (tied weights) -> that first name."""
    first: dict[int, str] = {}
    aliases = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in first:
            aliases[name] = first[id(tensor)]
        else:
            first[id(tensor)] = name
    return aliases


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A sharded model's parameters and buffers, gathered (every process must call it), each tied tensor once (as
    safetensors stores it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_full_state_options())
    aliases = _aliases(model)
    return {name: tensor.detach() for name, tensor in state.items() if name not in aliases}


def _parameter_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each of the optimizer's parameters, in its state-dict order (group by group)."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [names[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]


def _optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()`, unsharded under FSDP (gathered: every process must call it) and then indexed the way
    a plain optimizer indexes it, so that sharded and plain runs write the same files."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(model, optimizer, options=_full_state_options())
    index = {name: position for position, name in enumerate(name for group in full["param_groups"] for name in group["params"])}
    return {
        "state": {index[name]: values for name, values in full["state"].items()},
        "param_groups": [{**group, "params": [index[name] for name in group["params"]]} for group in full["param_groups"]],
    }


def _load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """The inverse of `_optimizer_state`: scatters a full state onto a sharded optimizer."""
    if not is_sharded(model):
        optimizer.load_state_dict(state_dict)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = _parameter_names(model, optimizer)
    if len(names) != sum(len(group["params"]) for group in state_dict["param_groups"]):
        raise ValueError("the saved optimizer has another number of parameters")
    full = {
        "state": {names[index]: values for index, values in state_dict["state"].items()},
        "param_groups": [{**group, "params": [names[index] for index in group["params"]]} for group in state_dict["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, optim_state_dict=full, options=_full_state_options())


def _load_model_state(model: torch.nn.Module, path: Path) -> tuple[list[str], list[str]]:
    """Loads the model file written by `save_training_state`; returns (missing, unexpected) names."""
    if not is_sharded(model):
        from safetensors.torch import load_model

        missing, unexpected = load_model(model, str(path), strict=False)
        return sorted(missing), sorted(unexpected)
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    state = _load_tensors(path)
    tied: dict[str, list[str]] = {}
    for alias, name in _aliases(model).items():
        tied.setdefault(name, [name]).append(alias)
    for names in tied.values():  # a tied tensor is stored under one of its names: every name gets it
        present = [name for name in names if name in state]
        if present:
            state.update(dict.fromkeys(names, state[present[0]]))
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if not missing and not unexpected:
        set_model_state_dict(model, state, options=_full_state_options())
    return missing, unexpected


def _optimizer_to_files(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalar_state": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        index, _, key = name.partition(".")
        state.setdefault(int(index), {})[key] = tensor
    for index, values in meta.get("scalar_state", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])  # JSON turned the tuple into a list; AdamW keeps tuples
        groups.append(group)
    return {"state": state, "param_groups": groups}


def _rng_to_files() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = cuda_state
    kind, keys, position, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, python_state, gauss = random.getstate()
    meta = {
        "numpy": {"kind": kind, "position": int(position), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }
    return tensors, meta


def _rng_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    numpy = meta["numpy"]
    np.random.set_state(
        (numpy["kind"], tensors["numpy"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"])
    )
    python = meta["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))


def save_training_state(folder: Path, model: torch.nn.Module, optimizer, scheduler, scaler, rank: int, is_main: bool) -> None:
    """Writes this process's part of the training state into `folder` (every process calls it).

    The main process writes the model, optimizer, scheduler and scaler (identical on every process under DDP);
    each process writes its own RNG streams.

    Raises:
        TrainingError: a parameter or optimizer tensor is NaN/inf (such a checkpoint would not be a good one).
    """
    from safetensors.torch import save_file, save_model

    folder = Path(folder)
    # Every process checks (they hold the same values), so that all of them refuse together instead of waiting.
    model_state = full_model_state(model) if is_sharded(model) else None
    bad = non_finite_tensors((model.state_dict() if model_state is None else model_state).items())
    optimizer_tensors, optimizer_meta = _optimizer_to_files(_optimizer_state(model, optimizer))
    bad += [f"optimizer state {name}" for name in non_finite_tensors(optimizer_tensors.items())]
    if bad:
        raise NonFiniteStateError(
            f"{len(bad)} tensor(s) became NaN or infinite (first: {bad[:3]}); such a state is not saved as a checkpoint."
        )
    if is_main:
        if model_state is None:
            save_model(model, str(folder / MODEL_FILE))
        else:
            save_file({name: tensor.contiguous().cpu() for name, tensor in model_state.items()}, str(folder / MODEL_FILE))
        save_file(optimizer_tensors, str(folder / OPTIMIZER_TENSORS))
        _write_json(optimizer_meta, folder / OPTIMIZER_JSON)
        _write_json(scheduler.state_dict(), folder / SCHEDULER_JSON)
        if scaler is not None:
            _write_json(scaler.state_dict(), folder / SCALER_JSON)
    rng_tensors, rng_meta = _rng_to_files()
    tensor_file, json_file = rng_files(rank)
    save_file(rng_tensors, str(folder / tensor_file))
    _write_json(rng_meta, folder / json_file)


def check_training_state(folder: Path, num_processes: int = 1) -> None:
    """Checks that `folder` holds a complete, finite, pickle-free training state, reading every file.

    Raises:
        TrainingError: naming the first problem (a pickle-format file, a missing, truncated or non-JSON file, a
            non-finite tensor).
    """
    folder = Path(folder)
    pickled = sorted(path.name for path in folder.rglob("*") if path.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise TrainingError(
            f"{folder} holds pickle-format file(s) {pickled[:3]}, which could run code when loaded; refusing to "
            "resume from it (checkpoints written by magnet_hf hold only safetensors and JSON)."
        )
    required = [MODEL_FILE, OPTIMIZER_TENSORS, OPTIMIZER_JSON, SCHEDULER_JSON]
    required += [name for rank in range(num_processes) for name in rng_files(rank)]
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise TrainingError(f"{folder} is not a complete magnet_hf checkpoint: {missing[:3]} missing.")
    for name in required:
        if name.endswith(".json"):
            _read_json(folder / name)
        else:
            bad = non_finite_tensors(_load_tensors(folder / name).items())
            if bad:
                raise TrainingError(f"{folder / name} holds NaN or infinite values ({bad[:3]}).")


def load_training_state(folder: Path, model: torch.nn.Module, optimizer, scheduler, scaler, rank: int) -> None:
    """Restores what [`save_training_state`] wrote into the live objects (every process calls it with its rank).

    Raises:
        TrainingError: the folder is refused by [`check_training_state`] or does not fit the model.
    """
    folder = Path(folder)
    check_training_state(folder, num_processes=rank + 1)
    try:
        missing, unexpected = _load_model_state(model, folder / MODEL_FILE)
    except TrainingError:
        raise
    except Exception as error:  # shape mismatches come as RuntimeError, broken files as SafetensorError
        raise TrainingError(f"{folder / MODEL_FILE} does not fit the model: {error}") from None
    if missing or unexpected:
        raise TrainingError(
            f"{folder / MODEL_FILE} does not fit the model (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})."
        )
    try:
        _load_optimizer_state(
            model, optimizer, _optimizer_from_files(_load_tensors(folder / OPTIMIZER_TENSORS), _read_json(folder / OPTIMIZER_JSON))
        )
        scheduler.load_state_dict(_read_json(folder / SCHEDULER_JSON))
        if scaler is not None and (folder / SCALER_JSON).is_file():
            scaler.load_state_dict(_read_json(folder / SCALER_JSON))
        tensor_file, json_file = rng_files(rank)
        _rng_from_files(_load_tensors(folder / tensor_file), _read_json(folder / json_file))
    except TrainingError:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as error:
        raise TrainingError(f"the training state in {folder} does not fit this run ({type(error).__name__}: {error}).") from None
