"""The Triton latency model's compute phase against the kernels' sm_90 SASS (bench/triton_sass.py,
bench/model_triton.py). All figures are MODEL.

CPU-only. Needs Triton (it compiles rnn_fwd_kernel / rnn_bwd_kernel for sm_90 without a GPU, in a
subprocess with the interpreter off) and cuobjdump; skipped with the reason otherwise. Each dump
is cached (FUSEDRNN_SASS_CACHE or ~/.cache/fusedrnn/sass/triton/), keyed by the Triton version,
the kernel sources and the specialization: cold, one compile per distinct specialization (32 for
this file's cases, 4.5 minutes measured on a 2-core machine); warm, ~15 s for the file.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import pytest

try:  # installed: bench/ is fusedrnn.bench; a checkout run from its root: bench
    from fusedrnn.bench import cases, model_triton, sass, triton_sass
    from fusedrnn.bench.perf_model import H100, Phase, Step
except ImportError:
    from bench import cases, model_triton, sass, triton_sass
    from bench.perf_model import H100, Phase, Step

pytestmark = pytest.mark.compiles

HAVE = importlib.util.find_spec("triton") is not None and sass.cuda_tool("cuobjdump") is not None
needs_sass = pytest.mark.skipif(not HAVE or os.environ.get("FUSEDRNN_MODEL_SASS", "1") == "0",
                                reason="no Triton or no cuobjdump (or FUSEDRNN_MODEL_SASS=0): no Triton SASS to walk")

KINDS = (("fwd", False), ("fwd", True), ("bwd", True))  # inference forward, training forward, backward
# the bench cases the SASS prices (a LayerNorm case keeps the analytic model: the kernels' LN passes
# are priced as two designs, bench/README.md): every one in bf16, flashrnn in fp16 too
CASES = [(c, "bf16") for c in cases.CASES if not getattr(c, "layernorm", False)] + [(cases.get("flashrnn"), "fp16")]


def compute_below_stalls(st: Step, s: model_triton.SassCompute) -> str | None:
    """The complaint when a step's compute phases (all but its synchronisation) sum below the
    executed path's stall counts, else None."""
    compute = sum(ph.us for ph in st.phases if ph.name not in model_triton.BOUNDARY_PHASES)
    if compute < s.stall_us:
        return f"compute phase {compute:.2f} us < stall-count sum {s.stall_us:.2f} us"
    return None


def _plan_mmas(p) -> int:
    """HMMA.16816s one warp issues per step for plan ``p``: K split over the warps (KS > 1), each warp
    the whole (BB, N) tile over K / KS; columns split (KS == 1), each warp its share of the tile over K."""
    blocks = -(-p.n_blk // p.nprog_h)
    tiles = (p.BB // 16) * (p.N // 8)
    if p.KS > 1:
        return blocks * tiles * (p.K // (16 * p.KS))
    return blocks * max(1, tiles // p.num_warps) * (p.K // 16)


@needs_sass
@pytest.mark.parametrize("case, dtype", CASES, ids=lambda x: getattr(x, "id", x))
def test_modelled_triton_compute_phase_is_not_below_the_stall_sum(case, dtype):
    est = model_triton.model(case, dtype)
    assert not isinstance(est, str), est
    for direction, save in KINDS:
        s = model_triton.sass_compute(case, direction, dtype, save, H100)
        assert s is not None, f"{case.id} {dtype} {direction} save={save}: no SASS walk (compile or walk failed)"
        p, st = model_triton.sass_step(case, direction, dtype, save, H100)
        assert model_triton.SASS_PHASE in [ph.name for ph in st.phases]
        assert compute_below_stalls(st, s) is None, (case.id, direction, save, s)
        # the walk went through the product once per unit block the program owns: the plan's HMMAs
        assert s.hmma == s.hmma_live == _plan_mmas(p), (case.id, direction, save, s.hmma, _plan_mmas(p))
        if not p.resident:  # streamed W: the K loop's asynchronous copies ran
            assert s.copies > 0, (case.id, direction, save)
        assert s.guessed == (), (case.id, direction, save, s.guessed)  # every branch decided by the plan
    assert est.fwd_step.phases[-1].name == model_triton.SASS_PHASE or "SASS" in est.fwd_step.describe()
    assert "compute phase from the sm_90 SASS (MODEL)" in est.notes


def exp_fixups(insns: list) -> list:
    """The step loop's denormal range checks of an exponential: tl.exp on fp32 compiles to
    ``FSETP.GEU Px, Rx, -126`` / ``@!Px FMUL Rx, Rx, 0.5`` / ``MUFU.EX2`` / ``@!Px FMUL`` (the result
    squared), two dependent multiplies on every gate's path; exp2 (kernels/common.py) is the bare MUFU."""
    loop = triton_sass.time_loop_range(insns)
    assert loop is not None
    return [i for i in insns[loop[0]:loop[1] + 1] if i.op.startswith("FSETP") and i.args.split(",")[-2].strip() == "-126"]


@needs_sass
@pytest.mark.parametrize("case, dtype", CASES, ids=lambda x: getattr(x, "id", x))
def test_the_step_loop_runs_every_exponential_without_the_denormal_fixup(case, dtype):
    for direction, save in KINDS:  # the kernel the model walks (zoneout-gru's: the zoneout one)
        p = model_triton._plan(case.cell, direction, case, dtype, H100)
        compiled = triton_sass.kernel_sass(triton_sass.specialization(p, case, direction, dtype, save))
        assert compiled is not None, (case.id, direction, save)
        assert exp_fixups(compiled.insns) == [], (case.id, direction, save)


def test_the_check_fires_on_a_compute_phase_below_the_stalls():
    s = model_triton.SassCompute(walk_us=2.0, stall_us=1.5, floor_us=0.5, analytic_us=1.0, executed=10, hmma=1,
                                 hmma_live=1, copies=0, guessed=(), kernel="k")
    low = Step((Phase("barrier", 1.2), Phase("MMA", 0.6), Phase("epilogue", 0.4)))
    assert compute_below_stalls(low, s) is not None  # 1.0 us of compute against 1.5 us of stalls
    ok = Step((Phase("barrier", 1.2), Phase(model_triton.SASS_PHASE, s.us)))
    assert compute_below_stalls(ok, s) is None


def test_without_sass_the_model_is_analytic(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_MODEL_SASS", "0")
    case = cases.get("flashrnn")
    assert model_triton.sass_compute(case, "fwd", "bf16", False) is None
    est = model_triton.model(case, "bf16")
    assert model_triton.SASS_PHASE not in [ph.name for ph in est.fwd_step.phases]
    assert "analytic compute phase" in est.notes


def test_specialization_is_the_bench_call():
    """The compiled specialization is the launcher's plan with the benchmark's flags."""
    case = cases.get("residual-gru")
    p = model_triton._plan(case.cell, "fwd", case, "bf16", H100)
    spec = triton_sass.specialization(p, case, "fwd", "bf16", True)
    c = spec.c
    assert (c["BB"], c["BH"], c["HP"], c["KS"], c["RESIDENT"]) == (p.BB, p.BH, p.HP, p.KS, p.resident)
    assert (c["HAS_BIAS"], c["HAS_RES"], c["HAS_LEN"], c["SAVE_ACT"], c["USE_GRID_BARRIER"]) == \
        (True, True, False, True, p.grid_barrier)
    assert (spec.num_warps, spec.num_stages, spec.maxnreg) == (p.num_warps, p.num_stages, p.maxnreg)
    bwd = triton_sass.specialization(p, dataclasses.replace(case, packed=True), "bwd", "bf16", True).c
    assert bwd["HAS_DY"] and bwd["HAS_LEN"] and not bwd["REVERSE"]


def test_cache_is_keyed_and_reused(tmp_path, monkeypatch):
    """The dump's cache file changes with the specialization and the kernel sources; a cached dump
    is read without compiling (and with FUSEDRNN_TRITON_SASS_COMPILE=0 a missing one is None)."""
    monkeypatch.setenv("FUSEDRNN_SASS_CACHE", str(tmp_path))
    monkeypatch.delenv("FUSEDRNN_MODEL_SASS", raising=False)
    monkeypatch.setattr(triton_sass, "triton_version", lambda: "9.9.9")
    monkeypatch.setattr(sass, "cuda_tool", lambda name: "/bin/true")
    case = cases.get("flashrnn")
    p = model_triton._plan(case.cell, "fwd", case, "bf16", H100)
    a = triton_sass.specialization(p, case, "fwd", "bf16", False)
    b = triton_sass.specialization(p, case, "fwd", "bf16", True)
    assert triton_sass._cache_file(a) != triton_sass._cache_file(b)
    monkeypatch.setenv("FUSEDRNN_TRITON_SASS_COMPILE", "0")
    assert triton_sass.kernel_sass(a) is None  # not cached, not compiled
    import gzip
    import json

    text = ("code for sm_90\n Function : rnn_fwd_kernel\n"
            "        /*0000*/                   EXIT ;                 /* 0x000000000000794d */\n"
            "                                                          /* 0x000fea0003800000 */\n")
    f = triton_sass._cache_file(a)
    f.parent.mkdir(parents=True)
    f.write_bytes(gzip.compress(json.dumps({"sass": text, "params": [[0, 0, 8]], "names": ["gx_ptr"],
                                            "shared": 0, "regs": 8}).encode()))
    got = triton_sass.kernel_sass(a)
    assert got is not None and [i.op for i in got.insns] == ["EXIT"] and got.insns[0].ctrl.stall == 5
    monkeypatch.setattr(triton_sass, "source_hash", lambda: "edited")
    assert triton_sass._cache_file(a) != f
    monkeypatch.setattr(triton_sass, "triton_version", lambda: None)  # no Triton: no SASS, no compile
    assert triton_sass.kernel_sass(a) is None


def test_time_loop_is_the_outermost_loop_around_the_product():
    def ins(addr, op, args=""):
        return sass.Insn(addr, "", op, args)
    insns = [ins(0x00, "MOV", "R1, 0x0"), ins(0x10, "HMMA.16816.F32.BF16", "R8, R12, R16, R8"),
             ins(0x20, "BRA", "0x10"), ins(0x30, "REDG.E.ADD.STRONG.GPU", "desc[UR4][R6.64], R3"),
             ins(0x40, "BRA", "0x0"), ins(0x50, "EXIT")]
    assert triton_sass.time_loop_range(insns) == (0, 4)


def test_integer_state_orders_64_bit_values():
    """ISETP.<ordered>.EX: the high words decide unless equal (the Triton step's s < n_steps - 1 on
    64-bit counters before the barrier's arrival)."""
    def run(lo_a, hi_a, lo_b, hi_b, cmp_):
        m = sass.Machine({})
        for text in (f"MOV R0, {lo_a:#x}", f"MOV R1, {hi_a:#x}", f"MOV R2, {lo_b:#x}", f"MOV R3, {hi_b:#x}",
                     f"ISETP.{cmp_}.U32.AND P0, PT, R0, R2, PT", f"ISETP.{cmp_}.U32.AND.EX P0, PT, R1, R3, PT, P0"):
            op, args = text.split(" ", 1)
            m.execute(sass.Insn(0, "", op, args))
        return m.pred("P0")
    assert run(5, 0, 3, 0, "GE") is True and run(3, 0, 5, 0, "GE") is False
    assert run(0, 1, 0xFFFFFFFF, 0, "GT") is True and run(0xFFFFFFFF, 0, 0, 1, "LT") is True
    assert run(7, 2, 7, 2, "LE") is True and run(8, 2, 7, 2, "LE") is False


@needs_sass
def test_the_zoneout_case_walks_its_own_kernel():
    """zoneout-gru's compute phase is the walk of the zoneout specialization (the Philox masks on the
    path in training, the blend in evaluation), and no analytic zoneout term is added beside it."""
    case = next(c for c in cases.CASES if c.zoneout)
    plain = dataclasses.replace(case, zoneout=0.0)
    for direction, save in KINDS:
        zo, base = (model_triton.sass_compute(c, direction, "bf16", save, H100) for c in (case, plain))
        assert zo is not None and base is not None
        assert zo.executed > base.executed, (direction, save, zo.executed, base.executed)
        if save:  # training: at least one element's Philox 4x32-10 per thread
            assert zo.executed - base.executed >= 50, (direction, zo.executed, base.executed)
        _, st = model_triton.sass_step(case, direction, "bf16", save, H100)
        assert [ph.name for ph in st.phases if ph.name == "zoneout"] == []
