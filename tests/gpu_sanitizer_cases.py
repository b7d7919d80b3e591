"""Small forward+backward runs of the cuda backend's persistent kernels for compute-sanitizer:

    compute-sanitizer --tool memcheck  --error-exitcode 99 python tests/gpu_sanitizer_cases.py
    compute-sanitizer --tool racecheck --error-exitcode 99 python tests/gpu_sanitizer_cases.py
    compute-sanitizer --tool synccheck --error-exitcode 99 python tests/gpu_sanitizer_cases.py
    compute-sanitizer --tool initcheck --error-exitcode 99 python tests/gpu_sanitizer_cases.py

Shapes are tiny (sanitizers slow kernels 10-100x) but cover: several CTAs (H > 16), H not a multiple
of 16, several batch tiles and a partial one, B=1, lengths, reverse, residual, no bias, every dtype and
both fp32 modes (exact FMA, TF32). Each run is checked loosely against the reference backend in
float32 (the test suite owns numerics). Exit 1 on a mismatch.
"""

from __future__ import annotations

import sys

import torch

from fusedrnn import functional as Fn

SHAPES = (  # (T, B, I, H, bias, residual, lengths, reverse)
    (4, 3, 8, 40, True, True, True, True),
    (3, 17, 16, 32, False, False, True, False),
    (5, 1, 8, 16, True, False, False, True),
    (1, 2, 8, 8, True, True, True, True),  # T=1: the forward has no grid barrier; H < 16
)
MODES = ((torch.float32, False), (torch.float32, True), (torch.bfloat16, False), (torch.float16, False))


def run(cell, backend, dtype, T, B, I, H, bias, residual, lengths, reverse):  # noqa: E741
    g = torch.Generator().manual_seed(T * 100 + H)
    G = (3 if cell == "gru" else 4) * H
    mk = lambda *s: (torch.randn(*s, generator=g) * 0.3).to("cuda", dtype).requires_grad_()  # noqa: E731
    x, h0, c0 = mk(T, B, I), mk(B, H), mk(B, H)
    w_ih, w_hh = mk(G, I), mk(G, H)
    b_ih, b_hh = (mk(G), mk(G)) if bias else (None, None)
    res = mk(T, B, H) if residual else None
    L = torch.randint(1, T + 1, (B,), generator=g) if lengths else None
    kw = dict(residual=res, lengths=L, reverse=reverse, backend=backend)
    if cell == "gru":
        outs = Fn.gru(x, h0, w_ih, w_hh, b_ih, b_hh, **kw)
        leaves = [x, h0, w_ih, w_hh]
    else:
        outs = Fn.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, **kw)
        leaves = [x, h0, c0, w_ih, w_hh]
    leaves += [t for t in (b_ih, b_hh, res) if t is not None]
    gu = torch.Generator().manual_seed(7)
    loss = sum((o.float() * torch.randn(o.shape, generator=gu).cuda()).sum() for o in outs)
    grads = torch.autograd.grad(loss, leaves)
    torch.cuda.synchronize()
    return [o.detach().float() for o in outs] + [gr.float() for gr in grads]


def main() -> int:
    failures = 0
    for cell in ("gru", "lstm"):
        for dtype, tf32 in MODES:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            for shape in SHAPES:
                ours = run(cell, "cuda", dtype, *shape)
                torch.backends.cuda.matmul.allow_tf32 = False
                ref = run(cell, "reference", torch.float32, *shape)
                torch.backends.cuda.matmul.allow_tf32 = tf32
                tol = 1e-4 if (dtype == torch.float32 and not tf32) else 5e-2
                worst = max(((a - b).abs().max() / (1 + b.abs().max())).item() for a, b in zip(ours, ref))
                ok = worst <= tol
                failures += not ok
                print(f"{cell} {str(dtype):15} tf32={tf32!s:5} {shape}: worst rel err {worst:.2e} "
                      f"{'ok' if ok else 'MISMATCH'}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
