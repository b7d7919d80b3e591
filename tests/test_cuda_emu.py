"""The cuda backend's kernels (csrc/) executed on the CPU by the emulator (csrc/emu/, tests/cuda_emu.py).

The kernel source is the same as the GPU build's; the emulator runs every CUDA thread as a coroutine
with __syncthreads / grid.sync / warp-collective wmma as real barriers (released the moment they
complete; the default "eager" schedule lets released threads run ahead, so a missing barrier reads
unwritten memory), checks wmma's documented argument rules, puts guard zones around shared memory and
every global buffer, and fills outputs and shared memory with NaN first. The cuda backend's Python side (fusedrnn.cuda_ops: custom ops,
autograd, weight-gradient GEMMs) runs unchanged, pointed at the emulator instead of fusedrnn._C.

What passing here does NOT show (csrc/emu/README.md): memory ordering and visibility between CTAs
on real hardware (ld.global.cg, grid.sync's fence), the real wmma fragment layout, nvcc's FMA
contraction, occupancy and co-residency, speed. tests/test_cuda_gpu.py checks those on a GPU.
"""

from __future__ import annotations

import cuda_emu
import pytest
import torch
from helpers import (
    assert_fp32_close,
    assert_lowp_within_baselines,
    check_raw_recurrence_forward,
    functional_call,
    make_cell_inputs,
    raw_recurrence_inputs,
    rel_err,
    run_cell_with_grads,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_reason = cuda_emu.unavailable_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"CUDA emulator: {_reason}")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def emu_module():
    return cuda_emu.load()  # built once per csrc/ version (about 2 minutes on 2 cores)


@pytest.fixture
def emu(emu_module, monkeypatch):
    from fusedrnn import cuda_ops

    cuda_emu.use_emulator(monkeypatch)
    monkeypatch.setattr(cuda_ops, "allow_tf32", lambda: False)  # exact fp32 path unless a test says otherwise
    emu_module.set_schedule("eager", 0)  # depth-first: threads run ahead as far as the barriers allow
    emu_module.reset_stats()
    yield emu_module
    emu_module.set_schedule("eager", 0)


def _cuda_call(cell):
    from fusedrnn import cuda_ops

    return cuda_ops.gru if cell == "gru" else cuda_ops.lstm


def _ref_call(cell):
    return functional_call("reference")[cell]


# ---------------------------------------------------------------------------------------------
# Forward and every gradient against the reference
# ---------------------------------------------------------------------------------------------

CASES = [  # (T, B, I, H, bias, residual, lengths, reverse)
    (5, 3, 7, 16, True, False, False, False),
    (9, 3, 10, 100, True, True, True, True),       # odd H (7 CTAs, a partial one), every feature
    (6, 17, 12, 64, False, False, True, False),    # two batch tiles, no bias
    (4, 33, 8, 40, True, True, False, True),       # three batch tiles, partial last tile
    (3, 2, 8, 200, True, False, True, False),      # backward K = 3H/4H > 512: several staged K chunks
    (1, 2, 8, 8, True, True, True, True),          # T=1 (no grid barrier in the forward), H < 16
    (4, 16, 8, 17, True, False, True, False),      # B = one tile exactly; H=17: scalar staging, 1-unit CTA
]
CASE_IDS = ["T{}-B{}-I{}-H{}-b{:d}r{:d}l{:d}rev{:d}".format(*c) for c in CASES]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fp32_matches_reference(emu, cell, case):
    """fp32 without TF32: the exact-FMA kernels, as tight as the Triton backend's fp32 rule."""
    T, B, I, H, bias, residual, lengths, reverse = case
    d, lens = make_cell_inputs(cell, T, B, I, H, torch.float32, bias, residual, lengths, seed=T * 7 + H)
    want = run_cell_with_grads(cell, _ref_call(cell), d, lens, reverse)
    got = run_cell_with_grads(cell, _cuda_call(cell), d, lens, reverse)
    assert_fp32_close(got, want, f"{cell} {case}")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_low_precision_within_torch_error(emu, cell, dtype, case):
    """fp16/bf16 through the tensor-core (wmma) path: error vs the fp64 oracle within K_LOWP x that
    of torch's own op or the reference in the same dtype (the Triton backend's rule)."""
    T, B, I, H, bias, residual, lengths, reverse = case
    d, lens = make_cell_inputs(cell, T, B, I, H, torch.float64, bias, residual, lengths, seed=T * 7 + H)
    got = run_cell_with_grads(cell, _cuda_call(cell), d, lens, reverse, dtype=dtype)
    assert_lowp_within_baselines(cell, got, d, lens, reverse, dtype)


@pytest.mark.parametrize("cell,dtype", [("gru", torch.float16), ("lstm", torch.float32)], ids=str)
def test_forward_k_chunks(emu, cell, dtype):
    """H=520 > 512: the forward stages h_prev in two K chunks (and 33 CTAs, the last with 8 units)."""
    d, lens = make_cell_inputs(cell, 2, 2, 8, 520, torch.float64, residual=True, lengths=True, seed=4)
    if dtype == torch.float32:
        want = run_cell_with_grads(cell, _ref_call(cell), d, lens, True, dtype=dtype)
        assert_fp32_close(run_cell_with_grads(cell, _cuda_call(cell), d, lens, True, dtype=dtype), want, cell)
    else:
        got = run_cell_with_grads(cell, _cuda_call(cell), d, lens, True, dtype=dtype)
        assert_lowp_within_baselines(cell, got, d, lens, True, dtype)


def _h100_max_hidden(emu, cell, dtype_name):
    """The largest H whose forward and backward launches fit an H100 SXM (132 SMs, 227 KiB of shared
    memory per CTA, one CTA per SM), from the kernels' own launch arithmetic (csrc/README.md's table)."""
    def fits(H):
        shapes = [emu.launch_shape(0 if cell == "gru" else 1, bwd, dtype_name, False, H) for bwd in (False, True)]
        return all(s["smem"] <= 227 * 1024 and s["grid"] <= 132 for s in shapes)

    H = 16
    while fits(H + 1):
        H += 1
    return H


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_hidden_size_at_the_h100_limit(emu, cell):
    """The largest declared H on an H100 (GRU 2112: 132 CTAs; LSTM 1600: the largest shared-memory
    layouts), bf16, with lengths, reverse and residual: indexing across many K chunks and CTAs."""
    H = _h100_max_hidden(emu, cell, "bfloat16")
    assert H == {"gru": 2112, "lstm": 1600}[cell]  # csrc/README.md's table
    d, lens = make_cell_inputs(cell, 2, 2, 8, H, torch.float64, residual=True, lengths=True, seed=1)
    got = run_cell_with_grads(cell, _cuda_call(cell), d, lens, True, dtype=torch.bfloat16)
    assert_lowp_within_baselines(cell, got, d, lens, True, torch.bfloat16)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("B,H", [(5, 48), (17, 100)])
def test_tf32_path(emu, monkeypatch, cell, B, H):
    """fp32 with TF32 allowed: the wmma 16x16x8 TF32 kernels. Within TF32's error, and really a
    different path from the exact one."""
    from fusedrnn import cuda_ops

    d, lens = make_cell_inputs(cell, 6, B, 12, H, torch.float32, residual=True, lengths=True, seed=3)
    want = run_cell_with_grads(cell, _ref_call(cell), d, lens, False)
    exact = run_cell_with_grads(cell, _cuda_call(cell), d, lens, False)
    monkeypatch.setattr(cuda_ops, "allow_tf32", lambda: True)
    got = run_cell_with_grads(cell, _cuda_call(cell), d, lens, False)
    for name, ref in want.items():
        assert rel_err(got[name], ref) <= 1e-2, name  # TF32: 10-bit mantissa operands
    assert any(not torch.equal(got[k], exact[k]) for k in got), "TF32 run identical to the exact fp32 run"


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("reverse", [False, True])
def test_final_state_grads_only_with_lengths(emu, cell, reverse):
    """Only h_n (and c_n) carry gradient, rows of different lengths: the backward must start each
    row at its own last valid step (dh/dc pass through invalid steps) in both directions."""
    d, lens = make_cell_inputs(cell, 8, 20, 6, 40, torch.float32, lengths=True, seed=21)
    call = _cuda_call(cell)

    def states_only(*a):
        outs = call(*a)
        return (outs[0] * 0,) + tuple(outs[1:])

    def ref_states_only(*a):
        outs = _ref_call(cell)(*a)
        return (outs[0] * 0,) + tuple(outs[1:])

    want = run_cell_with_grads(cell, ref_states_only, d, lens, reverse)
    got = run_cell_with_grads(cell, states_only, d, lens, reverse)
    assert_fp32_close(got, want, f"{cell} reverse={reverse}")


# ---------------------------------------------------------------------------------------------
# The extension's raw outputs, barrier counts, schedule independence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reverse", [False, True])
def test_hist_slots_and_saved_activations(emu, cell, dtype, reverse):
    """The raw outputs: exchange-buffer slots and saved gates (tests/test_cuda_gpu.py runs the same on a GPU)."""
    check_raw_recurrence_forward(emu, cell, dtype, reverse, "cpu")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("T", [1, 2, 6])
def test_one_launch_and_one_grid_barrier_per_step(emu, cell, T):
    """The design's promise, counted: one cooperative launch per direction, T-1 grid barriers in the
    forward (none after the last step) and T in the backward (one between phase A and B per step)."""
    d, lens = make_cell_inputs(cell, T, 3, 5, 40, torch.float32, residual=True, lengths=True, seed=T)
    emu.reset_stats()
    leaves = {k: v.clone().requires_grad_() for k, v in d.items() if v is not None}
    a = {k: leaves.get(k) for k in d}
    if cell == "gru":
        outs = _cuda_call(cell)(a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["residual"], lens, False)
    else:
        outs = _cuda_call(cell)(a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], None,
                                a["residual"], lens, False)
    fwd = emu.stats()
    assert (fwd["launches"], fwd["grid_barriers"]) == (1, T - 1)
    sum(o.sum() for o in outs).backward()
    bwd = emu.stats()
    assert (bwd["launches"] - 1, bwd["grid_barriers"] - (T - 1)) == (1, T)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("dtype", [torch.float32, "tf32", torch.bfloat16, torch.float16], ids=str)
def test_results_do_not_depend_on_thread_order(emu, monkeypatch, cell, dtype):
    """Threads run breadth-first (in order, reversed, shuffled) and depth-first (eager, eager shuffled):
    bitwise the same outputs and gradients, on every MMA path, with several batch tiles and (backward)
    several staged K chunks. A value read before its writer reached it (missing barrier) would differ."""
    from fusedrnn import cuda_ops

    d, lens = make_cell_inputs(cell, 3, 18, 6, 176, torch.float32, residual=True, lengths=True, seed=12)
    if dtype == "tf32":
        monkeypatch.setattr(cuda_ops, "allow_tf32", lambda: True)
    dt = torch.float32 if dtype == "tf32" else dtype
    results = []
    for mode, seed in [("eager", 0), ("in_order", 0), ("reversed", 0), ("shuffled", 1), ("eager_shuffled", 2)]:
        emu.set_schedule(mode, seed)
        results.append(run_cell_with_grads(cell, _cuda_call(cell), d, lens, True, dtype=dt))
    for other in results[1:]:
        for k in results[0]:
            assert torch.equal(results[0][k], other[k]), k


def test_input_checks_name_the_argument(emu):
    """rnn_ops.cpp's checks, which the GPU build shares, on CPU tensors."""
    _, gx, h0, _, w_hh, b_hh = raw_recurrence_inputs("gru", 3, 2, 8, torch.float32)
    with pytest.raises(RuntimeError, match="h0 must have shape"):
        emu.rnn_fwd(0, gx, h0[:1], None, w_hh, b_hh, None, None, False, False, False)
    with pytest.raises(RuntimeError, match="w_hh has dtype"):
        emu.rnn_fwd(0, gx, h0, None, w_hh.double(), b_hh, None, None, False, False, False)
    with pytest.raises(RuntimeError, match="is not supported"):
        emu.rnn_fwd(0, gx.double(), h0.double(), None, w_hh.double(), None, None, None, False, False, False)
    with pytest.raises(RuntimeError, match="c0 is required for an LSTM"):
        emu.rnn_fwd(1, torch.zeros(3, 2, 32), h0, None, torch.zeros(32, 8), None, None, None, False, False, False)
    with pytest.raises(RuntimeError, match="lengths must be an int64 tensor"):
        emu.rnn_fwd(0, gx, h0, None, w_hh, b_hh, None, torch.ones(3, dtype=torch.int64), False, False, False)
    with pytest.raises(RuntimeError, match="saved"):
        emu.rnn_bwd(0, torch.zeros(3, 2, 8), h0, None, w_hh, torch.zeros(3, 2, 8), torch.zeros(0), None, False,
                    False)


# ---------------------------------------------------------------------------------------------
# The emulator's own checks (csrc/emu/selftest.cpp): each catches what it claims to
# ---------------------------------------------------------------------------------------------


def test_emulator_missing_barrier_changes_the_result(emu):
    x = torch.arange(256, dtype=torch.float32)
    want = torch.roll(x, -1)
    for mode in ("in_order", "reversed", "shuffled"):
        emu.set_schedule(mode, 3)
        assert torch.equal(emu.selftest("neighbour", 0, x), want)
    outs = []
    for mode in ("in_order", "reversed"):
        emu.set_schedule(mode, 0)
        outs.append(emu.selftest("neighbour", 1, x))
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], want)
    assert torch.isnan(outs[0]).any()  # unwritten shared memory reads as NaN


@pytest.mark.parametrize("name,message", [
    ("smem_oob", "shared memory written out of bounds"),
    ("divergent_barrier", "deadlock"),
    ("grid_barrier", "deadlock"),
    ("wmma", "not 32-byte aligned"),
    ("global_oob", "global buffer written out of bounds"),
    ("warp_args", "different warp-collective operations, or called one with different pointers"),
    ("barrier_sites", "different __syncthreads"),
])
def test_emulator_reports_broken_kernels(emu, name, message):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, generator=g)
    emu.selftest(name, 0, x)  # the correct variant runs
    with pytest.raises(RuntimeError, match=message):
        emu.selftest(name, 1, x)


def test_emulator_missing_barrier_before_a_warp_collective_read(emu):
    """Shared memory filled by the whole CTA, then read by one warp's load_matrix_sync without a
    __syncthreads() in between: under the default (eager) schedule the warp runs ahead and reads
    unwritten (NaN) memory."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, generator=g)
    assert torch.isfinite(emu.selftest("wmma", 0, x)).all()
    assert torch.isnan(emu.selftest("wmma", 2, x)).any()


def test_emulator_wmma_semantics(emu):
    """matrix_a row-major x matrix_b col-major (what RecProduct uses) with fp16 operands, fp32 sums."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 16, generator=g), torch.randn(16, 16, generator=g)
    out = emu.selftest("wmma", 0, torch.cat([a.flatten(), b.t().contiguous().flatten()]))
    torch.testing.assert_close(out, a.half().float() @ b.half().float(), atol=1e-5, rtol=1e-5)


def test_outputs_fully_written(emu):
    """The glue fills y, hist (past its first slot, which holds h0), saved, dgh and dgx_n with NaN
    before the launch: the kernels write every element, saved included at padded steps (zeros).
    (h_n, c_n, dh0, dc0 start as the caller's states: their correctness is the other tests' job.)"""
    for cell in ("gru", "lstm"):
        ng, gx, h0, c0, w_hh, b_hh = raw_recurrence_inputs(cell, 3, 5, 24, torch.bfloat16)
        lengths = torch.tensor([3, 1, 2, 3, 0])  # padded steps too: saved is zero there, not unwritten
        outs = emu.rnn_fwd(ng - 3, gx, h0, c0, w_hh, b_hh, gx[..., :24], lengths, True, True, False)
        y, _, _, hist, saved = outs
        for name, t in zip(("y", "h_n", "c_n", "hist", "saved"), outs):
            assert t is None or torch.isfinite(t).all(), f"{cell} {name}"
        assert (saved[2:, 1] == 0).all() and (saved[:, 4] == 0).all()
        dgh, dgx_n, dh0, dc0 = emu.rnn_bwd(ng - 3, torch.ones_like(y), torch.ones_like(h0),
                                           torch.ones_like(h0) if cell == "lstm" else None, w_hh, hist, saved,
                                           lengths, True, False)
        for name, t in zip(("dgh", "dgx_n", "dh0", "dc0"), (dgh, dgx_n, dh0, dc0)):
            assert t is None or torch.isfinite(t).all(), f"{cell} {name}"


# ---------------------------------------------------------------------------------------------
# The registered ops (schema, fakes, autograd registration) and a property test over shapes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_custom_ops_opcheck(emu, cell):
    """torch.library.opcheck on the cuda backend's custom ops with real kernels behind them: the
    schemas, the fake implementations against the real outputs, the autograd registration."""
    import torch.nn.functional as tnf

    from fusedrnn import cuda_ops

    d, lens = make_cell_inputs(cell, 4, 3, 5, 20, torch.float32, residual=True, lengths=True, seed=2)
    gx = tnf.linear(d["x"], d["w_ih"], d["b_ih"])
    if cell == "gru":
        fwd, bwd = cuda_ops._gru_recurrence, cuda_ops._gru_recurrence_backward
        states = (d["h0"],)
    else:
        fwd, bwd = cuda_ops._lstm_recurrence, cuda_ops._lstm_recurrence_backward
        states = (d["h0"], d["c0"])
    for save in (False, True):
        args = (gx, *states, d["w_hh"], d["b_hh"], d["residual"], lens, True, save, False)
        torch.library.opcheck(fwd, args)
    leaves = [t.clone().requires_grad_() for t in (gx, *states, d["w_hh"], d["b_hh"], d["residual"])]
    torch.library.opcheck(fwd, (*leaves, lens, True, True, False))
    out = fwd(gx, *states, d["w_hh"], d["b_hh"], d["residual"], lens, True, True, False)
    hist, saved = out[-2], out[-1]
    dy, dh = torch.randn_like(out[0]), torch.randn_like(states[0])
    dstates = (dh,) if cell == "gru" else (dh, torch.randn_like(dh))
    torch.library.opcheck(bwd, (dy, *dstates, d["w_hh"], hist, saved, lens, True, False))


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    cell=st.sampled_from(["gru", "lstm"]), T=st.integers(1, 5), B=st.integers(1, 35), I=st.integers(1, 9),
    H=st.integers(1, 48), residual=st.booleans(), lengths=st.booleans(), reverse=st.booleans(),
    bias=st.booleans(), seed=st.integers(0, 2**16),
)
def test_property_fp32_matches_reference(emu, cell, T, B, I, H, residual, lengths, reverse, bias, seed):
    d, lens = make_cell_inputs(cell, T, B, I, H, torch.float32, bias, residual, lengths, seed=seed)
    want = run_cell_with_grads(cell, _ref_call(cell), d, lens, reverse)
    got = run_cell_with_grads(cell, _cuda_call(cell), d, lens, reverse)
    assert_fp32_close(got, want, f"{cell} T{T} B{B} I{I} H{H}")


# ---------------------------------------------------------------------------------------------
# The emulator's models of mma.sync, cp.async and the fast-math intrinsics (csrc/ptx.cuh)
# ---------------------------------------------------------------------------------------------


def _tf32_rna(t: torch.Tensor) -> torch.Tensor:
    bits = t.float().contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


@pytest.mark.parametrize("kind", ["f16", "bf16", "tf32"])
def test_emulator_mma_follows_the_ptx_fragment_layouts(emu, kind):
    """A warp packs A and B into mma.sync fragments by the PTX ISA's layout and gets A·B; packing B
    transposed (a layout bug) gives something else; a lane that skips the mma deadlocks the warp."""
    x = torch.randn(384, generator=torch.Generator().manual_seed(0))
    if kind == "tf32":
        a, b = _tf32_rna(x[:128].view(16, 8)), _tf32_rna(x[256:320].view(8, 8))
    else:
        dt = torch.float16 if kind == "f16" else torch.bfloat16
        a, b = x[:256].view(16, 16).to(dt).float(), x[256:384].view(16, 8).to(dt).float()
    want = (a.double() @ b.double()).float()
    torch.testing.assert_close(emu.selftest(f"mma_{kind}", 0, x), want, atol=1e-5, rtol=1e-5)
    assert (emu.selftest(f"mma_{kind}", 1, x) - want).abs().max() > 0.1
    with pytest.raises(RuntimeError, match="deadlock"):
        emu.selftest(f"mma_{kind}", 2, x)


def test_emulator_cp_async_lands_at_the_wait(emu):
    """cp.async data is there after wait + barrier; read before the wait, after a wait for the wrong
    group, or by another thread without the barrier, it is NaN; a source written while the copy is
    in flight, or a copy never waited for, fails the launch."""
    x = torch.randn(2048, generator=torch.Generator().manual_seed(1))
    out = emu.selftest("cp_async", 0, x.clone())
    assert torch.equal(out[:1024], x[:1024].view(256, 4).roll(-1, 0).flatten())
    assert torch.equal(out[1024:], x[1024:])
    assert torch.isnan(emu.selftest("cp_async", 1, x.clone())[1024:]).all()  # read before any wait
    assert torch.isnan(emu.selftest("cp_async", 2, x.clone())[1024:]).all()  # waited for the other group
    assert torch.isnan(emu.selftest("cp_async", 3, x.clone())[:1024]).any()  # no barrier after the wait
    with pytest.raises(RuntimeError, match="source changed between issue and completion"):
        emu.selftest("cp_async", 4, x.clone())
    with pytest.raises(RuntimeError, match="never waited for"):
        emu.selftest("cp_async", 5, x.clone())


def test_emulator_fast_math_at_documented_accuracy(emu):
    """ex2.approx / rcp.approx carry errors of the documented size (not libm's), the kernels'
    sigmoid (ex2 + rcp) stays within 1e-6 and saturates (to 0 exactly, to 1 within rcp's error), and the shortcut through
    tanh.approx (2^-10.99 relative) is caught as too inaccurate for the fp32 tolerance."""
    x = torch.cat([torch.linspace(-30, 30, 6001), torch.tensor([-200.0, 200.0, 0.0])])
    out = emu.selftest("fast_math", 0, x).double()
    xd = x.double()
    finite = x.abs() < 100
    rel_ex2 = ((out[:, 0] - torch.exp2(xd)) / torch.exp2(xd)).abs()[finite]
    assert rel_ex2.max() <= 2**-21 + 2**-23 and rel_ex2.max() >= 2**-22
    nz = x != 0
    rel_rcp = ((out[:, 1] - 1 / xd) * xd).abs()[nz]
    assert rel_rcp.max() <= 2**-22 + 2**-23 and rel_rcp.max() >= 2**-23
    assert (out[:, 2] - torch.sigmoid(xd)).abs().max() <= 1e-6
    assert out[-3, 2] == 0.0 and abs(out[-2, 2] - 1) <= 2**-22 and out[-2, 0] == float("inf")
    assert (out[:, 3] - torch.sigmoid(xd)).abs().max() > 1e-4
