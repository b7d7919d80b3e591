"""Timing one backend on one call shape: what ``auto`` measures on first use of a shape when
``torch.backends.cudnn.benchmark`` is on (fusedrnn/dispatch.py decides, this only measures).

It sits with the backends, below dispatch: it runs a backend object directly, never through
fusedrnn.functional, so measuring never re-enters the decision it serves.
"""

from __future__ import annotations

import functools

import torch

from . import CELLS, CallSpec, get


def time_call(name: str, spec: CallSpec, repeats: int = 5) -> float:
    """Milliseconds for one call of ``spec`` on backend ``name``, on random inputs of its shape
    (forward, and backward when the call will need one), median of ``repeats`` runs after a warm-up."""
    backend = get(name)
    dev, dt = spec.device, spec.dtype
    g = CELLS[spec.cell]
    rnd = functools.partial(torch.randn, device=dev, dtype=dt)
    x = rnd(spec.T, spec.B, spec.I, requires_grad=spec.needs_grad)
    w_ih, w_hh = rnd(g * spec.H, spec.I) / spec.H**0.5, rnd(g * spec.H, spec.P) / spec.H**0.5
    b_ih, b_hh = rnd(g * spec.H), rnd(g * spec.H)
    residual = rnd(spec.T, spec.B, spec.P) if spec.has_residual else None
    lengths = torch.full((spec.B,), spec.T, dtype=torch.int64) if spec.has_lengths else None
    h0 = rnd(spec.B, spec.P)
    if spec.cell != "lstm":
        def call():
            return getattr(backend, spec.cell)(x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, spec.reverse)
    else:
        c0 = rnd(spec.B, spec.H)
        w_hr = rnd(spec.P, spec.H) if spec.has_proj else None

        def call():
            return backend.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, spec.reverse)

    def once():
        with torch.set_grad_enabled(spec.needs_grad):
            y = call()[0]
            if spec.needs_grad:
                y.sum().backward()

    once()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        once()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]
