"""Floors: times no implementation of a case can beat, to read the measured times against.

- Roofline: max(FLOPs / peak FLOP/s, bytes / peak bandwidth) with the case's counts (cases.py) and
  the device's datasheet peaks from PEAKS, keyed by GPU name (dense tensor-core rates; fp32 uses the
  TF32 rate, which cuDNN and Triton use for fp32 matmuls by default). An unknown GPU gets no
  roofline, with a note saying so.
- Barrier (latency) floor: a persistent kernel needs one grid-wide barrier per step, per layer and
  direction (twice that for forward+backward). The floor is the measured time of a barrier-only
  persistent kernel doing that many barriers with one program per SM: fusedrnn._C.barrier_floor
  (CUDA cooperative groups) and fusedrnn.kernels.barrier.barrier_floor (Triton atomics), whichever
  are built; the smaller is the floor. Absent or failing → recorded as unavailable with the reason.
"""

from __future__ import annotations

import inspect

import torch

from .cases import Case

# name substring (matched in order, case-insensitive) -> (bf16/fp16 TFLOP/s, tf32 TFLOP/s, TB/s, source)
PEAKS: tuple[tuple[str, float, float, float, str], ...] = (
    ("H200", 989.0, 494.0, 4.8, "NVIDIA H200 SXM datasheet (dense)"),
    ("H100 NVL", 835.0, 418.0, 3.9, "NVIDIA H100 NVL datasheet (dense)"),
    ("H100 PCIe", 756.0, 378.0, 2.0, "NVIDIA H100 PCIe datasheet (dense)"),
    ("H100", 989.0, 494.0, 3.35, "NVIDIA H100 SXM5 datasheet (dense)"),
    ("A100-SXM4-80GB", 312.0, 156.0, 2.039, "NVIDIA A100 80GB SXM datasheet (dense)"),
    ("A100", 312.0, 156.0, 1.555, "NVIDIA A100 40GB datasheet (dense)"),
    ("L40S", 362.0, 183.0, 0.864, "NVIDIA L40S datasheet (dense)"),
)


def peaks_for(gpu_name: str) -> dict | None:
    for key, half, tf32, tbps, source in PEAKS:
        if key.lower() in gpu_name.lower():
            return {"match": key, "tflops_16bit": half, "tflops_tf32": tf32, "tbytes_per_s": tbps, "source": source}
    return None


def roofline_ms(case: Case, mode: str, dtype: torch.dtype, gpu_name: str) -> tuple[float | None, str]:
    """(floor in ms or None, a note naming the bound or why there is none)."""
    peaks = peaks_for(gpu_name)
    if peaks is None:
        return None, f"unknown GPU {gpu_name!r}: add its peaks to PEAKS in bench/floors.py"
    tflops = peaks["tflops_tf32"] if dtype == torch.float32 else peaks["tflops_16bit"]
    elem = torch.finfo(dtype).bits // 8
    t_flop = case.flops(mode) / (tflops * 1e12) * 1e3
    t_byte = case.min_bytes(mode, elem) / (peaks["tbytes_per_s"] * 1e12) * 1e3
    bound = "compute" if t_flop >= t_byte else "memory"
    return max(t_flop, t_byte), f"{bound}-bound ({peaks['source']})"


def barrier_count(case: Case, mode: str) -> int:
    """Grid-wide barriers a persistent implementation needs: one per step per layer-direction."""
    n = case.T * case.layers * case.D
    return n if mode == "forward" else 2 * n


def _call_floor(fn, steps: int, grid: int) -> float:
    """ms for ``steps`` barriers: the function's own return value when it returns a time
    (fusedrnn._C.barrier_floor(T, grid) -> ms), else the median of CUDA-event timings of the call
    (fusedrnn.kernels.barrier.barrier_floor(T, n_programs) returns None; its few small allocations
    are inside that time, microseconds against a floor of about a microsecond per barrier)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pybind11 functions may have no Python signature
        params = {}
    if "n_programs" in params:
        def call():
            return fn(steps, n_programs=grid)
    else:
        def call():
            return fn(steps, grid)
    out = call()  # also compiles
    if isinstance(out, (int, float)):
        return float(call())  # the second run: warm
    from .timing import measure

    return measure(call, torch.device("cuda", torch.cuda.current_device()), warmup_ms=5, rep_ms=30).median_ms


def barrier_floor_ms(steps: int, grid: int) -> tuple[float | None, str]:
    """(the smaller of the available barrier-only kernels' times for ``steps`` barriers, a note)."""
    found, notes = [], []
    try:
        from fusedrnn import _ext

        ext = _ext.load()
        if hasattr(ext, "barrier_floor"):
            found.append((_call_floor(ext.barrier_floor, steps, grid), "cuda"))
        else:
            notes.append("cuda: fusedrnn._C has no barrier_floor")
    except Exception as e:  # noqa: BLE001 - record any failure as a reason
        notes.append(f"cuda: {type(e).__name__}: {e}")
    try:
        from fusedrnn.kernels import barrier

        if hasattr(barrier, "barrier_floor"):
            found.append((_call_floor(barrier.barrier_floor, steps, grid), "triton"))
        else:
            notes.append("triton: fusedrnn.kernels.barrier has no barrier_floor")
    except Exception as e:  # noqa: BLE001
        notes.append(f"triton: {type(e).__name__}: {e}")
    if not found:
        return None, "unavailable: " + "; ".join(notes)
    ms, src = min(found)
    others = ", ".join(f"{s} {m:.3f} ms" for m, s in found)
    return ms, f"{src} barrier-only kernel, {steps} barriers, grid={grid} ({others})" + (
        "; " + "; ".join(notes) if notes else "")


def measured_ceilings(device) -> dict:
    """The device's own ceilings, measured once per run (METHOD.md: datasheet rates are leads):
    a bf16 8192³ matmul and a 1 GiB device-to-device copy (bytes read + written)."""
    from .timing import measure

    out = {}
    try:
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        a @ b
        t = measure(lambda: a @ b, device, warmup_ms=50, rep_ms=200)
        out["bf16_matmul_tflops"] = 2 * 8192**3 / (t.median_ms * 1e-3) / 1e12
        a = b = None  # free before the copy test
        src = torch.randn(2**28, device=device)  # 1 GiB of fp32
        dst = torch.empty_like(src)
        dst.copy_(src)
        t = measure(lambda: dst.copy_(src), device, warmup_ms=50, rep_ms=200)
        out["copy_tbytes_per_s"] = 2 * src.numel() * 4 / (t.median_ms * 1e-3) / 1e12
        src = dst = None
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
    torch.cuda.empty_cache()
    return out
