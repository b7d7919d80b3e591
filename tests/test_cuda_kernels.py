"""The cuda backend's kernels (csrc/) against the fp64 oracle (fusedrnn/reference.py): outputs, final
states and every gradient, for every dtype and math path, lengths, reverse, residual, odd sizes and
every shape of the launch plan (batch groups, several passes per step, 16 or 32 units per CTA, W_hh
blocks in shared memory, element-wise staging).

Each check is written once and runs on every executor that can run it:
  emu  the kernels' own source on the CPU emulator of the CUDA execution model (csrc/emu/)
  gpu  a CUDA GPU: FUSEDRNN_TEST_DEVICE=cuda python -m pytest -m gpu tests/test_cuda_kernels.py
What passing on the emulator does not show (memory visibility between SMs, occupancy, speed):
csrc/emu/README.md. Accuracy rules: tests/helpers.py (fp32 tight against the fp32 oracle; fp16/bf16
within K_LOWP x the error of torch's own op at that precision).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cuda_emu
import pytest
import torch
from executors import gpu_marks
from helpers import (
    assert_fp32_close,
    assert_lowp_within_baselines,
    check_raw_recurrence_forward,
    functional_call,
    make_cell_inputs,
    raw_recurrence_inputs,
    rel_err,
    run_cell_with_grads,
    zoneout_reference_call,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedrnn
from fusedrnn.backends import cuda as cuda_ops
from fusedrnn import backends
from fusedrnn import functional as Fn

H100 = (132, 227 * 1024)  # SMs, opt-in shared memory per CTA: the emulated device unless a case says otherwise
CELLS = ["gru", "lstm", "rnn_tanh", "rnn_relu"]  # the Elman RNN cells: CELL 2 and 3 of the same kernels
GATED = ["gru", "lstm"]
LOWP = [torch.bfloat16, torch.float16]


# ---------------------------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------------------------


@dataclass
class Executor:
    name: str  # "emu" | "gpu"
    device: torch.device
    ext: object  # fusedrnn._C, or the emulator module with the same functions
    monkeypatch: pytest.MonkeyPatch

    @property
    def emu(self):
        return self.ext if self.name == "emu" else None

    def call(self, cell):
        if cell in ("gru", "lstm"):
            return cuda_ops.gru if cell == "gru" else cuda_ops.lstm
        return functools.partial(cuda_ops.rnn, cell)

    def inputs(self, cell, T, B, I, H, dtype, **kw):  # noqa: E741
        d, lens = make_cell_inputs(cell, T, B, I, H, dtype, **kw)
        return {k: v.to(self.device) if v is not None else None for k, v in d.items()}, lens

    def tf32(self, allowed: bool):
        self.monkeypatch.setattr(cuda_ops, "allow_tf32", lambda: allowed)

    def set_sms(self, sms: int | None):
        """The emulated device's SM count (a GPU keeps its own: the case then runs its real plan)."""
        if self.emu is not None:
            self.emu.set_device(sms or H100[0], H100[1])

    def sm_count(self) -> int:
        if self.emu is not None:
            return H100[0]
        return torch.cuda.get_device_properties(self.device).multi_processor_count


def _emulator(monkeypatch):
    reason = cuda_emu.unavailable_reason()
    if reason is not None:
        pytest.skip(f"CUDA emulator: {reason}")
    emu = cuda_emu.use_emulator(monkeypatch)
    emu.set_device(*H100)
    emu.set_schedule("eager", 0)  # depth-first: threads run ahead as far as the barriers allow
    emu.reset_stats()
    return Executor("emu", torch.device("cpu"), emu, monkeypatch)


def _gpu(monkeypatch):
    from fusedrnn import _ext

    return Executor("gpu", torch.device("cuda", torch.cuda.current_device()), _ext.load(), monkeypatch)


@pytest.fixture(params=["emu", pytest.param("gpu", marks=gpu_marks("cuda"))])
def ex(request, monkeypatch):
    executor = _emulator(monkeypatch) if request.param == "emu" else _gpu(monkeypatch)
    executor.tf32(False)  # the exact fp32 path unless a test says otherwise
    yield executor
    if executor.emu is not None:
        executor.emu.set_device(*H100)
        executor.emu.set_schedule("eager", 0)


@pytest.fixture
def emu(monkeypatch):
    """Checks only the emulator can make (thread order, NaN-filled buffers, barrier counts)."""
    executor = _emulator(monkeypatch)
    executor.tf32(False)
    yield executor
    executor.emu.set_device(*H100)
    executor.emu.set_schedule("eager", 0)


@pytest.fixture
def gpu(monkeypatch):
    """Checks that need a real GPU (torch.compile, cuDNN modules, memory past 2^31 elements)."""
    return _gpu(monkeypatch)


GPU_ONLY = gpu_marks("cuda")


def gpu_only(test):
    """A check only a GPU can make (marked gpu and validates("cuda"))."""
    for mark in GPU_ONLY:
        test = mark(test)
    return test


def _ref(cell):
    return functional_call("reference")[cell]


# ---------------------------------------------------------------------------------------------
# Forward and every gradient against the oracle
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    T: int
    B: int
    I: int  # noqa: E741
    H: int
    bias: bool = True
    residual: bool = False
    lengths: bool = False
    reverse: bool = False
    sms: int | None = None  # SMs of the emulated device (fewer force several passes per step)
    why: str = ""

    @property
    def id(self):
        flags = "".join(c for c, on in zip("brlv", (self.bias, self.residual, self.lengths, self.reverse)) if on)
        return f"T{self.T}-B{self.B}-I{self.I}-H{self.H}-{flags or 'none'}" + (f"-sm{self.sms}" if self.sms else "")


CASES = [
    Case(5, 3, 7, 16, why="one CTA, one batch group"),
    Case(9, 3, 10, 100, residual=True, lengths=True, reverse=True,
         why="H % 8 != 0: element-wise staging; a partial last unit group"),
    Case(6, 17, 12, 64, bias=False, lengths=True, why="3 batch groups of 8 rows; the backward at 32 units per CTA"),
    Case(4, 33, 8, 40, residual=True, reverse=True, sms=4,
         why="4 SMs: 40 rows per CTA, three passes per step, the last one partial"),
    Case(3, 2, 8, 200, lengths=True, why="several K blocks per warp; fp32: W_hh blocks in shared memory"),
    Case(2, 9, 8, 520, residual=True, lengths=True, reverse=True,
         why="16-bit backward at 32 units: W_hh blocks in shared memory; 33 unit groups"),
    Case(1, 2, 8, 8, residual=True, lengths=True, reverse=True, why="T=1 (no grid barrier), H < 16"),
    Case(4, 16, 8, 17, lengths=True, why="two full n-tiles; a 1-unit last group; element-wise staging"),
]
GPU_CASES = [  # larger shapes, for the GPU only (minutes on the emulator)
    Case(63, 3, 40, 500, residual=True, lengths=True, reverse=True),
    Case(33, 17, 64, 256, bias=False, lengths=True),
    Case(17, 33, 32, 128, residual=True, reverse=True),
    Case(9, 1, 24, 520),
]
ALL_CASES = [pytest.param(c, id=c.id) for c in CASES] + [pytest.param(c, id=c.id, marks=GPU_ONLY) for c in GPU_CASES]


def _case_inputs(ex, cell, case, dtype, seed=None):
    return ex.inputs(cell, case.T, case.B, case.I, case.H, dtype, bias=case.bias, residual=case.residual,
                     lengths=case.lengths, seed=case.T * 7 + case.H if seed is None else seed)


def _skip_gpu_case_on_emu(ex, case):
    if case in GPU_CASES and ex.emu is not None:
        pytest.skip("a GPU-sized case")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("case", ALL_CASES)
def test_fp32_matches_reference(ex, cell, case):
    """fp32 with TF32 off: the 3xTF32 kernels (fp32 accuracy), as tight as the fp32 oracle's rule."""
    _skip_gpu_case_on_emu(ex, case)
    ex.set_sms(case.sms)
    d, lens = _case_inputs(ex, cell, case, torch.float32)
    want = run_cell_with_grads(cell, _ref(cell), d, lens, case.reverse)
    got = run_cell_with_grads(cell, ex.call(cell), d, lens, case.reverse)
    assert_fp32_close(got, want, f"{cell} {case.id}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("case", ALL_CASES)
def test_low_precision_within_torch_error(ex, cell, dtype, case):
    """fp16/bf16 tensor-core kernels: error vs the fp64 oracle within K_LOWP x that of torch's own op
    or the reference in the same dtype."""
    _skip_gpu_case_on_emu(ex, case)
    ex.set_sms(case.sms)
    d, lens = _case_inputs(ex, cell, case, torch.float64)
    got = run_cell_with_grads(cell, ex.call(cell), d, lens, case.reverse, dtype=dtype)
    assert_lowp_within_baselines(cell, got, d, lens, case.reverse, dtype)


# (T, B, H, SMs of the emulated device or None); H=400: W_hh blocks in shared memory both ways; 4 SMs:
# 2 n-tiles per pass both ways
TF32_SHAPES = [(6, 5, 48, None), (2, 9, 400, None), (2, 33, 40, 4)]


# relu's derivative jumps at 0: a pre-activation within TF32's error of 0 may take the other side, and
# its whole gradient with it. These seeds keep the oracle's pre-activations RELU_MARGIN away from 0.
RELU_TF32_SEEDS = {(2, 33, 40): 4}
RELU_MARGIN = 5e-4


def _relu_margin(d, lens):
    """min |pre-activation| over the valid steps of the fp64 oracle's relu RNN (forward direction)."""
    d = {k: v.double() if v is not None else None for k, v in d.items()}
    with torch.no_grad():
        y, _ = _ref("rnn_relu")(d["x"], d["h0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"], d["residual"], lens,
                                False)
        h = y - d["residual"]
        pre = (d["x"] @ d["w_ih"].T + d["b_ih"] + torch.cat([d["h0"][None], h[:-1]]) @ d["w_hh"].T + d["b_hh"])
        valid = torch.arange(pre.shape[0]).view(-1, 1) < lens.view(1, -1)
        return pre.abs()[valid].min().item()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,H,sms", TF32_SHAPES)
def test_tf32_path(ex, cell, T, B, H, sms):
    """fp32 with TF32 allowed: one TF32 MMA per k-step. Within TF32's error, and really a different
    path from the exact one."""
    ex.set_sms(sms)
    seed = RELU_TF32_SEEDS.get((T, B, H), 3) if cell == "rnn_relu" else 3
    d, lens = ex.inputs(cell, T, B, 12, H, torch.float32, residual=True, lengths=True, seed=seed)
    if cell == "rnn_relu":
        assert _relu_margin({k: v.cpu() if v is not None else None for k, v in d.items()}, lens) > RELU_MARGIN
    want = run_cell_with_grads(cell, _ref(cell), d, lens, False)
    exact = run_cell_with_grads(cell, ex.call(cell), d, lens, False)
    ex.tf32(True)
    got = run_cell_with_grads(cell, ex.call(cell), d, lens, False)
    for name, ref in want.items():
        assert rel_err(got[name], ref) <= 1e-2, name  # TF32: 10-bit mantissa operands
    assert any(not torch.equal(got[k], exact[k]) for k in got), "TF32 run identical to the exact fp32 run"


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_final_state_grads_only_with_lengths(ex, cell, reverse):
    """Only h_n (and c_n) carry gradient, rows of different lengths: the backward must start each
    row at its own last valid step (dh/dc pass through invalid steps) in both directions."""
    d, lens = ex.inputs(cell, 8, 20, 6, 40, torch.float32, lengths=True, seed=21)

    def states_only(call):
        def f(*a):
            outs = call(*a)
            return (outs[0] * 0,) + tuple(outs[1:])
        return f

    want = run_cell_with_grads(cell, states_only(_ref(cell)), d, lens, reverse)
    got = run_cell_with_grads(cell, states_only(ex.call(cell)), d, lens, reverse)
    assert_fp32_close(got, want, f"{cell} reverse={reverse}")


SMALL_SMEM = 96 * 1024  # the emulated device for the limit test: its limit is shared memory at a modest H


def _largest_hidden(ex, cell, dtype_name):
    """The largest H whose launches fit ex's device for every batch the kernels take."""
    if ex.emu is None:
        return cuda_ops.max_hidden_size(cell, getattr(torch, dtype_name), False, ex.device.index)

    def fits(H):
        return all(ex.emu.launch_shape(cell, bwd, dtype_name, False, H, 64, H100[0], SMALL_SMEM)["fits"]
                   for bwd in (False, True))

    lo, hi = 16, 16 * H100[0]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


@pytest.mark.parametrize("cell", CELLS)
def test_hidden_size_at_the_limit(ex, cell):
    """The largest H the device takes (the emulator: 132 SMs with 96 KiB, so that shared memory binds
    at a size it runs quickly; a GPU: its own), bf16, with lengths, reverse and residual and 16 rows
    per CTA (B=17): W_hh blocks in shared memory, a shortened staging ring that wraps (the
    plan-coverage test below checks these shapes); one more unit is refused."""
    H = _largest_hidden(ex, cell, "bfloat16")
    if ex.emu is not None:
        ex.emu.set_device(H100[0], SMALL_SMEM)
    d, lens = ex.inputs(cell, 1, 17, 8, H, torch.float64, residual=True, lengths=True, seed=1)
    got = run_cell_with_grads(cell, ex.call(cell), d, lens, True, dtype=torch.bfloat16)
    assert_lowp_within_baselines(cell, got, d, lens, True, torch.bfloat16)
    bigger, _ = ex.inputs(cell, 1, 64, 8, H + 1, torch.bfloat16, seed=1)
    with pytest.raises(RuntimeError, match="does not fit|cannot be launched|not co-resident"):
        run_cell_with_grads(cell, ex.call(cell), bigger, None, False)


# The ring's kinds past the padded one (RecProduct::wait_due) with element-wise staging (odd H), in the
# backward (K = gates x H: the most blocks per warp): (cell, H, dtype, the emulated device's shared
# memory, the backward's ring kind). fp32 exact on the H100's 227 KiB; the shortened ring in bf16 on
# the 96 KiB device near the limit test's size (B=17, T=1).
ELEMENTWISE_RINGS = [("gru", 343, "float32", 227 * 1024, "full, wraps"),
                     ("lstm", 257, "float32", 227 * 1024, "full, wraps"),
                     ("gru", 1279, "bfloat16", SMALL_SMEM, "shortened")]


@pytest.mark.parametrize("cell,H,dtype,smem,kind", ELEMENTWISE_RINGS, ids=lambda v: str(v).replace(", ", "-"))
def test_elementwise_staging_through_every_ring_kind(ex, cell, H, dtype, smem, kind):
    """Odd H (16-byte copies impossible: element-wise staging) through a full ring that wraps (8
    slots, padded prologue) and through a ring shortened for shared memory: forward, states and
    every gradient vs the oracle. Element-wise staging stores synchronously, so this checks that
    path's slots and block order in each ring; the wait counts (one constant count for a full ring,
    the switch on the slot count for a shortened one) are the 16-byte cases' (the case table, and
    the limit test's shortened ring: each fails when a wait count is wrong)."""
    if ex.emu is None:
        pytest.skip("the ring kind is a property of the emulated device's plan")
    ex.emu.set_device(H100[0], smem)
    B, T = (3, 2) if dtype == "float32" else (17, 1)
    assert _ring_kind(ex.emu.launch_shape(cell, True, dtype, False, H, B, H100[0], smem)) == kind
    if dtype == "float32":
        d, lens = ex.inputs(cell, T, B, 5, H, torch.float32, lengths=True, seed=4)
        want = run_cell_with_grads(cell, _ref(cell), d, lens, False)
        got = run_cell_with_grads(cell, ex.call(cell), d, lens, False)
        assert_fp32_close(got, want, f"{cell} H={H} ({kind})")
    else:
        d, lens = ex.inputs(cell, T, B, 8, H, torch.float64, residual=True, lengths=True, seed=4)
        got = run_cell_with_grads(cell, ex.call(cell), d, lens, True, dtype=torch.bfloat16)
        assert_lowp_within_baselines(cell, got, d, lens, True, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# The extension's raw outputs, launches and barriers, determinism, registered ops
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reverse", [False, True])
def test_hist_slots_and_saved_activations(ex, cell, dtype, reverse):
    """The raw forward, to localise a failure: hist[t] is the state before time t (the exchange
    buffer), and the saved activations are the gates recomputed in fp64 from gx, hist and W_hh. A
    wrong slot index, MMA layout or K-split sum shows here directly."""
    check_raw_recurrence_forward(ex.ext, cell, dtype, reverse, ex.device)


def _count_kernels(fn, needle):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if needle in e.name and e.device_type == torch.autograd.DeviceType.CUDA)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T", [1, 2, 6])
def test_one_launch_per_direction(ex, cell, T):
    """The design's promise, counted: one cooperative launch per direction (the profiler on a GPU;
    the emulator also counts T-1 grid barriers in the forward and T in the backward, none with ready
    flags)."""
    d, lens = ex.inputs(cell, T, 3, 5, 40, torch.bfloat16, residual=True, lengths=True, seed=T)
    leaves = {k: v.clone().requires_grad_() for k, v in d.items() if v is not None}
    a = {k: leaves.get(k) for k in d}
    if cell != "lstm":
        args = (a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["residual"], lens, False)
    else:
        args = (a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], None, a["residual"], lens,
                False)
    holder = {}

    def forward():
        holder["out"] = ex.call(cell)(*args)

    def backward():
        sum(o.float().sum() for o in holder["out"]).backward()

    if ex.emu is None:
        assert _count_kernels(forward, "rnn_fwd_persistent_kernel") == 1
        assert _count_kernels(backward, "rnn_bwd_persistent_kernel") == 1
        return
    ex.emu.reset_stats()
    forward()
    fwd = ex.emu.stats()
    barriers = 0 if cuda_ops._ready_flags() else 1
    assert (fwd["launches"], fwd["grid_barriers"]) == (1, (T - 1) * barriers)
    backward()
    bwd = ex.emu.stats()
    assert (bwd["launches"] - 1, bwd["grid_barriers"] - fwd["grid_barriers"]) == (1, T * barriers)


@pytest.mark.parametrize("cell", CELLS)
def test_deterministic_and_no_grad_matches(ex, cell):
    """Twice the same bits; the inference path (nothing saved) gives the training path's outputs."""
    d, lens = ex.inputs(cell, 5, 9, 16, 48, torch.bfloat16, lengths=True, seed=2)
    a = run_cell_with_grads(cell, ex.call(cell), d, lens, False)
    b = run_cell_with_grads(cell, ex.call(cell), d, lens, False)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    with torch.no_grad():
        outs = ex.call(cell)(*_positional(cell, d, lens))
    for i, o in enumerate(outs):
        assert torch.equal(o.double(), a[f"out{i}"]), i


def _positional(cell, d, lens, reverse=False):
    if cell != "lstm":
        return (d["x"], d["h0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"], d["residual"], lens, reverse)
    return (d["x"], d["h0"], d["c0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"], None, d["residual"], lens, reverse)


def test_input_checks_name_the_argument(ex):
    """rnn_ops.cpp's named checks (the GPU build and the emulator share them)."""
    _, gx, h0, _, w_hh, b_hh = raw_recurrence_inputs("gru", 3, 2, 8, torch.float32, ex.device)
    with pytest.raises(RuntimeError, match="h0 must have shape"):
        ex.ext.gru_forward(gx, h0[:1], w_hh, b_hh, None, None, False, False, False)
    with pytest.raises(RuntimeError, match="w_hh has dtype"):
        ex.ext.gru_forward(gx, h0, w_hh.double(), b_hh, None, None, False, False, False)
    with pytest.raises(RuntimeError, match="is not supported"):
        ex.ext.gru_forward(gx.double(), h0.double(), w_hh.double(), None, None, None, False, False, False)
    with pytest.raises(RuntimeError, match="lengths must be an int64 tensor"):
        ex.ext.gru_forward(gx, h0, w_hh, b_hh, None, torch.ones(3, dtype=torch.int64), False, False, False)
    with pytest.raises(RuntimeError, match="saved"):
        ex.ext.gru_backward(torch.zeros(3, 2, 8, device=ex.device), h0, w_hh, torch.zeros(3, 2, 8, device=ex.device),
                            torch.zeros(0, device=ex.device), None, False, False)
    with pytest.raises(RuntimeError, match="cell must be 'gru', 'lstm', 'rnn_tanh' or 'rnn_relu'"):
        ex.ext.launch_shape("rnn", False, "float32", False, 8, 2, *H100)
    _, gx1, h01, _, w_hh1, b_hh1 = raw_recurrence_inputs("rnn_tanh", 3, 2, 8, torch.float32, ex.device)
    with pytest.raises(RuntimeError, match="Elman RNN cell must be 'rnn_tanh' or 'rnn_relu'"):
        ex.ext.elman_forward("gru", gx1, h01, w_hh1, b_hh1, None, None, False, False, False)
    with pytest.raises(RuntimeError, match="w_hh must have shape"):
        ex.ext.elman_forward("rnn_relu", gx1, h01, w_hh, b_hh1, None, None, False, False, False)


@pytest.mark.parametrize("cell", CELLS)
def test_custom_ops_opcheck(ex, cell):
    """torch.library.opcheck on the cuda backend's custom ops with the kernels behind them: the
    schemas, the fake implementations against the real outputs, the autograd registration."""
    import torch.nn.functional as tnf

    d, lens = ex.inputs(cell, 4, 3, 5, 20, torch.float32, residual=True, lengths=True, seed=2)
    gx = tnf.linear(d["x"], d["w_ih"], d["b_ih"])
    if cell == "gru":
        fwd, bwd = cuda_ops._gru_recurrence, cuda_ops._gru_recurrence_backward
        states = (d["h0"],)
    elif cell != "lstm":  # the Elman RNN ops take the cell first
        fwd, bwd = cuda_ops._rnn_recurrence, cuda_ops._rnn_recurrence_backward
        states = (d["h0"],)
    else:
        fwd, bwd = cuda_ops._lstm_recurrence, cuda_ops._lstm_recurrence_backward
        states = (d["h0"], d["c0"])
    pre = (cell,) if cell.startswith("rnn_") else ()
    seeds = torch.tensor([11, 2**40 + 5], dtype=torch.int64, device=ex.device)
    for zo in (([], None), ([0.3, 0.4], seeds), ([0.3, 0.4], None)):  # none, training, evaluation
        for save in (False, True):
            torch.library.opcheck(fwd, (*pre, gx, *states, d["w_hh"], d["b_hh"], d["residual"], lens, True, save,
                                        False, *zo))
        leaves = [t.clone().requires_grad_() for t in (gx, *states, d["w_hh"], d["b_hh"], d["residual"])]
        torch.library.opcheck(fwd, (*pre, *leaves, lens, True, True, False, *zo))
        out = fwd(*pre, gx, *states, d["w_hh"], d["b_hh"], d["residual"], lens, True, True, False, *zo)
        hist, saved = out[-2], out[-1]
        dy, dh = torch.randn_like(out[0]), torch.randn_like(states[0])
        dstates = (dh,) if cell != "lstm" else (dh, torch.randn_like(dh))
        torch.library.opcheck(bwd, (*pre, dy, *dstates, d["w_hh"], hist, saved, lens, True, False, *zo))


# ---------------------------------------------------------------------------------------------
# Zoneout (the ZO kernels: template parameter ZO of the same step body; fusedrnn/zoneout.py)
# ---------------------------------------------------------------------------------------------

# cell, case, p_h, p_c, training: odd H (element-wise staging), lengths, reverse, residual, batch
# groups, several passes per step, the backward at 32 units per CTA (two m-tiles), p_h != p_c, and a
# state with p = 0
ZONEOUT_CASES = [
    ("gru", CASES[1], 0.3, 0.3, True),
    ("gru", CASES[3], 0.25, 0.25, False),
    ("lstm", CASES[2], 0.3, 0.6, True),
    ("lstm", CASES[3], 0.2, 0.45, False),
    ("lstm", CASES[0], 0.0, 0.4, True),
    ("lstm", CASES[7], 0.35, 0.0, True),
    ("rnn_tanh", CASES[1], 0.3, 0.3, True),
    ("rnn_relu", CASES[7], 0.4, 0.4, False),
    ("rnn_tanh", CASES[2], 0.5, 0.5, False),
]


def _zoneout_call(ex, cell, zo):
    call = ex.call(cell)
    return lambda *a: call(*a, zo)  # zoneout: the argument after reverse


def _zoneout_case_id(c):
    cell, case, p_h, p_c, training = c
    return f"{cell}-{case.id}-{p_h}-{p_c}-{'train' if training else 'eval'}"


@pytest.mark.parametrize("zcase", ZONEOUT_CASES, ids=_zoneout_case_id)
def test_zoneout_matches_reference(ex, zcase):
    """Forward outputs, final states and every gradient of the ZO kernels (fp32, 3xTF32) against the
    fp64 oracle with the same Zoneout: in training the same seeds give the same masks (Philox in the
    kernel, fusedrnn.zoneout.uniform in the oracle), regenerated in the backward; in evaluation m = p."""
    from fusedrnn.zoneout import Zoneout

    cell, case, p_h, p_c, training = zcase
    ex.set_sms(case.sms)
    d, lens = ex.inputs(cell, case.T, case.B, case.I, case.H, torch.float64, bias=case.bias, residual=case.residual,
                        lengths=case.lengths, seed=case.T * 7 + case.H)
    seeds = torch.tensor([1234567, 2**40 + 3], dtype=torch.int64, device=ex.device) if training else None
    zo = Zoneout(p_h, p_c, seeds)
    want = run_cell_with_grads(cell, zoneout_reference_call(cell, zo), d, lens, case.reverse)
    plain = run_cell_with_grads(cell, zoneout_reference_call(cell, None), d, lens, case.reverse)
    assert (want["out0"] - plain["out0"]).abs().max() > 1e-3  # zoneout changed the result
    got = run_cell_with_grads(cell, _zoneout_call(ex, cell, zo), d, lens, case.reverse, dtype=torch.float32)
    assert_fp32_close(got, want, f"{cell} {case.id} zoneout {p_h}/{p_c} training={training}")


@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("zcase", [ZONEOUT_CASES[0], ZONEOUT_CASES[2], ZONEOUT_CASES[3]], ids=_zoneout_case_id)
def test_zoneout_low_precision(ex, zcase, dtype):
    """The fp16/bf16 ZO kernels (the half MMA path): every output and gradient within K_LOWP x the
    error of the reference run in that dtype (same Zoneout, same masks), both against the fp64 oracle."""
    from helpers import K_LOWP

    from fusedrnn.zoneout import Zoneout

    cell, case, p_h, p_c, training = zcase
    ex.set_sms(case.sms)
    d, lens = ex.inputs(cell, case.T, case.B, case.I, case.H, torch.float64, bias=case.bias, residual=case.residual,
                        lengths=case.lengths, seed=case.T * 7 + case.H)
    seeds = torch.tensor([99, 2**50 + 1], dtype=torch.int64, device=ex.device) if training else None
    zo = Zoneout(p_h, p_c, seeds)
    oracle = run_cell_with_grads(cell, zoneout_reference_call(cell, zo), d, lens, case.reverse)
    base = run_cell_with_grads(cell, zoneout_reference_call(cell, zo), d, lens, case.reverse, dtype=dtype)
    got = run_cell_with_grads(cell, _zoneout_call(ex, cell, zo), d, lens, case.reverse, dtype=dtype)
    for k in oracle:
        e, e_ref = rel_err(got[k], oracle[k]), rel_err(base[k], oracle[k])
        assert e <= K_LOWP * max(e_ref, 1e-3), f"{cell} {dtype} zoneout {k}: {e:.2e} vs the reference's {e_ref:.2e}"


@pytest.mark.parametrize("cell", CELLS)
def test_zoneout_off_is_the_plain_kernel(ex, cell):
    """No zoneout, zo_p [0, 0] and zoneout on a state the cell lacks (c of a GRU) run the plain kernel:
    the same bits as a call without zoneout. The seeds decide the masks: the same seeds give the same
    bits, others a different result."""
    from fusedrnn.zoneout import Zoneout

    case = CASES[2]
    d, lens = _case_inputs(ex, cell, case, torch.float32)
    run = lambda zo: run_cell_with_grads(cell, _zoneout_call(ex, cell, zo), d, lens, False)  # noqa: E731
    base = run(None)
    for zo in (Zoneout(0.0, 0.0), Zoneout(0.0, 0.0, torch.tensor([3, 4], device=ex.device))) + (
            (Zoneout(0.0, 0.5, torch.tensor([3, 4], device=ex.device)),) if cell != "lstm" else ()):
        got = run(zo)
        assert all(torch.equal(got[k], base[k]) for k in base), zo
    s1 = torch.tensor([7, 8], dtype=torch.int64, device=ex.device)
    a, b = run(Zoneout(0.3, 0.3, s1)), run(Zoneout(0.3, 0.3, s1.clone()))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = run(Zoneout(0.3, 0.3, torch.tensor([9, 8], dtype=torch.int64, device=ex.device)))
    assert not torch.equal(a["out0"], c["out0"])


def test_zoneout_argument_checks(ex):
    """rnn_ops.cpp's named checks of the zoneout arguments."""
    _, gx, h0, _, w_hh, b_hh = raw_recurrence_inputs("gru", 3, 2, 8, torch.float32, ex.device)
    seeds = torch.tensor([1, 2], dtype=torch.int64, device=ex.device)
    base = (gx, h0, w_hh, b_hh, None, None, False, False, False, False)
    with pytest.raises(RuntimeError, match=r"zo_p must be \[\] or \[p_h, p_c\]"):
        ex.ext.gru_forward(*base, [0.1], None)
    with pytest.raises(RuntimeError, match=r"zo_p\[1\] \(zoneout p_c\) must be in \[0, 1\)"):
        ex.ext.gru_forward(*base, [0.1, 1.0], None)
    with pytest.raises(RuntimeError, match="zo_seeds given without zo_p"):
        ex.ext.gru_forward(*base, [], seeds)
    with pytest.raises(RuntimeError, match="zo_seeds must be an int64 tensor of shape"):
        ex.ext.gru_forward(*base, [0.1, 0.1], seeds.to(torch.int32))
    with pytest.raises(RuntimeError, match="zo_seeds must be an int64 tensor of shape"):
        ex.ext.gru_forward(*base, [0.1, 0.1], torch.tensor([1, 2, 3], device=ex.device))


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    cell=st.sampled_from(CELLS), T=st.integers(1, 4), B=st.integers(1, 35), I=st.integers(1, 9),
    H=st.integers(1, 48), residual=st.booleans(), lengths=st.booleans(), reverse=st.booleans(),
    bias=st.booleans(), seed=st.integers(0, 2**16),
)
def test_property_fp32_matches_reference(ex, cell, T, B, I, H, residual, lengths, reverse, bias, seed):  # noqa: E741
    d, lens = ex.inputs(cell, T, B, I, H, torch.float32, bias=bias, residual=residual, lengths=lengths, seed=seed)
    want = run_cell_with_grads(cell, _ref(cell), d, lens, reverse)
    got = run_cell_with_grads(cell, ex.call(cell), d, lens, reverse)
    assert_fp32_close(got, want, f"{cell} T{T} B{B} I{I} H{H}")


# ---------------------------------------------------------------------------------------------
# Ready flags between steps (the default; FUSEDRNN_CUDA_READY_FLAGS=0: grid barriers)
# ---------------------------------------------------------------------------------------------

# Element-wise staging with reverse and lengths; 3 batch groups (and 32 units per CTA in the backward);
# three passes per step; 33 unit groups (flags past the first 32 lanes); T=1 (the backward's flag from
# before the loop only); two n-tiles and a 1-unit last group.
FLAG_CASES = [CASES[1], CASES[2], CASES[3], CASES[5], CASES[6], CASES[7]]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in FLAG_CASES])
def test_ready_flags_same_results_as_barriers(ex, cell, case):
    """Per-CTA ready flags instead of grid barriers change only the synchronisation: fp32 (3xTF32)
    outputs and every gradient within the oracle's fp32 rule, bf16 bitwise the same as with grid
    barriers, and no grid barrier. On the emulator every read of another CTA's hist or dgh is also
    checked to be ordered after its write by a flag the reader acquired."""
    ex.set_sms(case.sms)
    d, lens = _case_inputs(ex, cell, case, torch.float64)
    ex.monkeypatch.setenv("FUSEDRNN_CUDA_READY_FLAGS", "0")
    barriers = run_cell_with_grads(cell, ex.call(cell), d, lens, case.reverse, dtype=torch.bfloat16)
    ex.monkeypatch.setenv("FUSEDRNN_CUDA_READY_FLAGS", "1")
    if ex.emu is not None:
        ex.emu.reset_stats()
    flags = run_cell_with_grads(cell, ex.call(cell), d, lens, case.reverse, dtype=torch.bfloat16)
    for k in barriers:
        assert torch.equal(flags[k], barriers[k]), k
    d32, lens = _case_inputs(ex, cell, case, torch.float32)
    want = run_cell_with_grads(cell, _ref(cell), d32, lens, case.reverse)
    got = run_cell_with_grads(cell, ex.call(cell), d32, lens, case.reverse)
    assert_fp32_close(got, want, f"{cell} {case.id} ready flags")
    if ex.emu is not None:
        assert ex.emu.stats()["grid_barriers"] == 0


# ---------------------------------------------------------------------------------------------
# Only the emulator can check these
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, "tf32", torch.bfloat16], ids=str)
def test_results_do_not_depend_on_thread_order(emu, cell, dtype):
    """Threads run breadth-first (in order, reversed, shuffled) and depth-first (eager, eager
    shuffled): bitwise the same outputs and gradients on every MMA path, with two passes per step,
    batch groups and K blocks in registers and shared memory. A value read before its writer reached
    it (a missing barrier or cp.async wait) would differ."""
    if dtype == "tf32":
        emu.tf32(True)
    dt = torch.float32 if dtype == "tf32" else dtype
    emu.set_sms(6)
    d, lens = emu.inputs(cell, 3, 26, 6, 80, torch.float32, residual=True, lengths=True, seed=12)
    results = []
    for mode, seed in [("eager", 0), ("in_order", 0), ("reversed", 0), ("shuffled", 1), ("eager_shuffled", 2)]:
        emu.emu.set_schedule(mode, seed)
        results.append(run_cell_with_grads(cell, emu.call(cell), d, lens, True, dtype=dt))
    if dtype == torch.bfloat16:  # ready flags let CTAs drift apart by steps: other interleavings
        emu.monkeypatch.setenv("FUSEDRNN_CUDA_READY_FLAGS", "1")
        for mode, seed in [("in_order", 0), ("shuffled", 3)]:
            emu.emu.set_schedule(mode, seed)
            results.append(run_cell_with_grads(cell, emu.call(cell), d, lens, True, dtype=dt))
    for other in results[1:]:
        for k in results[0]:
            assert torch.equal(results[0][k], other[k]), k


def test_outputs_fully_written(emu):
    """The emulator's glue fills y, hist (past its first slot, which holds h0), saved, dgh and dgx_n
    with NaN before the launch: the kernels write every element, saved included at padded steps."""
    for cell in CELLS:
        ng, gx, h0, c0, w_hh, b_hh = raw_recurrence_inputs(cell, 3, 5, 24, torch.bfloat16)
        lengths = torch.tensor([3, 1, 2, 3, 0])  # padded steps too: saved is zero there, not unwritten
        if cell == "gru":
            y, h_n, hist, saved = emu.ext.gru_forward(gx, h0, w_hh, b_hh, gx[..., :24], lengths, True, True, False)
            outs = {"y": y, "h_n": h_n, "hist": hist, "saved": saved}
        elif cell != "lstm":
            y, h_n, hist, saved = emu.ext.elman_forward(cell, gx, h0, w_hh, b_hh, gx[..., :24], lengths, True, True,
                                                        False)
            outs = {"y": y, "h_n": h_n, "hist": hist, "saved": saved}
        else:
            y, h_n, c_n, hist, saved = emu.ext.lstm_forward(gx, h0, c0, w_hh, b_hh, gx[..., :24], lengths, True, True,
                                                            False)
            outs = {"y": y, "h_n": h_n, "c_n": c_n, "hist": hist, "saved": saved}
        for name, t in outs.items():
            assert torch.isfinite(t).all(), f"{cell} {name}"
        assert (saved[2:, 1] == 0).all() and (saved[:, 4] == 0).all()
        ones = torch.ones_like(h0)
        if cell == "gru":
            grads = dict(zip(("dgh", "dgx_n", "dh0"),
                             emu.ext.gru_backward(torch.ones_like(y), ones, w_hh, hist, saved, lengths, True, False)))
        elif cell != "lstm":
            grads = dict(zip(("dgh", "dh0"), emu.ext.elman_backward(cell, torch.ones_like(y), ones, w_hh, hist, saved,
                                                                     lengths, True, False)))
        else:
            grads = dict(zip(("dgh", "dh0", "dc0"), emu.ext.lstm_backward(torch.ones_like(y), ones, ones, w_hh, hist,
                                                                          saved, lengths, True, False)))
        for name, t in grads.items():
            assert torch.isfinite(t).all(), f"{cell} {name}"


def test_case_table_covers_every_plan_shape(emu):
    """The tests above, with the dtypes they run, exercise every shape the launch plan takes: batch
    groups, 1 and 2 n-tiles per pass, several passes, 16 and 32 units per CTA in the backward,
    W_hh blocks in shared memory in each math mode, a staging ring that wraps, element-wise staging,
    the kernel instantiations (n-tiles per pass are a template parameter) of every cell and every ring depth."""
    exact_and_16bit = [("bfloat16", False), ("float32", False)]
    runs = [((c.H, c.B, c.sms or H100[0], H100[1]), cell, m) for c in CASES for cell in CELLS for m in exact_and_16bit]
    runs += [((H, B, sms or H100[0], H100[1]), cell, m) for _, B, H, sms in TF32_SHAPES for cell in CELLS
             for m in [("float32", True), ("float32", False)]]
    runs += [((_largest_hidden(emu, cell, "bfloat16"), 17, H100[0], SMALL_SMEM), cell, ("bfloat16", False))
             for cell in CELLS]
    runs += [((H, 3 if dtype == "float32" else 17, H100[0], smem), cell, (dtype, False))
             for cell, H, dtype, smem, _ in ELEMENTWISE_RINGS]
    seen = set()
    for (H, B, sms, smem), cell, (dtype, tf32) in runs:
        for bwd in (False, True):
            p = emu.ext.launch_shape(cell, bwd, dtype, tf32, H, B, sms, smem)
            if not p["fits"]:
                continue
            K = backends.CELLS[cell] * H if bwd else H
            elementwise = bool(K % (16 // (4 if dtype == "float32" else 2)))
            seen |= {("batch groups",) if p["batch_groups"] > 1 else (), ("passes",) if p["passes"] > 1 else (),
                     ("ntiles", p["pass_ntiles"]), ("units", bwd, p["units"]),
                     ("smem blocks", bwd, p["mode"]) if p["smem_blocks"] > 0 else (),
                     ("ring wraps",) if p["blocks_per_warp"] > p["stage_slots"] else (),
                     ("element-wise staging",) if elementwise else (),
                     ("kernel", p["mode"], bwd, p["units"], p["pass_ntiles"]), ("ring slots", p["stage_slots"]),
                     ("cell kernel", cell, p["mode"], bwd, p["units"], p["pass_ntiles"]),
                     ("ring", _ring_kind(p), elementwise)}
    want = {("batch groups",), ("passes",), ("ntiles", 1), ("ntiles", 2), ("units", False, 16), ("units", True, 16),
            ("units", True, 32), ("ring wraps",), ("element-wise staging",)}
    want |= {("smem blocks", bwd, mode) for bwd in (False, True) for mode in ("half", "tf32", "tf32x3")}
    # the kernel instantiations (math mode x direction x units x n-tiles per pass) and every ring depth;
    # the backward at 16 units with 2 n-tiles only in bf16 (the limit test): in fp32 the plan takes it
    # at shapes too large for the emulator's case table (fastrnns: H=512, B=64)
    want |= {("kernel", mode, bwd, units, nt) for mode in ("half", "tf32", "tf32x3") for nt in (1, 2)
             for bwd, units in ((False, 16), (True, 16), (True, 32)) if not (bwd and units == 16 and nt == 2)}
    want |= {("kernel", "half", True, 16, 2)} | {("ring slots", s) for s in range(1, 9)}
    # and those instantiations for every cell (CELL is a template parameter too)
    want |= {("cell kernel", cell, mode, bwd, units, nt) for cell in CELLS for mode in ("half", "tf32", "tf32x3")
             for nt in (1, 2) for bwd, units in ((False, 16), (True, 16), (True, 32))
             if not (bwd and units == 16 and nt == 2)}
    # the ring's three kinds (RecProduct::wait_due), each with 16-byte and element-wise staging
    want |= {("ring", kind, elementwise) for kind in ("padded", "full, wraps", "shortened")
             for elementwise in (False, True)}
    assert want <= seen, sorted(want - seen)


def _ring_kind(p) -> str:
    """A full ring pads its prologue to kStages (8) groups and waits with one constant count: every
    block in flight at once (padded), or 8 slots that wrap; a ring the plan shortened for shared
    memory wraps with fewer slots and waits by a switch on its slot count."""
    if p["blocks_per_warp"] <= p["stage_slots"]:
        return "padded"
    return "full, wraps" if p["stage_slots"] == 8 else "shortened"


# ---------------------------------------------------------------------------------------------
# Only a GPU can check these
# ---------------------------------------------------------------------------------------------


@gpu_only
@pytest.mark.parametrize("cell", CELLS)
def test_torch_compile_fullgraph(gpu, cell):
    d, _ = gpu.inputs(cell, 8, 3, 16, 32, torch.float32, residual=True, seed=9)
    eager = run_cell_with_grads(cell, functional_call("cuda")[cell], d, None, False)
    fn = torch.compile(functional_call("cuda")[cell], fullgraph=True)
    got = run_cell_with_grads(cell, fn, d, None, False)
    for k in eager:
        torch.testing.assert_close(got[k], eager[k], atol=1e-6, rtol=1e-6)


@gpu_only
def test_modules_forced_cuda_match_torch(gpu):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(64, 64, num_layers=2, bidirectional=True).to(gpu.device)
    ours = fusedrnn.LSTM(64, 64, num_layers=2, bidirectional=True, backend="cuda").to(gpu.device)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(20, 3, 64, device=gpu.device)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=2e-5, rtol=2e-5)


@gpu_only
@pytest.mark.parametrize("cell", CELLS)
def test_lengths_on_device_same_as_on_cpu(gpu, cell):
    d, lens = gpu.inputs(cell, 9, 18, 16, 48, torch.bfloat16, lengths=True, residual=True, seed=8)
    a = run_cell_with_grads(cell, gpu.call(cell), d, lens, True)
    b = run_cell_with_grads(cell, gpu.call(cell), d, lens.to(gpu.device), True)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@gpu_only
def test_barrier_floor(gpu, capsys):
    """The step boundary alone, per step: grid barriers, and the ready flags' publish + wait (the
    latency model assumes 1.2 and 0.6 us; printed so a GPU session can record them)."""
    ms = gpu.ext.barrier_floor(T=1000, grid=gpu.sm_count())
    flags_ms = gpu.ext.barrier_floor(T=1000, grid=gpu.sm_count(), ready_flags=True)
    assert 0 < ms < 1000 and 0 < flags_ms < 1000
    assert gpu.ext.barrier_floor(T=10) > 0
    with capsys.disabled():
        print(f"\n  per step on {gpu.sm_count()} CTAs: grid barrier {ms:.3f} us, ready flags {flags_ms:.3f} us")


@gpu_only
def test_fp64_is_refused_by_name(gpu):
    d, _ = gpu.inputs("gru", 3, 2, 8, 16, torch.float64)
    with pytest.raises(ValueError, match="dtype=torch.float64"):
        Fn.gru(d["x"], d["h0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"], backend="cuda")


@gpu_only
@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_long_sequence(gpu, cell, dtype):
    d, lens = gpu.inputs(cell, 2048, 4, 64, 128, torch.float64 if dtype != torch.float32 else dtype, lengths=True,
                         seed=5)
    if dtype == torch.float32:
        assert_fp32_close(run_cell_with_grads(cell, gpu.call(cell), d, lens, False),
                          run_cell_with_grads(cell, _ref(cell), d, lens, False), cell)
    else:
        got = run_cell_with_grads(cell, gpu.call(cell), d, lens, False, dtype=dtype)
        assert_lowp_within_baselines(cell, got, d, lens, False, dtype)


@gpu_only
@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_offsets_past_int32(gpu, cell):
    """T*B*G > 2^31 elements: every (t, b, gate) offset into gx/saved/dgh must be 64-bit. Checked on
    the last steps (forward) and on dx of the last steps (backward) against cuDNN's error in bf16."""
    B, H, I = 128, 1024, 8  # noqa: E741
    G = backends.CELLS[cell] * H
    T = (1 << 31) // (B * G) + 16
    g = torch.Generator().manual_seed(1)
    k = 1 / math.sqrt(H)
    x = torch.randn(T, B, I, generator=g)
    w = dict(w_ih=(torch.rand(G, I, generator=g) * 2 - 1) * k, w_hh=(torch.rand(G, H, generator=g) * 2 - 1) * k,
             b_ih=(torch.rand(G, generator=g) * 2 - 1) * k, b_hh=(torch.rand(G, generator=g) * 2 - 1) * k)
    h0 = torch.randn(B, H, generator=g) * 0.5
    c0 = torch.randn(B, H, generator=g) * 0.5
    up = torch.randn(8, B, H, generator=g)

    def go(dtype, backend):
        lv = {n: t.to(gpu.device, dtype).requires_grad_() for n, t in w.items()}
        xs = x.to(gpu.device, dtype).requires_grad_()
        states = (h0.to(gpu.device, dtype),) + ((c0.to(gpu.device, dtype),) if cell == "lstm" else ())
        fn = getattr(Fn, cell)
        outs = fn(xs, *states, lv["w_ih"], lv["w_hh"], lv["b_ih"], lv["b_hh"], backend=backend)
        loss = (outs[0][-8:].float() * up.to(gpu.device)).sum()
        (dx,) = torch.autograd.grad(loss, [xs])
        res = {"y": outs[0][-8:].double().cpu(), "h_n": outs[1].double().cpu(), "dx": dx[-8:].double().cpu()}
        del outs, dx, loss
        torch.cuda.empty_cache()
        return res

    oracle = go(torch.float32, "torch")
    theirs = go(torch.bfloat16, "torch")
    ours = go(torch.bfloat16, "cuda")
    for name, ref in oracle.items():
        assert rel_err(ours[name], ref) <= 2 * max(rel_err(theirs[name], ref), 2e-3), name
