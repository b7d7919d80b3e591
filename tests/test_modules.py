"""fusedrnn.GRU / fusedrnn.LSTM / fusedrnn.RNN (tanh, relu) against torch.nn itself: the module cross product in float64.

Outputs, h_n/c_n and the gradients of input, hx and every parameter, for
cell x num_layers x bias x batch_first x bidirectional x proj_size x input kind x residual.
With residual adds, the reference is torch.nn single-layer modules composed with the same adds.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn.bench.composed import ComposedTorch
from helpers import assert_close_all, run_with_grads

DT = torch.float64
T, B, H = 5, 3, 4
LENGTHS = [5, 2, 4]  # unsorted on purpose


def make_input(kind, input_size, batch_first):
    if kind == "unbatched":
        return torch.randn(T, input_size, dtype=DT, requires_grad=True)
    shape = (B, T, input_size) if batch_first else (T, B, input_size)
    return torch.randn(*shape, dtype=DT, requires_grad=True)


def wrap(kind, x, batch_first):
    if kind.startswith("packed"):
        lengths = torch.tensor(sorted(LENGTHS, reverse=True) if kind == "packed_sorted" else LENGTHS)
        return pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=kind == "packed_sorted")
    return x


def make_hx(fmod, kind):
    D = 2 if fmod.bidirectional else 1
    P = fmod.proj_size if getattr(fmod, "proj_size", 0) else fmod.hidden_size
    lead = (fmod.num_layers * D,) if kind == "unbatched" else (fmod.num_layers * D, B)
    h = torch.randn(*lead, P, dtype=DT, requires_grad=True)
    if isinstance(fmod, torch.nn.LSTM):
        return [h, torch.randn(*lead, fmod.hidden_size, dtype=DT, requires_grad=True)]
    return [h]


CASES = []
for cell, num_layers, bias, batch_first, bidirectional, proj, kind, residual in itertools.product(
    ["gru", "lstm", "rnn_tanh", "rnn_relu"], [1, 2, 3], [True, False], [False, True], [False, True], [0, 3],
    ["dense", "packed_sorted", "packed_unsorted", "unbatched"], [False, True, 1],
):
    if cell != "lstm" and proj:
        continue
    if cell == "rnn_relu" and num_layers == 3:
        continue  # the relu cell differs from tanh only inside the cell: fewer stack shapes
    if residual == 1 and num_layers == 1:
        continue
    if kind == "unbatched" and batch_first and (bias is False):
        continue  # batch_first is ignored for unbatched input: one bias setting covers it
    CASES.append((cell, num_layers, bias, batch_first, bidirectional, proj, kind, residual))


CLASSES = {"gru": (fusedrnn.GRU, torch.nn.GRU), "lstm": (fusedrnn.LSTM, torch.nn.LSTM),
           "rnn_tanh": (fusedrnn.RNN, torch.nn.RNN), "rnn_relu": (fusedrnn.RNN, torch.nn.RNN)}


def _cell_kwargs(cell):
    return {"nonlinearity": cell.removeprefix("rnn_")} if cell.startswith("rnn_") else {}


def _id(case):
    cell, L, bias, bf, bi, proj, kind, res = case
    return f"{cell}-L{L}-{'b' if bias else 'nob'}-{'bf' if bf else 'tf'}-{'bi' if bi else 'uni'}-p{proj}-{kind}-res{res}"


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_module_matches_torch(case, backend):
    """backend='reference' is the oracle composition; 'torch' is what auto runs on CPU."""
    cell, num_layers, bias, batch_first, bidirectional, proj, kind, residual = case
    D = 2 if bidirectional else 1
    P = proj or H
    # With residual=True make layer 0 eligible too (input width == D*P); with residual=1 it is not.
    input_size = D * P if residual is True else 5
    kw = dict(num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional, dtype=DT)
    if cell == "lstm":
        kw["proj_size"] = proj
    kw.update(_cell_kwargs(cell))
    fcls, tcls = CLASSES[cell]
    fmod = fcls(input_size, H, residual=residual, backend=backend, **kw)

    if residual is False:
        tmod = tcls(input_size, H, **kw)
        tmod.load_state_dict(fmod.state_dict())
        torch_grads = lambda: {n: p.grad for n, p in tmod.named_parameters()}  # noqa: E731
    else:
        assert fmod._residual_layers == (tuple(range(num_layers)) if residual is True else tuple(range(1, num_layers)))
        tmod = ComposedTorch(fmod)
        torch_grads = tmod.grads_by_fused_name

    x = make_input(kind, input_size, batch_first)
    hx = make_hx(fmod, kind)
    hx_arg = tuple(hx) if cell == "lstm" else hx[0]

    f_out, f_in_grads, f_param_grads = run_with_grads(fmod, [x] + hx, lambda: fmod(wrap(kind, x, batch_first), hx_arg))
    t_out, t_in_grads, _ = run_with_grads(tmod, [x] + hx, lambda: tmod(wrap(kind, x, batch_first), hx_arg))
    t_param_grads = torch_grads()

    tol = dict(atol=1e-10, rtol=1e-8)
    assert_close_all(f_out, t_out, what="outputs", **tol)
    assert_close_all(f_in_grads, t_in_grads, what="input/hx grads", **tol)
    assert set(f_param_grads) == set(t_param_grads)
    for name in f_param_grads:
        torch.testing.assert_close(f_param_grads[name], t_param_grads[name], **tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_fast_cpu_path_matches_reference(cell, backend):
    """auto on CPU uses torch's own op; it must agree with the reference composition, packed and residual."""
    kw = dict(num_layers=2, bidirectional=True, dtype=DT, **_cell_kwargs(cell))
    fcls = CLASSES[cell][0]
    ref = fcls(8, H, residual=True, backend="reference", **kw)
    fast = fcls(8, H, residual=True, backend=backend, **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, 8, dtype=DT, requires_grad=True)
    for kind in ["dense", "packed_unsorted"]:
        r = run_with_grads(ref, [x], lambda: ref(wrap(kind, x, False)))
        f = run_with_grads(fast, [x], lambda: fast(wrap(kind, x, False)))
        assert_close_all(f[0], r[0], atol=1e-10, rtol=1e-8, what=f"{kind} outputs")
        assert_close_all(f[1], r[1], atol=1e-10, rtol=1e-8, what=f"{kind} input grads")
        for name in r[2]:
            torch.testing.assert_close(f[2][name], r[2][name], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("cls", [fusedrnn.GRU, fusedrnn.LSTM, fusedrnn.RNN])
def test_float32_default_module(cls):
    """Default dtype, default backend, the way most users call it."""
    tcls = {fusedrnn.GRU: torch.nn.GRU, fusedrnn.LSTM: torch.nn.LSTM, fusedrnn.RNN: torch.nn.RNN}[cls]
    torch.manual_seed(3)
    t = tcls(6, 8, num_layers=2)
    torch.manual_seed(3)
    f = cls(6, 8, num_layers=2)
    x = torch.randn(7, 2, 6)
    a, b = f(x), t(x)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
