"""The latency model's compute phase against the shipped SASS (bench/sass.py, bench/model_cuda.py).

CPU-only. Needs the built extension (fusedrnn/_C*.so) and cuobjdump (CUDA toolkit or Triton's wheel)
for the walk; the control-word decoder tests need neither. The disassembly is cached per .so hash
(FUSEDRNN_SASS_CACHE or ~/.cache/fusedrnn/sass), so only the first run pays for cuobjdump.
All figures are MODEL.
"""

from __future__ import annotations

import dataclasses

import pytest

try:  # installed: bench/ is fusedrnn.bench; a checkout run from its root: bench
    from fusedrnn.bench import cases, model_cuda, sass
    from fusedrnn.bench.perf_model import H100
except ImportError:
    from bench import cases, model_cuda, sass
    from bench.perf_model import H100

# --- the control-word decoder on encodings cuobjdump printed for sm_90 ------------------------------


@pytest.mark.parametrize("hi, stall, yield_, wbar, rbar, wait", [
    (0x000FE40000000800, 2, 1, 7, 7, 0),  # LDC R1, c[0x0][0x28]: fixed latency here, no scoreboard
    (0x000EA8000C1E1900, 4, 1, 2, 7, 0),  # LDG.E: result on scoreboard 2
    (0x000EA40000000800, 2, 1, 2, 7, 0),  # LDC R20, c[0x2][R22+0xc]: scoreboard 2
    (0x004FC80000011414, 4, 0, 7, 7, 0b000100),  # SHF after that LDC: waits on scoreboard 2
    (0x000FF00000000800, 8, 1, 7, 7, 0),  # a stall of 8
    (0x01CFCA0000000000, 5, 0, 7, 7, 0b011100),  # VIADD waiting on scoreboards 2, 3, 4
])
def test_control_word_decoder(hi, stall, yield_, wbar, rbar, wait):
    c = sass.Control.decode(hi)
    assert (c.stall, c.yield_, c.wbar, c.rbar, c.wait) == (stall, yield_, wbar, rbar, wait)


def test_parse_sass_reads_the_control_word_from_the_second_line():
    text = """
        code for sm_90
                Function : k
        /*0000*/                   LDC R1, c[0x0][0x28] ;        /* 0x00000a00ff017b82 */
                                                                 /* 0x000fe40000000800 */
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;  /* 0x0000000404027981 */
                                                                 /* 0x000ea8000c1e1900 */
        /*0020*/                   FADD R3, R2, R2 ;
    """
    insns = sass.parse_sass(text)[("k", "90")]
    assert [i.op for i in insns] == ["LDC", "LDG.E", "FADD"]
    assert insns[0].ctrl.stall == 2 and insns[1].ctrl.wbar == 2 and insns[2].ctrl is None


def test_integer_state_resolves_a_plan_branch():
    """The walker's integer state: a plan field from the constant bank decides a branch."""
    m = sass.Machine({0x260: 3})
    for text in ("LDC R168, c[0x0][0x260]", "ISETP.GE.AND P1, PT, R168, 0x4, PT"):
        op, args = text.split(" ", 1)
        m.execute(sass.Insn(0, "", op, args))
    assert m.r["R168"] == 3 and m.pred("P1") is False and m.pred("!P1") is True


def test_integer_state_follows_64_bit_pointers_and_carries():
    """A null pointer parameter decides its check; IMAD.X with PT adds one (the compiler's i + 1)."""
    m = sass.Machine({0x2F0: 0, 0x2F4: 0, 0x2E8: 0x10000000, 0x2EC: 0x7F00})
    for text in ("LDC.64 R4, c[0x0][0x2f0]", "ISETP.NE.U32.AND P0, PT, R4, RZ, PT",
                 "ISETP.NE.AND.EX P0, PT, R5, RZ, PT, P0", "ULDC.64 UR4, c[0x0][0x2e8]",
                 "IADD3 R6, P1, R4, UR4, RZ", "IADD3.X R7, R5, UR5, RZ, P1, !PT",
                 "ISETP.NE.U32.AND P2, PT, R6, RZ, PT", "ISETP.NE.AND.EX P2, PT, R7, RZ, PT, P2",
                 "MOV R8, 0x6", "IMAD.X R9, R8, 0x1, RZ, PT"):
        op, args = text.split(" ", 1)
        m.execute(sass.Insn(0, "", op, args))
    assert m.pred("P0") is False and m.pred("P2") is True
    assert (m.r["R6"], m.r["R7"], m.r["R9"]) == (0x10000000, 0x7F00, 7)


def test_float_compare_of_constants_decides_a_branch():
    """FSETP on two known float32 words (a ZO kernel's p from the constant bank against 0.0)
    decides its predicate; the unordered forms hold for a NaN, the ordered ones do not; an unknown
    operand leaves it unknown."""
    m = sass.Machine({0x300: 0x3DCCCCCD, 0x304: 0x7FC00000})  # 0.1f, NaN
    for text in ("LDC R2, c[0x0][0x300]", "FSETP.NEU.AND P0, PT, R2, RZ, PT", "FSETP.GT.AND P1, PT, R2, 0.5, PT",
                 "LDC R3, c[0x0][0x304]", "FSETP.NEU.AND P2, PT, R3, RZ, PT", "FSETP.NE.AND P3, PT, R3, RZ, PT",
                 "LDS R4, [R1]", "FSETP.GEU.AND P4, PT, R4, RZ, PT"):
        op, args = text.split(" ", 1)
        m.execute(sass.Insn(0, "", op, args))
    assert (m.pred("P0"), m.pred("P1"), m.pred("P2"), m.pred("P3"), m.pred("P4")) == (True, False, True, False, None)


def test_integer_state_keeps_the_known_bits_of_a_packed_predicate_register():
    """nvcc packs predicates into one register's bits, some the plan decides and some it does not
    (loaded data), and tests one bit later: the tested bit is known when its own predicate is, even
    though the register as a whole is not (a guarded OR by an unknown predicate leaves the bits both
    outcomes agree on)."""
    m = sass.Machine({0x260: 3})
    for pred, text in (("", "LDC R168, c[0x0][0x260]"), ("", "ISETP.GE.AND P1, PT, R168, 0x2, PT"),
                       ("", "LDS R9, [R3]"), ("", "ISETP.NE.AND P3, PT, R9, RZ, PT"),
                       ("", "LOP3.LUT R189, R189, 0xfffffffd, RZ, 0xc0, !PT"),  # bit 1: clear, then P1
                       ("@P1", "LOP3.LUT R189, R189, 0x2, RZ, 0xfc, !PT"),
                       ("", "LOP3.LUT R189, R189, 0xfffffffe, RZ, 0xc0, !PT"),  # bit 0: clear, then P3
                       ("@P3", "LOP3.LUT R189, R189, 0x1, RZ, 0xfc, !PT"),
                       ("", "LOP3.LUT P2, RZ, R189, 0x2, RZ, 0xc0, !PT"),
                       ("", "LOP3.LUT P4, RZ, R189, 0x1, RZ, 0xc0, !PT")):
        op, args = text.split(" ", 1)
        m.execute(sass.Insn(0, pred, op, args))
    assert m.pred("P3") is None and m.r["R189"] is None  # the register as a whole is unknown
    assert m.pred("P2") is True  # its bit 1 is P1's: known
    assert m.pred("P4") is None  # its bit 0 is P3's: unknown


def test_issue_waits_for_scoreboards_and_cp_async_groups():
    """A four-instruction loop: the copy's group completes one L2 trip after issue; DEPBAR waits for it;
    the HMMA after it. The issue time exceeds the stall sum by about the L2 trip."""
    def ins(addr, op, args, stall, wait=0, wbar=7):
        bits = stall | 1 << 4 | wbar << 5 | 7 << 8 | wait << 11
        return sass.Insn(addr, "", op, args, bits << 41)
    insns = [
        ins(0x00, "LDGSTS.E.BYPASS.128", "[R2], desc[UR4][R4.64]", 1),
        ins(0x10, "LDGDEPBAR", "", 1),
        ins(0x20, "DEPBAR.LE", "SB0, 0x0", 1),
        ins(0x30, "HMMA.16816.F32.BF16", "R8, R12, R16, R8", 2, wbar=1),
        ins(0x40, "ATOM.E.ADD.STRONG.GPU", "PT, R3, desc[UR4][R6.64], R3", 1),
        ins(0x50, "BRA", "0x0", 1),
    ]
    lat = sass.Latencies()
    w = sass.walk(insns, plan=None, const={}, lat=lat)
    assert w.executed == 6 and w.hmma == 1 and w.stall_clk == 7
    assert w.issue_clk >= lat.l2 + 2


# --- the shipped kernels -------------------------------------------------------------------------

KERNELS = sass.kernel_sass()
needs_sass = pytest.mark.skipif(
    KERNELS is None, reason="no built extension (fusedrnn/_C*.so) or no cuobjdump: no SASS to walk")


def _plan_mmas(p) -> int:
    return p.passes * p.blocks_per_warp * p.mtiles * p.pass_ntiles * 2 * model_cuda.MMAS_PER_KSTEP[p.mode]


# The Elman RNN (CELL 2 and 3 of the same kernels) on some of the benchmark shapes: one gate, so its own plans
ELMAN_FROM = ("flashrnn", "fastrnns", "deepbench-gru", "small-lstm", "stream-gru2-b1")


def _cases():
    elman = [dataclasses.replace(c, cell=cell, id=f"{c.id}-as-{cell}") for c in cases.CASES if c.id in ELMAN_FROM
             for cell in ("rnn_tanh", "rnn_relu")]
    assert len(elman) == 2 * len(ELMAN_FROM)
    return [(c, d) for c in (*cases.CASES, *elman) for d in ("bf16", "fp16", "fp32")]


def compute_phase_below_stalls(step, s: model_cuda.SassCompute) -> str | None:
    """The complaint when a step's compute phases (all but the step boundary) sum below the executed
    path's stall counts, else None."""
    compute = sum(ph.us for ph in step.phases if ph.name not in ("grid.sync", "ready flags"))
    if compute < s.stall_us:
        return f"compute phase {compute:.2f} us < stall-count sum {s.stall_us:.2f} us"
    return None


@needs_sass
@pytest.mark.parametrize("case, dtype", _cases(), ids=lambda x: getattr(x, "id", x))
def test_modelled_compute_phase_is_not_below_the_stall_sum(case, dtype):
    est = model_cuda.model(case, dtype)
    if isinstance(est, str):
        pytest.skip(est)
    for p, step in zip(model_cuda.plans(case, dtype), (est.fwd_step, est.bwd_step)):
        # est.fwd_step is inference: a zoneout case's walk of the ZO kernel without the masks
        s = model_cuda.sass_compute(p, case, dtype, H100, training=p.backward)
        assert s is not None, f"{case.id} {dtype}: the walk of {'bwd' if p.backward else 'fwd'} did not finish"
        assert compute_phase_below_stalls(step, s) is None, (case.id, dtype, p.backward)
        # the walk followed the plan through the product: exactly its MMAs and cp.async copies ran (the
        # branches and trip counts came out of the plan's fields, not out of a rule)
        assert s.hmma_live == _plan_mmas(p), (case.id, dtype, p.backward, s.hmma_live, _plan_mmas(p))
        assert s.copies == p.passes * p.blocks_per_warp * p.pass_ntiles, (case.id, dtype, p.backward, s.copies)
        # no HMMA of an n-tile the plan does not have: every HMMA issued on the path does work
        assert s.hmma == s.hmma_live, (case.id, dtype, p.backward, s.hmma, s.hmma_live)
        assert "MODEL" in est.notes or "SASS" in step.describe()


@needs_sass
def test_the_check_fires_on_the_analytic_compute_phase():
    """The analytic model alone (before this walk) puts flashrnn's backward compute phase below the
    shipped SASS's stall-count sum: the check above reports it."""
    case = cases.BY_ID["flashrnn"]
    _, bwd = model_cuda.plans(case, "bf16")
    s = model_cuda.sass_compute(bwd, case, "bf16", H100)
    old = model_cuda.backward_step(bwd, case, H100, analytic=True)
    assert compute_phase_below_stalls(old, s) is not None


# Philox 4x32's round multipliers as SASS immediates (ptxas prints them signed): 0xD2511F53, 0xCD9E8D57
_PHILOX_IMMEDIATES = ("-0x2daee0ad", "-0x326172a9")


@needs_sass
def test_zoneout_code_only_in_the_zo_kernels():
    """Zoneout is a compile-time case (template parameter ZO of csrc/rnn_kernels.cuh): every ZO kernel
    has a plain twin, the plain kernels hold no Philox (nor any code of it: a runtime mode once put a
    jump table after the gate math and lengthened the plain step), and every ZO kernel's step loop
    multiplies by both Philox constants."""
    plain = {k for k in KERNELS if "ELb0EEEvNS" in k}
    zo = {k for k in KERNELS if "ELb1EEEvNS" in k}
    assert zo and {k.replace("ELb1EEEvNS", "ELb0EEEvNS") for k in zo} == plain and len(plain) + len(zo) == len(KERNELS)
    for k in plain:
        text = " ".join(i.args.lower() for i in KERNELS[k])
        assert not any(c in text for c in _PHILOX_IMMEDIATES), k
    for k in zo:
        text = " ".join(i.args.lower() for i in sass.step_loop(KERNELS[k]))
        assert all(c in text for c in _PHILOX_IMMEDIATES), k


@needs_sass
def test_the_zoneout_case_walks_the_zo_kernels():
    """zoneout-gru's steps are walks of the ZO kernels with the launch's ZoneParams: the training
    forward and the backward run the Philox masks, the inference forward only the blend; the plain
    kernels neither."""
    case = cases.BY_ID["zoneout-gru"]
    plain = dataclasses.replace(case, zoneout=0.0)
    fwd, bwd = model_cuda.plans(case, "bf16")
    train, infer, base = (model_cuda.sass_compute(fwd, c, "bf16", H100, training=t)
                          for c, t in ((case, True), (case, False), (plain, True)))
    assert train.executed > infer.executed > base.executed, (train.executed, infer.executed, base.executed)
    assert train.executed - base.executed >= 50  # one element's Philox 4x32-10 at least
    zo, base = model_cuda.sass_compute(bwd, case, "bf16", H100), model_cuda.sass_compute(bwd, plain, "bf16", H100)
    assert zo.executed - base.executed >= 50


def _walk(case, dtype, backward: bool, flags: bool = model_cuda.DEFAULT_FLAGS) -> tuple[list, object, object]:
    """The walked step's trace (sass.walk), the walk and the plan."""
    p = model_cuda.plans(case, dtype)[int(backward)]
    trace: list = []
    w = model_cuda.sass_walk(p, case, dtype, H100, training=backward, flags=flags, trace=trace)
    assert w is not None and w.stopped in (None, "", "exit"), (case.id, backward, flags, w and w.stopped)
    return trace, w, p


def _walk_ops(case, dtype, backward: bool, flags: bool) -> tuple[list[str], object]:
    trace, w, _ = _walk(case, dtype, backward, flags)
    return [op for _, op, _, _ in trace], w


@needs_sass
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
def test_the_walk_follows_the_step_boundary_the_model_prices(backward):
    """With ready flags (the kernels' default) the walked step polls its flags (relaxed strong loads,
    then one acquire fence) and releases its own (a strong store), with no grid-barrier arrival; with
    the grid barrier, the arrival's atomic and no flag poll. The forward's first step waits for
    nothing: the walk issues its second."""
    case = cases.BY_ID["flashrnn"]
    ops, w = _walk_ops(case, "bf16", backward, flags=True)
    assert ops.count("LDG.E.STRONG.GPU") >= 1 and any(o.startswith("MEMBAR") for o in ops), ops
    assert "STG.E.STRONG.GPU" in ops and not any(o.startswith(("ATOM", "RED")) for o in ops)
    assert any("ready-flag poll" in g for g in w.guessed), w.guessed
    ops, w = _walk_ops(case, "bf16", backward, flags=False)
    assert any(o.startswith("ATOM") for o in ops) and "LDG.E.STRONG.GPU" not in ops, ops
    assert not any("ready-flag poll" in g for g in w.guessed), w.guessed


@needs_sass
@pytest.mark.parametrize("case_id, backward", [
    ("flashrnn", False), ("deepbench-lstm", False),  # the LSTM forward: 4 gates of 16 units, 1 and 4 passes
    ("flashrnn", True), ("deepbench-gru", True),  # 32-unit backwards: 2 m-tiles
])
def test_partial_sums_of_every_m_tile_in_one_load_per_warp(case_id, backward):
    """With 2 or 4 m-tiles a thread gathers a D element's partial sums of every m-tile from a warp
    in one vector load (csrc/rnn_kernels.cuh RecProduct::reduce): 8 loads of MT words per pass, where
    a word per (warp, m-tile) took 8 x MT scalar loads (the LSTM forward's whole step made more
    scalar shared-memory loads than that: 52 per pass on flashrnn)."""
    case = cases.BY_ID[case_id]
    p = model_cuda.plans(case, "bf16")[int(backward)]
    ops, _ = _walk_ops(case, "bf16", backward, flags=True)
    if backward:  # no other 8-byte shared-memory load in the backward's step
        assert p.mtiles == 2 and ops.count("LDS.64") == 8 * p.passes, (p.mtiles, ops.count("LDS.64"))
    else:
        assert p.mtiles == 4 and ops.count("LDS.128") >= 8 * p.passes, (p.mtiles, ops.count("LDS.128"))
        assert ops.count("LDS") < 8 * p.mtiles * p.passes, ops.count("LDS")


def _walk_path(case, dtype, backward: bool) -> tuple[list, object]:
    """The instructions lane 0 executes in the walked step (ready flags), in order, and the plan."""
    trace, _, p = _walk(case, dtype, backward)
    name = sass.kernel_name(p.cell, p.backward, p.elem, p.mode, p.mtiles, dtype, p.pass_ntiles)
    by_addr = {i.addr: i for i in model_cuda._kernels()[name]}
    return [by_addr[a] for a, _, _, _ in trace], p


def _between_mmas(path: list) -> list:
    """The path from the step's first HMMA to its last."""
    at = [k for k, i in enumerate(path) if i.op.startswith("HMMA")]
    return path[at[0]:at[-1] + 1]


@needs_sass
@pytest.mark.parametrize("case_id", ["flashrnn", "deepbench-gru", "stream-gru"])
def test_backward_prefetches_the_next_blocks_operand(case_id):
    """The backward's block loop over a full ring (RecProduct::run_ring, PREFETCH) loads block i + 1's
    B pieces before block i's MMAs: each block waits with one copy group fewer in flight
    (cp.async.wait_group kStages - 2 = DEPBAR.LE SB0, 0x6; the unprefetched loop waits with 0x7)."""
    path, p = _walk_path(cases.BY_ID[case_id], "bf16", backward=True)
    assert p.stage_slots == 8 or p.blocks_per_warp <= p.stage_slots, p  # a full ring
    waits = {i.args.replace(" ", "") for i in _between_mmas(path) if i.op.startswith("DEPBAR")}
    assert waits == {"SB0,0x6"}, waits
