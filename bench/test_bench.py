"""pytest-benchmark over the case registry:

    pytest bench/ --benchmark-only                                   # GPU: every case x provider x mode, bf16
    FUSEDRNN_BENCH_DTYPES=bf16,fp16,fp32 pytest bench/ --benchmark-only -k flashrnn

Each benchmarked call ends with torch.cuda.synchronize(), so pytest-benchmark's clock covers the GPU
work; the same callable is also timed with CUDA events (median, p20, p80, after warm-up and with the
L2 flushed; bench/timing.py) and those numbers go to extra_info. The first call, untimed, compiles
and autotunes. Without a GPU the GPU benchmarks skip, saying so, and one tiny CPU case runs instead
(labelled "CPU" in extra_info; it says nothing about GPU speed).
"""

from __future__ import annotations

import os

import pytest
import torch

from fusedrnn.bench import cases, providers, timing

HAS_GPU = torch.cuda.is_available()
DTYPES = [d for d in os.environ.get("FUSEDRNN_BENCH_DTYPES", "bf16").split(",") if d]
GPU_SKIP = pytest.mark.skipif(
    not HAS_GPU, reason="GPU benchmark: no CUDA device visible (on a CPU machine run python -m fusedrnn.bench "
                        "for the labelled CPU demonstration, or see the cpu-tiny benchmarks here)")


def _bench(benchmark, inp, provider, mode, device):
    try:
        call = providers.build(inp, provider, mode)
    except providers.Unavailable as e:
        pytest.skip(f"unavailable: {e}")
    if device.type == "cuda":
        def timed():
            call()
            torch.cuda.synchronize(device)
    else:
        timed = call
    est = timing.measure(call, device, warmup_ms=10, rep_ms=50, min_reps=3)
    rounds = max(3, min(100, int(200 / max(est.median_ms, 1e-3))))
    benchmark.extra_info.update(
        case=inp.case.id, provider=provider, mode=mode, dtype=str(inp.x.dtype).replace("torch.", ""),
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (demonstration only)",
        timing_method=est.method, median_ms=est.median_ms, p20_ms=est.p20_ms, p80_ms=est.p80_ms, reps=est.reps,
        us_per_step=est.median_ms * 1e3 / inp.case.T, tokens_per_s=inp.case.tokens() / (est.median_ms * 1e-3),
        peak_extra_mib=timing.peak_memory_mib(call, device),
    )
    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=2, iterations=1)


@pytest.mark.gpu
@GPU_SKIP
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", cases.MODES)
@pytest.mark.parametrize("provider", providers.GPU_DEFAULT)
@pytest.mark.parametrize("case", cases.CASES, ids=[c.id for c in cases.CASES])
def test_gpu(benchmark, case, provider, mode, dtype):
    device = torch.device("cuda")
    benchmark.group = f"{case.id} {mode} {dtype}"
    inp = cases.make_inputs(case, cases.DTYPES[dtype], device, mode)
    _bench(benchmark, inp, provider, mode, device)


@pytest.mark.parametrize("mode", cases.MODES)
@pytest.mark.parametrize("provider", providers.CPU_DEMO_DEFAULT)
def test_cpu_tiny(benchmark, provider, mode):
    """A tiny CPU case so the suite runs anywhere; CPU numbers, not GPU results."""
    case = cases.get("small-lstm").scaled_down(tiny=True)
    device = torch.device("cpu")
    benchmark.group = f"CPU tiny {case.scaled_from} {mode} fp32"
    inp = cases.make_inputs(case, torch.float32, device, mode)
    _bench(benchmark, inp, provider, mode, device)
