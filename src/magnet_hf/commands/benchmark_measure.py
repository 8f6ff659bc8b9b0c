# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""What `scripts/benchmark.py` measures: inference (and small-model training) of MagNet with random weights, timed,
with the process's peak memory sampled.

For each configuration (preset, batch size, dtype, device, compile) it reports the forward latency (median and spread),
images per second, peak memory of one forward (resident set on CPU, allocated on CUDA), the model's FLOPs and the share
of the machine's compute floor reached, and optionally a training step (forward + backward + AdamW). With bfloat16 it
also reports the error against fp32 on the same inputs. The fp32 matmul rate that defines the floor is measured in the
same run, so the fraction is comparable across machines.

By default every configuration runs in a fresh Python process: the peak resident memory of a forward is then not
masked by what an earlier, larger configuration left in the allocator.

    >>> from magnet_hf.commands.benchmark_measure import BenchmarkSettings, run_benchmark
    >>> report = run_benchmark(BenchmarkSettings(preset="magnet-tiny", batch_sizes=(1, 2), repeats=2))
    >>> report["configurations"][0]["forward_seconds_median"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..training.arguments import parse_override
from .arguments import option

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DEVICES = ("cpu", "cuda")
PRESET_NAMES = ("magnet-base", "magnet-tiny")
# The released tokenizer pads every expression to this length (see MagNetModel.forward).
SEQUENCE_LENGTH = 20

# Keys of one configuration's result, documented for users of the JSON output.
CONFIGURATION_KEYS = (
    "preset",  # config preset name
    "batch_size",
    "image_size",  # square input side in pixels
    "dtype",  # "float32", or "bfloat16" (autocast; the weights stay fp32)
    "device",
    "compile",  # whether the model ran through torch.compile
    "config_overrides",  # MagNetConfig fields set on the preset (--config-override)
    "threads",  # torch intra-op threads
    "repeats",
    "forward_seconds",  # every timed forward of the whole batch
    "forward_seconds_median",
    "forward_seconds_min",
    "forward_seconds_max",
    "forward_seconds_iqr",  # interquartile range
    "seconds_per_image",  # median / batch size
    "images_per_second",
    "first_forward_seconds",  # the untimed warm-up (includes compilation with compile=True)
    "peak_memory_bytes",  # peak resident set during one forward (CPU) or peak allocated (CUDA)
    "peak_memory_kind",  # "rss" or "cuda_allocated"
    "memory_before_forward_bytes",  # resident set / allocated memory just before that forward
    "model_flops",  # FLOPs of one forward of the batch (torch.utils.flop_counter, fp32)
    "floor_seconds",  # model_flops / matmul rate: the time at the machine's fp32 matmul rate
    "floor_fraction",  # floor_seconds / forward_seconds_median
    "train_step_seconds_median",  # forward + backward + AdamW step (None when not measured)
    "train_step_seconds_min",
    "train_loss",  # loss of the last training step, to show it stays finite
    "train_images_per_second",  # batch size / median training step
    "train_step_flops",  # FLOPs of one training forward + backward with every enabled loss (Mask Grounding included)
    "train_floor_fraction",  # train_step_flops at the matmul rate / median training step
    "bf16_mask_logits_max_abs_diff",  # bfloat16 only: against fp32 on the same inputs
    "bf16_mask_iou",  # bfloat16 only: IoU of the thresholded (logit > 0) masks against fp32
    "profile",  # --profile only: a forward's median time by kind of work (`benchmark_profile.profile_forward`)
    "load_average",  # 1-minute load average before and after, to spot a busy machine
)


@dataclasses.dataclass
class BenchmarkSettings:
    """
    What to measure. Every combination of `batch_sizes` is one configuration.

    Args:
        preset: `"magnet-base"` (the released MagNet-B) or `"magnet-tiny"`.
        batch_sizes: images per forward, one configuration each.
        dtype: `"float32"`, or `"bfloat16"` to run under bf16 autocast (weights stay fp32).
        device: `"cpu"` or `"cuda"`.
        compile: run the model through `torch.compile`.
        repeats: timed forwards per configuration (after one untimed warm-up).
        image_size: input side; defaults to the preset's.
        train_step: also time a training step; defaults to on for `magnet-tiny` only.
        train_repeats: timed training steps (after one untimed).
        threads: torch intra-op threads; defaults to torch's choice.
        isolate: run each configuration in a fresh Python process (clean peak-memory figures).
        matmul_size: side of the square fp32 matmul that measures the machine's rate.
        seed: seed of the random weights and inputs.
        profile: after the timed forwards, run a few more under `torch.profiler` and report where a forward's time
            goes, each operator's median over them (`benchmark_profile.profile_forward`), in the result's `"profile"`.
        config_overrides: `MagNetConfig` fields set on the preset (`--config-override KEY=VALUE`, as in training),
            e.g. `use_mask_grounding=false` to time an ablation variant's training step.
    """

    preset: str = option("magnet-base", choices=PRESET_NAMES)
    batch_sizes: tuple[int, ...] = option((1,), "one or more batch sizes", flag="--batch-size", minimum=1)
    dtype: str = option("float32", "bfloat16 runs under autocast", choices=tuple(DTYPES))
    device: str = option("cpu", choices=DEVICES)
    compile: bool = option(False, "run the model through torch.compile")
    repeats: int = option(5, "timed forwards per configuration", minimum=1)
    image_size: int | None = option(None, "defaults to the preset's (480 / 128)", minimum=1)
    train_step: bool | None = option(None, "time a training step", negative="--no-train-step",
                                     negative_help="skip the training step")  # fmt: skip
    train_repeats: int = option(3, minimum=1)
    threads: int | None = option(None, "torch intra-op threads", minimum=1)
    isolate: bool = option(True, "run every configuration in this process", flag="--no-isolate")
    matmul_size: int = option(4096, minimum=1)
    seed: int = option(0)
    profile: bool = option(False, "profile a few more forwards and print where the time goes")
    config_overrides: dict[str, Any] = option(dict, "set a MagNetConfig field (JSON value), e.g. use_mask_grounding=false",
                                              flag="--config-override", action="append", parse=parse_override,
                                              metavar="KEY=VALUE")  # fmt: skip

    def validate(self) -> None:
        """Raises `ValueError` naming the first invalid setting."""
        if self.preset not in PRESET_NAMES:
            raise ValueError(f"Unknown preset {self.preset!r}; choose one of {', '.join(PRESET_NAMES)}.")
        if not self.batch_sizes:
            raise ValueError("Give at least one batch size.")
        for batch_size in self.batch_sizes:
            if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
                raise ValueError(f"Batch sizes must be positive integers, got {batch_size!r}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}.")
        if self.device not in DEVICES:
            raise ValueError(f"Unknown device {self.device!r}; choose one of {', '.join(DEVICES)}.")
        if self.profile and self.device != "cpu":
            raise ValueError("--profile times CPU operators; run it with --device cpu.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but torch sees no CUDA device on this machine.")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"repeats must be a positive integer, got {self.repeats!r}.")
        if not isinstance(self.train_repeats, int) or self.train_repeats < 1:
            raise ValueError(f"train_repeats must be a positive integer, got {self.train_repeats!r}.")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 32):
            raise ValueError(f"image_size must be an integer of at least 32 pixels, got {self.image_size!r}.")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}.")
        if not isinstance(self.matmul_size, int) or self.matmul_size < 64:
            raise ValueError(f"matmul_size must be an integer of at least 64, got {self.matmul_size!r}.")
        from ..training.arguments import TrainingError
        from ..training.setup import split_config_overrides

        try:
            split_config_overrides(self.config_overrides)
        except TrainingError as error:
            raise ValueError(str(error)) from None

    @property
    def measures_training(self) -> bool:
        return self.preset == "magnet-tiny" if self.train_step is None else self.train_step


# --------------------------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_gflops(device: str = "cpu", size: int = 4096, repeats: int = 3) -> dict[str, float]:
    """fp32 rate of a `size`x`size` `torch.matmul` in GFLOP/s: the best and the median of at least `repeats` timed
    calls."""
    device = torch.device(device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device)
    b = torch.randn(size, size, generator=generator).to(device)
    torch.matmul(a, b)  # warm-up: thread pool, MKL/cuBLAS handles
    _synchronize(device)
    rates = []
    # Small matrices time in milliseconds, where scheduler noise dominates: keep going for half a second at least.
    began = time.perf_counter()
    while len(rates) < repeats or time.perf_counter() - began < 0.5:
        start = time.perf_counter()
        torch.matmul(a, b)
        _synchronize(device)
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return {"best": max(rates), "median": statistics.median(rates)}


def _read_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Resets the kernel's high-water mark of this process's resident set (Linux); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class _RssSampler:
    """Peak resident set by sampling on a thread: the fallback where the kernel's high-water mark cannot be reset."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _current(self) -> int:
        current = _read_status_bytes("VmRSS")
        if current is None:
            import psutil  # only where /proc is missing

            current = psutil.Process().memory_info().rss
        return current

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._current())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self._current()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._current())


def _current_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    current = _read_status_bytes("VmRSS")
    if current is None:
        import psutil

        current = psutil.Process().memory_info().rss
    return current


def measure_peak_memory(function, device: torch.device) -> tuple[int, int, str]:
    """Runs `function()` once; returns (peak bytes during it, bytes before it, kind)."""
    import gc

    gc.collect()
    before = _current_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        function()
        _synchronize(device)
        return torch.cuda.max_memory_allocated(device), before, "cuda_allocated"
    if _reset_peak_rss():
        function()
        peak = _read_status_bytes("VmHWM")
        if peak is not None:
            return peak, before, "rss"
    with _RssSampler() as sampler:
        function()
    return sampler.peak, before, "rss"


def _spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if len(ordered) >= 2:
        quartiles = statistics.quantiles(ordered, n=4, method="inclusive")
        iqr = quartiles[2] - quartiles[0]
    else:
        iqr = 0.0
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1], "iqr": iqr}


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def make_inputs(config, batch_size: int, image_size: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random normalised images and padded token ids with between 5 and 20 real tokens per expression."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, config.num_channels, image_size, image_size, generator=generator)
    vocab = config.text_config.vocab_size
    input_ids = torch.randint(1, vocab, (batch_size, SEQUENCE_LENGTH), generator=generator)
    lengths = torch.randint(5, SEQUENCE_LENGTH + 1, (batch_size,), generator=generator)
    attention_mask = (torch.arange(SEQUENCE_LENGTH)[None, :] < lengths[:, None]).long()
    input_ids = input_ids * attention_mask
    return {
        "pixel_values": pixel_values.to(device),
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
    }


def count_model_flops(model, inputs: dict[str, torch.Tensor]) -> int:
    """FLOPs of one fp32 forward (matmuls, convolutions and attention, as `FlopCounterMode` counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**inputs)
    return int(counter.get_total_flops())


def _build_model(preset: str, image_size: int | None, device: torch.device, seed: int, config_overrides: dict[str, Any]):
    from ..configuration_magnet import PRESETS, MagNetConfig
    from ..modeling_magnet import MagNetForReferringSegmentation
    from ..training.setup import split_config_overrides

    torch.manual_seed(seed)
    overrides, text_overrides = split_config_overrides(config_overrides)
    if text_overrides:
        overrides["text_config"] = {**PRESETS[preset].get("text_config", {}), **text_overrides}
    if image_size is not None:
        overrides["image_size"] = image_size
    config = MagNetConfig.from_preset(preset, **overrides)
    model = MagNetForReferringSegmentation(config)
    # post_init leaves the fusion gates closed (zero), which would make the language stream inert: open them so the
    # benchmark runs every path with realistic values.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".gate." in name:
                parameter.normal_(0.0, config.init_std)
    return model.to(device).eval(), config


def _autocast(device: torch.device, dtype: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def benchmark_configuration(
    settings: BenchmarkSettings, batch_size: int, matmul_gflops: float, model_flops_per_image: int | None = None
) -> dict[str, Any]:
    """Measures one configuration in this process and returns its result (keys: `CONFIGURATION_KEYS`)."""
    device = torch.device(settings.device)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    load_before = _load_average()
    model, config = _build_model(settings.preset, settings.image_size, device, settings.seed, settings.config_overrides)
    image_size = config.image_size
    inputs = make_inputs(config, batch_size, image_size, device, settings.seed)

    runner = torch.compile(model) if settings.compile else model

    def forward():
        with torch.no_grad(), _autocast(device, settings.dtype):
            return runner(**inputs)

    start = time.perf_counter()
    outputs = forward()
    _synchronize(device)
    first_forward = time.perf_counter() - start
    del outputs  # not held across the measured forward, as a caller that is done with a result would not
    peak, before, kind = measure_peak_memory(forward, device)

    times = []
    for _ in range(settings.repeats):
        start = time.perf_counter()
        outputs = forward()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    spread = _spread(times)
    profile = None
    if settings.profile:
        from .benchmark_profile import profile_forward

        profile = profile_forward(forward)
    if model_flops_per_image is None:
        # Counted after the measurements: the counting pass's own bookkeeping stays out of the memory and time figures.
        model_flops_per_image = count_model_flops(model, make_inputs(config, 1, image_size, device, settings.seed))
    # Every operation acts per image, so a batch costs batch_size times one image.
    model_flops = model_flops_per_image * batch_size
    floor_seconds = model_flops / (matmul_gflops * 1e9)

    result: dict[str, Any] = {
        "preset": settings.preset,
        "batch_size": batch_size,
        "image_size": image_size,
        "dtype": settings.dtype,
        "device": settings.device,
        "compile": settings.compile,
        "config_overrides": dict(settings.config_overrides),
        "threads": torch.get_num_threads(),
        "repeats": settings.repeats,
        "forward_seconds": times,
        "forward_seconds_median": spread["median"],
        "forward_seconds_min": spread["min"],
        "forward_seconds_max": spread["max"],
        "forward_seconds_iqr": spread["iqr"],
        "seconds_per_image": spread["median"] / batch_size,
        "images_per_second": batch_size / spread["median"],
        "first_forward_seconds": first_forward,
        "peak_memory_bytes": peak,
        "peak_memory_kind": kind,
        "memory_before_forward_bytes": before,
        "model_flops": model_flops,
        "floor_seconds": floor_seconds,
        "floor_fraction": floor_seconds / spread["median"],
        "train_step_seconds_median": None,
        "train_step_seconds_min": None,
        "train_loss": None,
        "train_images_per_second": None,
        "train_step_flops": None,
        "train_floor_fraction": None,
        "bf16_mask_logits_max_abs_diff": None,
        "bf16_mask_iou": None,
        "profile": profile,
    }

    if settings.dtype == "bfloat16":
        with torch.no_grad():
            reference = model(**inputs).pred_masks.float()
        approximate = outputs.pred_masks.float()
        result["bf16_mask_logits_max_abs_diff"] = (approximate - reference).abs().max().item()
        ours, theirs = approximate > 0, reference > 0
        union = (ours | theirs).sum().item()
        result["bf16_mask_iou"] = (ours & theirs).sum().item() / union if union else 1.0

    del outputs, runner
    if settings.measures_training:
        result.update(_benchmark_training(model, config, inputs, settings, device, matmul_gflops))
    result["load_average"] = [load_before, _load_average()]
    return result


def _benchmark_training(
    model, config, inputs, settings: BenchmarkSettings, device: torch.device, matmul_gflops: float
) -> dict[str, Any]:
    """Times forward + backward + AdamW step on random 0/1 masks with every training loss the config enables, Mask
    Grounding included (tokens masked by the authors' rule), after one untimed step; then counts the step's FLOPs
    (forward and backward) for its fraction of the compute floor."""
    from ..data.collate import mask_tokens
    from ..training.optimization import fused_adamw_supported
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    groups = [{"params": [parameter for parameter in model.parameters() if parameter.requires_grad]}]
    optimizer = torch.optim.AdamW(groups, lr=1e-5, fused=fused_adamw_supported(groups) or None)  # as training does
    generator = torch.Generator().manual_seed(settings.seed + 1)
    batch_size = inputs["pixel_values"].shape[0]
    labels = (torch.rand(batch_size, config.image_size, config.image_size, generator=generator) > 0.5).float()
    masked_input_ids, mlm_labels = mask_tokens(
        inputs["input_ids"].cpu(), inputs["attention_mask"].cpu(), mask_token_id=1, special_ids=[0],
        generators=[np.random.default_rng([settings.seed, row]) for row in range(batch_size)],
        ratio=config.mask_grounding_mask_probability, replace_prob=config.mask_grounding_replace_probability,
    )  # fmt: skip
    batch = {**inputs, "labels": labels.to(device), "masked_input_ids": masked_input_ids.to(device),
             "mlm_labels": mlm_labels.to(device)}  # fmt: skip

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, settings.dtype):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        return loss.item()

    step()
    times, loss = [], math.nan
    for _ in range(settings.train_repeats):
        start = time.perf_counter()
        loss = step()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    counter = FlopCounterMode(display=False)
    with counter:
        model(**batch).loss.backward()
    model.eval()
    median = statistics.median(times)
    train_flops = counter.get_total_flops()
    return {
        "train_step_seconds_median": median,
        "train_step_seconds_min": min(times),
        "train_loss": loss,
        "train_images_per_second": batch_size / median,
        "train_step_flops": train_flops,
        "train_floor_fraction": train_flops / (matmul_gflops * 1e9) / median,
    }


def _run_isolated(settings: BenchmarkSettings, batch_size: int, matmul_gflops: float, flops_per_image: int | None):
    """`benchmark_configuration` in a fresh interpreter; the result comes back through a temporary JSON file."""
    with tempfile.TemporaryDirectory() as folder:
        result_path = Path(folder) / "result.json"
        job = {
            "settings": dataclasses.asdict(settings),
            "batch_size": batch_size,
            "matmul_gflops": matmul_gflops,
            "flops_per_image": flops_per_image,
            "result_path": str(result_path),
        }
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        completed = subprocess.run(
            [sys.executable, "-m", "magnet_hf.commands.benchmark", "--worker", json.dumps(job)],
            env=env,
            capture_output=True,
            text=True,
        )
        if completed.returncode != 0 or not result_path.exists():
            raise RuntimeError(
                f"The benchmark of batch size {batch_size} failed in its subprocess (exit {completed.returncode}):\n"
                + completed.stderr[-4000:]
            )
        return json.loads(result_path.read_text())


def run_benchmark(settings: BenchmarkSettings, log=None) -> dict[str, Any]:
    """Runs every configuration of `settings`; returns `{"matmul_gflops", "configurations": [...], ...}`."""
    settings.validate()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    rates = measure_matmul_gflops(settings.device, settings.matmul_size)
    # The best of the timed matmuls: the floor is then never flattered by a momentarily slow measurement.
    matmul_gflops = rates["best"]
    if log:
        log(f"fp32 matmul ({settings.matmul_size}^2): best {rates['best']:.1f} GFLOP/s, median {rates['median']:.1f}")
    configurations = []
    flops_per_image = None
    for batch_size in settings.batch_sizes:
        if settings.isolate:
            result = _run_isolated(settings, batch_size, matmul_gflops, flops_per_image)
        else:
            result = benchmark_configuration(settings, batch_size, matmul_gflops, flops_per_image)
        flops_per_image = result["model_flops"] // batch_size
        configurations.append(result)
        if log:
            log(format_configuration(result))
    return {
        "matmul_gflops": matmul_gflops,
        "matmul_gflops_median": rates["median"],
        "matmul_size": settings.matmul_size,
        "settings": dataclasses.asdict(settings),
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "cuda_device": torch.cuda.get_device_name() if settings.device == "cuda" else None,
        },
        "configurations": configurations,
    }


# --------------------------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------------------------


def _overrides_text(result: dict[str, Any]) -> str:
    overrides = result.get("config_overrides") or {}
    return "".join(f" {key}={json.dumps(value)}" for key, value in overrides.items())


def format_configuration(result: dict[str, Any]) -> str:
    memory = result["peak_memory_bytes"] / 2**30
    line = (
        f"{result['preset']} batch {result['batch_size']} {result['dtype']} {result['device']}"
        f"{' compiled' if result['compile'] else ''}{_overrides_text(result)}: forward median {result['forward_seconds_median']:.3f} s "
        f"(min {result['forward_seconds_min']:.3f}, max {result['forward_seconds_max']:.3f}, "
        f"IQR {result['forward_seconds_iqr']:.3f}), {result['seconds_per_image']:.3f} s/image, "
        f"{result['images_per_second']:.2f} images/s, peak {result['peak_memory_kind']} {memory:.2f} GiB, "
        f"{result['model_flops'] / 1e9:.1f} GFLOP, {result['floor_fraction']:.2f} of the compute floor"
    )
    if result.get("train_step_seconds_median") is not None:
        line += (
            f", train step {result['train_step_seconds_median']:.3f} s ({result['train_images_per_second']:.2f} images/s, "
            f"{result['train_step_flops'] / 1e9:.1f} GFLOP, {result['train_floor_fraction']:.2f} of the compute floor; "
            f"loss {result['train_loss']:.3f})"
        )
    if result.get("bf16_mask_logits_max_abs_diff") is not None:
        line += (
            f", bf16 vs fp32: max |mask logit diff| {result['bf16_mask_logits_max_abs_diff']:.3g}, "
            f"mask IoU {result['bf16_mask_iou']:.4f}"
        )
    load = result.get("load_average") or []
    if load and load[0] is not None:
        line += f" [load {load[0]:.1f}]"
    if result.get("profile"):
        from .benchmark_profile import format_profile

        line += "\n" + format_profile(result["profile"])
    return line


def write_json(report: dict[str, Any], path: str | Path, overwrite: bool = False) -> Path:
    """Writes `report` to `path` through a temporary file and a rename, refusing to replace a file unless `overwrite`."""
    from ..files import refuse_existing_output, write_json_atomically

    path = refuse_existing_output(path, overwrite, flag="--overwrite (overwrite=True)")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"The folder of {path} does not exist.")
    return write_json_atomically(path, report)
