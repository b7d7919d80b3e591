"""Shared test helpers: run a module or one cell call with random upstream gradients and collect
everything; the accuracy rules the cell-level tests (Triton, CUDA emulator) share."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence

import fusedrnn.functional as F

FP32_TOL = 2e-5  # fp32: max abs error / max(1, max |reference|)
K_LOWP = 2.0  # fp16/bf16: error vs the fp64 oracle <= K_LOWP x the larger of torch's and the reference's


def flat_outputs(out) -> list[torch.Tensor]:
    """(output, h_n) or (output, (h_n, c_n)) -> [output tensor, h_n(, c_n)], packed data unwrapped."""
    output, hidden = out
    if isinstance(output, PackedSequence):
        output = output.data
    hidden = list(hidden) if isinstance(hidden, tuple) else [hidden]
    return [output] + hidden


def run_with_grads(module, inputs: list[torch.Tensor], call, upstream_seed: int = 1234):
    """Call ``call()`` (which uses ``module`` and ``inputs``), backprop seeded random upstream grads
    into every output (incl. final states), return (outputs, input grads, {param name: grad})."""
    for t in inputs:
        t.grad = None
    module.zero_grad(set_to_none=True)
    outs = flat_outputs(call())
    gen = torch.Generator().manual_seed(upstream_seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device)).sum() for o in outs)
    loss.backward()
    input_grads = [t.grad for t in inputs]
    param_grads = {n: p.grad for n, p in module.named_parameters()}
    return [o.detach() for o in outs], input_grads, param_grads


def assert_close_all(got, want, atol, rtol, what=""):
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        if g is None or w is None:
            assert g is None and w is None, f"{what}[{i}]: one is None"
            continue
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m: f"{what}[{i}]: {m}")


def run_cell_with_grads(cell, call, d, lens, reverse, dtype=None, seed=1):
    """Call a one-layer-direction ``call`` (functional signature, positional) on copies of the
    tensors in ``d`` (cast to ``dtype``) that require grad; backprop seeded random upstream grads
    into every output; return {out0.., d_<name>..} in float64."""
    leaves = {k: (v.to(dtype) if dtype else v).clone().requires_grad_() for k, v in d.items() if v is not None}
    a = {k: leaves.get(k) for k in d}
    if cell != "lstm":  # gru, rnn_tanh, rnn_relu
        outs = call(a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["residual"], lens, reverse)
    else:
        outs = call(a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], None, a["residual"],
                    lens, reverse)
    g = torch.Generator().manual_seed(seed)
    loss = sum(
        (o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device)).sum() for o in outs
    )
    names = sorted(leaves)
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    res = {f"out{i}": o.detach().double() for i, o in enumerate(outs)}
    res.update({f"d_{k}": gr.double() for k, gr in zip(names, grads)})
    return res


def make_cell_inputs(cell, T, B, I, H, dtype, bias=True, residual=False, lengths=False, seed=0, P=None):  # noqa: E741
    """The one input builder: one layer-direction's tensors, keyed by the functional signature's
    names, and optionally lengths with one full-length row. ``P``: an LSTM projection width (adds
    ``w_hr``; h0, w_hh and the residual then have width P)."""
    from fusedrnn.backends import CELLS

    g = torch.Generator().manual_seed(seed)
    n = CELLS[cell]
    scale = H ** -0.5
    P = P or H

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(dtype)

    d = dict(
        x=rnd(T, B, I), h0=rnd(B, P, s=0.5), w_ih=rnd(n * H, I, s=scale), w_hh=rnd(n * H, P, s=scale),
        b_ih=rnd(n * H, s=0.3) if bias else None, b_hh=rnd(n * H, s=0.3) if bias else None,
        residual=rnd(T, B, P) if residual else None,
    )
    if cell == "lstm":
        d["c0"] = rnd(B, H, s=0.5)
        if P != H:
            d["w_hr"] = rnd(P, H, s=scale)
    lens = torch.randint(1, T + 1, (B,), generator=g) if lengths else None
    if lengths and B > 1:
        lens[0] = T  # one full-length row and (very likely) shorter ones
    return d, lens


def functional_args(cell, d) -> dict:
    """make_cell_inputs' tensors in the order of fusedrnn.functional.gru/lstm/rnn_tanh/rnn_relu's
    positional arguments (x, h0, [c0], w_ih, w_hh, b_ih, b_hh, [w_hr]); the residual is a keyword there."""
    names = ["x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"] if cell != "lstm" else \
        ["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr"]
    return {k: d.get(k) for k in names}


def functional_call(backend):
    """{cell: call with the backends' positional signature} through fusedrnn.functional."""

    def gru(x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse):
        return F.gru(x, h0, w_ih, w_hh, b_ih, b_hh, residual=residual, lengths=lengths, reverse=reverse,
                     backend=backend)

    def lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse):
        return F.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual=residual, lengths=lengths,
                      reverse=reverse, backend=backend)

    def rnn(cell):
        def call(x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse):
            return getattr(F, cell)(x, h0, w_ih, w_hh, b_ih, b_hh, residual=residual, lengths=lengths,
                                    reverse=reverse, backend=backend)
        return call

    return {"gru": gru, "lstm": lstm, "rnn_tanh": rnn("rnn_tanh"), "rnn_relu": rnn("rnn_relu")}


def rel_err(got, want):
    return (got - want).abs().max().item() / max(1.0, want.abs().max().item())


def assert_fp32_close(got, want, what, tol=FP32_TOL):
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].shape == want[k].shape, f"{what} {k}: shape {got[k].shape} vs {want[k].shape}"
        e = rel_err(got[k], want[k])
        assert e <= tol, f"{what} {k}: relative max error {e:.2e} > {tol:.0e}"  # also fails on NaN


def assert_lowp_within_baselines(cell, got, d, lens, reverse, dtype, k=K_LOWP):
    """``got`` (run_cell_with_grads of the op under test in ``dtype`` on fp64 inputs ``d``) is within
    k x the error vs the fp64 oracle of torch's own op or of the reference in that dtype, whichever
    is larger, for every output and gradient."""
    from fusedrnn import backends

    ref = functional_call("reference")[cell]
    oracle = run_cell_with_grads(cell, ref, d, lens, reverse)
    torch_backend = backends.get("torch")  # called directly: dispatch offers it fp32/fp64 only on CPU
    torch_call = getattr(torch_backend, cell)
    base_torch = run_cell_with_grads(cell, torch_call, d, lens, reverse, dtype=dtype)
    base_ref = run_cell_with_grads(cell, ref, d, lens, reverse, dtype=dtype)
    assert got.keys() == oracle.keys()
    for name in oracle:
        e = rel_err(got[name], oracle[name])
        allowed = k * max(rel_err(base_torch[name], oracle[name]), rel_err(base_ref[name], oracle[name]))
        assert e <= allowed, f"{cell} {dtype} {name}: error {e:.2e} > {k} x torch/reference's {allowed / k:.2e}"


def raw_recurrence_inputs(cell, T, B, H, dtype, device="cpu", seed=31):
    """(n_gates, gx, h0, c0 or None, w_hh, b_hh) for the cuda backend's raw forward."""
    import math

    from fusedrnn.backends import CELLS

    ng = CELLS[cell]
    g = torch.Generator().manual_seed(seed)
    gx = (torch.randn(T, B, ng * H, generator=g) * 0.5).to(device, dtype)
    h0 = (torch.randn(B, H, generator=g) * 0.5).to(device, dtype)
    c0 = (torch.randn(B, H, generator=g) * 0.5).to(device, dtype) if cell == "lstm" else None
    w_hh = ((torch.rand(ng * H, H, generator=g) * 2 - 1) / math.sqrt(H)).to(device, dtype)
    b_hh = (torch.randn(ng * H, generator=g) * 0.1).to(device, dtype)
    return ng, gx, h0, c0, w_hh, b_hh


def check_raw_recurrence_forward(ext, cell, dtype, reverse, device, T=7, B=19, H=40, seed=31):
    """The cuda backend's raw ``gru_forward`` / ``lstm_forward`` / ``elman_forward`` (of fusedrnn._C on a
    GPU, or of the CPU emulator): hist[t] is the state before time t (the exchange buffer), and the saved activations equal the gate values
    recomputed here in fp64 from gx, hist and W_hh (the kernel's MMA operands are exactly these values,
    fp32 accumulation: only the summation order differs). A wrong slot index, MMA layout or K-split sum
    shows here directly."""
    import itertools

    ng, gx, h0, c0, w_hh, b_hh = raw_recurrence_inputs(cell, T, B, H, dtype, device, seed)
    if cell == "gru":
        (y, h_n, hist, saved), c_n = ext.gru_forward(gx, h0, w_hh, b_hh, None, None, reverse, True, False), None
    elif cell != "lstm":
        (y, h_n, hist, saved), c_n = ext.elman_forward(cell, gx, h0, w_hh, b_hh, None, None, reverse, True, False), None
    else:
        y, h_n, c_n, hist, saved = ext.lstm_forward(gx, h0, c0, w_hh, b_hh, None, None, reverse, True, False)
    order = list(range(T - 1, -1, -1)) if reverse else list(range(T))
    assert torch.equal(hist[order[0]], h0)
    for prev, t in itertools.pairwise(order):
        assert torch.equal(hist[t], y[prev]), f"hist[{t}] is not y[{prev}]"
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-4, "rtol": 1e-4}
    gh = torch.einsum("tbk,gk->tbg", hist.double(), w_hh.double()) + b_hh.double()
    pre = gx.double() + gh
    if cell == "gru":
        r = torch.sigmoid(pre[..., :H])
        z = torch.sigmoid(pre[..., H:2 * H])
        n = torch.tanh(gx.double()[..., 2 * H:] + r * gh[..., 2 * H:])
        want = torch.cat([r, z, n, gh[..., 2 * H:]], -1)
    elif cell != "lstm":  # the Elman RNN saves h'
        want = torch.tanh(pre) if cell == "rnn_tanh" else torch.relu(pre)
    else:
        i, f, gg, o = (pre[..., k * H:(k + 1) * H] for k in range(4))
        want = torch.cat([torch.sigmoid(i), torch.sigmoid(f), torch.tanh(gg), torch.sigmoid(o)], -1)
    torch.testing.assert_close(saved[..., : want.shape[-1]].double(), want, **tol)
    torch.testing.assert_close(h_n, y[order[-1]])
    if cell == "lstm":
        assert torch.equal(saved[order[0]][:, 4 * H:], c0.float())  # c_prev of the first step is c0
        assert c_n.shape == (B, H)


def compiled_and_eager(module, x, seed: int):
    """``module(x)[0]`` through torch.compile(fullgraph=True, backend="aot_eager") (allow_rnn=True, as
    torch's own RNN modules need) and eagerly, each after torch.manual_seed(seed) (the same random
    draws): (compiled, eager)."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
        torch.manual_seed(seed)
        got = compiled(x)[0]
    torch.manual_seed(seed)
    return got, module(x)[0]


def zoneout_reference_call(cell, zo):
    """The oracle (fusedrnn.reference) for ``cell`` with zoneout ``zo`` (a fusedrnn.zoneout.Zoneout or
    None), in the positional functional signature run_cell_with_grads calls."""
    from fusedrnn import reference

    if cell == "lstm":
        return lambda x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, res, lens, rev: reference.lstm_reference(
            x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual=res, lengths=lens, reverse=rev, zoneout=zo)
    if cell == "gru":
        return lambda x, h0, w_ih, w_hh, b_ih, b_hh, res, lens, rev: reference.gru_reference(
            x, h0, w_ih, w_hh, b_ih, b_hh, residual=res, lengths=lens, reverse=rev, zoneout=zo)
    return lambda x, h0, w_ih, w_hh, b_ih, b_hh, res, lens, rev: reference.rnn_reference(
        x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity=cell[4:], residual=res, lengths=lens, reverse=rev, zoneout=zo)
