"""The modules composed over the Triton backend (under the interpreter on CPU): layers, directions,
packing and residual adds, against torch.nn. Small shapes: the interpreter is slow."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import backends
from helpers import assert_close_all, run_with_grads

_why = backends.get("triton").unavailable()
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


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["dense", "packed"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_triton_module_matches_cudnn_on_gpu(cell, kind):
    """The composed module on the real Triton kernels against torch.nn (cuDNN) in fp32, exact math."""
    tcls, fcls = (torch.nn.GRU, fusedrnn.GRU) if cell == "gru" else (torch.nn.LSTM, fusedrnn.LSTM)
    kw = dict(num_layers=2, bidirectional=True, batch_first=True, device="cuda")
    t = tcls(256, 128, **kw)
    f = fcls(256, 128, backend="triton", **kw)
    f.load_state_dict(t.state_dict())
    x = torch.randn(17, 63, 256, device="cuda", requires_grad=True)
    lengths = torch.randint(1, 64, (17,))

    def inp():
        return pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False) if kind == "packed" else x

    with torch.backends.cudnn.flags(allow_tf32=False):
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            got = run_with_grads(f, [x], lambda: f(inp()))
            want = run_with_grads(t, [x], lambda: t(inp()))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    assert_close_all(got[0], want[0], atol=1e-4, rtol=1e-4, what="outputs")
    assert_close_all(got[1], want[1], atol=1e-4, rtol=1e-4, what="input grad")
    for name, g in got[2].items():
        torch.testing.assert_close(g, want[2][name], atol=1e-3, rtol=1e-3, msg=lambda m: f"{name}: {m}")
