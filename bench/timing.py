"""Timing: median and p20/p80 of many calls after warm-up, never without synchronising.

GPU: the method of triton.testing.do_bench, written out so the per-call times can be kept: a few
calls estimate the cost, warm-up calls fill ``warmup_ms``, then each timed call is bracketed by CUDA
events on the current stream, with the L2 cache flushed (a buffer of twice the L2 size zeroed)
before each call and outside its events; one synchronize at the end reads all events.
CPU: the same loop with time.perf_counter (no cache flush).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    mean_ms: float
    reps: int
    method: str  # "cuda-events" | "perf_counter"

    def as_dict(self) -> dict:
        return asdict(self)


def _quantile(sorted_ms: list[float], q: float) -> float:
    # Linear interpolation between order statistics (numpy's default), for small rep counts.
    if len(sorted_ms) == 1:
        return sorted_ms[0]
    pos = q * (len(sorted_ms) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def summarize(times_ms: list[float], method: str) -> Timing:
    s = sorted(times_ms)
    return Timing(
        median_ms=statistics.median(s), p20_ms=_quantile(s, 0.2), p80_ms=_quantile(s, 0.8),
        mean_ms=statistics.fmean(s), reps=len(s), method=method,
    )


_L2_FLUSH: dict = {}


def _l2_buffer(device) -> torch.Tensor:
    dev = torch.device(device)
    if dev not in _L2_FLUSH:
        l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 64 * 2**20) or 64 * 2**20
        _L2_FLUSH[dev] = torch.empty(2 * l2 // 4, dtype=torch.int32, device=dev)
    return _L2_FLUSH[dev]


def measure(fn, device, *, warmup_ms: float = 25.0, rep_ms: float = 100.0,
            min_reps: int = 5, max_reps: int = 1000) -> Timing:
    """Time ``fn()`` (already called once, so compilation/autotuning is done) on ``device``."""
    if torch.device(device).type == "cuda":
        return _measure_cuda(fn, device, warmup_ms, rep_ms, min_reps, max_reps)
    return _measure_cpu(fn, warmup_ms, rep_ms, min_reps, max_reps)


def _reps_for(estimate_ms: float, budget_ms: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, int(budget_ms / max(estimate_ms, 1e-3))))


def _measure_cuda(fn, device, warmup_ms, rep_ms, min_reps, max_reps) -> Timing:
    flush = _l2_buffer(device)
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        fn()
    end.record()
    torch.cuda.synchronize(device)
    estimate = start.elapsed_time(end) / 3
    for _ in range(_reps_for(estimate, warmup_ms, 1, max_reps)):
        fn()
    n = _reps_for(estimate, rep_ms, min_reps, max_reps)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize(device)
    return summarize([s.elapsed_time(e) for s, e in zip(starts, ends)], "cuda-events")


def _measure_cpu(fn, warmup_ms, rep_ms, min_reps, max_reps) -> Timing:
    t0 = time.perf_counter()
    fn()
    estimate = (time.perf_counter() - t0) * 1e3
    for _ in range(_reps_for(estimate, warmup_ms, 0, max_reps)):
        fn()
    times = []
    for _ in range(_reps_for(estimate, rep_ms, min_reps, max_reps)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times, "perf_counter")


def peak_memory_mib(fn, device) -> float | None:
    """Peak device memory (MiB) one call allocates on top of what was allocated before it
    (torch.cuda.max_memory_allocated minus the allocation at the start): activations, workspaces,
    outputs and gradients; the inputs and weights, which every provider shares, are not counted."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20
