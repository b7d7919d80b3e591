"""The modules composed over the Triton backend (under the interpreter on CPU): layers, directions,
packing and residual adds, against torch.nn. Small shapes: the interpreter is slow."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import backends
from helpers import assert_close_all, run_with_grads

_why = backends.REGISTRY["triton"].unavailable()
pytestmark = pytest.mark.skipif(bool(_why), reason="; ".join(_why) or "available")


@pytest.mark.parametrize("kind", ["dense", "packed"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_triton_module_matches_torch(cell, kind):
    tcls, fcls = (torch.nn.GRU, fusedrnn.GRU) if cell == "gru" else (torch.nn.LSTM, fusedrnn.LSTM)
    kw = dict(num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    t = tcls(6, 3, **kw)
    f = fcls(6, 3, residual=True, backend="triton", **kw)
    f.load_state_dict(t.state_dict())
    from test_modules import ComposedTorch

    ref = ComposedTorch(f)
    x = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)

    def inp():
        if kind == "packed":
            return pack_padded_sequence(x, torch.tensor([3, 5, 1]), batch_first=True, enforce_sorted=False)
        return x

    got = run_with_grads(f, [x], lambda: f(inp()))
    want = run_with_grads(ref, [x], lambda: ref(inp()))
    assert_close_all(got[0], want[0], atol=1e-9, rtol=1e-7, what="outputs")
    assert_close_all(got[1], want[1], atol=1e-9, rtol=1e-7, what="input grad")
    ref_grads = ref.grads_by_fused_name()
    for name, g in got[2].items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-9, rtol=1e-7, msg=lambda m: f"{name}: {m}")
