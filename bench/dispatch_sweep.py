"""The measured dispatch table: ``python -m fusedrnn.bench --write-dispatch`` on a GPU.

One layer-direction per measurement, through fusedrnn.functional with each backend forced: torch
(cuDNN), cuda and triton, in inference (forward, no grad) and training (forward + backward), over
a grid of cell x dtype x H x B at a fixed T. Each grid point becomes a row of
``fusedrnn/gpu_records/dispatch_<family>.json`` covering a bucket of H and B around it (between the
geometric midpoints of neighbouring grid values, and up to 2x past the largest), holding every
provider's median time. Dispatch (fusedrnn/dispatch.py) then takes, for a call in a row's buckets,
the fastest of torch and the fused backends that a GPU run validated — never a fused backend on
this table's word alone.

The grid is ordered so that the most used shapes come first (the LSTM and GRU grid, then the Elman
RNN's: ``auto`` can pick a fused RNN kernel only where a row holds its cell), and the sweep stops
starting new points after ``budget_s`` seconds; the table is rewritten after every point, so a run cut short
(a timeout, a hung kernel killed) still leaves what it measured.
"""

from __future__ import annotations

import itertools
import math
import time

import torch

from . import timing

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
CELL_ORDER = (("lstm", "gru"), ("rnn_tanh", "rnn_relu"))  # the gated cells' whole grid first
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
H_GRID = (256, 512, 1024, 128, 2048)
B_GRID = (16, 1, 64, 4, 256)
T_SWEEP = 128
PROVIDERS = ("torch", "cuda", "triton")
MODES = ("inference", "training")


def buckets(grid) -> dict[int, list[int]]:
    """value -> [lo, hi]: from the geometric midpoint with the next smaller grid value (1 for the
    smallest) to the midpoint with the next larger (2x for the largest)."""
    values = sorted(grid)
    out = {}
    for i, v in enumerate(values):
        lo = 1 if i == 0 else math.floor(math.sqrt(values[i - 1] * v)) + 1
        hi = 2 * v if i == len(values) - 1 else math.floor(math.sqrt(v * values[i + 1]))
        out[v] = [lo, hi]
    return out


def _inputs(cell: str, dtype: torch.dtype, H: int, B: int, T: int, device, training: bool):
    from fusedrnn.backends import CELLS as GATES

    g = GATES[cell]
    rnd = lambda *s: (torch.randn(*s, device=device) / H**0.5).to(dtype).requires_grad_(training)  # noqa: E731
    x = rnd(T, B, H)
    states = [rnd(B, H) for _ in range(2 if cell == "lstm" else 1)]
    weights = [rnd(g * H, H), rnd(g * H, H), rnd(g * H), rnd(g * H)]
    return x, states, weights


def point_fn(provider: str, cell: str, dtype: torch.dtype, H: int, B: int, T: int, device, training: bool):
    """A no-argument function running one call (and its backward when training)."""
    from fusedrnn import functional

    x, states, weights = _inputs(cell, dtype, H, B, T, device, training)
    op = getattr(functional, cell)
    dy = torch.randn(T, B, H, device=device, dtype=dtype) if training else None

    def call():
        with torch.set_grad_enabled(training):
            y = op(x, *states, *weights, backend=provider)[0]
            if training:
                y.backward(dy)

    return call


def sweep(device, dtypes=("bf16", "fp16"), budget_s: float = 300.0, providers=PROVIDERS, out_dir=None,
          log=print) -> tuple[list[dict], str]:
    """Measure the grid (within ``budget_s``) and write the table; returns (rows, path)."""
    from fusedrnn import evidence

    family = evidence.device_family(device)
    h_buckets, b_buckets = buckets(H_GRID), buckets(B_GRID)
    rows: list[dict] = []
    t0 = time.perf_counter()
    path = None
    points = [p for cells in CELL_ORDER for p in itertools.product(B_GRID, H_GRID, cells, dtypes, MODES)]
    for B, H, cell, dtype_name, mode in points:
        if time.perf_counter() - t0 > budget_s:
            log(f"dispatch sweep: budget of {budget_s:.0f} s spent; {len(rows)} of {len(points)} points measured")
            break
        training = mode == "training"
        ms, notes = {}, {}
        for provider in providers:
            try:
                fn = point_fn(provider, cell, DTYPES[dtype_name], H, B, T_SWEEP, device, training)
                fn()  # compiles / plans; raises ValueError when the backend cannot serve this point
                ms[provider] = timing.measure(fn, device, warmup_ms=10, rep_ms=40, min_reps=5, max_reps=200).median_ms
            except Exception as e:  # noqa: BLE001 - a provider that cannot run a point has no time there
                notes[provider] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
            finally:
                torch.cuda.synchronize(device)
        row = {"cell": cell, "dtype": evidence.DTYPE_NAMES[DTYPES[dtype_name]], "mode": mode,
               "H": h_buckets[H], "B": b_buckets[B], "T": None, "measured_at": {"H": H, "B": B, "T": T_SWEEP},
               "ms": ms, "unavailable": notes}
        if "torch" in ms:
            row["ratio_to_cudnn"] = {p: round(t / ms["torch"], 4) for p, t in ms.items()}
        rows.append(row)
        best = min(ms, key=ms.get) if ms else "-"
        log(f"{cell} {dtype_name} {mode:<9} H={H:<5} B={B:<4}: " + ", ".join(f"{p} {t:.3f} ms" for p, t in ms.items())
            + f" -> {best}")
        path = evidence.write_dispatch_table(family, rows, {"T_swept": T_SWEEP, "budget_s": budget_s}, out_dir)
    return rows, str(path)
