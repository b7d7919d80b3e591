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
