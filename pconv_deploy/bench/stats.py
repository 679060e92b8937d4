"""The comparison's arithmetic: interleaved timing and the ratios taken from it.

Shared machines are noisy, so each ratio is the median over rounds of two calls made seconds
apart (a slow load drift cancels), with the medians' ratio and the fastest rounds' beside it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

GEMMS = ("gemm_torch", "gemm_numpy")


def interleave(
    calls: dict[str, Callable[[], Any]],
    warmup: int,
    repeats: int,
    *,
    time_calls: Callable[[Callable[[], Any], int, int], list[float]],
) -> dict[str, list[float]]:
    """Round-robin timing; the order rotates every round so no call always follows the same one,
    and a pause follows each GEMM: the BLAS threads spin-wait after a GEMM and would slow the next call."""
    names = list(calls)
    times: dict[str, list[float]] = {k: [] for k in names}
    for rnd in range(warmup + repeats):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            t = time_calls(calls[name], 0, 1)[0]
            if rnd >= warmup:
                times[name].append(t)
            if name.startswith("gemm"):
                time.sleep(0.3)
    return times


def compare_result(times: dict[str, list[float]], macs: dict[str, int], n: int) -> dict[str, Any]:
    """Per-round ratios (the headline), the same from the medians, and the raw times."""
    med = {k: statistics.median(v) for k, v in times.items()}
    gemm = {k: 2 * n**3 / med[k] / 1e9 for k in GEMMS}
    best = max(gemm, key=gemm.get)
    ours_gflops = 2 * macs["ours"] / med["ours"] / 1e9
    rounds = range(len(times["ours"]))

    def per_round(ratio: Callable[[int], float]) -> float:
        return statistics.median(ratio(i) for i in rounds)

    def round_efficiency(i: int) -> float:
        best_gemm = max(2 * n**3 / times[k][i] for k in GEMMS)
        return 2 * macs["ours"] / times["ours"][i] / best_gemm

    result = {
        "ms": {k: round(v * 1000, 4) for k, v in med.items()},
        "ms_all": {k: [round(t * 1000, 4) for t in v] for k, v in times.items()},
        "mask_path_cost": round(per_round(lambda i: times["ours"][i] / times["plain"][i]), 4),
        "naive_over_ours": round(per_round(lambda i: times["naive"][i] / times["ours"][i]), 4),
        "efficiency": round(per_round(round_efficiency), 4),
        "from_medians": {
            "mask_path_cost": round(med["ours"] / med["plain"], 4),
            "naive_over_ours": round(med["naive"] / med["ours"], 4),
            "efficiency": round(ours_gflops / gemm[best], 4),
        },
        "conv_gmacs": {k: round(v / 1e9, 3) for k, v in macs.items()},
        "ours_gflops": round(ours_gflops, 3),
        "gemm_gflops": {k: round(v, 3) for k, v in gemm.items()},
        "gemm_best": best,
    }
    if "openvino" in times:
        result["openvino_over_ours"] = round(per_round(lambda i: times["openvino"][i] / times["ours"][i]), 4)
        result["openvino_efficiency"] = round(
            per_round(lambda i: round_efficiency(i) * times["ours"][i] / times["openvino"][i]), 4
        )
    return result


def fastest_ratios(times: dict[str, list[float]], macs: dict[str, int], n: int) -> dict[str, float]:
    """The same ratios from each call's fastest round: the one least disturbed by other jobs."""
    fastest = {k: min(v) for k, v in times.items()}
    best_gemm = max(2 * n**3 / fastest[k] for k in GEMMS)
    return {
        "mask_path_cost": round(fastest["ours"] / fastest["plain"], 4),
        "naive_over_ours": round(fastest["naive"] / fastest["ours"], 4),
        "efficiency": round((2 * macs["ours"] / fastest["ours"]) / best_gemm, 4),
    }
