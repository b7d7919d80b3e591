"""Compile every shipped Triton kernel configuration for real GPUs (sm_80, sm_90), without a GPU.

The interpreter (TRITON_INTERPRET=1, what the other Triton tests run under) accepts code that the
real compiler rejects; this test is what shows the kernels are real. Each configuration (kernel x
dtype x the constexprs the launchers actually pass, taken from kernels/common.make_plan over the
benchmark shapes) goes through triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32));
ptxas -v (shipped in Triton's wheel) on the PTX gives registers and spills, printed as a table.

The compile runs in a subprocess with the interpreter off: with TRITON_INTERPRET=1 (set by
conftest.py before triton is imported) @triton.jit yields interpreter functions, which cannot be
compiled. Run this file as a script to see the table: ``python tests/test_triton_compile.py``.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys

import pytest

ARCHS = (80, 90)
DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}
# (B, H) of the benchmark cases (bench/cases.py) plus small and odd shapes: the plans they produce
# are the block/strategy constexprs that ship.
PLAN_SHAPES = [(16, 768), (64, 512), (128, 1024), (32, 1024), (1, 512), (4, 256), (32, 512), (3, 20), (3, 100),
               (17, 257), (4096, 128)]
# Fail on spills above this (bytes per thread): a guard against a plan change that thrashes local
# memory; the current configurations are reported in the table.
MAX_SPILL_BYTES = 256


def _configs():
    """[(kernel name, dtype name, constexprs, num_warps, num_stages)] for every shipped config."""
    import torch

    from fusedrnn.kernels import common

    out = []
    for cell, n_gates in (("gru", 3), ("lstm", 4)):
        for dtype_name in DTYPES:
            elem = torch.empty(0, dtype=getattr(torch, dtype_name)).element_size()
            plans = set()
            for B, H in PLAN_SHAPES:
                for strategy in common.STRATEGIES:
                    plans.add(common.make_plan(n_gates, B, H, elem, common.INTERPRETER_SM_COUNT, strategy))
            # Plans that differ only in grid shape compile to the same kernel: one per constexpr set.
            plans = {(p.BLOCK_B, p.BLOCK_H, p.BLOCK_K, p.w_resident, p.grid_barrier, p.num_warps): p
                     for p in plans}.values()
            for plan in sorted(plans, key=repr):
                for direction in ("fwd", "bwd"):
                    # Every optional feature on (the superset of the code) ...
                    flag_sets = [True]
                    # ... and, once per kernel/dtype, every feature off.
                    if plan == min(plans, key=repr):
                        flag_sets.append(False)
                    for on in flag_sets:
                        c = dict(
                            USE_GRID_BARRIER=plan.grid_barrier, HAS_LEN=on, REVERSE=on,
                            BLOCK_B=plan.BLOCK_B, BLOCK_H=plan.BLOCK_H, BLOCK_K=plan.BLOCK_K,
                            W_RESIDENT=plan.w_resident,
                            DOT_PRECISION="tf32" if (dtype_name == "float32" and on) else "ieee",
                        )
                        if direction == "fwd":
                            c.update(HAS_BIAS=on, HAS_RES=on, SAVE_ACT=on)
                        else:
                            c.update(HAS_DY=on)
                        out.append((f"{cell}_{direction}_kernel", dtype_name, c, plan.num_warps, common.NUM_STAGES))
    barrier = [("barrier_floor_kernel", "float32", dict(CHECK=check, BLOCK=256), 4, 1) for check in (False, True)]
    return out + barrier


def _signature(kernel, dtype_name, constexprs):
    """Argument types by name: pointers by role, every other runtime argument i32."""
    d = DTYPES[dtype_name]
    acc = "fp64" if d == "fp64" else "fp32"
    roles = {
        "w_hh_ptr": d, "b_hh_ptr": d, "res_ptr": d, "y_ptr": d, "dy_ptr": d, "len_ptr": "i64",
        "counter_ptr": "i32", "slots_ptr": "i32", "errors_ptr": "i32", "gx_ptr": acc, "hseq_ptr": acc, "cseq_ptr": acc, "act_ptr": acc,
        "dgx_ptr": acc, "dgh_ptr": acc, "dg_ptr": acc, "dh_ptr": acc, "dc_ptr": acc,
    }
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + roles[name]
        else:
            sig[name] = "i32"
    return sig


def _ptxas_arch(cc: int) -> str:
    return "sm_90a" if cc == 90 else f"sm_{cc}"


def compile_one(kernel_name, dtype_name, constexprs, num_warps, num_stages, cc, workdir):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fusedrnn.kernels import barrier, gru, lstm

    kernel = {"gru_fwd_kernel": gru.gru_fwd_kernel, "gru_bwd_kernel": gru.gru_bwd_kernel,
              "lstm_fwd_kernel": lstm.lstm_fwd_kernel, "lstm_bwd_kernel": lstm.lstm_bwd_kernel,
              "barrier_floor_kernel": barrier.barrier_floor_kernel}[kernel_name]
    target = GPUTarget("cuda", cc, 32)
    options = triton.compiler.make_backend(target).parse_options({"num_warps": num_warps, "num_stages": num_stages})
    src = ASTSource(fn=kernel, signature=_signature(kernel, dtype_name, constexprs), constexprs=constexprs)
    compiled = triton.compile(src, target=target, options=options.__dict__)
    ptx = compiled.asm["ptx"]
    path = os.path.join(workdir, f"{kernel_name}_{dtype_name}_{cc}_{abs(hash(repr(constexprs)))}.ptx")
    with open(path, "w") as f:
        f.write(ptx)
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    res = subprocess.run([ptxas, f"-arch={_ptxas_arch(cc)}", "-v", path, "-o", path + ".cubin"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"ptxas failed: {res.stderr[-2000:]}")
    regs = int(re.search(r"Used (\d+) registers", res.stderr).group(1))
    spill = re.search(r"(\d+) bytes spill stores", res.stderr)
    facts = {
        "regs": regs, "spill_bytes": int(spill.group(1)) if spill else 0, "shared": compiled.metadata.shared,
        "mma": ("mma.sync" in ptx) or ("wgmma" in ptx),
        # the barrier kernels must carry the release atomic and the acquire spin
        "release_atomic": ".release." in ptx, "acquire": ".acquire." in ptx, "cg_loads": "ld.global.cg" in ptx,
    }
    return facts


def _worker(out_stream):
    import tempfile
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(k, d, c, w, s, cc) for (k, d, c, w, s) in _configs() for cc in ARCHS]
    with tempfile.TemporaryDirectory(prefix="fusedrnn_ptx_") as workdir, \
            ProcessPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        futures = [pool.submit(_safe_compile, *job, workdir) for job in jobs]
        for job, fut in zip(jobs, futures):
            out_stream.write(json.dumps({"job": job, **fut.result()}) + "\n")
            out_stream.flush()


def _safe_compile(*args):
    try:
        return {"ok": True, **compile_one(*args)}
    except Exception as e:  # reported per configuration, and failed on in the test
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[-3000:]}


def _format(rows):
    lines = [f"{'kernel':<22}{'dtype':<10}{'sm':<4}{'strategy constexprs':<58}{'regs':>5}{'spill':>7}{'smem':>7}"]
    for r in rows:
        k, d, c, w, s, cc = r["job"]
        cfg = (f"B{c.get('BLOCK_B', '-')} H{c.get('BLOCK_H', '-')} K{c.get('BLOCK_K', '-')} "
               f"res={int(bool(c.get('W_RESIDENT')))} gridbar={int(bool(c.get('USE_GRID_BARRIER')))} "
               f"flags={'on' if c.get('HAS_LEN', True) else 'off'} w{w}")
        if r["ok"]:
            lines.append(f"{k:<22}{d:<10}{cc:<4}{cfg:<58}{r['regs']:>5}{r['spill_bytes']:>7}{r['shared']:>7}")
        else:
            lines.append(f"{k:<22}{d:<10}{cc:<4}{cfg:<58} FAILED: {r['error'][:300]}")
    return "\n".join(lines)


def _astsource_supported() -> str | None:
    from triton.compiler import ASTSource

    if "constexprs" not in inspect.signature(ASTSource.__init__).parameters:
        return "this Triton's ASTSource predates the (signature, constexprs)-by-name format (Triton < 3.3)"
    return None


def test_compile_every_shipped_config_for_sm80_and_sm90():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    probe = subprocess.run([sys.executable, __file__, "--probe"], env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"cannot import triton/fusedrnn.kernels with the interpreter off:\n{probe.stderr[-3000:]}")
    if probe.stdout.strip():
        pytest.skip(probe.stdout.strip())
    res = subprocess.run([sys.executable, __file__, "--jsonl"], env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-5000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    print("\n" + _format(rows))
    assert len(rows) == len(_configs()) * len(ARCHS)
    failed = [r for r in rows if not r["ok"]]
    assert not failed, "compile errors:\n" + "\n".join(f"{r['job'][:2]} sm{r['job'][5]}: {r['error']}" for r in failed)
    for r in rows:
        k, d, c, *_ = r["job"]
        what = f"{k} {d} sm{r['job'][5]} {c}"
        assert r["spill_bytes"] <= MAX_SPILL_BYTES, f"{what}: {r['spill_bytes']} bytes of spills"
        if c.get("USE_GRID_BARRIER") or k == "barrier_floor_kernel":
            assert r["release_atomic"] and r["acquire"], f"{what}: grid barrier lost its release/acquire"
        if k != "barrier_floor_kernel" and (d in ("float16", "bfloat16") or c["DOT_PRECISION"] == "tf32"):
            assert r["mma"], f"{what}: tl.dot did not become tensor-core MMA"


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if "--probe" in sys.argv:
        reason = _astsource_supported()
        print(reason or "")
    elif "--jsonl" in sys.argv:
        _worker(sys.stdout)
    else:
        import io

        buf = io.StringIO()
        _worker(buf)
        print(_format([json.loads(line) for line in buf.getvalue().splitlines()]))
