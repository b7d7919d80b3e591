"""CPU demonstration: what ``python -m fusedrnn.bench`` does on a machine without a GPU.

No number printed here says anything about GPU speed. Three parts:
  (i)   timing, CPU: fusedrnn's reference backend (pure-PyTorch loop) and torch backend (torch's
        native CPU op), torch.nn and an eager cell loop, on scaled-down copies of the cases;
  (ii)  correctness of the Triton kernels under the Triton interpreter (TRITON_INTERPRET=1, set by
        __main__ before triton is imported): fusedrnn.GRU/LSTM(backend="triton") forward and every
        gradient against a float64 torch.nn oracle; if the backend cannot serve, its reasons;
  (iii) residual stacks: fusedrnn.GRU/LSTM(residual=True) against torch.nn layers composed with the
        adds (float64 oracle), on the auto, reference and triton backends;
  (iv)  CPU overhead: fusedrnn modules against torch.nn where both run torch's op (cpu_overhead.py),
        forward and forward+backward, the ratio being fusedrnn's per-call cost.

Pass rule (flash-attention's): relative error ‖got − oracle‖ / ‖oracle‖ of every output and gradient
≤ max(K × the error of torch.nn in the same dtype, FLOOR). Exit status: 0 when every check that could
run passed, 1 when a check failed or a provider raised (not for "unavailable").
"""

from __future__ import annotations

import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

from . import cases as cases_mod
from . import cpu_overhead, providers, runner
from .composed import ComposedTorch

K, FLOOR = 10.0, 1e-5
DEMO_LABEL = "CPU demonstration (no GPU: CPU timings only, not GPU results)"


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def _run(module, x, hx, lengths, upstream, dtype):
    """Forward + backward with fixed upstream grads; returns {name: tensor} of outputs and grads."""
    def leaf(t):  # a fresh leaf per run: .to() returns the same tensor when the dtype already matches
        return t.detach().to(dtype).clone().requires_grad_()

    x = leaf(x)
    hx = leaf(hx) if isinstance(hx, torch.Tensor) else tuple(leaf(h) for h in hx)
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths is not None else x
    y, state = module(inp, hx)
    if lengths is not None:
        y = y.data
    states = [state] if isinstance(state, torch.Tensor) else list(state)
    outs = {"y": y, **{f"state{i}": s for i, s in enumerate(states)}}
    loss = sum((o.double() * upstream[name]).sum() for name, o in outs.items())
    loss.backward()
    res = {name: o.detach() for name, o in outs.items()}
    res["dx"] = x.grad
    for i, h in enumerate([hx] if isinstance(hx, torch.Tensor) else hx):
        res[f"dstate{i}"] = h.grad
    grads = module.grads_by_fused_name() if isinstance(module, ComposedTorch) else {n: p.grad for n, p in module.named_parameters()}
    res.update({f"d{n}": g for n, g in grads.items()})
    return res


def check_module(cell: str, backend: str, *, T: int, B: int, H: int, layers: int = 1, bidirectional=False,
                 residual=False, packed=False, I: int | None = None, seed: int = 0) -> dict:  # noqa: E741
    """fusedrnn.<cell>(backend=...) in float32 vs a float64 torch.nn oracle, all outputs and grads."""
    name = (f"{cell.upper()} {backend} T={T} B={B} H={H} layers={layers}" + (" bidir" if bidirectional else "")
            + (" residual" if residual else "") + (" packed" if packed else ""))
    result = {"check": name, "backend": backend}
    I = I or H  # noqa: E741
    D = 2 if bidirectional else 1
    g = torch.Generator().manual_seed(seed)
    oracle_cls = (torch.nn.GRU if cell == "gru" else torch.nn.LSTM)
    proto = oracle_cls(I, H, num_layers=layers, bidirectional=bidirectional)
    with torch.no_grad():
        for p in proto.parameters():
            p.copy_(torch.empty_like(p).uniform_(-1, 1, generator=g) / H**0.5)
    sd = proto.state_dict()
    x = torch.randn(T, B, I, generator=g)
    h0 = torch.randn(layers * D, B, H, generator=g)
    hx = h0 if cell == "gru" else (h0, torch.randn(layers * D, B, H, generator=g))
    lengths = None
    if packed:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
    try:
        import fusedrnn

        fused = getattr(fusedrnn, cell.upper())(I, H, num_layers=layers, bidirectional=bidirectional,
                                                  residual=residual, backend=backend)
    except Exception as e:  # noqa: BLE001
        return {**result, "status": "unavailable", "detail": f"fusedrnn.{cell.upper()} not usable: {type(e).__name__}: {e}"}
    fused.load_state_dict(sd)

    def oracle_in(dtype):
        if residual:  # torch.nn per layer with the adds, holding the same weights
            return ComposedTorch(fused).to(dtype)
        m = oracle_cls(I, H, num_layers=layers, bidirectional=bidirectional)
        m.load_state_dict(sd)
        return m.to(dtype)

    # Random upstream grads on every output need the output shapes: one oracle forward first.
    with torch.no_grad():
        probe = oracle_in(torch.float64)
        inp = pack_padded_sequence(x.double(), lengths, enforce_sorted=False) if packed else x.double()
        y, state = probe(inp, h0.double() if cell == "gru" else tuple(h.double() for h in hx))
        y = y.data if packed else y
        states = [state] if cell == "gru" else list(state)
    upstream = {"y": torch.randn(y.shape, generator=g, dtype=torch.float64)}
    upstream.update({f"state{i}": torch.randn(s.shape, generator=g, dtype=torch.float64) for i, s in enumerate(states)})
    oracle = _run(oracle_in(torch.float64), x, hx, lengths, upstream, torch.float64)
    torch32 = _run(oracle_in(torch.float32), x, hx, lengths, upstream, torch.float32)
    t0 = time.perf_counter()
    try:
        got = _run(fused, x, hx, lengths, upstream, torch.float32)
    except ValueError as e:  # a forced backend that cannot serve says why
        return {**result, "status": "unavailable", "detail": " ".join(str(e).split())}
    except Exception as e:  # noqa: BLE001 - a kernel that crashes fails its check
        return {**result, "status": "error", "detail": f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"}
    result["seconds"] = time.perf_counter() - t0
    worst, worst_name, worst_bound = -1.0, "", 1.0
    failures = []
    for key, want in oracle.items():
        if want is None:
            continue
        if got.get(key) is None:
            failures.append(f"{key} missing")
            continue
        err = _rel(got[key], want)
        bound = max(K * _rel(torch32[key], want), FLOOR)
        if err > bound:
            failures.append(f"{key} err {err:.2e} > {bound:.2e}")
        if err / bound > worst / worst_bound:  # report the tensor closest to (or past) its bound
            worst, worst_name, worst_bound = err, key, bound
    result.update(max_rel_err=worst, worst=worst_name, bound=worst_bound,
                  status="fail" if failures else "pass",
                  detail="; ".join(failures) if failures else f"{len(oracle)} tensors (outputs, states, all grads)")
    return result


def correctness_checks(quick: bool) -> list[dict]:
    T, B, H = (6, 2, 16) if quick else (12, 3, 32)
    checks = []
    # (ii) the Triton kernels under the interpreter, forced.
    checks.append(check_module("gru", "triton", T=T, B=B, H=H))
    checks.append(check_module("lstm", "triton", T=T, B=B, H=H))
    if not quick:
        checks.append(check_module("lstm", "triton", T=T, B=B + 2, H=H, bidirectional=True, packed=True, layers=2))
    # (iii) residual stacks vs torch.nn composed with the adds.
    for backend in ("auto", "reference", "triton"):
        checks.append(check_module("gru", backend, T=T, B=B, H=H, layers=3, residual=True))
        checks.append(check_module("lstm", backend, T=T, B=B, H=H, layers=2, residual=True, bidirectional=True, I=2 * H))
    return checks


def triton_reasons() -> str:
    """Why the triton backend cannot serve a small float32 CPU GRU, without running it ('' if it can)."""
    try:
        from fusedrnn import backends

        p = backends.CallSpec("gru", torch.device("cpu"), torch.float32, 8, 2, 16, 16, 16, False, False, False, False)
        return "; ".join(backends.get("triton").reasons(p, forced=True))
    except Exception as e:  # noqa: BLE001
        return f"could not ask the triton backend ({type(e).__name__}: {e})"


def format_checks(checks: list[dict]) -> str:
    lines = [f"{'check':<58}{'status':<13}{'max rel err':>12}{'bound':>10}{'s':>7}  detail"]
    for c in checks:
        err = f"{c['max_rel_err']:.2e}" if "max_rel_err" in c else "-"
        bound = f"{c['bound']:.1e}" if "bound" in c else "-"
        secs = f"{c['seconds']:.1f}" if "seconds" in c else "-"
        lines.append(f"{c['check']:<58}{c['status']:<13}{err:>12}{bound:>10}{secs:>7}  {c.get('detail', '')}")
    return "\n".join(lines)


def run(args) -> int:
    t_start = time.perf_counter()
    # One intra-op thread: on a small shared machine, spinning OpenMP workers competing with other
    # processes made tiny calls 100x slower and the numbers noise.
    torch.set_num_threads(1)
    print("=" * 100)
    print("No CUDA GPU is visible: running the CPU DEMONSTRATION, not the benchmark.")
    print("Every time below is a CPU time on scaled-down shapes; none of it predicts GPU performance.")
    print("The GPU benchmark runs with `python -m fusedrnn.bench` on a GPU machine (bench/gpu_run.sh).")
    print("=" * 100)

    tiny = args.quick
    selected = [cases_mod.get(c) for c in args.cases] if args.cases else list(cases_mod.CASES)
    demo_cases = [c.scaled_down(tiny=tiny) for c in selected]
    provs = args.providers or list(providers.CPU_DEMO_DEFAULT)
    modes = args.modes or list(cases_mod.MODES)
    dtypes = args.dtypes or ["fp32"]
    print(f"\n(i) CPU timing (1 thread), {'tiny' if tiny else 'scaled-down'} cases, providers {', '.join(provs)}, "
          f"dtypes {', '.join(dtypes)}")
    rows, env, floor_info = runner.run_grid(demo_cases, provs, modes, dtypes, "cpu", quick=True,
                                            label=DEMO_LABEL, progress=not args.no_progress)
    print(runner.format_tables(rows, floor_info, "CPU"))
    t_checks = time.perf_counter()
    print(f"(i) took {t_checks - t_start:.1f} s")

    print(f"\n(ii)+(iii) correctness, float32 vs a float64 torch.nn oracle, TRITON_INTERPRET="
          f"{env['triton_interpret'] or 'unset'}")
    reasons = triton_reasons()
    if reasons:
        print(f"triton backend cannot serve here: {reasons}")
    checks = correctness_checks(quick=tiny)
    print(format_checks(checks))
    print(f"(ii)+(iii) took {time.perf_counter() - t_checks:.1f} s")

    t_overhead = time.perf_counter()
    print("\n(iv) CPU overhead over torch.nn (both run torch's op on the CPU; one thread)")
    overhead = cpu_overhead.table(quick=tiny)
    print(cpu_overhead.format_table(overhead))
    print(f"(iv) took {time.perf_counter() - t_overhead:.1f} s")

    errors = [r for r in rows if r["status"] == "error"]
    failed = [c for c in checks if c["status"] in ("fail", "error")]
    ran = [c for c in checks if c["status"] == "pass"]
    out_dir = args.out or runner.default_out_dir(env, DEMO_LABEL)
    paths = runner.write_results(out_dir, rows, env, floor_info,
                                 extra={"checks": checks, "triton_reasons": reasons, "cpu_overhead": overhead,
                                        "note": "CPU demonstration: CPU timings on scaled-down cases"})
    elapsed = time.perf_counter() - t_start
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    print(f"CPU demonstration finished in {elapsed:.1f} s: {len(ran)} checks passed, {len(failed)} failed, "
          f"{len(checks) - len(ran) - len(failed)} unavailable; {len(errors)} timing runs raised.")
    for r in errors:
        print(f"  timing error: {r['case']} {r['provider']} {r['mode']}: {r['reason']}")
    return 1 if failed or errors else 0
