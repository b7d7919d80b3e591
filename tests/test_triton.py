"""The Triton backend against the reference, on CPU under TRITON_INTERPRET=1 (conftest.py).

Every check goes through fusedrnn.functional with backend="triton" (or through fusedrnn.triton_ops
/ the kernel launchers where a strategy or the barrier mode is forced), and compares outputs, final
states and the gradients of every input, with random upstream gradients on every output including
the final states. fp32: tight vs the reference; fp16/bf16: error vs an fp64 oracle within
K_LOWP x the error of torch's own op (or the reference, whichever is larger) in that dtype.
"""

from __future__ import annotations

import pytest
import torch
from fusedrnn.kernels import barrier, common
from fusedrnn.kernels import gru as kgru
from fusedrnn.kernels import lstm as klstm
from helpers import FP32_TOL, assert_lowp_within_baselines
from helpers import assert_fp32_close as _assert_fp32_close
from helpers import functional_call as _functional
from helpers import make_cell_inputs as _inputs
from helpers import rel_err as _err
from helpers import run_cell_with_grads as _run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedrnn.functional as F
from fusedrnn import backends
from fusedrnn.backends import triton as triton_ops


def _triton_strategy(strategy):
    return {
        "gru": lambda *a: triton_ops.gru(*a, strategy=strategy),
        "lstm": lambda *a: triton_ops.lstm(*a, strategy=strategy),
    }


# A covering subset of cell x residual x lengths x reverse x bias x shape (H in {1, 3, 100, 257},
# T in {1, 2, 63}, B in {1, 3, 17}) x strategy. H=257 runs few steps: the interpreter is slow there.
CASES = [
    # cell,  T,  B,  I,   H, residual, lengths, reverse, bias, strategy
    ("gru", 1, 1, 3, 1, False, False, False, True, None),
    ("gru", 2, 3, 5, 3, True, True, True, True, "batch_tile"),
    ("gru", 63, 17, 7, 3, True, True, False, False, "persistent"),
    ("gru", 63, 3, 4, 100, False, True, True, True, None),
    ("gru", 2, 17, 5, 100, True, False, False, True, "batch_tile"),
    ("gru", 2, 3, 6, 257, True, True, True, True, "persistent"),
    ("gru", 2, 1, 6, 257, False, False, False, True, "batch_tile"),
    ("lstm", 1, 1, 3, 1, True, False, True, True, None),
    ("lstm", 2, 3, 5, 3, False, True, False, False, "batch_tile"),
    ("lstm", 63, 17, 7, 3, True, True, True, True, "persistent"),
    ("lstm", 63, 3, 4, 100, True, True, False, True, None),
    ("lstm", 2, 17, 5, 100, False, True, True, True, "batch_tile"),
    ("lstm", 2, 3, 6, 257, True, False, True, False, "persistent"),
    ("lstm", 2, 1, 6, 257, False, True, False, True, "batch_tile"),
]


@pytest.mark.parametrize("cell,T,B,I,H,residual,lengths,reverse,bias,strategy", CASES,
                         ids=lambda v: str(v))
def test_fp32_matches_reference(cell, T, B, I, H, residual, lengths, reverse, bias, strategy):  # noqa: E741
    d, lens = _inputs(cell, T, B, I, H, torch.float32, bias, residual, lengths)
    want = _run(cell, _functional("reference")[cell], d, lens, reverse)
    call = _functional("triton")[cell] if strategy is None else _triton_strategy(strategy)[cell]
    got = _run(cell, call, d, lens, reverse)
    _assert_fp32_close(got, want, f"{cell} T{T} B{B} H{H}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cell,strategy", [("gru", "persistent"), ("lstm", "batch_tile"),
                                           ("gru", "batch_tile"), ("lstm", "persistent")])
def test_low_precision_error_within_torch_error(cell, strategy, dtype):
    T, B, I, H = 24, 5, 8, 40  # noqa: E741
    d, lens = _inputs(cell, T, B, I, H, torch.float64, has_residual=True, has_lengths=True, seed=3)
    reverse = strategy == "persistent"
    got = _run(cell, _triton_strategy(strategy)[cell], d, lens, reverse, dtype=dtype)
    assert_lowp_within_baselines(cell, got, d, lens, reverse, dtype)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fp64_gradcheck(cell):
    T, B, I, H = 3, 2, 2, 3  # noqa: E741
    d, lens = _inputs(cell, T, B, I, H, torch.float64, has_residual=True, has_lengths=True, seed=5)
    names = [k for k, v in d.items() if v is not None]
    fn = _functional("triton")[cell]

    def f(*ts):
        a = dict(zip(names, ts))
        if cell == "gru":
            return fn(a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["residual"], lens, True)
        return fn(a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], None, a["residual"],
                  lens, True)

    inputs = tuple(d[k].clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cell=st.sampled_from(["gru", "lstm"]), T=st.integers(1, 6), B=st.integers(1, 20), I=st.integers(1, 9),
    H=st.integers(1, 40), residual=st.booleans(), lengths=st.booleans(), reverse=st.booleans(),
    bias=st.booleans(), strategy=st.sampled_from(["persistent", "batch_tile"]), seed=st.integers(0, 2**16),
)
def test_property_matches_reference(cell, T, B, I, H, residual, lengths, reverse, bias, strategy, seed):  # noqa: E741
    d, lens = _inputs(cell, T, B, I, H, torch.float32, bias, residual, lengths, seed=seed)
    want = _run(cell, _functional("reference")[cell], d, lens, reverse)
    got = _run(cell, _triton_strategy(strategy)[cell], d, lens, reverse)
    _assert_fp32_close(got, want, f"{cell} T{T} B{B} I{I} H{H}")


def test_strategies_are_what_the_tests_exercise():
    """The persistent cases above really split H over several programs (and so, under the
    interpreter, run a launch per step), and the batch-tile ones really use one program per tile."""
    p = common.make_plan(3, 3, 100, 4, common.INTERPRETER_SM_COUNT, "persistent")
    assert p.nprog_h > 1 and p.grid_barrier and p.nprog_h == p.n_hblocks
    p = common.make_plan(4, 3, 257, 4, common.INTERPRETER_SM_COUNT, "persistent")
    assert p.nprog_h > 1 and not p.w_resident
    p = common.make_plan(3, 17, 257, 2, common.INTERPRETER_SM_COUNT, "batch_tile")
    assert p.nprog_h == 1 and p.n_hblocks > 1 and not p.grid_barrier and p.n_btiles == 2
    # more programs wanted than co-resident: programs own several unit blocks, still <= SM count
    p = common.make_plan(3, 4096, 1024, 2, 132, "persistent")
    assert p.nprog_h * p.n_btiles <= 132 or p.nprog_h == 1
    assert common.choose_strategy(32, 4, 132) == "batch_tile"
    assert common.choose_strategy(1024, 16, 132) == "persistent"
    assert all(min(pl.BLOCK_B, pl.BLOCK_H, pl.BLOCK_K) >= 16 for pl in (p,))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_grid_barrier_code_path_under_interpreter(cell):
    """With one program per batch tile the spin barrier completes in the interpreter too: the
    USE_GRID_BARRIER=True kernels (forward and backward) give the same numbers as the CTA-barrier ones."""
    T, B, I, H = 5, 20, 3, 16  # noqa: E741  (H=16: one unit block; B=20: two batch tiles)
    d, lens = _inputs(cell, T, B, I, H, torch.float32, has_residual=True, has_lengths=True, seed=7)
    fwd = kgru.gru_forward if cell == "gru" else klstm.lstm_forward
    bwd = kgru.gru_backward if cell == "gru" else klstm.lstm_backward
    if cell == "gru":
        args = (d["x"], d["h0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"], d["residual"], lens, True, True)
    else:
        args = (d["x"], d["h0"], d["c0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"], d["residual"], lens, True,
                True)
    results = []
    for forced in (False, True):
        out = fwd(*args, strategy="persistent", force_grid_barrier=forced)
        ups = [torch.randn(o.shape, generator=torch.Generator().manual_seed(2)) for o in out[:-2 if cell == "gru" else -3]]
        saved = out[2:] if cell == "gru" else out[3:]
        needs = [True] * (7 if cell == "gru" else 8)
        grads = bwd(*ups, d["x"], d["w_ih"], d["w_hh"], lens, *saved, True, needs, strategy="persistent",
                    force_grid_barrier=forced)
        results.append(list(out) + list(grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_barrier_floor_single_program_under_interpreter():
    errors = barrier.barrier_floor(10, n_programs=1, device="cpu", check=True)
    assert errors.tolist() == [0]
    with pytest.raises(ValueError, match="would never complete"):
        barrier.barrier_floor(3, n_programs=2, device="cpu")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_inference_matches_training_forward(cell):
    """No grad needed: the forward keeps only two h/c slots (ping-pong) and saves nothing."""
    d, lens = _inputs(cell, 9, 5, 4, 40, torch.float32, has_residual=True, has_lengths=True, seed=11)
    args = [d["x"], d["h0"]] + ([d["c0"]] if cell == "lstm" else []) + [d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"]]
    fn = F.gru if cell == "gru" else F.lstm
    for strategy_reverse in (False, True):
        with torch.no_grad():
            inf = fn(*args, residual=d["residual"], lengths=lens, reverse=strategy_reverse, backend="triton")
        x = d["x"].clone().requires_grad_()
        train = fn(x, *args[1:], residual=d["residual"], lengths=lens, reverse=strategy_reverse, backend="triton")
        for a, b in zip(inf, train):
            torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_partial_upstream_and_partial_requires_grad(cell):
    """Only h_n used (dy absent), and only some inputs require grad: grads match, others stay None."""
    d, lens = _inputs(cell, 6, 3, 4, 20, torch.float32, lengths=True, seed=13)
    fn = F.gru if cell == "gru" else F.lstm
    outs = {}
    for backend in ("triton", "reference"):
        x = d["x"].clone().requires_grad_()
        w_hh = d["w_hh"].clone().requires_grad_()
        extra = [d["c0"]] if cell == "lstm" else []
        y_hc = fn(x, d["h0"], *extra, d["w_ih"], w_hh, d["b_ih"], d["b_hh"], lengths=lens, backend=backend)
        y_hc[1].pow(2).sum().backward()
        outs[backend] = (x.grad, w_hh.grad)
    for a, b in zip(outs["triton"], outs["reference"]):
        assert _err(a.double(), b.double()) <= FP32_TOL


def test_limits_explain_projection():
    p = backends.CallSpec(cell="lstm", device=torch.device("cpu"), dtype=torch.float32, T=2, B=1, I=2, H=4, P=2,
                         has_residual=False, has_lengths=False, reverse=False, has_proj=True)
    assert any("proj_size" in r for r in triton_ops.limits(p))
    assert triton_ops.limits(backends.CallSpec(cell="gru", device=torch.device("cpu"), dtype=torch.float64,
                                              T=2, B=1, I=2, H=4, P=4, has_residual=True, has_lengths=True,
                                              reverse=True, has_proj=False)) == []
    x = torch.randn(2, 1, 2)
    with pytest.raises(ValueError, match="proj_size"):
        F.lstm(x, torch.zeros(1, 2), torch.zeros(1, 4), torch.randn(16, 2), torch.randn(16, 2), None, None,
               torch.randn(2, 4), backend="triton")


@pytest.mark.parametrize("cell,compile_backend", [("gru", "inductor"), ("lstm", "aot_eager")])
def test_torch_compile_fullgraph(cell, compile_backend):
    d, lens = _inputs(cell, 4, 3, 5, 8, torch.float32, has_residual=True, has_lengths=True, seed=17)
    fn = F.gru if cell == "gru" else F.lstm
    extra = ["c0"] if cell == "lstm" else []
    names = ["x", "h0"] + extra + ["w_ih", "w_hh", "b_ih", "b_hh", "residual"]

    def f(*ts):
        a = dict(zip(names, ts))
        args = [a[k] for k in names[:-1]]
        outs = fn(*args, residual=a["residual"], lengths=lens, reverse=True, backend="triton")
        return sum((o * (i + 1)).sum() for i, o in enumerate(outs))

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend=compile_backend)
    results = []
    for g in (compiled, f):
        leaves = [d[k].clone().requires_grad_() for k in names]
        loss = g(*leaves)
        loss.backward()
        results.append([loss.detach()] + [t.grad for t in leaves])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_tf32_switch_read_with_either_torch_api():
    """torch >= 2.9 raises on reading the legacy allow_tf32 once the new fp32_precision API was
    used; dot_precision's switch must read both (in a subprocess: the setting is process-global)."""
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from fusedrnn.kernels import common\n"
        "m = torch.backends.cuda.matmul\n"
        "assert common.cuda_matmul_allows_tf32() is False\n"
        "m.allow_tf32 = True; assert common.cuda_matmul_allows_tf32() is True\n"
        "m.allow_tf32 = False; assert common.cuda_matmul_allows_tf32() is False\n"
        "if hasattr(m, 'fp32_precision'):\n"
        "    m.fp32_precision = 'tf32'; assert common.cuda_matmul_allows_tf32() is True\n"
        "    m.fp32_precision = 'ieee'; assert common.cuda_matmul_allows_tf32() is False\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]


def test_gpu_only_paths_stay_off_under_the_interpreter():
    """Interpreter-only choices follow the kernels actually in use, and GPU-only ones never apply
    on the CPU: low-precision torch GEMMs, TF32, the cooperative grid barrier."""
    assert common.interpreter_on()
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert not common.lowp_torch_gemms(torch.empty(1, dtype=dtype))
    assert common.dot_precision(torch.bfloat16, torch.device("cpu")) == "upcast"
    assert common.dot_precision(torch.float32, torch.device("cpu")) == "ieee"
