"""Tiny fused forward+backward runs for compute-sanitizer (bench/gpu_run.sh):

    compute-sanitizer --tool memcheck  --error-exitcode 99 python bench/sanitize_cases.py
    compute-sanitizer --tool racecheck --error-exitcode 99 python bench/sanitize_cases.py

Each shape runs fusedrnn.GRU/LSTM with backend triton and cuda, forward and backward with random
upstream grads on every output, and is checked against the reference backend (float32, loose bound:
the point here is memory errors and races, the test suite owns numerics). Shapes are small so the
sanitizers finish in seconds, and cover both strategies: a small H that one program holds, and a
larger H that the persistent split-H kernels take, with odd T and B.
A backend that cannot serve a shape is reported and skipped. Exit 1 on a mismatch or crash.
"""

from __future__ import annotations

import argparse
import sys

import torch

SHAPES = (  # (T, B, H, layers, bidirectional, packed)
    (7, 3, 64, 1, False, False),
    (5, 2, 512, 1, False, False),
    (6, 3, 64, 2, True, True),
)


def run_one(cell: str, backend: str, T: int, B: int, H: int, layers: int, bidir: bool, packed: bool) -> str:
    import fusedrnn
    from torch.nn.utils.rnn import pack_padded_sequence

    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(T * 1000 + H)
    cls = fusedrnn.GRU if cell == "gru" else fusedrnn.LSTM
    mods = {b: cls(H, H, num_layers=layers, bidirectional=bidir, backend=b) for b in (backend, "reference")}
    mods["reference"].load_state_dict(mods[backend].state_dict())
    D = 2 if bidir else 1
    x = torch.randn(T, B, H, generator=g)
    h0 = [torch.randn(layers * D, B, H, generator=g) for _ in range(1 if cell == "gru" else 2)]
    lengths = torch.randint(1, T + 1, (B,), generator=g) if packed else None
    if lengths is not None:
        lengths[0] = T
    results = {}
    for name, m in mods.items():
        m.to(dev)
        xi = x.to(dev).requires_grad_()
        hs = [h.to(dev).requires_grad_() for h in h0]
        inp = pack_padded_sequence(xi, lengths, enforce_sorted=False) if packed else xi
        y, state = m(inp, hs[0] if cell == "gru" else tuple(hs))
        y = y.data if packed else y
        outs = [y] + ([state] if cell == "gru" else list(state))
        g2 = torch.Generator().manual_seed(7)
        loss = sum((o.float() * torch.randn(o.shape, generator=g2).to(dev)).sum() for o in outs)
        loss.backward()
        torch.cuda.synchronize()
        results[name] = [o.detach() for o in outs] + [xi.grad] + [h.grad for h in hs] + [p.grad for p in m.parameters()]
    worst = 0.0
    for got, want in zip(results[backend], results["reference"]):
        if not torch.isfinite(got).all():
            raise AssertionError("non-finite values")
        worst = max(worst, float((got - want).norm() / want.norm().clamp_min(1e-30)))
    if worst > 1e-2:
        raise AssertionError(f"max relative error {worst:.2e} vs the reference backend")
    return f"ok (max rel err {worst:.1e})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="triton,cuda")
    ap.add_argument("--cells", default="gru,lstm")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("sanitize_cases: no CUDA device visible; nothing to check")
        return 0
    failed = 0
    for backend in args.backends.split(","):
        for cell in args.cells.split(","):
            for shape in SHAPES:
                T, B, H, layers, bidir, packed = shape
                tag = f"{backend:<7}{cell:<5}T={T} B={B} H={H} layers={layers}{' bidir' if bidir else ''}{' packed' if packed else ''}"
                try:
                    msg = run_one(cell, backend, *shape)
                except ValueError as e:  # the backend cannot serve this shape and says why
                    msg = "unavailable: " + " ".join(str(e).split())[:300]
                except Exception as e:  # noqa: BLE001
                    failed += 1
                    msg = f"FAILED: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
                print(f"{tag:<48}{msg}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
