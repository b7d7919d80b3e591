"""Per-step latency model of the fused kernels: what a step costs, phase by phase, on an H100.

Every figure this module prints is a **model**, not a measurement. A recurrent step at small batch
is latency-bound, so a step's time is the sum of the phases that cannot overlap (walked in the
compiled step loop), not FLOPs or bytes divided by a peak:

- each group of global loads issued together costs one round trip (L2 or HBM); a load that waits on
  an earlier one (a dependent chain, or loads separated by a call or a barrier) costs another;
- an on-chip MMA phase costs max(shared-memory bytes read / bandwidth, dependent-MMA chain);
- every grid-wide exchange costs one barrier;
- loads prefetched under the previous step's MMA cost nothing on the critical path.

A backend registers a function ``model(case, dtype_name, machine) -> Estimate | str`` with
``@register("fusedrnn-<backend>")`` (a string return says why the backend cannot serve the case).
The backends' models live beside this file (``model_cuda.py``, ``model_triton.py``) and import
only this module and ``cases``. ``table()`` puts every registered model beside cuDNN's anchor
figures and, when measured rows from a GPU run are passed in, beside the measured times.

The assumptions (``H100``) are central values from public microbenchmarks; a GPU session measures
them first (``barrier_floor``, a pointer chase) and replaces them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

from .cases import CASES, Case

__all__ = [
    "Machine", "H100", "Phase", "Step", "Estimate", "register", "MODELS", "estimate", "estimates",
    "CUDNN_ANCHORS", "table", "format_table", "smem_us", "mma_chain_us", "gemm_us", "elem_bytes",
]


@dataclass(frozen=True)
class Machine:
    """Latencies and rates the model assumes (H100 SXM; an H200 has the same SMs and latencies)."""

    name: str = "H100 SXM (assumed)"
    n_sm: int = 132
    clock_ghz: float = 1.75
    l2_us: float = 0.20  # L2 hit round trip (0.15-0.30)
    hbm_us: float = 0.45  # HBM round trip (0.35-0.60)
    barrier_us: float = 1.2  # one grid-wide barrier: cooperative grid.sync or counter + acquire poll (0.8-1.5)
    smem_bytes_per_clk: int = 128  # per SM
    hmma_clk: int = 33  # dependent HMMA.16816 latency
    smem_optin_bytes: int = 227 * 1024
    launch_us: float = 3.0  # one kernel launch, back to back on a stream
    tflops_16bit: float = 989.0  # dense tensor-core peak (datasheet)
    tflops_tf32: float = 494.0
    hbm_tbps: float = 3.35
    gemm_efficiency: float = 0.6  # fraction of peak a cuBLAS GEMM of these shapes reaches

    @property
    def clk_us(self) -> float:
        return 1e-3 / self.clock_ghz


H100 = Machine()


@dataclass(frozen=True)
class Phase:
    name: str
    us: float
    why: str = ""


@dataclass(frozen=True)
class Step:
    """One time step of one layer-direction: the serial phases of the step loop."""

    phases: tuple[Phase, ...]

    @property
    def us(self) -> float:
        return sum(p.us for p in self.phases)

    def describe(self) -> str:
        return " + ".join(f"{p.name} {p.us:.2f}" for p in self.phases) + f" = {self.us:.2f} us"


@dataclass(frozen=True)
class Estimate:
    """A backend's modelled time for one case and dtype (whole call: every layer and direction)."""

    provider: str  # "fusedrnn-cuda", "fusedrnn-triton"
    case: str
    dtype: str
    plan: str  # the launch plan in words (grid, tile sizes, what stays on chip)
    fwd_step: Step
    bwd_step: Step | None  # None: no backward model
    fwd_ms: float  # forward, every layer-direction, GEMMs and launches included
    fb_ms: float | None  # forward + backward
    notes: str = ""


ModelFn = Callable[[Case, str, Machine], "Estimate | str"]
MODELS: dict[str, ModelFn] = {}


def register(provider: str):
    def deco(fn: ModelFn) -> ModelFn:
        MODELS[provider] = fn
        return fn
    return deco


# --- building blocks -----------------------------------------------------------------------------


def elem_bytes(dtype_name: str) -> int:
    return {"bf16": 2, "fp16": 2, "fp32": 4}[dtype_name]


def smem_us(n_bytes: float, m: Machine = H100) -> float:
    """Time for one SM to read ``n_bytes`` from its shared memory at full bandwidth."""
    return n_bytes / m.smem_bytes_per_clk * m.clk_us


def mma_chain_us(n_dependent: int, m: Machine = H100) -> float:
    """A chain of ``n_dependent`` accumulating tensor-core MMAs (each waits for the previous)."""
    return n_dependent * m.hmma_clk * m.clk_us


def gemm_us(M: int, N: int, K: int, dtype_name: str, m: Machine = H100) -> float:
    """One cuBLAS GEMM (M x K) @ (K x N): max(compute at gemm_efficiency of peak, operand traffic)."""
    tflops = m.tflops_tf32 if dtype_name == "fp32" else m.tflops_16bit
    compute = 2.0 * M * N * K / (tflops * 1e12 * m.gemm_efficiency) * 1e6
    traffic = elem_bytes(dtype_name) * (M * K + K * N + M * N) / (m.hbm_tbps * 1e12) * 1e6
    return max(compute, traffic) + m.launch_us


def whole_call_ms(case: Case, dtype_name: str, fwd_step: Step, bwd_step: Step | None,
                  fwd_extra_us: float, bwd_extra_us: float, m: Machine = H100) -> tuple[float, float | None]:
    """(forward ms, forward+backward ms) of a case from per-step times and the per-layer-direction
    extras (GEMMs, launches) that sit outside the step loop. Packed cases walk T steps (the longest
    row); every layer and direction is one call of T steps."""
    calls = case.layers * case.D
    fwd = calls * (case.T * fwd_step.us + fwd_extra_us) / 1e3
    if bwd_step is None:
        return fwd, None
    return fwd, fwd + calls * (case.T * bwd_step.us + bwd_extra_us) / 1e3


def projection_gemms_us(case: Case, dtype_name: str, layer_input: int, m: Machine = H100) -> tuple[float, float]:
    """(forward, backward) time of the torch GEMMs around one layer-direction's recurrence:
    forward gx = x W_ihᵀ; backward dx = dG W_ih, dW_ih = dGᵀ x, dW_hh = dGᵀ h_prev."""
    N, G, H = case.B * case.T, case.gates * case.H, case.H
    fwd = gemm_us(N, G, layer_input, dtype_name, m)
    bwd = gemm_us(N, layer_input, G, dtype_name, m) + gemm_us(G, layer_input, N, dtype_name, m) \
        + gemm_us(G, H, N, dtype_name, m)
    return fwd, bwd


# --- cuDNN's figures to read the model against -----------------------------------------------------

# case id -> (forward ms, forward+backward ms, what the figure is). Only the flashrnn row is a
# measurement (FlashRNN's paper, H100, fp16); the others are estimates for a step-by-step cuDNN.
CUDNN_ANCHORS: dict[str, tuple[float, float, str]] = {
    "flashrnn": (2.01, 5.19, "measured by FlashRNN's authors (H100, fp16)"),
    "deepbench-gru": (11.0, 27.0, "estimate (10-12 / 24-30)"),
    "deepbench-lstm": (0.2, 0.6, "estimate"),
    "stream-gru": (6.5, 20.0, "estimate (5-8 / 15-25)"),
    "small-lstm": (0.75, 2.0, "estimate"),
}


# --- tables ----------------------------------------------------------------------------------------


def _load_models() -> None:
    import importlib

    for name in ("model_cuda", "model_triton"):
        try:
            importlib.import_module(f"{__package__}.{name}")
        except ImportError as e:
            if e.name != f"{__package__}.{name}":
                raise


def _model(provider: str, case: Case, dtype_name: str, m: Machine) -> Estimate | str:
    """A backend's model of one case. A streaming case is T calls of a one-step case: the model of
    that call (its GEMM, launches and one step per layer) times T; inference only."""
    if not case.stream:
        return MODELS[provider](case, dtype_name, m)
    one = MODELS[provider](dataclasses.replace(case, T=1, stream=False), dtype_name, m)
    if not isinstance(one, Estimate):
        return one
    return dataclasses.replace(
        one, case=case.id, fwd_ms=one.fwd_ms * case.T, fb_ms=None, bwd_step=None,
        notes=(f"streaming: {case.T} eager calls of {one.fwd_ms * 1e3:.1f} us (one T=1 call, launches included); "
               + one.notes).strip("; "))


def estimate(provider: str, case: Case, dtype_name: str, m: Machine = H100) -> Estimate | str:
    _load_models()
    if provider not in MODELS:
        return f"no latency model registered for {provider}"
    return _model(provider, case, dtype_name, m)


def estimates(cases=CASES, dtypes=("bf16", "fp16", "fp32"), m: Machine = H100) -> list[Estimate | tuple]:
    """Every registered model over every case and dtype: Estimates, or (provider, case, dtype, why)."""
    _load_models()
    out: list = []
    for case in cases:
        for dtype_name in dtypes:
            for provider in sorted(MODELS):
                e = _model(provider, case, dtype_name, m)
                out.append(e if isinstance(e, Estimate) else (provider, case.id, dtype_name, e))
    return out


def _measured(rows, provider: str, case: str, dtype: str, mode: str) -> float | None:
    for r in rows or ():
        if (r.get("provider"), r.get("case"), r.get("dtype"), r.get("mode")) == (provider, case, dtype, mode) \
                and r.get("status") == "ok" and r.get("median_ms") is not None:
            return float(r["median_ms"])
    return None


def table(cases=CASES, dtypes=("bf16", "fp16", "fp32"), m: Machine = H100, measured_rows=None) -> list[dict]:
    """One row per (case, dtype, provider): modelled us/step and ms beside cuDNN's anchor, and the
    measured medians (and cuDNN's, torch-nn) when GPU rows are given."""
    rows = []
    for e in estimates(cases, dtypes, m):
        if not isinstance(e, Estimate):
            provider, case, dtype, why = e
            rows.append(dict(provider=provider, case=case, dtype=dtype, plan="", why=why))
            continue
        anchor = CUDNN_ANCHORS.get(e.case)
        row = dict(
            provider=e.provider, case=e.case, dtype=e.dtype, plan=e.plan,
            fwd_us_step=e.fwd_step.us, bwd_us_step=e.bwd_step.us if e.bwd_step else None,
            model_fwd_ms=e.fwd_ms, model_fb_ms=e.fb_ms,
            cudnn_fwd_ms=anchor[0] if anchor else None, cudnn_fb_ms=anchor[1] if anchor else None,
            cudnn_source=anchor[2] if anchor else "",
            fwd_phases=e.fwd_step.describe(), bwd_phases=e.bwd_step.describe() if e.bwd_step else "",
            notes=e.notes,
        )
        if measured_rows is not None:
            row["measured_fwd_ms"] = _measured(measured_rows, e.provider, e.case, e.dtype, "forward")
            row["measured_fb_ms"] = _measured(measured_rows, e.provider, e.case, e.dtype, "forward+backward")
            row["measured_cudnn_fwd_ms"] = _measured(measured_rows, "torch-nn", e.case, e.dtype, "forward")
            row["measured_cudnn_fb_ms"] = _measured(measured_rows, "torch-nn", e.case, e.dtype, "forward+backward")
        rows.append(row)
    return rows


def _f(v, spec=".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(rows: list[dict], m: Machine = H100, phases: bool = False) -> str:
    measured = any("measured_fwd_ms" in r for r in rows)
    head = (f"{'case':<15}{'dtype':<6}{'provider':<17}{'fwd us/step':>12}{'bwd us/step':>12}"
            f"{'fwd ms':>9}{'f+b ms':>9}{'cuDNN fwd':>10}{'cuDNN f+b':>10}{'fwd/cuDNN':>10}")
    if measured:
        head += f"{'meas fwd':>10}{'meas f+b':>10}{'meas cuDNN':>11}"
    lines = [f"Latency model (MODEL, not measured; {m.name}: L2 {m.l2_us} us, HBM {m.hbm_us} us, "
             f"grid barrier {m.barrier_us} us, smem {m.smem_bytes_per_clk} B/clk/SM, {m.clock_ghz} GHz)", head]
    for r in rows:
        if "why" in r:
            lines.append(f"{r['case']:<15}{r['dtype']:<6}{r['provider']:<17}  not modelled: {r['why']}")
            continue
        ratio = r["model_fwd_ms"] / r["cudnn_fwd_ms"] if r["cudnn_fwd_ms"] else None
        line = (f"{r['case']:<15}{r['dtype']:<6}{r['provider']:<17}{_f(r['fwd_us_step']):>12}"
                f"{_f(r['bwd_us_step']):>12}{_f(r['model_fwd_ms'], '.3f'):>9}{_f(r['model_fb_ms'], '.3f'):>9}"
                f"{_f(r['cudnn_fwd_ms']):>10}{_f(r['cudnn_fb_ms']):>10}{_f(ratio, '.2f') + ('x' if ratio else ''):>10}")
        if measured:
            line += (f"{_f(r.get('measured_fwd_ms'), '.3f'):>10}{_f(r.get('measured_fb_ms'), '.3f'):>10}"
                     f"{_f(r.get('measured_cudnn_fwd_ms'), '.3f'):>11}")
        lines.append(line)
        if phases:
            lines.append(f"    plan: {r['plan']}")
            lines.append(f"    fwd step: {r['fwd_phases']}")
            if r["bwd_phases"]:
                lines.append(f"    bwd step: {r['bwd_phases']}")
            if r["notes"]:
                lines.append(f"    notes: {r['notes']}")
    sources = sorted({(r["case"], r["cudnn_source"]) for r in rows if r.get("cudnn_source")})
    if sources:
        lines.append("cuDNN columns: " + "; ".join(f"{c}: {s}" for c, s in sources))
    return "\n".join(lines)


def replace_machine(**changes) -> Machine:
    """H100 with some assumptions changed (e.g. measured on a GPU): replace_machine(barrier_us=0.9)."""
    return dataclasses.replace(H100, **changes)
