# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""The training loop of MagNet on top of `accelerate`: deterministic data order, atomic checkpoints, exact resume.

Determinism: the order of epoch `e` is a permutation seeded by `(seed, e)`; step `s` of an epoch takes the
`s`-th block of `batch_size * processes * accumulation` refs and hands process `r` its `r`-th slice of every
micro-batch, so one process with batch `2B` sees the same samples per step as two with `B`. The collator's random
choices are keyed by `(seed, epoch, ref)`. Model, optimizer, scheduler and RNG states are saved as safetensors
and JSON (`state.py`; never a pickle), and the data position is the step counter, so a resumed run continues
exactly where the checkpoint was taken. Evaluation runs on a forked RNG and never shifts the training stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import write_json_atomically
from .arguments import TrainingArguments, TrainingError
from .checkpoints import (
    BEST_DIR,
    check_checkpoint,
    latest_good_checkpoint,
    list_checkpoints,
    read_trainer_state,
    save_checkpoint,
    save_final_model,
    save_pretrained_atomic,
)
from .optimization import build_optimizer_and_scheduler
from .state import NonFiniteStateError, load_training_state, save_training_state
from .trainer_state import TrainerState

logger = logging.getLogger(__name__)

EVAL_METRIC = "overall_iou"


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the run stopped without saving anything from that step."""


class PushFailedError(TrainingError):
    """The run finished and is saved, but `--push-to-hub` failed."""


@dataclass
class TrainingResult:
    """What a run did: steps, metrics per evaluation, logged losses and whether SIGTERM cut it short."""

    output_dir: Path
    global_step: int
    total_steps: int
    best_metric: float | None
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    last_checkpoint: Path | None = None


class _StopRequest:
    """Turns SIGTERM into a flag that the loop checks at the next step boundary (only in the main thread)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# ------------------------------------------------------------------------------------------------ set-up


def _inputs_inside(args: TrainingArguments, output: Path) -> list[str]:
    """The flags whose local path lies in `output` (which `--overwrite` would replace)."""
    flags = {"--model": args.model, "--dataset": args.dataset, "--tokenizer": args.tokenizer,
             "--text-encoder": args.text_encoder, "--image-encoder": args.image_encoder, "--coco-images": args.coco_images}
    inside = []
    for flag, value in flags.items():
        if value and Path(value).expanduser().exists():
            path = Path(value).expanduser().resolve()
            if path == output.resolve() or path.is_relative_to(output.resolve()):
                inside.append(flag)
    return inside


def prepare_output_dir(args: TrainingArguments) -> Path | None:
    """Applies the output-folder rules and finds the checkpoint to resume from (main process only).

    A non-empty `output_dir` is refused unless resuming or `--overwrite`; with `--overwrite` nothing is removed
    here (the run moves the old folder aside once its inputs have loaded, see `_Run._move_old_output_aside`), and an
    output that holds one of the run's inputs is refused. `--resume latest` takes the newest checkpoint whose
    files all read back and are finite (skipping broken ones with a warning) and starts from scratch when there is
    none, so a restart script can always pass it.
    """
    output = Path(args.output_dir).expanduser()
    if output.exists() and not output.is_dir():
        raise TrainingError(f"--output-dir {output} exists and is not a folder.")
    if args.resume is None:
        if output.is_dir() and any(output.iterdir()):
            if not args.overwrite:
                raise TrainingError(
                    f"--output-dir {output} already exists and is not empty; pass --resume latest to continue "
                    "that run or --overwrite to replace it."
                )
            inside = _inputs_inside(args, output)
            if inside:
                raise TrainingError(
                    f"--overwrite would replace --output-dir {output}, which holds the input of {' and '.join(inside)}; "
                    "choose another --output-dir."
                )
        return None
    if args.resume == "latest":
        checkpoint = latest_good_checkpoint(output)
        if checkpoint is None and list_checkpoints(output):
            raise TrainingError(
                f"no checkpoint in {output / 'checkpoints'} is usable (see the warnings); pass --overwrite without "
                "--resume to start again."
            )
        return checkpoint
    checkpoint = Path(args.resume)
    check_checkpoint(checkpoint)
    return checkpoint


def _trackers(report_to: list[str]) -> list[str]:
    names = [name.lower() for name in report_to]
    if "none" in names:
        return []
    if "auto" in names:
        names.remove("auto")
        try:
            import tensorboard  # noqa: F401

            names.append("tensorboard")
        except ImportError:
            pass
    return sorted(set(names))


def _make_accelerator(args: TrainingArguments, output: Path) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    # On a machine without GPUs accelerate only sets up gloo when asked for the CPU explicitly.
    cpu = args.cpu or not torch.cuda.is_available()
    try:
        accelerator = Accelerator(
            cpu=cpu,
            mixed_precision=args.mixed_precision,
            log_with=_trackers(args.report_to) or None,
            project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
            # Switched-off auxiliary losses leave their heads without gradients, which plain DDP refuses.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
    except (ValueError, ImportError, RuntimeError) as error:  # e.g. fp16 without a GPU, an uninstalled tracker
        raise TrainingError(f"cannot set up accelerate with these flags: {error}") from error
    sharded = accelerator.distributed_type.value in ("FSDP", "DEEPSPEED")
    if sharded and accelerator.mixed_precision != "no":
        # Both cast every parameter to the half dtype, where autocast (plain DDP) leaves fp32 modules alone.
        raise TrainingError(
            f"--mixed-precision {accelerator.mixed_precision} is not supported with {accelerator.distributed_type.value}: "
            "it would cast MagNet's language fusion, which must run in float32, to half precision. Train in fp32 "
            "(--mixed-precision no, as accelerate_configs/ do) or with plain data parallelism."
        )
    if accelerator.num_processes == 1 and world_size == 1 and "MASTER_ADDR" in os.environ and os.environ.get(
        "ACCELERATE_USE_CPU", ""
    ).lower() in ("true", "1"):
        logger.warning(
            "`accelerate launch --cpu --num_processes N` started ONE process (this accelerate version's simple "
            "launcher ignores --num_processes with --cpu). For N CPU processes use `accelerate launch --multi_gpu "
            "--num_processes N scripts/train.py --cpu ...` or `python -m torch.distributed.run --nproc_per_node N "
            "scripts/train.py --cpu ...`."
        )
    return accelerator


def _epoch_order(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_rows)


def _rank_batches(order: np.ndarray, first_step: int, steps: int, micro: int, world: int, rank: int, accumulation: int):
    """Index lists of this process's micro-batches for steps `first_step .. steps-1` of an epoch."""
    per_step = micro * world * accumulation
    batches = []
    for step in range(first_step, steps):
        block = order[step * per_step : (step + 1) * per_step]
        for m in range(accumulation):
            start = m * micro * world + rank * micro
            batches.append(block[start : start + micro].tolist())
    return batches


# ------------------------------------------------------------------------------------------------- train


def train(args: TrainingArguments) -> TrainingResult:
    """Runs a training described by `args` (see `scripts/train.py --help`) and returns what happened.

    Raises:
        TrainingError: bad input (message names the flag), or `NonFiniteLossError` when the loss diverges.
    """
    from accelerate.utils import set_seed

    args.validate()
    output = Path(args.output_dir).expanduser().absolute()
    is_main = int(os.environ.get("RANK", "0")) == 0
    # Only rank 0 judges the folder: the others could see what rank 0 has just created.
    checkpoint = prepare_output_dir(args) if is_main else None
    accelerator = _make_accelerator(args, output)
    try:
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            shared = [str(checkpoint) if checkpoint else None]
            broadcast_object_list(shared)
            checkpoint = Path(shared[0]) if shared[0] else None
        if accelerator.is_main_process:
            output.mkdir(parents=True, exist_ok=True)
        with _StopRequest() as stop:
            return _Run(args, accelerator, output, checkpoint, stop).run(set_seed)
    finally:
        accelerator.end_training()
        if accelerator.num_processes == 1:
            # Several runs in one Python process (tests, the ablation) each need a fresh accelerate state.
            from accelerate.state import AcceleratorState, GradientState

            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()


class _Run:
    """One training run: built from the arguments (or a checkpoint), then `run()`."""

    def __init__(self, args: TrainingArguments, accelerator: Any, output: Path, checkpoint: Path | None, stop: _StopRequest):
        self.args, self.accelerator, self.output, self.checkpoint, self.stop = args, accelerator, output, checkpoint, stop

    # --------------------------------------------------------------------------------------- building

    def _build(self, set_seed) -> None:
        from ..data import DataCollatorForReferringSegmentation
        from ..modeling_magnet import MagNetForReferringSegmentation
        from .setup import build_model_and_processor, load_training_splits

        args, accelerator = self.args, self.accelerator
        set_seed(args.seed)
        if self.checkpoint is not None:
            from ..configuration_magnet import MagNetConfig

            # The checkpoint holds the processor and config the run started with: no pretrained downloads and no
            # re-trained tokenizer are needed, and the weights come from the saved state below.
            from ..model_folder import ModelFolderError, load_processor

            try:
                processor = load_processor(self.checkpoint)
                config = MagNetConfig.from_pretrained(str(self.checkpoint))
                model = MagNetForReferringSegmentation(config)
            except ModelFolderError as error:
                raise TrainingError(f"--resume: {error}") from None
            except Exception as error:  # a config that does not build a model is bad input, whatever raised
                raise TrainingError(f"--resume: {self.checkpoint}/config.json does not describe a MagNet model ({error}).") from None
            image_size = int(model.config.image_size)
            self.train_split, self.eval_split = load_training_splits(args, image_size)
        else:
            from ..configuration_magnet import PRESETS

            image_size = args.image_size or (PRESETS[args.preset].get("image_size", 480) if args.preset else 480)
            self.train_split, self.eval_split = load_training_splits(args, image_size)
            model, processor = build_model_and_processor(args, self.train_split)
        if args.activation_checkpointing:
            model.activation_checkpointing_enable()
        self.processor, self.config = processor, model.config
        config = model.config
        self.collator = DataCollatorForReferringSegmentation(
            processor,
            train=True,
            mask_grounding=bool(config.use_mask_grounding),
            mask_ratio=config.mask_grounding_mask_probability,
            mask_replace_prob=config.mask_grounding_replace_probability,
            seed=args.seed,
        )
        world = accelerator.num_processes
        self.global_batch = args.batch_size * world * args.gradient_accumulation_steps
        self.steps_per_epoch = len(self.train_split) // self.global_batch
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f"the training split has {len(self.train_split)} refs, fewer than one global batch of {self.global_batch} "
                "(--batch-size x processes x --gradient-accumulation-steps); lower the batch or add data."
            )
        self.total_steps = args.max_steps or args.num_epochs * self.steps_per_epoch
        optimizer, self.scheduler = build_optimizer_and_scheduler(
            model,
            learning_rate=args.resolved_learning_rate(),
            weight_decay=args.weight_decay,
            total_steps=self.total_steps,
            warmup_steps=min(args.warmup_steps, self.total_steps - 1),
            poly_power=args.poly_power,
        )
        # The scheduler is stepped by hand: a prepared one would advance once per process and step.
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.state = TrainerState()
        if self.checkpoint is not None:
            load_training_state(
                self.checkpoint, accelerator.unwrap_model(self.model), self.optimizer.optimizer
                if hasattr(self.optimizer, "optimizer") else self.optimizer, self.scheduler,
                getattr(accelerator, "scaler", None), accelerator.process_index,
            )
            saved = read_trainer_state(self.checkpoint)
            if saved.total_steps != self.total_steps or saved.global_batch != self.global_batch:
                raise TrainingError(
                    f"{self.checkpoint} was taken in a run of {saved.total_steps} steps with global batch "
                    f"{saved.global_batch}; these flags give {self.total_steps} and {self.global_batch}. "
                    "Resume with the original --max-steps/--num-epochs, --batch-size, --gradient-accumulation-steps "
                    "and number of processes."
                )
            self.state = saved
        self.state.total_steps, self.state.global_batch = self.total_steps, self.global_batch
        self.state.num_processes = accelerator.num_processes

    # -------------------------------------------------------------------------------------- helpers

    def _trainer_state(self, interrupted: bool = False) -> TrainerState:
        """The state as saved now: a copy with the epoch and the interruption recorded."""
        epoch = self.state.global_step / self.steps_per_epoch
        return dataclasses.replace(self.state, epoch=epoch, interrupted=interrupted)

    def _save_checkpoint(self, interrupted: bool = False) -> Path:
        accelerator = self.accelerator
        unwrapped = accelerator.unwrap_model(self.model)
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)

        def training_state(folder: Path) -> None:
            save_training_state(
                folder, unwrapped, optimizer, self.scheduler, getattr(accelerator, "scaler", None),
                accelerator.process_index, accelerator.is_main_process,
            )

        def extras(folder: Path) -> None:
            self.processor.save_pretrained(str(folder))
            unwrapped.config.save_pretrained(str(folder))
            (folder / "training_args.json").write_text(self.args.to_json() + "\n")

        try:
            path = save_checkpoint(
                accelerator,
                self.output,
                self.state.global_step,
                self._trainer_state(interrupted),
                extras,
                training_state,
                total_limit=self.args.save_total_limit,
            )
        except NonFiniteStateError as error:
            raise NonFiniteLossError(
                f"diverged by step {self.state.global_step}: {error} Last good checkpoint: "
                f"{latest_good_checkpoint(self.output, warn=False) or 'none'}. Lower --learning-rate or use "
                "--warmup-steps / --max-grad-norm, then --resume latest."
            ) from None
        self.last_checkpoint = path
        return path

    def _evaluate(self) -> dict[str, Any]:
        from ..evaluation.evaluator import evaluate_referring_segmentation

        accelerator = self.accelerator
        unwrapped = accelerator.unwrap_model(self.model)
        devices = [torch.cuda.current_device()] if accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            metrics = evaluate_referring_segmentation(
                unwrapped,
                self.processor,
                self.eval_split,
                batch_size=self.args.eval_batch_size,
                accelerator=accelerator if accelerator.num_processes > 1 else None,
                progress=False,
            )
        self.model.train()
        return metrics

    def _micro_batches(self):
        """Yields this process's micro-batches from the current step on, across epochs."""
        args, accelerator = self.args, self.accelerator
        step = self.state.global_step
        while True:
            epoch, within = divmod(step, self.steps_per_epoch)
            self.collator.set_epoch(epoch)
            order = _epoch_order(len(self.train_split), args.seed, epoch)
            batches = _rank_batches(
                order, within, self.steps_per_epoch, args.batch_size, accelerator.num_processes,
                accelerator.process_index, args.gradient_accumulation_steps,
            )
            # A private generator: creating a DataLoader iterator must not draw from the global RNG (dropout).
            loader = torch.utils.data.DataLoader(
                self.train_split, batch_sampler=batches, collate_fn=self.collator, num_workers=args.num_workers,
                generator=torch.Generator().manual_seed(args.seed),
            )
            yield from loader
            step = (epoch + 1) * self.steps_per_epoch

    def _train_step(self, batches) -> dict[str, float]:
        """One optimizer step over `--gradient-accumulation-steps` micro-batches; returns the mean loss terms."""
        accelerator, accumulation = self.accelerator, self.args.gradient_accumulation_steps
        totals: dict[str, torch.Tensor] = {}
        for micro in range(accumulation):
            batch = {key: value.to(accelerator.device) for key, value in next(batches).items()}
            sync = contextlib.nullcontext() if micro == accumulation - 1 else accelerator.no_sync(self.model)
            with sync:
                with accelerator.autocast():
                    outputs = self.model(**batch)
                accelerator.backward(outputs.loss / accumulation)
            terms = {"loss": outputs.loss.detach(), **{k: v.detach() for k, v in (outputs.loss_dict or {}).items()}}
            for key, value in terms.items():
                totals[key] = totals.get(key, 0) + value.float().reshape(()) / accumulation
        keys = sorted(totals)
        values = torch.stack([totals[key] for key in keys] + [torch.tensor(float(self.stop.requested), device=totals["loss"].device)])
        if accelerator.num_processes > 1:
            values = accelerator.gather(values[None]).reshape(accelerator.num_processes, -1)
            stop = bool(values[:, -1].max() > 0)
            # A mean with a NaN stays NaN, so one diverging process stops every process.
            values = values[:, :-1].mean(0)
        else:
            stop, values = bool(values[-1] > 0), values[:-1]
        self.stop.requested = self.stop.requested or stop
        result = dict(zip(keys, values.tolist()))
        if not all(math.isfinite(v) for v in result.values()):
            terms = ", ".join(f"{key}={value:.4g}" for key, value in result.items())
            latest = latest_good_checkpoint(self.output, warn=False)
            raise NonFiniteLossError(
                f"non-finite loss at step {self.state.global_step + 1} ({terms}); stopped without saving this "
                f"step. Last good checkpoint: {latest or 'none'}. Lower --learning-rate or use --warmup-steps / "
                "--max-grad-norm, then --resume latest."
            )
        if self.args.max_grad_norm > 0:
            result["grad_norm"] = float(accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm))
        result["lr"] = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return result

    # ------------------------------------------------------------------------------------------ loop

    def run(self, set_seed) -> TrainingResult:
        self._build(set_seed)
        retired = self._move_old_output_aside()
        try:
            result = self._loop()
        except BaseException:
            self._restore_old_output(retired)
            raise
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
        return result

    def _move_old_output_aside(self) -> Path | None:
        """With `--overwrite`, renames the old run's folder to a hidden sibling once the inputs have loaded (so a
        bad flag never costs the old run); it is deleted only when the new run has finished or saved a checkpoint."""
        retired = None
        if self.args.overwrite and self.args.resume is None and self.accelerator.is_main_process and any(self.output.iterdir()):
            retired = self.output.parent / f".{self.output.name}.replaced-{uuid.uuid4().hex[:8]}"
            self.output.rename(retired)
            self.output.mkdir()
        self.accelerator.wait_for_everyone()
        return retired

    def _restore_old_output(self, retired: Path | None) -> None:
        if retired is None:
            return
        if list_checkpoints(self.output):
            logger.warning(f"the new run saved checkpoints in {self.output}; the replaced run is kept in {retired}.")
            return
        shutil.rmtree(self.output, ignore_errors=True)
        retired.rename(self.output)
        logger.warning(f"the new run failed before its first checkpoint; {self.output} holds the old run again.")

    def _loop(self) -> TrainingResult:
        """Steps until the last step or SIGTERM: each step is trained, logged, and on schedule evaluated (keeping the
        best model) and saved; then the run stops."""
        self._start()
        batches = self._micro_batches()
        while self.state.global_step < self.total_steps and not self.stop.requested:
            self._log(self._step(batches))
            step = self.state.global_step
            if self._evaluation_due(step):
                self._keep_best(self._evaluate_and_record())
                if self.args.save_steps is None:
                    self._save()
            if self.args.save_steps is not None and step % self.args.save_steps == 0:
                self._save()
        return self._stop()

    def _start(self) -> None:
        from tqdm.auto import tqdm

        args, accelerator = self.args, self.accelerator
        self.last_checkpoint = self.checkpoint
        self.saved_at = self.state.global_step if self.checkpoint is not None else None
        self.window: dict[str, list[float]] = {}
        if accelerator.is_main_process:
            write_json_atomically(self.output / "training_args.json", dataclasses.asdict(args), sort_keys=True)
        if _trackers(args.report_to):
            accelerator.init_trackers("magnet_hf", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})
        self.model.train()
        self.progress = tqdm(
            total=self.total_steps, initial=self.state.global_step, desc="train",
            disable=None if args.progress and accelerator.is_main_process else True,  # None: off unless a terminal
        )

    def _step(self, batches) -> dict[str, float]:
        """One optimizer step, timed (data, forward, backward and update); advances `global_step`."""
        started = time.perf_counter()
        result = self._train_step(batches)
        result["seconds_per_step"] = time.perf_counter() - started
        self.state.global_step += 1
        self.progress.update(1)
        return result

    def _log(self, result: dict[str, float]) -> None:
        """Adds a step's numbers to the logging window; every `--logging-steps` (and at the last step) logs their
        means to the history, the trackers and the progress bar."""
        for key, value in result.items():
            self.window.setdefault(key, []).append(value)
        step = self.state.global_step
        if step % self.args.logging_steps and step != self.total_steps:
            return
        entry = {"step": step, **{key: float(np.mean(values)) for key, values in self.window.items()}}
        self.window = {}
        self.state.log_history.append(entry)
        self.accelerator.log({f"train/{k}": v for k, v in entry.items() if k != "step"}, step=step)
        self.progress.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}")
        if self.progress.disable and self.accelerator.is_main_process:  # --no-progress disables the bar too
            # Without a bar (--no-progress, or output redirected to a log file, where tqdm hides it) the loss still
            # has to show up somewhere readable.
            self.progress.write(f"step {step}/{self.total_steps}: loss {entry['loss']:.4f}  lr {entry['lr']:.2e}")

    def _evaluate_and_record(self) -> dict[str, Any]:
        metrics = self._evaluate()
        step = self.state.global_step
        self.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        if self.accelerator.is_main_process:
            self.progress.write(f"step {step}: val oIoU {100 * metrics['overall_iou']:.2f}  mIoU {100 * metrics['mean_iou']:.2f}")
        return metrics

    def _keep_best(self, metrics: dict[str, Any]) -> None:
        """Records the evaluation; a new best validation oIoU is saved to `output_dir/best`."""
        if not self.state.record_evaluation(metrics, EVAL_METRIC):
            return
        weights = self._gathered_weights()
        if self.accelerator.is_main_process:
            save_pretrained_atomic(
                self.accelerator.unwrap_model(self.model), self.processor, self.output / BEST_DIR,
                {"eval_results.json": {"step": self.state.global_step, **metrics}}, weights,
            )
        self.accelerator.wait_for_everyone()

    def _save(self, interrupted: bool = False) -> None:
        self._save_checkpoint(interrupted=interrupted)
        self.saved_at = self.state.global_step

    def _stop(self) -> TrainingResult:
        """Saves what stopping calls for: a checkpoint after SIGTERM (unless this step is saved), else the final
        model."""
        self.progress.close()
        state = self.state
        interrupted = self.stop.requested and state.global_step < self.total_steps
        if interrupted:
            if self.saved_at != state.global_step:
                self._save(interrupted=True)
            if self.accelerator.is_main_process:
                logger.warning(f"SIGTERM: stopped at step {state.global_step}; saved {self.last_checkpoint}.")
        else:
            self._save_final()
        return TrainingResult(
            output_dir=self.output,
            global_step=state.global_step,
            total_steps=self.total_steps,
            best_metric=state.best_metric,
            eval_history=list(state.eval_history),
            log_history=list(state.log_history),
            interrupted=interrupted,
            last_checkpoint=self.last_checkpoint,
        )

    def _evaluation_due(self, step: int) -> bool:
        strategy = self.args.eval_strategy
        if strategy == "no":
            return False
        if step == self.total_steps:
            return True
        if strategy == "epoch":
            return step % self.steps_per_epoch == 0
        return step % self.args.eval_steps == 0

    def _gathered_weights(self) -> dict[str, torch.Tensor] | None:
        """Under FSDP, the full weights gathered from every process (all of them must call this before the main
        process saves); `None` when the model is not sharded and saves its own."""
        from .state import full_model_state, is_sharded

        unwrapped = self.accelerator.unwrap_model(self.model)
        return full_model_state(unwrapped) if is_sharded(unwrapped) else None

    def _save_final(self) -> None:
        accelerator, state = self.accelerator, self.state
        accelerator.wait_for_everyone()
        weights = self._gathered_weights()
        if not accelerator.is_main_process:
            return
        results = {
            "final": state.evaluation_at(state.global_step),
            "best": state.evaluation_at(state.best_step),
            "eval_split": self.args.eval_split,
            "dataset": self.args.dataset,
        }
        unwrapped = accelerator.unwrap_model(self.model)
        save_final_model(
            unwrapped, self.processor, self.output,
            {"eval_results.json": results, "trainer_state.json": self._trainer_state().to_dict()}, weights,
        )
        if self.args.push_to_hub:
            try:
                unwrapped.push_to_hub(self.args.push_to_hub)
                self.processor.push_to_hub(self.args.push_to_hub)
            except Exception as error:  # the Hub client raises many types; the saved folder is intact either way
                raise PushFailedError(f"training finished and {self.output} is saved, but --push-to-hub failed: {error}") from error
