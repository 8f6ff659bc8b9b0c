# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Ablation of MagNet's training choices: one setting trained once per variant and seed, each run scored on held-out
synthetic scenes (a seed never used for training or model selection), summarised with per-kind oIoU, paired
bootstrap confidence intervals against the full model, the full model's validation curve and the step time."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..files import write_json_atomically
from .arguments import TrainingArguments, TrainingError
from .trainer import train

FULL = "full"


def ablation_variants() -> dict[str, dict[str, Any]]:
    """Variant name -> `MagNetConfig` overrides on top of the base run (`full` is the base itself)."""
    from ..configuration_magnet import MagNetConfig

    default_mode = MagNetConfig().mask_grounding_mode
    other_mode = "shared" if default_mode == "separate" else "separate"
    return {
        FULL: {},
        "no-mask-grounding": {"use_mask_grounding": False},
        "no-alignment": {"use_alignment_loss": False},
        "segmentation-only": {"use_mask_grounding": False, "use_alignment_loss": False},
        f"mask-grounding-{other_mode}": {"mask_grounding_mode": other_mode},
        "corrected-language-masking": {"released_language_masking": False},
    }


def heldout_split(run_dir: Path, seed: int, num_images: int) -> Any:
    """Held-out scenes at the image size of the model in `run_dir`: every image of synthetic seed `seed` (disjoint
    from the training scenes by seed), one row per (object, sentence)."""
    from ..configuration_magnet import MagNetConfig
    from ..data import build_synthetic_dataset, explode_sentences

    image_size = MagNetConfig.from_pretrained(str(run_dir)).image_size
    splits = build_synthetic_dataset({"test": num_images}, image_size=image_size, seed=seed)
    return explode_sentences(splits["test"])


def score_heldout(model_dir: Path, heldout: Any, batch_size: int = 32) -> dict[str, Any]:
    """Per-expression intersection and union of the model in `model_dir` on `heldout`, with each expression's kind."""
    from ..data import expression_kind
    from ..evaluation.evaluator import evaluate_referring_segmentation
    from ..evaluation.metrics import ReferringSegmentationMetric
    from ..modeling_magnet import MagNetForReferringSegmentation
    from ..processing_magnet import MagNetProcessor

    model = MagNetForReferringSegmentation.from_pretrained(str(model_dir))
    processor = MagNetProcessor.from_pretrained(str(model_dir))
    metric = ReferringSegmentationMetric()
    evaluate_referring_segmentation(model, processor, heldout, batch_size=batch_size, progress=False, metric=metric)
    return {
        "intersections": metric.intersections.tolist(),
        "unions": metric.unions.tolist(),
        "kinds": [expression_kind(sentences[0]) for sentences in heldout["sentences"]],
    }


def run_ablation(
    base: TrainingArguments,
    seeds: Sequence[int],
    variants: Mapping[str, Mapping[str, Any]],
    heldout_seed: int,
    heldout_images: int,
    records: Path | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Trains `base` once per variant and seed into `base.output_dir/<variant>-seed<k>` and scores its best model on
    the held-out scenes. Returns, per variant, one record per seed: held-out counts, validation history, step times
    and the settings that made it. Finished runs (with `heldout.json`) are read back, so an interrupted ablation
    restarts where it stopped. `records`, if given, is a folder of finished runs' records (`<variant>-seed<k>.json`,
    a few tens of kB each): read before anything trains and written after each run is scored, so that they can be
    kept (committed) when the run folders are not, and the report rebuilt elsewhere without retraining. A record
    made with other settings is refused rather than mixed in."""
    if base.dataset == "synthetic" and heldout_seed == base.synthetic_seed:
        raise TrainingError(f"--heldout-seed {heldout_seed} is the training scenes' seed; choose another.")
    root = Path(base.output_dir)
    heldout = None
    results: dict[str, list[dict[str, Any]]] = {}
    for name, overrides in variants.items():
        for seed in seeds:
            folder = root / f"{name}-seed{seed}"
            scored = folder / "heldout.json"
            settings = run_settings(base, seed, overrides, heldout_seed, heldout_images)
            kept = None if records is None else Path(records) / f"{name}-seed{seed}.json"
            if kept is not None and kept.is_file():
                results.setdefault(name, []).append(_read_record(kept, settings))
                continue
            if not scored.is_file():
                if not (folder / "eval_results.json").is_file():
                    args = dataclasses.replace(
                        base, output_dir=str(folder), seed=seed,
                        config_overrides={**base.config_overrides, **overrides},
                        resume="latest" if folder.exists() else None, overwrite=False,
                    )  # fmt: skip
                    train(args)
                if heldout is None:
                    heldout = heldout_split(folder, heldout_seed, heldout_images)
                best = folder / "best" if (folder / "best" / "config.json").is_file() else folder
                counts = score_heldout(best, heldout)
                state = json.loads((folder / "trainer_state.json").read_text())
                record = {
                    **counts,
                    "eval_history": state.get("eval_history", []),
                    "seconds_per_step": [e["seconds_per_step"] for e in state.get("log_history", []) if "seconds_per_step" in e],
                    "settings": settings,
                }
                write_json_atomically(scored, record)
            record = _read_record(scored, settings)
            if kept is not None:
                kept.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomically(kept, record)
            results.setdefault(name, []).append(record)
    return results


# Flags that change where or how a run reports, not what it learns.
_NOT_SETTINGS = frozenset({"output_dir", "resume", "overwrite", "progress", "report_to", "push_to_hub", "num_workers"})


def run_settings(
    base: TrainingArguments, seed: int, overrides: Mapping[str, Any], heldout_seed: int, heldout_images: int
) -> dict[str, Any]:
    """What one run of the ablation depends on: the training flags (with the run's seed and the variant's config
    overrides) and the held-out set, as JSON-ready values."""
    flags = {k: v for k, v in dataclasses.asdict(base).items() if k not in _NOT_SETTINGS}
    flags.update(seed=seed, config_overrides={**base.config_overrides, **overrides})
    return json.loads(json.dumps({**flags, "heldout_seed": heldout_seed, "heldout_images": heldout_images}))


def _read_record(path: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text())
        missing = {"intersections", "unions", "kinds", "eval_history", "seconds_per_step"} - set(record)
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as error:
        raise TrainingError(f"{path} is not an ablation record: {error}") from None
    if missing:
        raise TrainingError(f"{path} is not an ablation record: it lacks {sorted(missing)}.")
    made = record.get("settings")
    if made is not None and made != settings:  # records written before settings were stored are taken as they are
        differ = sorted(k for k in set(made) | set(settings) if made.get(k) != settings.get(k))
        first = differ[0]
        raise TrainingError(
            f"{path} was made with other settings ({', '.join(differ)}; e.g. {first}={made.get(first)!r}, "
            f"now {settings.get(first)!r}); move it away or rerun with its settings."
        )
    return record


# ------------------------------------------------------------------------------------------------ statistics


def _oiou(intersections: np.ndarray, unions: np.ndarray) -> float:
    return float(intersections.sum() / max(unions.sum(), 1))


def summarise(
    results: Mapping[str, list[dict[str, Any]]], num_bootstrap: int = 2000, bootstrap_seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per variant: oIoU per seed, mean and std, oIoU per expression kind (pooled over seeds), median step time, and
    against `full` the mean difference with a paired bootstrap 95 % interval. The bootstrap resamples held-out
    expressions (the same resample for every variant and seed, so the comparison is paired) and averages the
    oIoU over seeds in each resample."""
    arrays = {
        name: [(np.asarray(r["intersections"], dtype=np.float64), np.asarray(r["unions"], dtype=np.float64)) for r in runs]
        for name, runs in results.items()
    }
    kinds = np.asarray(next(iter(results.values()))[0]["kinds"])
    num = kinds.size
    rng = np.random.default_rng(bootstrap_seed)
    resamples = rng.integers(0, num, size=(num_bootstrap, num))

    def mean_over_seeds(name: str, index: np.ndarray | None = None) -> float:
        values = [_oiou(i if index is None else i[index], u if index is None else u[index]) for i, u in arrays[name]]
        return float(np.mean(values))

    boot = {name: np.array([mean_over_seeds(name, index) for index in resamples]) for name in arrays}
    summary: dict[str, dict[str, Any]] = {}
    for name, runs in arrays.items():
        per_seed = [_oiou(i, u) for i, u in runs]
        entry: dict[str, Any] = {
            "oiou_per_seed": per_seed,
            "oiou_mean": float(np.mean(per_seed)),
            "oiou_std": float(statistics.stdev(per_seed)) if len(per_seed) > 1 else 0.0,
            "per_kind": {
                kind: float(np.mean([_oiou(i[kinds == kind], u[kinds == kind]) for i, u in runs]))
                for kind in sorted(set(kinds.tolist()))
            },
            "num_expressions": int(num),
            "seconds_per_step": float(np.median([s for r in results[name] for s in r["seconds_per_step"]] or [np.nan])),
        }
        if name != FULL and FULL in arrays:
            difference = boot[name] - boot[FULL]
            entry["difference"] = entry["oiou_mean"] - mean_over_seeds(FULL)
            entry["difference_ci95"] = [float(np.percentile(difference, 2.5)), float(np.percentile(difference, 97.5))]
        summary[name] = entry
    return summary


def validation_curve(runs: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(step, val oIoU averaged over seeds) at every evaluation the runs share."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for entry in run["eval_history"]:
            by_step.setdefault(int(entry["step"]), []).append(float(entry["overall_iou"]))
    return [(step, float(np.mean(values))) for step, values in sorted(by_step.items()) if len(values) == len(runs)]


def format_report(summary: Mapping[str, Mapping[str, Any]], curve: list[tuple[int, float]]) -> str:
    """Markdown: the variant table (oIoU in %, differences in points), the per-kind table and the full model's
    validation curve."""
    kinds = sorted(next(iter(summary.values()))["per_kind"])
    # No step-time ratio against full: the runs' in-run timings may come from different machines (see the note).
    lines = [
        "| variant | held-out oIoU per seed | mean ± std | Δ vs full [95 % CI] | s/step in the runs |",
        "|---|---|---|---|---|",
    ]
    for name, entry in summary.items():
        per_seed = ", ".join(f"{100 * v:.1f}" for v in entry["oiou_per_seed"])
        if "difference" in entry:
            low, high = entry["difference_ci95"]
            delta = f"{100 * entry['difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
        else:
            delta = "–"
        lines.append(
            f"| {name} | {per_seed} | {100 * entry['oiou_mean']:.1f} ± {100 * entry['oiou_std']:.1f} | {delta} | "
            f"{entry['seconds_per_step']:.3f} |"
        )
    lines += ["", "| variant | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name, entry in summary.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * entry['per_kind'][k]:.1f}" for k in kinds) + " |")
    if curve:
        lines += ["", "Full model, val oIoU (mean over seeds) by step:", "",
                  "| step | " + " | ".join(str(step) for step, _ in curve) + " |",
                  "|---|" + "---|" * len(curve),
                  "| val oIoU | " + " | ".join(f"{100 * value:.1f}" for _, value in curve) + " |"]  # fmt: skip
    lines.append("")
    num = next(iter(summary.values()))["num_expressions"]
    lines.append(f"{num} held-out expressions; intervals: paired bootstrap over expressions, seeds averaged. s/step: "
                 "median of the steps timed inside the runs, so it holds the speed and load of the machines they ran "
                 "on; compare only runs made on one machine (`scripts/benchmark.py --config-override` times the "
                 "variants side by side).")
    return "\n".join(lines)
