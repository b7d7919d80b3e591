"""python -m fusedrnn.bench — the benchmark grid on a GPU; a labelled CPU demonstration without one.

    python -m fusedrnn.bench                       # GPU: every case, provider, mode, dtype
    python -m fusedrnn.bench --quick               # GPU: bf16 only, shorter timing; CPU: tiny demo
    python -m fusedrnn.bench --cases flashrnn,stream-gru --providers torch-nn,fusedrnn-cuda \\
                             --dtypes bf16 --modes forward --out /tmp/run
    python -m fusedrnn.bench --list                # the cases and providers
    python -m fusedrnn.bench --model               # the per-step latency model (no GPU needed)
    python -m fusedrnn.bench --write-dispatch      # GPU: measure and write the dispatch table
    python -m fusedrnn.bench --import-cost         # what `import fusedrnn` adds to `import torch`

Without a GPU the Triton kernels can only run under the Triton interpreter, which must be switched
on before triton is imported. ``python -m fusedrnn.bench`` imports the fusedrnn package first, and
that already imports triton through torch, so without a GPU this module re-executes itself once with
TRITON_INTERPRET=1 set (setting it in-process was seen to leave helper functions compiled-mode:
"Cannot call @triton.jit'd outside of the scope of a kernel").
"""

from __future__ import annotations

import os
import sys


def _ensure_interpreter_without_gpu() -> None:
    if os.environ.get("TRITON_INTERPRET"):
        return
    import torch  # already imported by the fusedrnn package; importing torch does not import triton

    if torch.cuda.is_available():
        return
    os.environ["TRITON_INTERPRET"] = "1"
    if "triton" in sys.modules:  # too late for this process: start again with the interpreter on
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "fusedrnn.bench", *sys.argv[1:]])


if __name__ == "__main__":
    _ensure_interpreter_without_gpu()

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from . import cases as cases_mod  # noqa: E402
from . import providers, runner  # noqa: E402


def _csv_list(kind: str, allowed):
    def parse(s: str) -> list[str]:
        items = [x.strip() for x in s.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {kind} {', '.join(bad)}; choose from {', '.join(allowed)}")
        return items
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m fusedrnn.bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=_csv_list("case", list(cases_mod.BY_ID)), help="comma-separated case ids")
    ap.add_argument("--providers", type=_csv_list("provider", list(providers.PROVIDERS)),
                    help="comma-separated providers (GPU default: " + ",".join(providers.GPU_DEFAULT) + ")")
    ap.add_argument("--dtypes", type=_csv_list("dtype", list(cases_mod.DTYPES)), help="bf16,fp16,fp32")
    ap.add_argument("--modes", type=_csv_list("mode", list(cases_mod.MODES)), help="forward,forward+backward")
    ap.add_argument("--out", type=Path, help="output directory (default bench/results/<time>-<gpu>/)")
    ap.add_argument("--quick", action="store_true",
                    help="GPU: bf16 only unless --dtypes, shorter timing; CPU: the tiny demonstration")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="GPU: start no new measurement after this many seconds (the rest is marked skipped)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--list", action="store_true", help="print the cases and providers, then exit")
    ap.add_argument("--write-dispatch", action="store_true",
                    help="GPU: measure the dispatch sweep and write fusedrnn/gpu_records/dispatch_<family>.json "
                         "(bench/dispatch_sweep.py); --budget-s bounds it, --dtypes picks the dtypes")
    ap.add_argument("--model", action="store_true",
                    help="print the per-step latency model (a MODEL, not a measurement) and exit; no GPU needed")
    ap.add_argument("--import-cost", action="store_true",
                    help="print `import torch` against `import torch, fusedrnn` (median of 10 fresh processes each; "
                         "bench/import_cost.py) and exit")
    return ap.parse_args(argv)


def list_cases() -> str:
    lines = [f"{'id':<16}{'cell':<6}{'B':>5}{'H=I':>6}{'T':>6}{'layers':>8}  notes"]
    for c in cases_mod.CASES:
        notes = ", ".join(x for x in ("bidirectional" if c.bidirectional else "",
                                      f"packed ({c.tokens()} tokens)" if c.packed else "",
                                      "residual" if c.residual else "",
                                      f"streaming: {c.T} calls of one step, forward only" if c.stream else "",
                                      f"zoneout p={c.zoneout:g}" if c.zoneout else "",
                                      "LayerNorm" if c.layernorm else "",
                                      c.anchor) if x)
        lines.append(f"{c.id:<16}{c.cell:<6}{c.B:>5}{c.H:>6}{c.T:>6}{c.layers:>8}  {notes}")
    lines.append("\nproviders: " + ", ".join(f"{p.name} ({p.label})" for p in providers.PROVIDERS.values()))
    lines.append("modes: " + ", ".join(cases_mod.MODES) + "; dtypes: " + ", ".join(cases_mod.DTYPES))
    return "\n".join(lines)


def run_gpu(args) -> int:
    device = torch.device("cuda", torch.cuda.current_device())
    selected = [cases_mod.get(c) for c in args.cases] if args.cases else list(cases_mod.CASES)
    provs = args.providers or list(providers.GPU_DEFAULT)
    modes = args.modes or list(cases_mod.MODES)
    dtypes = args.dtypes or (["bf16"] if args.quick else list(cases_mod.DTYPES))
    label = "GPU benchmark" + (" (--quick)" if args.quick else "")
    print(f"{label} on {torch.cuda.get_device_name(device)}: {len(selected)} cases x {len(provs)} providers x "
          f"{len(modes)} modes x {len(dtypes)} dtypes", flush=True)
    from . import floors

    t0 = time.perf_counter()
    ceilings = floors.measured_ceilings(device)
    rows, env, floor_info = runner.run_grid(selected, provs, modes, dtypes, device, quick=args.quick, label=label,
                                            progress=not args.no_progress, budget_s=args.budget_s,
                                            partial_dir=args.out)
    env["measured_ceilings"] = ceilings
    env["peaks_table"] = floors.peaks_for(env["gpu"]) or f"unknown GPU {env['gpu']!r} (no roofline)"
    print(runner.format_tables(rows, floor_info, env["gpu"]))
    targets = runner.evaluate_targets(rows)
    print("\nTargets (bench/README.md), from the measurements above:")
    print(runner.format_targets(targets))
    print(f"\nmeasured ceilings: {ceilings}")
    from . import perf_model

    model_rows = perf_model.table(selected, dtypes, measured_rows=rows)
    print("\n" + perf_model.format_table(model_rows))
    out_dir = args.out or runner.default_out_dir(env, label)
    paths = runner.write_results(out_dir, rows, env, floor_info, extra={"targets": targets, "model": model_rows})
    n_ok = sum(r["status"] == "ok" for r in rows)
    print(f"\n{n_ok}/{len(rows)} measurements ok in {time.perf_counter() - t0:.0f} s; "
          f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def write_dispatch(args) -> int:
    from . import dispatch_sweep

    device = torch.device("cuda", torch.cuda.current_device())
    dtypes = args.dtypes or ["bf16", "fp16"]
    budget = args.budget_s if args.budget_s is not None else 300.0
    print(f"dispatch sweep on {torch.cuda.get_device_name(device)}: dtypes {', '.join(dtypes)}, budget {budget:.0f} s",
          flush=True)
    rows, path = dispatch_sweep.sweep(device, dtypes=dtypes, budget_s=budget,
                                      out_dir=args.out, log=lambda m: print(m, flush=True))
    print(f"wrote {path} ({len(rows)} rows)")
    return 0 if rows else 1


def print_model(args) -> int:
    from . import perf_model

    selected = [cases_mod.get(c) for c in args.cases] if args.cases else list(cases_mod.CASES)
    dtypes = args.dtypes or list(cases_mod.DTYPES)
    print(perf_model.format_table(perf_model.table(selected, dtypes), phases=True))
    if any(c.layernorm for c in selected):
        from . import model_triton

        print("\nLayerNorm in the Triton step: two designs (bench/model_triton.py, bench/README.md)")
        for dtype_name in dtypes:
            print(model_triton.layernorm_table(dtype_name))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        print(list_cases())
        return 0
    if args.model:
        return print_model(args)
    if args.import_cost:
        from . import import_cost

        print(import_cost.format_figure(import_cost.measure()))
        return 0
    if args.write_dispatch:
        if not torch.cuda.is_available():
            print("--write-dispatch measures on a GPU; no CUDA device is visible")
            return 1
        return write_dispatch(args)
    if torch.cuda.is_available():
        return run_gpu(args)
    from . import demo

    return demo.run(args)


if __name__ == "__main__":
    sys.exit(main())
