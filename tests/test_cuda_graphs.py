"""Streaming under CUDA graphs (GPU only; skipped elsewhere).

A streaming user calls a 2-layer module with T=1 and the carried state, thousands of times. Every
fused module call must be capturable: one T=1 call captured with torch.cuda.graph and replayed 100
times, the state carried inside the graph, equals the same 100 eager calls; and the same loop under
torch.compile(mode="reduce-overhead") (CUDA graphs through torch's cudagraph trees) equals eager.
A host synchronisation, an allocation outside torch's caching allocator or a plan computed during
capture fails the capture itself; state kept on the Python side between replays shows as a
mismatch."""

from __future__ import annotations

import pytest
import torch

import fusedrnn

pytestmark = pytest.mark.gpu

FUSED = ("triton", "cuda")
I = H = 64  # noqa: E741
B, LAYERS, STEPS = 4, 2, 100


def _module(cell: str, backend: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cls = fusedrnn.GRU if cell == "gru" else fusedrnn.LSTM
    return cls(I, H, num_layers=LAYERS, backend=backend).cuda()


def _zeros(cell: str):
    h = torch.zeros(LAYERS, B, H, device="cuda")
    return (h, torch.zeros_like(h)) if cell == "lstm" else h


def _as_tuple(state) -> tuple:
    return state if isinstance(state, tuple) else (state,)


def _eager(module, xs, cell):
    state, ys = _zeros(cell), []
    with torch.no_grad():
        for t in range(STEPS):
            y, state = module(xs[t], state)
            ys.append(y)
    return torch.stack(ys), state


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_a_captured_streaming_step_replays_like_eager_calls(cell, backend):
    module = _module(cell, backend)
    xs = torch.randn(STEPS, 1, B, I, device="cuda")
    want_y, want_state = _eager(module, xs, cell)

    x_buf, state = xs[0].clone(), _zeros(cell)

    def one_call():
        y, new = module(x_buf, state)
        for old, fresh in zip(_as_tuple(state), _as_tuple(new)):
            old.copy_(fresh)
        return y

    side = torch.cuda.Stream()  # torch's capture recipe: warm up on a side stream first
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(3):
            one_call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        y_static = one_call()

    for s in _as_tuple(state):
        s.zero_()
    got = []
    for t in range(STEPS):
        x_buf.copy_(xs[t])
        graph.replay()
        got.append(y_static.clone())
    torch.testing.assert_close(torch.stack(got), want_y)
    for g, w in zip(_as_tuple(state), _as_tuple(want_state)):
        torch.testing.assert_close(g, w)


@pytest.mark.slow  # four torch.compile runs: minutes of scarce GPU time, so not in the default GPU pass
@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_reduce_overhead_compile_streams_like_eager_calls(cell, backend):
    module = _module(cell, backend)
    xs = torch.randn(STEPS, 1, B, I, device="cuda")
    want_y, want_state = _eager(module, xs, cell)

    step = torch.compile(module, mode="reduce-overhead", fullgraph=True)
    state, got = _zeros(cell), []
    with torch.no_grad():
        for t in range(STEPS):
            torch.compiler.cudagraph_mark_step_begin()
            y, state = step(xs[t], state)
            # cudagraph trees reuse output memory on the next replay: keep copies
            got.append(y.clone())
            state = tuple(s.clone() for s in state) if isinstance(state, tuple) else state.clone()
    torch.testing.assert_close(torch.stack(got), want_y)
    for g, w in zip(_as_tuple(state), _as_tuple(want_state)):
        torch.testing.assert_close(g, w)
