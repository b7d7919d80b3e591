"""Which backend runs a call: the one place that decides.

``choose(backend, spec)`` serves fusedrnn.functional (one layer-direction); ``plan(...)`` serves the
modules (every layer-direction of one forward, decided once). Both follow the same rules:

- a forced backend (``backend="cuda"`` etc.) runs if it can serve the call, else ValueError with
  its reasons; forcing a fused backend onto a GPU where no recorded GPU run validated it works,
  with a one-time warning naming what is unverified;
- ``auto`` (the default, or ``FUSEDRNN_BACKEND``) considers cuda, triton, torch, reference:
  - a fused backend (cuda, triton) qualifies on a GPU only if it can serve the call **and** a GPU
    test run recorded in the package validated its kernels for this cell, dtype and GPU family
    (fusedrnn/evidence.py); on the CPU the fused kernels never run under ``auto``;
  - among the qualifying fused backends and torch (cuDNN), on a GPU: with
    ``torch.backends.cudnn.benchmark`` on, each candidate is timed once per call shape and the
    fastest kept for the process; otherwise the measured dispatch table of this GPU family picks
    the fastest; where no row applies, torch;
  - elsewhere the first that can serve: torch (CPU float32/float64), then the reference.
- while exporting (``torch.onnx.export`` with either exporter, ``torch.export``, ``torch.jit.trace``),
  torch's op, so the graph holds the RNN ops torch.nn exports (the reference's plain ops where torch's
  op cannot express the call: zoneout, LayerNorm).
Every skipped backend is logged once, at debug level, with its reasons (logger ``fusedrnn``);
``python -m fusedrnn.info`` prints the same reasons.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import warnings

import torch

from . import evidence
from ._precision import cuda_matmul_allows_tf32
from .backends import FUSED, NAMES, Backend, CallSpec, get, timing

__all__ = ["CHOICES", "CallSpec", "StackPlan", "choose", "plan", "plan_module", "check_backend_name", "default_backend",
           "explain", "clear_caches"]

logger = logging.getLogger("fusedrnn")

CHOICES = ("auto",) + NAMES
_ENV_KEY = os.environ.encodekey("FUSEDRNN_BACKEND") if hasattr(os.environ, "encodekey") else None
_ENV_DATA = getattr(os.environ, "_data", None) if _ENV_KEY is not None else None
_logged: set = set()
_warned: set = set()
_autotuned: dict = {}
_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(CallSpec))
# Every backend, held from dispatch's import on: a call (which torch.compile may be tracing) looks
# its backend up in this dict and never imports anything. The backend modules import cheaply: the
# Triton kernels and the CUDA extension load on first use, inside the backends.
BACKENDS: dict[str, Backend] = {name: get(name) for name in NAMES}


def env_backend() -> str | None:
    """FUSEDRNN_BACKEND, read at every call (a change takes effect at once). os.environ.get pays for
    a raised KeyError when the variable is unset (the usual case); the encoded mapping behind
    os.environ, which every change to os.environ updates, answers that miss with one dict lookup."""
    if _ENV_DATA is not None and _ENV_KEY not in _ENV_DATA:
        return None
    return os.environ.get("FUSEDRNN_BACKEND")


def default_backend() -> str:
    name = env_backend() or "auto"
    if name not in CHOICES:
        raise ValueError(f"FUSEDRNN_BACKEND={name!r} is not one of {', '.join(CHOICES)}")
    return name


def check_backend_name(backend: str, argname: str = "backend") -> str:
    if not isinstance(backend, str) or backend not in CHOICES:
        raise ValueError(f"{argname} must be one of {', '.join(repr(c) for c in CHOICES)}, got {backend!r}")
    return backend


def clear_caches() -> None:
    """Forget cached decisions, autotuned winners and logged reasons (tests; after changing records)."""
    _decide.cache_clear()
    _cached_module_plan.cache_clear()
    _autotuned.clear()
    _logged.clear()
    _warned.clear()
    evidence.clear_caches()


# --- the gate: fused kernels on a GPU only where a GPU run validated them -----------------------


def gate_reasons(name: str, spec: CallSpec) -> list[str]:
    """Why ``auto`` may not use fused backend ``name`` for ``spec`` (empty: validated)."""
    if spec.device.type != "cuda":
        return []
    return evidence.validation_reasons(name, spec.cell, spec.dtype, evidence.device_family(spec.device))


def _warn_unvalidated(name: str, spec: CallSpec) -> None:
    reasons = gate_reasons(name, spec)
    key = (name, spec.cell, spec.dtype, spec.device.type)
    if reasons and key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"fusedrnn: backend={name!r} runs kernels that no recorded GPU run validated for this "
            f"{spec.cell.upper()} {spec.dtype} call ({'; '.join(reasons)}); backend='auto' would use torch (cuDNN)",
            RuntimeWarning, stacklevel=4,
        )


# --- choosing among validated candidates on a GPU -------------------------------------------------


def _table_choice(spec: CallSpec, candidates: list[str]) -> tuple[str, str]:
    """(backend, why) from the measured dispatch table of this GPU family."""
    family = evidence.device_family(spec.device)
    table = evidence.dispatch_table(family)
    if table is None:
        return "torch", f"no measured dispatch table for {family}"
    row = evidence.table_row(table, spec.cell, spec.dtype, spec.needs_grad, spec.H, spec.B, spec.T)
    if row is None:
        return "torch", f"no row of the {family} dispatch table holds this shape"
    fingerprints = table.get("provenance", {}).get("fingerprints", {})
    times = {}
    for name in candidates:
        ms = row.get("ms", {}).get(name)
        if ms is None:
            continue
        if name in FUSED and fingerprints.get(name) != evidence.kernel_fingerprint(name):
            continue  # measured with other kernel sources: says nothing about these
        times[name] = ms
    if not times:
        return "torch", "the table measured none of the validated candidates for this shape"
    best = min(times, key=times.get)
    return best, f"{family} dispatch table: " + ", ".join(f"{n} {t:.3f} ms" for n, t in sorted(times.items()))


def _autotune(spec: CallSpec, candidates: list[str]) -> tuple[str, str]:
    if spec not in _autotuned:
        times = {}
        for name in candidates:
            try:
                times[name] = timing.time_call(name, spec)
            except Exception as e:  # noqa: BLE001 - a candidate that fails is not chosen
                logger.debug("fusedrnn: autotune: %s failed on %s (%s: %s)", name, spec, type(e).__name__, e)
        best = min(times, key=times.get) if times else "torch"
        _autotuned[spec] = best
        logger.debug("fusedrnn: autotune (torch.backends.cudnn.benchmark) for %s: %s -> %s", spec,
                     ", ".join(f"{n} {t:.3f} ms" for n, t in times.items()), best)
    return _autotuned[spec], "timed on first use (torch.backends.cudnn.benchmark)"


# --- the decision ----------------------------------------------------------------------------------


def _log_skip(name: str, spec: CallSpec, reasons: list[str]) -> None:
    key = (name, spec.cell, spec.device.type, spec.dtype, tuple(reasons))
    if key not in _logged:
        _logged.add(key)
        logger.debug("fusedrnn: skipping backend %r: %s", name, "; ".join(reasons))


def explain(spec: CallSpec) -> list[tuple[str, list[str]]]:
    """For ``auto``: each backend with the reasons it cannot serve ``spec`` (gate included)."""
    out = []
    for name in NAMES:
        reasons = BACKENDS[name].reasons(spec, forced=False)
        if not reasons and name in FUSED:
            reasons = gate_reasons(name, spec)
        out.append((name, reasons))
    return out


@functools.lru_cache(maxsize=4096)
def _decide(backend: str, spec: CallSpec, benchmark: bool, tf32: bool) -> str:
    """A backend name, or (starting with "fusedrnn backend") why the forced one cannot serve.
    Cached: the answer depends only on the arguments (``benchmark`` and ``tf32`` are there to key
    the cache on the switches that change it) and on the records, which only tests change."""
    if backend != "auto":
        reasons = BACKENDS[backend].reasons(spec, forced=True)
        if reasons:
            return f"fusedrnn backend {backend!r} cannot run this {spec.cell.upper()} call: " + "; ".join(reasons)
        return backend
    servable = []
    for name, reasons in explain(spec):
        if reasons:
            _log_skip(name, spec, reasons)
        else:
            servable.append(name)
    fused = [n for n in servable if n in FUSED]
    if spec.device.type == "cuda" and fused and "torch" in servable:
        candidates = fused + ["torch"]
        if benchmark and not spec.tracing:
            return _autotune(spec, candidates)[0]
        name, why = _table_choice(spec, candidates)
        logger.debug("fusedrnn: %s for %s (%s)", name, spec, why)
        return name
    return servable[0]


def _switches(spec: CallSpec) -> tuple[bool, bool]:
    if spec.device.type != "cuda":
        return False, False
    # No timing while a CUDA graph is being captured (it synchronises and draws random inputs):
    # a call first seen during capture is decided as without cudnn.benchmark.
    timing_ok = bool(torch.backends.cudnn.benchmark) and not (
        torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing())
    return timing_ok, cuda_matmul_allows_tf32()


def _assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without its cost: that decorator imports
    torch._dynamo (over a second) only to set this mark, which Dynamo reads when it meets ``fn``.
    tests/test_torch_compile.py checks that the decorator still sets exactly this mark, so a torch
    that changes it fails there, not silently here."""
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def _decide_traced(backend: str, *fields) -> str:
    # Plain-value arguments and a str result, so torch.compile runs this once at trace time and
    # bakes the answer in (it reads files and may load a backend's kernels: not traceable).
    # Here, not in the traced caller: Dynamo folds a traced torch.compiler.is_exporting() to True
    # under plain torch.compile too (torch 2.11); called from here it reads the real flag.
    spec = CallSpec(*fields)
    if _exporting():
        return _export_backend(spec)
    return _decide(backend, spec, *_switches(spec))


def tracing() -> bool:
    """Compiling or exporting (torch.compiler.is_compiling covers torch.export too) or the
    TorchScript tracer: decisions are made for a graph, not for this call (never cached)."""
    return torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None


def _exporting() -> bool:
    """torch.export / torch.onnx.export (dynamo) or the TorchScript tracer (torch.onnx.export(dynamo=False))."""
    return torch.compiler.is_exporting() or torch._C._get_tracing_state() is not None


def _resolve(backend: str, spec: CallSpec) -> str:
    if torch.compiler.is_compiling():  # torch.compile, or torch.export (which _decide_traced tells apart)
        # T, B and I vary between calls (automatic dynamic shapes makes them symbolic) and only the
        # measured table decides on them: blanked, so one graph serves every shape.
        spec = dataclasses.replace(spec, tracing=True, T=0, B=0, I=0)
        return _decide_traced(backend, *(getattr(spec, f) for f in _SPEC_FIELDS))
    if _exporting():
        return _export_backend(spec)
    return _decide(backend, spec, *_switches(spec))


def _export_backend(spec: CallSpec) -> str:
    """While exporting: torch's op, so the graph holds the RNN ops torch.nn exports, whatever runs
    eagerly; a call torch's op cannot express (zoneout, LayerNorm) exports the reference's plain ops."""
    return "reference" if spec.zoneout or spec.layernorm else "torch"


def _backend_for(backend: str, spec: CallSpec) -> Backend:
    if backend == "auto":
        backend = default_backend()
    name = _resolve(backend, spec)
    if name not in NAMES:  # an explanation, raised here so torch.compile shows it as it is
        raise ValueError(name)
    if name in FUSED and not torch.compiler.is_compiling():
        _warn_unvalidated(name, spec)
    return BACKENDS[name]


def choose(backend: str, spec: CallSpec) -> Backend:
    """The backend that runs one layer-direction call ``spec``."""
    check_backend_name(backend)
    return _backend_for(backend, spec)


def plan(backend: str, specs: tuple[CallSpec, ...]) -> tuple[Backend, ...]:
    """The backends for several layer-direction calls decided together (a module's stack)."""
    check_backend_name(backend)
    return tuple(_backend_for(backend, spec) for spec in specs)


@dataclasses.dataclass(frozen=True)
class StackPlan:
    """The backends of one module call, one per layer-direction (index layer * D + direction)."""

    backends: tuple[Backend, ...]
    on_torch: bool  # every layer-direction runs torch's op: the stack can run as torch.nn runs it


def plan_module(backend: str, cell: str, device: torch.device, dtype: torch.dtype, T: int, B: int,
                input_size: int, hidden_size: int, proj_size: int, num_layers: int, bidirectional: bool,
                residual_layers: tuple[int, ...], packed: bool, needs_grad: bool,
                device_lengths: bool = False, zoneout: bool = False, layernorm: bool = False) -> StackPlan:
    """The plan for one call of a fusedrnn.GRU/LSTM: decided once per forward from plain values
    (cached on them, so a repeated call costs a dictionary lookup). T, B and needs_grad only feed
    the measured GPU choices: callers on other devices may pass 0, 0, False. ``packed``: the call
    has per-row lengths (a PackedSequence or ``lengths=``); ``device_lengths``: those lengths live
    off the CPU (backends that would read them on the host are skipped); ``zoneout``: the states
    are zoned (only backends that implement zoneout qualify); ``layernorm``: the cell is
    layer-normalised (LayerNormLSTM / LayerNormGRU: only backends that implement it qualify)."""
    if backend == "auto":
        backend = default_backend()
    if tracing():
        return _module_plan(backend, cell, device, dtype, T, B, input_size, hidden_size, proj_size, num_layers,
                            bidirectional, residual_layers, packed, needs_grad, device_lengths, zoneout, layernorm)
    if device.type == "cuda":
        switches = (bool(torch.backends.cudnn.benchmark), cuda_matmul_allows_tf32())
    else:
        switches = (False, False)
    return _cached_module_plan(backend, cell, device, dtype, T, B, input_size, hidden_size, proj_size, num_layers,
                               bidirectional, residual_layers, packed, needs_grad, switches, device_lengths, zoneout,
                               layernorm)


def _module_plan(backend, cell, device, dtype, T, B, input_size, hidden_size, proj_size, num_layers,
                 bidirectional, residual_layers, packed, needs_grad, device_lengths=False, zoneout=False,
                 layernorm=False) -> StackPlan:
    check_backend_name(backend)
    D = 2 if bidirectional else 1
    P = proj_size if proj_size > 0 else hidden_size
    specs = tuple(
        CallSpec(cell=cell, device=device, dtype=dtype, T=T, B=B, I=input_size if layer == 0 else D * P,
                 H=hidden_size, P=P, has_residual=layer in residual_layers, has_lengths=packed,
                 reverse=direction == 1, has_proj=proj_size > 0, needs_grad=needs_grad,
                 device_lengths=device_lengths, zoneout=zoneout, layernorm=layernorm)
        for layer in range(num_layers) for direction in range(D)
    )
    backends = plan(backend, specs)
    return StackPlan(backends, all(b.name == "torch" for b in backends))


@functools.lru_cache(maxsize=1024)
def _cached_module_plan(backend, cell, device, dtype, T, B, input_size, hidden_size, proj_size, num_layers,
                        bidirectional, residual_layers, packed, needs_grad, switches,
                        device_lengths=False, zoneout=False, layernorm=False) -> StackPlan:
    return _module_plan(backend, cell, device, dtype, T, B, input_size, hidden_size, proj_size, num_layers,
                        bidirectional, residual_layers, packed, needs_grad, device_lengths, zoneout, layernorm)
