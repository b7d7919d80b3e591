"""The functional seam: semantics of lengths/reverse/residual, validation, dispatch (CPU backends)."""

from __future__ import annotations

import functools
import logging

import pytest
import torch

import fusedrnn.functional as F
from fusedrnn import backends, dispatch
from fusedrnn.reference import gru_reference, lstm_reference, rnn_reference
from helpers import functional_args, make_cell_inputs

DT = torch.float64


def make_args(cell, T=6, B=4, I=5, H=3, P=None, bias=True, dtype=DT, requires_grad=False):  # noqa: E741
    """The functional arguments, in positional order, from the shared builder (tests/helpers.py)."""
    d, _ = make_cell_inputs(cell, T, B, I, H, dtype, bias=bias, seed=7, P=P)
    return {k: v if v is None else v.requires_grad_(requires_grad) for k, v in functional_args(cell, d).items()}


def call(cell, args, **kw):
    return getattr(F, cell)(*args.values(), **kw)


def row(args, b, length):
    """The arguments restricted to batch row b and its first `length` steps."""
    out = {}
    for k, v in args.items():
        if v is None:
            out[k] = None
        elif k == "x":
            out[k] = v[:length, b : b + 1]
        elif k in ("h0", "c0"):
            out[k] = v[b : b + 1]
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell,P", [("gru", None), ("lstm", None), ("lstm", 2), ("rnn_tanh", None), ("rnn_relu", None)])
def test_lengths_equal_per_row_runs(cell, P, reverse, backend):
    """Each row with lengths equals that row run alone on its valid prefix; padding outputs are 0."""
    args = make_args(cell, P=P)
    T, B = args["x"].shape[:2]
    lengths = torch.tensor([6, 1, 3, 5])
    residual = torch.randn(T, B, P or 3, dtype=DT)
    out = call(cell, args, lengths=lengths, reverse=reverse, residual=residual, backend=backend)
    for b in range(B):
        L = int(lengths[b])
        alone = call(cell, row(args, b, L), reverse=reverse, residual=residual[:L, b : b + 1], backend="reference")
        torch.testing.assert_close(out[0][:L, b], alone[0][:, 0], atol=1e-12, rtol=1e-10)
        assert torch.equal(out[0][L:, b], torch.zeros_like(out[0][L:, b])), "outputs past a row's length must be 0"
        for final, final_alone in zip(out[1:], alone[1:]):
            torch.testing.assert_close(final[b], final_alone[0], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
def test_reverse_is_flipped_forward(cell):
    args = make_args(cell)
    fwd_on_flipped = call(cell, {**args, "x": args["x"].flip(0)}, backend="reference")
    rev = call(cell, args, reverse=True, backend="reference")
    torch.testing.assert_close(rev[0], fwd_on_flipped[0].flip(0))
    for a, b in zip(rev[1:], fwd_on_flipped[1:]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
def test_residual_is_added_to_output_not_state(cell):
    args = make_args(cell)
    residual = torch.randn(args["x"].shape[0], args["x"].shape[1], 3, dtype=DT)
    plain = call(cell, args, backend="reference")
    with_res = call(cell, args, residual=residual, backend="reference")
    torch.testing.assert_close(with_res[0], plain[0] + residual)
    for a, b in zip(with_res[1:], plain[1:]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell,P", [("gru", None), ("lstm", None), ("lstm", 2), ("rnn_tanh", None), ("rnn_relu", None)])
@pytest.mark.parametrize("bias", [True, False])
def test_torch_backend_matches_reference_all_options(cell, P, bias):
    for reverse in (False, True):
        for use_lengths in (False, True):
            args = make_args(cell, P=P, bias=bias, requires_grad=True)
            T, B = args["x"].shape[:2]
            residual = torch.randn(T, B, P or 3, dtype=DT, requires_grad=True)
            lengths = torch.tensor([2, 6, 6, 4]) if use_lengths else None
            tensors = [v for v in args.values() if v is not None] + [residual]
            results = []
            for backend in ("reference", "torch"):
                out = call(cell, args, residual=residual, lengths=lengths, reverse=reverse, backend=backend)
                gen = torch.Generator().manual_seed(3)
                loss = sum((o * torch.randn(o.shape, generator=gen, dtype=DT)).sum() for o in out)
                grads = torch.autograd.grad(loss, tensors)
                results.append((out, grads))
            (o_ref, g_ref), (o_t, g_t) = results
            for a, b in zip(o_t + g_t, o_ref + g_ref):
                torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
def test_reference_gradcheck(cell):
    args = make_args(cell, T=3, B=2, I=2, H=2, requires_grad=True)
    residual = torch.randn(3, 2, 2, dtype=DT, requires_grad=True)
    lengths = torch.tensor([3, 2])
    names = list(args)

    def fn(*tensors):
        a = dict(zip(names, tensors[:-1]))
        return call(cell, a, residual=tensors[-1], lengths=lengths, reverse=True, backend="reference")

    assert torch.autograd.gradcheck(fn, tuple(args.values()) + (residual,))
    assert torch.autograd.gradgradcheck(fn, tuple(args.values()) + (residual,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_low_precision_accumulates_in_fp32(dtype):
    args = make_args("lstm", T=40, dtype=dtype)
    y = call("lstm", args, backend="reference")[0]
    assert y.dtype == dtype
    y64 = call("lstm", {k: None if v is None else v.to(DT) for k, v in args.items()}, backend="reference")[0]
    # Output rounding to dtype dominates: error stays within a few ulps of the output dtype.
    assert (y.to(DT) - y64).abs().max() <= 4 * torch.finfo(dtype).eps


# ----------------------------------------------------------------------------- validation


def _bad_call(cell, match, backend="reference", **override):
    args = make_args(cell)
    kw = {k: override.pop(k) for k in ("residual", "lengths", "reverse", "backend") if k in override}
    kw.setdefault("backend", backend)
    args.update(override)
    with pytest.raises((ValueError, RuntimeError), match=match):
        call(cell, args, **kw)


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
def test_validation_messages_name_the_argument(cell, backend):
    """Validation is shared by every backend and runs before dispatch: same messages for each."""
    G = backends.CELLS[cell] * 3
    _bad = functools.partial(_bad_call, backend=backend)
    _bad(cell, r"^x: expected a 3-D", x=torch.randn(6, 5, dtype=DT))
    _bad(cell, r"^x: expected a floating-point", x=torch.ones(6, 4, 5, dtype=torch.int64))
    _bad(cell, "Expected sequence length to be larger than 0", x=torch.randn(0, 4, 5, dtype=DT))
    _bad(cell, r"^h0: expected shape \(4, 3\)", h0=torch.randn(3, 3, dtype=DT))
    _bad(cell, r"^h0: expected dtype torch.float64", h0=torch.randn(4, 3, dtype=torch.float32))
    _bad(cell, r"^w_ih: expected shape", w_ih=torch.randn(G, 6, dtype=DT))
    _bad(cell, r"^w_hh: expected", w_hh=torch.randn(G + 1, 3, dtype=DT))
    _bad(cell, r"^b_ih/b_hh: expected both", b_ih=None)
    _bad(cell, r"^b_hh: expected shape", b_hh=torch.randn(G + 2, dtype=DT))
    _bad(cell, r"^residual: expected shape \(6, 4, 3\)", residual=torch.randn(6, 4, 2, dtype=DT))
    _bad(cell, r"^lengths: expected dtype torch.int64", lengths=torch.tensor([1.0, 2, 3, 4]))
    _bad(cell, r"^lengths: expected shape \(4,\)", lengths=torch.tensor([1, 2, 3]))
    _bad(cell, r"^lengths: expected values in \[1, 6\]", lengths=torch.tensor([1, 2, 7, 4]))
    _bad(cell, r"^lengths: expected values in \[1, 6\]", lengths=torch.tensor([0, 2, 3, 4]))
    _bad(cell, r"^reverse: expected a bool", reverse=1)
    _bad(cell, r"^backend must be one of", backend="cudnn")
    if cell == "lstm":
        _bad(cell, r"^c0: expected shape \(4, 3\)", c0=torch.randn(4, 2, dtype=DT))
        _bad(cell, r"^w_hr: expected shape \(3, 3\)", w_hr=torch.randn(3, 2, dtype=DT))


def test_batch_zero_and_noncontiguous():
    args = make_args("gru", B=0)
    y, h = call("gru", args, backend="reference")
    assert y.shape == (6, 0, 3) and h.shape == (0, 3)
    args = make_args("gru")
    args["x"] = args["x"].transpose(0, 1).contiguous().transpose(0, 1)  # same values, strided
    args["w_hh"] = args["w_hh"].t().contiguous().t()
    assert not args["x"].is_contiguous()
    want = call("gru", {k: v if v is None else v.contiguous() for k, v in args.items()}, backend="reference")
    for backend in ("reference", "torch"):
        got = call("gru", args, backend=backend)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- dispatch


def test_reference_functions_are_the_reference_backend():
    args = make_args("gru")
    a = gru_reference(*args.values())
    b = call("gru", args, backend="reference")
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    args = make_args("lstm")
    a = lstm_reference(*args.values())
    b = call("lstm", args, backend="reference")
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    for nonlinearity in ("tanh", "relu"):
        args = make_args(f"rnn_{nonlinearity}")
        a = rnn_reference(*args.values(), nonlinearity=nonlinearity)
        b = call(f"rnn_{nonlinearity}", args, backend="reference")
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    with pytest.raises(ValueError, match=r"^Unknown nonlinearity 'gelu'. Select from 'tanh' or 'relu'.$"):
        rnn_reference(*args.values(), nonlinearity="gelu")


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_reference_is_torchs_cell_definition(nonlinearity):
    """The oracle against torch.nn.RNNCell stepped by hand (torch's own definition of the cell)."""
    args = make_args(f"rnn_{nonlinearity}")
    cell = torch.nn.RNNCell(5, 3, nonlinearity=nonlinearity, dtype=DT)
    with torch.no_grad():
        for name, key in (("weight_ih", "w_ih"), ("weight_hh", "w_hh"), ("bias_ih", "b_ih"), ("bias_hh", "b_hh")):
            getattr(cell, name).copy_(args[key])
    h, ys = args["h0"], []
    for t in range(args["x"].shape[0]):
        h = cell(args["x"][t], h)
        ys.append(h)
    y, h_n = call(f"rnn_{nonlinearity}", args, backend="reference")
    torch.testing.assert_close(y, torch.stack(ys), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(h_n, h, atol=1e-12, rtol=1e-12)


def test_cuda_backend_takes_the_rnn_cell_as_the_gru():
    """The CUDA kernels run the Elman RNN cell (CELL 2 and 3 of csrc/rnn_kernels.cuh): the cuda backend
    gives an RNN call the reasons it gives the same GRU call (here: the device, or no GPU), also with
    zoneout (which the kernels run); a forced backend='cuda' on the CPU names the device."""
    import dataclasses

    cuda = backends.get("cuda")
    for device in ("cpu", "cuda"):
        gru = backends.CallSpec("gru", torch.device(device), torch.float32, 8, 4, 16, 16, 16, False, False, False,
                                False)
        for cell in ("rnn_tanh", "rnn_relu"):
            spec = dataclasses.replace(gru, cell=cell)
            assert cuda.reasons(spec, forced=True) == cuda.reasons(gru, forced=True), (device, cell)
            assert not any("Elman" in r for r in cuda.reasons(spec, forced=True))
            zoned = cuda.reasons(dataclasses.replace(spec, zoneout=True), forced=True)
            assert zoned == cuda.reasons(gru, forced=True) and not any("zoneout" in r for r in zoned), zoned
    with pytest.raises(ValueError, match=r"backend 'cuda' cannot run this RNN_TANH call: .*device=cpu"):
        call("rnn_tanh", make_args("rnn_tanh"), backend="cuda")


def test_extension_version_mismatch_is_a_clear_error():
    from fusedrnn import _ext

    _ext.check_build_info({"torch_version": torch.__version__, "cuda_version": str(torch.version.cuda)})
    with pytest.raises(_ext.ExtensionError, match=r"built for torch 1.0.0 / CUDA 9.9 but this process has torch"):
        _ext.check_build_info({"torch_version": "1.0.0+cu99", "cuda_version": "9.9"})


def test_empty_hidden_size_and_square_projection():
    args = make_args("gru")
    with pytest.raises(ValueError, match=r"^w_hh: expected a non-empty"):
        call("gru", {**args, "w_ih": torch.zeros(0, 5, dtype=DT), "w_hh": torch.zeros(0, 0, dtype=DT),
                     "b_ih": None, "b_hh": None}, backend="reference")
    # w_hr of shape (H, H) is a valid projection for the reference; torch's op would misread it, so the
    # torch backend declines and auto falls back.
    args = make_args("lstm")
    args["w_hr"] = torch.randn(3, 3, dtype=DT)
    want = call("lstm", args, backend="reference")
    for a, b in zip(call("lstm", args), want):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="P == H"):
        call("lstm", args, backend="torch")


def test_forced_backend_error_under_compile_is_a_valueerror():
    args = make_args("gru", dtype=torch.float16)

    def f(*tensors):
        return F.gru(*tensors, backend="torch")

    torch._dynamo.reset()
    with pytest.raises(ValueError, match="backend 'torch' cannot run this GRU call"):
        torch.compile(f, backend="eager")(*args.values())
    torch._dynamo.reset()  # fullgraph: dynamo reports it as its own error, with our message inside
    with pytest.raises(Exception, match="backend 'torch' cannot run this GRU call"):
        torch.compile(f, fullgraph=True, backend="eager")(*args.values())
