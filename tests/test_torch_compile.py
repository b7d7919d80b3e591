"""torch.compile(fullgraph=True) traces fusedrnn with no graph break (CPU backends here; the Triton
ops' registration is tested in test_triton.py)."""

import functools

import pytest
import torch

import fusedrnn


def _gru_args(T=4, B=2, I=3, H=5):  # noqa: E741
    return [torch.randn(T, B, I), torch.zeros(B, H), torch.randn(3 * H, I), torch.randn(3 * H, H),
            torch.randn(3 * H), torch.randn(3 * H)]


@pytest.mark.parametrize("cell", ["gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("backend,use_lengths", [("auto", True), ("reference", True), ("torch", False)])
def test_functional_compiles_fullgraph(backend, use_lengths, cell):
    """(auto with lengths picks the reference loop when tracing: torch's packing is not traceable.)"""
    args = _gru_args()
    if cell != "gru":  # one gate: the first H rows of the GRU's weights
        args = args[:2] + [a[:5] for a in args[2:]]
    lengths = torch.tensor([4, 2]) if use_lengths else None
    residual = torch.randn(4, 2, 5)

    def f(x, h0, w_ih, w_hh, b_ih, b_hh):
        return getattr(fusedrnn.functional, cell)(x, h0, w_ih, w_hh, b_ih, b_hh, residual=residual, lengths=lengths,
                                                  reverse=True, backend=backend)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    for a, b in zip(compiled(*args), f(*args)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("cls", [fusedrnn.GRU, fusedrnn.LSTM, fusedrnn.RNN,
                                 functools.partial(fusedrnn.RNN, nonlinearity="relu")],
                         ids=["GRU", "LSTM", "RNN-tanh", "RNN-relu"])
def test_module_compiles_fullgraph_with_allow_rnn(cls, backend):
    """Like torch's own RNN modules, ours need torch._dynamo.config.allow_rnn=True to be traced.
    (auto: torch's CPU LSTM op does not go through AOT autograd, so auto picks the reference loop.)"""
    m = cls(3, 4, num_layers=2, residual=1, backend=backend)
    x = torch.randn(5, 2, 3, requires_grad=True)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
        out_c = compiled(x)[0]
    out_e = m(x)[0]
    torch.testing.assert_close(out_c, out_e)
    (gc,) = torch.autograd.grad(out_c.sum(), x)
    (ge,) = torch.autograd.grad(out_e.sum(), x)
    torch.testing.assert_close(gc, ge)


def test_varying_sequence_and_batch_sizes_do_not_break_the_graph():
    """Automatic dynamic shapes make T and B symbolic after the first change; dispatch must not care."""
    w = [torch.randn(15, 3), torch.randn(15, 5), torch.randn(15), torch.randn(15)]

    def f(x, h0):
        return fusedrnn.functional.gru(x, h0, *w)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    for T, B in [(4, 2), (6, 3), (9, 5)]:
        x, h0 = torch.randn(T, B, 3), torch.zeros(B, 5)
        for a, b in zip(compiled(x, h0), f(x, h0)):
            torch.testing.assert_close(a, b)


def test_dispatch_marks_its_decision_as_torch_does():
    """dispatch marks its traced decision constant the way torch.compiler.assume_constant_result
    does, without importing torch._dynamo at `import fusedrnn`: a torch that marks differently
    fails here."""
    from fusedrnn import dispatch

    def decision():
        return "torch"

    torch.compiler.assume_constant_result(decision)
    assert vars(decision) == {"_dynamo_marked_constant": True}
    assert vars(dispatch._decide_traced) == {"_dynamo_marked_constant": True}
