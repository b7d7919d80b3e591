"""fusedrnn.GRU / LSTM / RNN composed over the Triton backend (layers, directions, packing, residual
adds) against torch.nn, on every executor that can run it: the interpreter on the CPU (float64,
small: it is slow; against torch.nn layers composed with the same residual adds) and a GPU
(float32 with TF32 off, against cuDNN)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import backends
from executors import executor_params
from helpers import assert_close_all, run_with_grads

_why = backends.get("triton").unavailable()
pytestmark = pytest.mark.skipif(bool(_why), reason="; ".join(_why) or "available")

if not _why:
    from fusedrnn.kernels import common

    EXECUTORS = executor_params("triton", "interpreter", None if common.interpreter_on() else
                                "the Triton interpreter is off (FUSEDRNN_TEST_DEVICE=cuda)")
else:
    EXECUTORS = executor_params("triton", "interpreter", "; ".join(_why))

# executor -> (dtype, device, input size, hidden, batch, steps, residual, atol/rtol outputs, grads)
SETUPS = {
    "interpreter": (torch.float64, "cpu", 6, 3, 3, 5, True, 1e-9, 1e-7),
    "gpu": (torch.float32, "cuda", 256, 128, 17, 63, False, 1e-4, 1e-3),
}


@pytest.mark.parametrize("kind", ["dense", "packed"])
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("executor", EXECUTORS)
def test_triton_module_matches_torch(executor, cell, kind):
    from fusedrnn.bench.composed import ComposedTorch

    dtype, device, I, H, B, T, residual, tol, gtol = SETUPS[executor]  # noqa: E741
    tcls, fcls = {"gru": (torch.nn.GRU, fusedrnn.GRU), "lstm": (torch.nn.LSTM, fusedrnn.LSTM),
                  "rnn_tanh": (torch.nn.RNN, fusedrnn.RNN), "rnn_relu": (torch.nn.RNN, fusedrnn.RNN)}[cell]
    kw = dict(num_layers=2, bidirectional=True, batch_first=True, dtype=dtype, device=device)
    if cell.startswith("rnn_"):
        kw["nonlinearity"] = cell.removeprefix("rnn_")
    t = tcls(I, H, **kw)
    f = fcls(I, H, residual=residual, backend="triton", **kw)
    f.load_state_dict(t.state_dict())
    # with residual adds, torch.nn layers composed the same way; without, torch.nn itself (cuDNN)
    ref = ComposedTorch(f) if residual else t
    x = torch.randn(B, T, I, dtype=dtype, device=device, requires_grad=True)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(0))
    lengths[0] = T

    def inp():
        if kind == "packed":
            return pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return x

    with torch.backends.cudnn.flags(allow_tf32=False):
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            got = run_with_grads(f, [x], lambda: f(inp()))
            want = run_with_grads(ref, [x], lambda: ref(inp()))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    assert_close_all(got[0], want[0], atol=tol, rtol=tol, what="outputs")
    assert_close_all(got[1], want[1], atol=tol, rtol=tol, what="input grad")
    ref_grads = ref.grads_by_fused_name() if residual else want[2]
    for name, g in got[2].items():
        torch.testing.assert_close(g, ref_grads[name], atol=gtol, rtol=gtol, msg=lambda m: f"{name}: {m}")
