"""forward(input, hx=None, *, lengths=None): padded input with per-row lengths, no packing.

The contract: the results of torch.nn with pack_padded_sequence(enforce_sorted=False) and
pad_packed_sequence(total_length=T) (with residual adds: torch.nn layers composed the same way):
outputs (zero at and past each length), h_n / c_n and the gradients of input, hx and every
parameter, on every executor (reference, torch, Triton interpreter, the CUDA kernels' emulator;
the GPU ones on a GPU). Plus: bad lengths, torch.compile(fullgraph=True), no host sync on a GPU.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import cuda_emu
import fusedrnn
from executors import CPU, GPU_FUSED, Executor, gpu_marks
from fusedrnn import backends, dispatch
from fusedrnn.bench.composed import ComposedTorch
from helpers import assert_close_all, run_with_grads

EMU = "cuda-emulator"
EXECUTORS = [e.param() for e in CPU + GPU_FUSED] + [
    pytest.param(EMU, id=EMU),
    pytest.param(Executor("torch", "cuda"), id="torch-gpu", marks=gpu_marks("torch")),
]


def _setup(executor, monkeypatch):
    """-> (backend name, device, dtype, tolerance, small): how this executor runs the module."""
    if executor == EMU:
        reason = cuda_emu.unavailable_reason()
        if reason is not None:
            pytest.skip(f"CUDA emulator: {reason}")
        from fusedrnn.backends import cuda as cuda_ops

        emu = cuda_emu.use_emulator(monkeypatch)
        emu.set_device(132, 227 * 1024)
        emu.set_schedule("eager", 0)
        monkeypatch.setattr(cuda_ops, "allow_tf32", lambda: False)
        # The cuda backend serves CUDA tensors only; here its kernels run on the emulator over CPU tensors.
        monkeypatch.setattr(cuda_ops.BACKEND, "reasons", lambda spec, forced: [])
        dispatch.clear_caches()  # (and again after the test: _fresh_dispatch)
        return "cuda", "cpu", torch.float32, 2e-5, True
    executor.skip_unless_available()
    if executor.on_gpu:  # fp32 without TF32, against cuDNN
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        return executor.backend, "cuda", torch.float32, 1e-3, False
    return executor.backend, "cpu", torch.float64, 1e-9, executor.slow


def _lengths_for(backend, lengths, device):
    """Lengths as the module under test gets them: on the input's device, except for torch's op,
    which takes them on the CPU only (with lengths on a GPU it is never planned)."""
    return lengths if backend == "torch" else lengths.to(device)


@pytest.fixture(autouse=True)
def _fresh_dispatch():
    dispatch.clear_caches()
    yield
    dispatch.clear_caches()


def _modules(cell, backend, device, dtype, input_size, hidden, **kw):
    residual = kw.pop("residual", False)
    fcls, tcls = {"gru": (fusedrnn.GRU, torch.nn.GRU), "lstm": (fusedrnn.LSTM, torch.nn.LSTM),
                  "rnn_tanh": (fusedrnn.RNN, torch.nn.RNN), "rnn_relu": (fusedrnn.RNN, torch.nn.RNN)}[cell]
    if cell.startswith("rnn_"):
        kw["nonlinearity"] = cell.removeprefix("rnn_")
    f = fcls(input_size, hidden, residual=residual, backend=backend, dtype=dtype, device=device, **kw)
    if residual is not False:
        return f, ComposedTorch(f)
    t = tcls(input_size, hidden, dtype=dtype, device=device, **kw)
    t.load_state_dict(f.state_dict())
    return f, t


def _check_against_packing(f, t, x, hx, lengths, lengths_for_f, tol):
    """f(x, hx, lengths=...) against t on pack(enforce_sorted=False) -> unpack(total_length=T)."""
    bf = f.batch_first
    T = x.shape[1 if bf else 0] if x.dim() == 3 else x.shape[0]
    hx_arg = None if hx is None else (hx[0] if len(hx) == 1 else tuple(hx))
    leaves = [x] + (hx or [])

    def packed_call():
        y, state = t(pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False), hx_arg)
        return pad_packed_sequence(y, batch_first=bf, total_length=T)[0], state

    got = run_with_grads(f, leaves, lambda: f(x, hx_arg, lengths=lengths_for_f))
    if f.backend != "auto" and "_last_plan" in f.__dict__:  # (the CPU's cached plan) the backend asked for ran
        assert {b.name for b in f.__dict__["_last_plan"][1].backends} == {f.backend}
    want = run_with_grads(t, leaves, packed_call)
    assert_close_all(got[0], want[0], atol=tol, rtol=tol, what="outputs, h_n(, c_n)")
    assert_close_all(got[1], want[1], atol=tol, rtol=tol, what="input/hx grads")
    want_params = t.grads_by_fused_name() if isinstance(t, ComposedTorch) else want[2]
    assert set(got[2]) == set(want_params)
    for name, g in got[2].items():
        torch.testing.assert_close(g, want_params[name], atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")
    # outputs at and past each length are exactly zero
    y = got[0][0] if bf else got[0][0].transpose(0, 1)
    for b, n in enumerate(lengths.tolist()):
        assert not y[b, n:].any(), f"row {b}: nonzero output past its length {n}"
    return got


# cell, num_layers, bidirectional, batch_first, proj_size, residual
FULL = [c for c in itertools.product(["gru", "lstm"], [1, 2], [False, True], [False, True], [0, 2], [False, True])
        if not (c[0] == "gru" and c[4])]
FULL += [("rnn_tanh", 2, True, False, 0, True), ("rnn_relu", 2, True, True, 0, False), ("rnn_relu", 1, False, False, 0, True),
         ("rnn_tanh", 1, False, True, 0, False)]
SMALL = [("gru", 2, True, True, 0, True), ("lstm", 2, True, False, 0, False),  # slow executors
         ("rnn_tanh", 2, True, False, 0, True), ("rnn_relu", 1, True, True, 0, False)]


def _case_id(c):
    cell, L, bi, bf, proj, res = c
    return f"{cell}-L{L}-{'bi' if bi else 'uni'}-{'bf' if bf else 'tf'}-p{proj}-{'res' if res else 'nores'}"


def _pairs():
    """(executor, case): slow executors (interpreter, emulator) get the SMALL cases; the fused
    kernels have no projection."""
    out = []
    for p in EXECUTORS:
        ex = p.values[0]
        slow = ex == EMU or ex.slow
        fused = ex == EMU or ex.backend in ("triton", "cuda")
        for c in SMALL if slow else FULL:
            if not (fused and c[4]):
                out.append(pytest.param(ex, c, id=f"{p.id}-{_case_id(c)}", marks=p.marks))
    return out


@pytest.mark.parametrize("executor,case", _pairs())
def test_lengths_match_pack_unpack(executor, case, monkeypatch):
    backend, device, dtype, tol, small = _setup(executor, monkeypatch)
    cell, num_layers, bidirectional, batch_first, proj, residual = case
    T, B, H = (5, 3, 3) if small else (6, 4, 5)
    if device == "cuda":
        T, B, H = 23, 9, 64
    D = 2 if bidirectional else 1
    P = proj or H
    input_size = D * P if residual else 4  # residual=True adds on every layer (widths equal)
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, residual=residual)
    if proj:
        kw["proj_size"] = proj
    torch.manual_seed(1)
    f, t = _modules(cell, backend, device, dtype, input_size, H, **kw)
    g = torch.Generator().manual_seed(2)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[1], lengths[-1] = T, 1  # unsorted, one full row, one single-step row
    shape = (B, T, input_size) if batch_first else (T, B, input_size)
    x = torch.randn(*shape, dtype=dtype, generator=g).to(device).requires_grad_()
    widths = (P, H) if cell == "lstm" else (P,)
    hx = [torch.randn(num_layers * D, B, w, dtype=dtype, generator=g).to(device).requires_grad_() for w in widths]
    _check_against_packing(f, t, x, hx, lengths, _lengths_for(backend, lengths, device), tol)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_relu"])
@pytest.mark.parametrize("executor", EXECUTORS)
def test_odd_shapes(executor, cell, monkeypatch):
    """T=1, B=1, every row full, every row one step, unbatched input, int32 lengths, no hx."""
    backend, device, dtype, tol, _ = _setup(executor, monkeypatch)
    torch.manual_seed(3)
    f, t = _modules(cell, backend, device, dtype, 3, 2 if device == "cpu" else 32, bidirectional=True)
    for T, lens in [(1, [1, 1]), (4, [1]), (4, [4, 4, 4]), (3, [1, 1, 1]), (4, [2, 4, 1])]:
        x = torch.randn(T, len(lens), 3, dtype=dtype, device=device, requires_grad=True)
        lengths = torch.tensor(lens, dtype=torch.int32)
        _check_against_packing(f, t, x, None, lengths, _lengths_for(backend, lengths, device), tol)
    # unbatched: lengths of shape (1,)
    x = torch.randn(4, 3, dtype=dtype, device=device)
    y, _ = f(x, lengths=_lengths_for(backend, torch.tensor([2]), device))
    want = t(x[:2])[0]
    torch.testing.assert_close(y[:2], want, atol=tol, rtol=tol)
    assert not y[2:].any()


@pytest.mark.parametrize("cls", [fusedrnn.GRU, fusedrnn.LSTM, fusedrnn.RNN])
def test_torch_plan_is_torch_packing_bitwise(cls):
    """backend='torch' (auto on CPU): the padded call packs exactly as the user would, so the results
    are torch.nn's own, bit for bit, and dropout draws as torch's does on packed data."""
    tcls = {fusedrnn.GRU: torch.nn.GRU, fusedrnn.LSTM: torch.nn.LSTM, fusedrnn.RNN: torch.nn.RNN}[cls]
    torch.manual_seed(4)
    f = cls(3, 4, num_layers=2, bidirectional=True, dropout=0.5, backend="torch")
    t = tcls(3, 4, num_layers=2, bidirectional=True, dropout=0.5)
    t.load_state_dict(f.state_dict())
    x = torch.randn(5, 3, 3)
    lengths = torch.tensor([2, 5, 3])
    for train in (False, True):
        f.train(train), t.train(train)
        torch.manual_seed(5)
        yf, hf = f(x, lengths=lengths)
        torch.manual_seed(5)
        yt, ht = t(pack_padded_sequence(x, lengths, enforce_sorted=False))
        assert torch.equal(yf, pad_packed_sequence(yt, total_length=5)[0])
        for a, b in zip(hf if isinstance(hf, tuple) else (hf,), ht if isinstance(ht, tuple) else (ht,)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("cls", [fusedrnn.GRU, fusedrnn.LSTM, fusedrnn.RNN])
def test_dropout_with_lengths_keeps_padding_zero(cls):
    m = cls(3, 4, num_layers=3, dropout=0.5, backend="reference", batch_first=True)
    x = torch.randn(4, 6, 3)
    lengths = torch.tensor([6, 1, 3, 2])
    y, _ = m(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        assert y[b, :n].any() and not y[b, n:].any()


# ---------------------------------------------------------------------------------------------
# Bad lengths
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("cls", [fusedrnn.GRU, fusedrnn.LSTM, fusedrnn.RNN])
def test_bad_lengths_name_the_argument(cls, backend):
    m = cls(3, 4, backend=backend)
    x = torch.randn(5, 3, 3)  # T=5, B=3
    bad = [
        (torch.tensor([1.0, 2.0, 3.0]), r"^lengths: expected dtype torch.int64 \(or another integer dtype\)"),
        (torch.tensor([True, True, True]), r"^lengths: expected dtype torch.int64"),
        (torch.tensor([[1, 2, 3]]), r"^lengths: expected shape \(3,\)"),
        (torch.tensor([1, 2]), r"^lengths: expected shape \(3,\) \(one length per batch row\)"),
        (torch.tensor(3), r"^lengths: expected shape \(3,\)"),
        ([1, 2, 3], r"^lengths: expected None or a 1-D integer Tensor"),
        (torch.tensor([0, 2, 3]), r"^lengths: expected values in \[1, 5\].*min 0, max 3"),
        (torch.tensor([1, 6, 3]), r"^lengths: expected values in \[1, 5\].*min 1, max 6"),
        (torch.tensor([-1, 2, 3]), r"^lengths: expected values in \[1, 5\]"),
    ]
    for lengths, message in bad:
        with pytest.raises(ValueError, match=message):
            m(x, lengths=lengths)
    with pytest.raises(ValueError, match=r"^lengths: expected shape \(1,\)"):  # unbatched: one row
        m(x[:, 0], lengths=torch.tensor([2, 3]))
    packed = pack_padded_sequence(x, torch.tensor([5, 2, 3]), enforce_sorted=False)
    with pytest.raises(ValueError, match=r"^lengths: must be None for a PackedSequence input"):
        m(packed, lengths=torch.tensor([5, 2, 3]))
    m(x, lengths=torch.tensor([5, 1, 3], dtype=torch.int16))  # any integer dtype is fine


def test_functional_accepts_integer_lengths_and_checks_them():
    args = [torch.randn(4, 2, 3), torch.zeros(2, 5), torch.randn(15, 3), torch.randn(15, 5)]
    a = fusedrnn.functional.gru(*args, lengths=torch.tensor([4, 2], dtype=torch.int32), backend="reference")
    b = fusedrnn.functional.gru(*args, lengths=torch.tensor([4, 2]), backend="reference")
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    with pytest.raises(ValueError, match=r"^lengths: expected values in \[1, 4\]"):
        fusedrnn.functional.gru(*args, lengths=torch.tensor([5, 2]), backend="reference")


def test_device_lengths_keep_torchs_op_out_of_the_plan():
    """torch's packed op reads lengths on the host: with lengths on a GPU, no layer is planned on it
    (that read would synchronise); dispatch says why."""
    spec = backends.CallSpec("gru", torch.device("cuda"), torch.float32, 8, 4, 16, 16, 16, False, True, False,
                             False, device_lengths=True)
    reasons = backends.get("torch").reasons(spec, forced=True)
    assert any("lengths on the GPU" in r for r in reasons)
    spec_cpu_lengths = backends.CallSpec("gru", torch.device("cuda"), torch.float32, 8, 4, 16, 16, 16, False, True,
                                         False, False)
    assert backends.get("torch").reasons(spec_cpu_lengths, forced=True) == []
    assert dispatch.plan_module("reference", "gru", torch.device("cpu"), torch.float32, 0, 0, 3, 4, 0, 1, False, (),
                                True, False, device_lengths=True).backends[0].name == "reference"


def test_lengths_checked_on_device_while_compiling():
    """Under torch.compile the values cannot be read on the host: torch._assert_async checks them
    where they live (on a GPU it fails at the next synchronisation; on the CPU at once)."""
    m = fusedrnn.GRU(3, 4, backend="reference")
    x = torch.randn(5, 2, 3)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(m, fullgraph=True, backend="eager")
        compiled(x, lengths=torch.tensor([5, 2]))
        with pytest.raises(RuntimeError, match=r"lengths: expected values in \[1, 5\]"):
            compiled(x, lengths=torch.tensor([6, 2]))


# ---------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("cls", [fusedrnn.GRU, fusedrnn.LSTM, fusedrnn.RNN])
def test_module_with_lengths_compiles_fullgraph(cls, backend):
    m = cls(3, 4, num_layers=2, bidirectional=True, batch_first=True, residual=1, backend=backend)
    x = torch.randn(3, 5, 3, requires_grad=True)
    lengths = torch.tensor([2, 5, 1])
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
        out_c = compiled(x, lengths=lengths)
    out_e = m(x, lengths=lengths)
    flat_c = [out_c[0]] + list(out_c[1] if isinstance(out_c[1], tuple) else (out_c[1],))
    flat_e = [out_e[0]] + list(out_e[1] if isinstance(out_e[1], tuple) else (out_e[1],))
    assert_close_all(flat_c, flat_e, atol=1e-6, rtol=1e-6, what="compiled vs eager")
    (gc,) = torch.autograd.grad(sum(o.sum() for o in flat_c), x)
    (ge,) = torch.autograd.grad(sum(o.sum() for o in flat_e), x)
    torch.testing.assert_close(gc, ge)


# ---------------------------------------------------------------------------------------------
# A GPU: no host synchronisation with lengths on the device
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "reference", pytest.param("triton", marks=pytest.mark.validates("triton")),
                                     pytest.param("cuda", marks=pytest.mark.validates("cuda"))])
@pytest.mark.parametrize("cls", [fusedrnn.GRU, fusedrnn.LSTM, fusedrnn.RNN])
@pytest.mark.gpu
def test_no_host_sync_with_lengths_on_the_gpu(cls, backend):
    m = cls(32, 64, num_layers=2, bidirectional=True, backend=backend, device="cuda")
    x = torch.randn(17, 5, 32, device="cuda", requires_grad=True)
    lengths = torch.tensor([17, 3, 9, 1, 12], device="cuda")
    m(x, lengths=lengths)  # warm up: kernels compiled and loaded, plans cached
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y, _ = m(x, lengths=lengths)
        y.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not y[3:, 1].any() and not y[1:, 3].any()
