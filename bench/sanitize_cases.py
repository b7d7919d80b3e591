"""Small fused forward+backward runs for compute-sanitizer (bench/gpu_run.sh runs each tool):

    compute-sanitizer --tool {memcheck,racecheck,synccheck,initcheck} --error-exitcode 99 \\
        python bench/sanitize_cases.py [--backends cuda,triton] [--cells gru,lstm]

Sanitizers slow kernels 10-100x, so every sequence has T <= 32, yet the shapes cover what the
kernels branch on: several CTAs/programs (H > 16, and H=512 for the persistent split-H plans),
H not a multiple of 16, several batch tiles and a partial one, B=1, lengths, reverse, residual,
no bias, T=1 (no grid barrier in the forward), every dtype and both fp32 modes (exact, TF32); and
module stacks (layers, bidirectional, packed). Each run is checked loosely against the reference
backend in float32 (the test suite owns numerics: the point here is memory errors and races). A
backend that cannot serve a case says why and is skipped. Exit 1 on a mismatch or crash.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

CALLS = (  # one layer-direction through fusedrnn.functional: (T, B, I, H, bias, residual, lengths, reverse)
    (4, 3, 8, 40, True, True, True, True),
    (3, 17, 16, 32, False, False, True, False),
    (5, 1, 8, 16, True, False, False, True),
    (1, 2, 8, 8, True, True, True, True),
    (6, 3, 64, 512, True, False, False, False),
)
STACKS = (  # fusedrnn.GRU/LSTM modules: (T, B, H, layers, bidirectional, packed)
    (7, 3, 64, 2, True, True),
    (5, 2, 512, 1, False, False),
)
MODES = ((torch.float32, False), (torch.float32, True), (torch.bfloat16, False), (torch.float16, False))


def _upstream_loss(outs):
    g = torch.Generator().manual_seed(7)
    return sum((o.float() * torch.randn(o.shape, generator=g).to(o.device)).sum() for o in outs)


def call_case(device, cell, backend, dtype, T, B, I, H, bias, residual, lengths, reverse):  # noqa: E741
    from fusedrnn import functional as Fn

    g = torch.Generator().manual_seed(T * 100 + H)
    G = (3 if cell == "gru" else 4) * H

    def mk(*s):
        return (torch.randn(*s, generator=g) * 0.3).to(device, dtype).requires_grad_()

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
    grads = torch.autograd.grad(_upstream_loss(outs), leaves)
    if device == "cuda":
        torch.cuda.synchronize()
    return [o.detach().float() for o in outs] + [gr.float() for gr in grads]


def stack_case(device, cell, backend, dtype, T, B, H, layers, bidir, packed):
    import fusedrnn
    from torch.nn.utils.rnn import pack_padded_sequence

    g = torch.Generator().manual_seed(T * 1000 + H)
    cls = fusedrnn.GRU if cell == "gru" else fusedrnn.LSTM
    torch.manual_seed(0)
    m = cls(H, H, num_layers=layers, bidirectional=bidir, backend=backend).to(device, dtype)
    D = 2 if bidir else 1
    x = torch.randn(T, B, H, generator=g).to(device, dtype).requires_grad_()
    hs = [torch.randn(layers * D, B, H, generator=g).to(device, dtype).requires_grad_()
          for _ in range(1 if cell == "gru" else 2)]
    lengths = torch.randint(1, T + 1, (B,), generator=g) if packed else None
    if lengths is not None:
        lengths[0] = T
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
    y, state = m(inp, hs[0] if cell == "gru" else tuple(hs))
    outs = [y.data if packed else y] + ([state] if cell == "gru" else list(state))
    leaves = [x, *hs, *m.parameters()]
    grads = torch.autograd.grad(_upstream_loss(outs), leaves)
    if device == "cuda":
        torch.cuda.synchronize()
    return [o.detach().float() for o in outs] + [gr.float() for gr in grads]


def compare(ours, ref, tol) -> float:
    worst = 0.0
    for a, b in zip(ours, ref):
        if not torch.isfinite(a).all():
            raise AssertionError("non-finite values")
        worst = max(worst, ((a - b).abs().max() / (1 + b.abs().max())).item())
    if worst > tol:
        raise AssertionError(f"worst relative error {worst:.2e} > {tol:.0e} vs the reference backend")
    return worst


def cases(cells):
    for cell in cells:
        for dtype, tf32 in MODES:
            for shape in CALLS:
                yield cell, dtype, tf32, "call", shape
        for shape in STACKS:
            yield cell, torch.float32, False, "stack", shape


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="cuda,triton")
    ap.add_argument("--cells", default="gru,lstm")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no new case after this many seconds (the sanitizers are slow; the first cases "
                         "cover the most branches)")
    ap.add_argument("--device", default="cuda", help="cpu: check this script itself (with --backends torch)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("sanitize_cases: no CUDA device visible; nothing to check")
        return 0
    failed = done = 0
    start = time.perf_counter()
    todo = [(b, *c) for c in cases(args.cells.split(",")) for b in args.backends.split(",")]
    for backend, cell, dtype, tf32, kind, shape in todo:
        if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s spent: {done} of {len(todo)} cases run", flush=True)
            break
        done += 1
        run = call_case if kind == "call" else stack_case
        tag = f"{backend:<7}{cell:<5}{kind:<6}{str(dtype).replace('torch.', ''):<9}tf32={tf32!s:<6}{shape}"
        try:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            ours = run(args.device, cell, backend, dtype, *shape)
            torch.backends.cuda.matmul.allow_tf32 = False
            ref = run(args.device, cell, "reference", torch.float32, *shape)
            tol = 1e-4 if (dtype == torch.float32 and not tf32) else 5e-2
            msg = f"ok (worst rel err {compare(ours, ref, tol):.1e})"
        except ValueError as e:  # the backend cannot serve this case and says why
            msg = "unavailable: " + " ".join(str(e).split())[:200]
        except Exception as e:  # noqa: BLE001
            failed += 1
            msg = f"FAILED: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
        print(f"{tag:<80} {msg}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
