# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Where a forward's time goes: `scripts/benchmark.py --profile` runs a few more forwards under `torch.profiler`, takes
each operator's median self time and groups it into the kinds of work that decide the fraction of the compute floor.

The floor counts only matrix-product FLOPs at the machine's matmul rate, so the fraction reached is bounded by the
share of time spent in matrix products times their own rate against the probe's; the other kinds (copies, window
attention, the deformable gather, element-wise work) are what a faster path can shrink.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Operator kind -> the ATen operators counted in it (self time, so nested calls are not counted twice).
OPERATOR_KINDS: dict[str, tuple[str, ...]] = {
    "matrix products and convolutions": (
        "aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::matmul", "aten::linear",
        "aten::convolution", "aten::_convolution", "aten::mkldnn_convolution", "aten::conv2d",
    ),
    "window attention (scaled_dot_product_attention)": (
        "aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_attention_math", "aten::_scaled_dot_product_efficient_attention",
    ),
    "copies, gathers and concatenations": (
        "aten::copy_", "aten::cat", "aten::index", "aten::index_select", "aten::gather", "aten::clone",
        "aten::contiguous", "aten::_to_copy", "aten::roll", "aten::constant_pad_nd", "aten::stack",
        "aten::index_put_", "aten::_index_put_impl_", "aten::fill_", "aten::zero_", "aten::masked_fill", "aten::repeat",
    ),
    "deformable sampling (embedding_bag)": (
        "aten::embedding_bag", "aten::_embedding_bag", "aten::_embedding_bag_forward_only",
    ),
}  # fmt: skip
OTHER_KIND = "element-wise, norms and the rest"
MATRIX_KIND = "matrix products and convolutions"


#: Profiled forwards per configuration. One forward of a small model lasts tens of milliseconds, so a single stall
#: (the scheduler, a page fault) can land on one operator and swamp it; the per-operator median over a few forwards
#: ignores a stall that hits one of them.
PROFILED_FORWARDS = 5


def profile_forward(forward: Callable[[], Any], top: int = 10, runs: int = PROFILED_FORWARDS) -> dict[str, Any]:
    """
    Runs `forward()` `runs` times, each under its own `torch.profiler` (CPU activity, FLOPs recorded), and takes each
    operator's median self time, FLOPs and calls over the runs (an operator missing from a run counts as zero there).

    Returns:
        `{"self_seconds", "shares": {kind: fraction of self time}, "matrix_gflops_per_second",
        "top_operators": [{"name", "self_seconds", "share", "calls"}, ...], "runs"}`: the medians of one forward,
        the shares summing to 1 and the top operators sorted by self time.
    """
    from statistics import median

    from torch.profiler import ProfilerActivity, profile

    if runs < 1:
        raise ValueError(f"profile_forward needs at least one run, got {runs}.")
    per_run = []  # one {operator: (self microseconds, flops, calls)} per forward
    for _ in range(runs):
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as profiler:
            forward()
        per_run.append(
            {event.key: (event.self_cpu_time_total, event.flops or 0, event.count)
             for event in profiler.key_averages() if event.self_cpu_time_total > 0}
        )  # fmt: skip
    names = sorted({name for run in per_run for name in run})
    operators = {
        name: [median(run.get(name, (0, 0, 0))[field] for run in per_run) for field in range(3)] for name in names
    }
    operators = {name: values for name, values in operators.items() if values[0] > 0}
    total = sum(self_time for self_time, _, _ in operators.values())  # microseconds
    kind_of = {name: kind for kind, names in OPERATOR_KINDS.items() for name in names}
    shares = dict.fromkeys([*OPERATOR_KINDS, OTHER_KIND], 0.0)
    matrix_flops = matrix_time = 0.0
    for name, (self_time, flops, _) in operators.items():
        kind = kind_of.get(name, OTHER_KIND)
        shares[kind] += self_time / total
        if kind == MATRIX_KIND:
            matrix_flops += flops
            matrix_time += self_time
    ranked = sorted(operators.items(), key=lambda item: -item[1][0])[:top]
    return {
        "self_seconds": total / 1e6,
        "shares": shares,
        # FLOPs per microsecond / 1e3 = GFLOP/s
        "matrix_gflops_per_second": matrix_flops / matrix_time / 1e3 if matrix_time else None,
        "top_operators": [
            {"name": name, "self_seconds": self_time / 1e6, "share": self_time / total, "calls": calls}
            for name, (self_time, _, calls) in ranked
        ],
        "runs": runs,
    }


def format_profile(profile: dict[str, Any]) -> str:
    """Two lines: the share of each kind of work, then the top operators."""
    rate = profile["matrix_gflops_per_second"]
    kinds = "; ".join(
        f"{kind} {100 * share:.1f} %" + (f" at {rate:.0f} GFLOP/s" if kind == MATRIX_KIND and rate else "")
        for kind, share in profile["shares"].items()
    )
    operators = ", ".join(f"{op['name']} {100 * op['share']:.1f} %" for op in profile["top_operators"])
    return f"  where the time goes: {kinds}\n  top operators: {operators}"
