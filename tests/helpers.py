"""Shared test helpers: run a module with random upstream gradients and collect everything."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence


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
    if cell == "gru":
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
