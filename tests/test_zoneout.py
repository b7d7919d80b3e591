"""zoneout= (fusedrnn/zoneout.py): the masks, the oracle, the Triton kernels against it, the modules.

- The masks: the torch Philox equals Triton's tl.rand bit for bit (so the reference and the
  kernels zone the same elements); the rate is p, masks are independent across steps, rows,
  elements, h and c, layers and directions; training is reproducible under torch.manual_seed.
- The oracle (fusedrnn.reference): a zoned step is exactly h_t = m h_{t-1} + (1 - m) h~_t, and
  the average over masks of a training step is the evaluation step (m = p).
- The Triton kernels (interpreter on the CPU; the GPU with FUSEDRNN_TEST_DEVICE=cuda): forward,
  final states and every gradient against the fp64 oracle with the same seeds, in training and
  evaluation, with lengths, reverse and residual; the masks are regenerated in the backward.
- The modules: zoneout= validation, repr, state_dict unchanged, unconvert refuses, the stack on
  every backend that runs it, torch.compile(fullgraph=True). (ONNX export in evaluation:
  tests/test_export.py.)
"""

from __future__ import annotations

import pytest
import torch
from executors import executor_device, executor_params
from helpers import (assert_fp32_close, compiled_and_eager, make_cell_inputs, run_cell_with_grads,
                     zoneout_reference_call)

import fusedrnn
import fusedrnn.functional as F
from fusedrnn import reference, zoneout
from fusedrnn.zoneout import Zoneout

CELLS = ("gru", "lstm", "rnn_tanh", "rnn_relu")


# ------------------------------------------------------------------------------------------------
# The masks
# ------------------------------------------------------------------------------------------------


def test_torch_philox_is_triton_rand_bit_for_bit():
    pytest.importorskip("triton")
    import triton
    import triton.language as tl

    from fusedrnn.kernels.common import interpreter_on

    if not interpreter_on():
        pytest.skip("compares with Triton's interpreter (TRITON_INTERPRET=1)")

    @triton.jit
    def rand_kernel(seed_ptr, off_ptr, out_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        tl.store(out_ptr + i, tl.rand(tl.load(seed_ptr), tl.load(off_ptr + i)))

    g = torch.Generator().manual_seed(3)
    for seed in (0, 1, 2**31 + 5, 2**40 + 77, zoneout.SEED_HIGH - 1):
        s = torch.tensor([seed], dtype=torch.int64)
        off = torch.randint(0, 2**42, (512,), generator=g, dtype=torch.int64)
        off[:8] = torch.arange(8)
        off[8] = 2**32 - 1
        off[9] = 2**32
        got = torch.empty(512)
        rand_kernel[(1,)](s, off, got, 512)
        assert torch.equal(zoneout.uniform(s[0], off), got), seed


def _philox_words(seed: int, offset: int) -> int:
    """Philox 4x32-10's first word in Python integers (the definition, independent of torch)."""
    m = 0xFFFFFFFF
    c = [offset & m, (offset >> 32) & m, 0, 0]
    k0, k1 = seed & m, (seed >> 32) & m
    for _ in range(10):
        pb, pa = 0xCD9E8D57 * c[2], 0xD2511F53 * c[0]
        c = [(pb >> 32) ^ c[1] ^ k0, pb & m, (pa >> 32) ^ c[3] ^ k1, pa & m]
        k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
    return c[0]


def test_cuda_kernels_philox_is_zoneout_uniform_bit_for_bit():
    """csrc/ptx.cuh's philox_word0 / philox_uniform (what the CUDA kernels zone with), as the CPU
    emulator builds them, equal fusedrnn.zoneout.uniform bit for bit: small and large offsets (the
    high counter word, past 2^32 and 2^40), seeds with high bits set (and the int64 sign bit), and
    the first word equals a plain-integer Philox."""
    import cuda_emu

    reason = cuda_emu.unavailable_reason()
    if reason is not None:
        pytest.skip(f"CUDA emulator: {reason}")
    emu = cuda_emu.load()
    g = torch.Generator().manual_seed(5)
    seed_values = (0, 1, 1234567, 2**31 + 5, 2**32 - 1, 2**32, 2**40 + 77, zoneout.SEED_HIGH - 1, 2**63 - 1, -1, -2**63)
    for seed in seed_values:
        off = torch.randint(0, 2**62, (4096,), generator=g, dtype=torch.int64)
        off[:4096 // 2] = torch.randint(0, 2**33, (4096 // 2,), generator=g, dtype=torch.int64)
        off[:16] = torch.arange(16)
        off[16:20] = torch.tensor([2**32 - 1, 2**32, 2**32 + 1, 2**63 - 1])
        seeds = torch.full_like(off, seed)
        words, got = emu.philox(seeds, off)
        want = zoneout.uniform(torch.tensor(seed, dtype=torch.int64), off)
        assert got.dtype == torch.float32 and torch.equal(got, want), seed
        for i in (0, 1, 15, 16, 17, 19, 100, 4000):
            assert int(words[i]) & 0xFFFFFFFF == _philox_words(seed & (2**64 - 1), int(off[i])), (seed, i)


def test_mask_rate_and_independence():
    seeds = zoneout.draw_seeds(2, "cpu")
    p, B, W, T = 0.3, 64, 96, 40
    masks = torch.stack([zoneout.keep_mask(seeds[0, 0], p, t, B, W, "cpu") for t in range(T)]).double()
    n = masks.numel()
    assert abs(masks.mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5

    def corr(a, b):
        a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
        return (a @ b / (a.norm() * b.norm())).item()

    bound = 4 / (masks[0].numel()) ** 0.5
    assert abs(corr(masks[1:], masks[:-1])) < bound / 4  # across steps (T-1 times more samples)
    assert abs(corr(masks[:, 1:], masks[:, :-1])) < bound  # across batch rows
    assert abs(corr(masks[..., 1:], masks[..., :-1])) < bound  # across elements
    other = torch.stack([zoneout.keep_mask(seeds[0, 1], p, t, B, W, "cpu") for t in range(T)]).double()
    assert abs(corr(masks, other)) < bound / 4  # h and c (two seeds)
    layer2 = torch.stack([zoneout.keep_mask(seeds[1, 0], p, t, B, W, "cpu") for t in range(T)]).double()
    assert abs(corr(masks, layer2)) < bound / 4  # layers and directions (their own seeds)
    assert zoneout.keep_mask(seeds[0, 0], 0.0, 0, B, W, "cpu").sum() == 0


def test_seeds_follow_torch_manual_seed():
    torch.manual_seed(5)
    a = zoneout.draw_seeds(3, "cpu")
    b = zoneout.draw_seeds(3, "cpu")
    torch.manual_seed(5)
    assert torch.equal(zoneout.draw_seeds(3, "cpu"), a)
    assert not torch.equal(a, b)
    assert a.dtype == torch.int64 and (a >= 0).all()


@pytest.mark.parametrize("value,cell,ok", [
    (0.0, "gru", (0.0, 0.0)), (0.25, "lstm", (0.25, 0.25)), ((0.1, 0.5), "lstm", (0.1, 0.5)), (0, "rnn_tanh", (0.0, 0.0)),
    (1.0, "gru", None), (-0.1, "gru", None), (True, "gru", None), ("0.1", "gru", None), ((0.1, 0.2), "gru", None),
    ((0.1,), "lstm", None), ((0.1, 1.5), "lstm", None), (float("nan"), "gru", None),
])
def test_check_zoneout(value, cell, ok):
    if ok is None:
        with pytest.raises(ValueError, match="zoneout"):
            zoneout.check_zoneout(value, cell)
    else:
        assert zoneout.check_zoneout(value, cell) == ok


# ------------------------------------------------------------------------------------------------
# The oracle
# ------------------------------------------------------------------------------------------------


def _call(call, cell, d, lens=None, reverse=False):
    if cell == "lstm":
        return call(d["x"], d["h0"], d["c0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"], None, d["residual"], lens,
                    reverse)
    return call(d["x"], d["h0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"], d["residual"], lens, reverse)


@pytest.mark.parametrize("cell", CELLS)
def test_reference_zoned_step_is_the_definition(cell):
    """One step: the zoned states are the mask's selection between the old state and the
    ordinary step's (torch's cell modules compute the ordinary step)."""
    d, _ = make_cell_inputs(cell, 1, 6, 5, 8, torch.float64)
    seeds = torch.tensor([11, 12], dtype=torch.int64)
    zo = Zoneout(0.4, 0.6, seeds)
    got = _call(zoneout_reference_call(cell, zo), cell, d)
    plain = _call(zoneout_reference_call(cell, None), cell, d)
    m_h = zoneout.keep_mask(seeds[0], 0.4, 0, 6, 8, "cpu")
    assert 0 < m_h.sum() < m_h.numel()
    want_h = torch.where(m_h, d["h0"], plain[1])
    torch.testing.assert_close(got[1], want_h, rtol=0, atol=0)
    torch.testing.assert_close(got[0][0], want_h, rtol=0, atol=0)  # the output is the zoned state
    if cell == "lstm":
        m_c = zoneout.keep_mask(seeds[1], 0.6, 0, 6, 8, "cpu")
        torch.testing.assert_close(got[2], torch.where(m_c, d["c0"], plain[2]), rtol=0, atol=0)
    ev = _call(zoneout_reference_call(cell, Zoneout(0.4, 0.6)), cell, d)
    torch.testing.assert_close(ev[1], 0.4 * d["h0"] + 0.6 * plain[1])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_evaluation_is_the_expectation_of_training(cell):
    """Averaged over many independent masks (one batch row each, same inputs), a training step
    is the evaluation step."""
    B = 4000
    d, _ = make_cell_inputs(cell, 1, 1, 3, 4, torch.float64)
    d = {k: (v.expand(v.shape[0], B, *v.shape[2:]).contiguous() if k in ("x", "residual") else
             v.expand(B, v.shape[1]).contiguous() if k in ("h0", "c0") else v) for k, v in d.items() if v is not None}
    d.setdefault("residual", None)
    d.setdefault("b_ih", None)
    d.setdefault("b_hh", None)
    train = _call(zoneout_reference_call(cell, Zoneout(0.3, 0.3, torch.tensor([7, 8]))), cell, d)
    ev = _call(zoneout_reference_call(cell, Zoneout(0.3, 0.3)), cell, d)
    spread = (ev[1][0] - _call(zoneout_reference_call(cell, None), cell, d)[1][0]).abs().max().item() / 0.7  # |h0 - h~|
    assert (train[1].mean(0) - ev[1][0]).abs().max().item() < 5 * spread * (0.21 / B) ** 0.5 + 1e-12


# ------------------------------------------------------------------------------------------------
# The Triton kernels against the oracle
# ------------------------------------------------------------------------------------------------

def _interpreter_skip():
    try:
        from fusedrnn.kernels.common import interpreter_on
    except ImportError as e:  # Triton missing
        return f"Triton cannot be imported ({e})"
    return None if interpreter_on() else "the Triton interpreter is off (FUSEDRNN_TEST_DEVICE=cuda)"


EXECUTORS = executor_params("triton", "interpreter", _interpreter_skip())
executor = pytest.fixture(params=EXECUTORS)(lambda request: request.param)

KERNEL_CASES = [
    # cell, T, B, I, H, residual, lengths, reverse, bias, p_h, p_c, training, strategy
    ("gru", 7, 3, 5, 24, False, False, False, True, 0.3, 0.3, True, "persistent"),
    ("gru", 9, 5, 4, 40, True, True, True, True, 0.5, 0.5, True, "batch_tile"),
    ("gru", 5, 3, 4, 17, False, True, False, False, 0.25, 0.25, False, None),
    ("lstm", 7, 3, 5, 24, False, True, True, True, 0.3, 0.6, True, "persistent"),
    ("lstm", 6, 4, 3, 16, True, False, False, True, 0.0, 0.4, True, "batch_tile"),
    ("lstm", 6, 4, 3, 16, False, False, True, True, 0.35, 0.0, True, None),
    ("lstm", 5, 3, 4, 17, True, True, False, True, 0.2, 0.45, False, "persistent"),
    ("rnn_tanh", 7, 3, 5, 24, True, True, False, True, 0.3, 0.3, True, "persistent"),
    ("rnn_relu", 6, 4, 3, 16, False, False, True, True, 0.4, 0.4, False, "batch_tile"),
]


def _triton_call(cell, zo, strategy):
    from fusedrnn.backends import triton as triton_ops

    if cell == "lstm":
        return lambda x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, res, lens, rev: triton_ops.lstm(
            x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, res, lens, rev, zo, strategy=strategy)
    if cell == "gru":
        return lambda *a: triton_ops.gru(*a, zo, strategy=strategy)
    return lambda *a: triton_ops.rnn(cell, *a, zo, strategy=strategy)


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: "-".join(str(v) for v in c))
def test_triton_matches_reference(executor, case):
    cell, T, B, I, H, res, lengths, reverse, bias, p_h, p_c, training, strategy = case  # noqa: E741
    if executor == "gpu":  # realistic sizes where the kernels run for real
        T, B, I, H = T * 16, B * 8, I * 16, H * 16
    dev = executor_device(executor)
    d, lens = make_cell_inputs(cell, T, B, I, H, torch.float64, bias=bias, residual=res, lengths=lengths)
    d = {k: (v.to(dev) if v is not None else None) for k, v in d.items()}
    seeds = torch.tensor([1234567, 2**40 + 3], dtype=torch.int64, device=dev) if training else None
    zo = Zoneout(p_h, p_c, seeds)
    want = run_cell_with_grads(cell, zoneout_reference_call(cell, zo), d, lens, reverse)
    plain = run_cell_with_grads(cell, zoneout_reference_call(cell, None), d, lens, reverse)
    assert (want["out0"] - plain["out0"]).abs().max() > 1e-3  # zoneout changed the result
    got = run_cell_with_grads(cell, _triton_call(cell, zo, strategy), d, lens, reverse, dtype=torch.float32)
    assert_fp32_close(got, want, f"{cell} zoneout {p_h}/{p_c} training={training}")


def test_triton_fp64_gradcheck_with_zoneout(executor):
    from fusedrnn.backends import triton as triton_ops

    dev = executor_device(executor)
    d, lens = make_cell_inputs("lstm", 4, 3, 3, 8, torch.float64, lengths=True)
    zo = Zoneout(0.3, 0.5, torch.tensor([5, 6], device=dev))
    names = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")
    leaves = [d[k].to(dev).requires_grad_() for k in names]

    def f(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        return triton_ops.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, None, lens, True, zo)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# The modules
# ------------------------------------------------------------------------------------------------

MODULES = {"gru": fusedrnn.GRU, "lstm": fusedrnn.LSTM, "rnn_tanh": fusedrnn.RNN}


def _module_reference(m, x, h0=None):
    """The stack composed by hand from the oracle, with the seeds the module draws."""
    D = 2 if m.bidirectional else 1
    n = m.num_layers * D
    p_h, p_c = m._zoneout_p
    seeds = zoneout.draw_seeds(n, x.device) if m.training else None
    layer_input, finals = x, []
    cell = m._cell
    for layer in range(m.num_layers):
        outs = []
        for direction in range(D):
            idx = layer * D + direction
            sfx = "_reverse" if direction else ""
            w = [getattr(m, f"{k}_l{layer}{sfx}") for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            zo = Zoneout(p_h, p_c, None if seeds is None else seeds[idx])
            H = m.hidden_size
            h = torch.zeros(x.shape[1], H, dtype=x.dtype)
            if cell == "lstm":
                y, h_n, c_n = reference.lstm_reference(layer_input, h, h, *w, zoneout=zo, reverse=direction == 1)
                finals.append((h_n, c_n))
            else:
                fn = reference.gru_reference if cell == "gru" else reference.rnn_reference
                y, h_n = fn(layer_input, h, *w, zoneout=zo, reverse=direction == 1)
                finals.append((h_n,))
            outs.append(y)
        layer_input = torch.cat(outs, -1)
    return layer_input, finals


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh"])
@pytest.mark.parametrize("training", [True, False])
def test_module_stack_is_the_oracle_composed(cell, training):
    torch.manual_seed(0)
    zo = (0.2, 0.5) if cell == "lstm" else 0.3
    m = MODULES[cell](4, 6, num_layers=2, bidirectional=True, zoneout=zo).double().train(training)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    torch.manual_seed(9)
    out = m(x)
    torch.manual_seed(9)
    want, finals = _module_reference(m, x)
    torch.testing.assert_close(out[0], want)
    h_n = out[1][0] if cell == "lstm" else out[1]
    torch.testing.assert_close(h_n, torch.stack([f[0] for f in finals]))
    if cell == "lstm":
        torch.testing.assert_close(out[1][1], torch.stack([f[1] for f in finals]))


def test_module_training_reproducible_and_fresh_per_call():
    m = fusedrnn.GRU(4, 6, zoneout=0.4)
    x = torch.randn(6, 3, 4)
    torch.manual_seed(1)
    a = m(x)[0]
    b = m(x)[0]
    torch.manual_seed(1)
    torch.testing.assert_close(m(x)[0], a, rtol=0, atol=0)
    assert not torch.equal(a, b)  # new masks every call
    m.eval()
    torch.testing.assert_close(m(x)[0], m(x)[0], rtol=0, atol=0)


def test_module_options_and_contract():
    m = fusedrnn.LSTM(3, 5, num_layers=2, zoneout=(0.1, 0.3))
    assert "zoneout=(0.1, 0.3)" in repr(m)
    assert m.zoneout == (0.1, 0.3) and m._zoneout_p == (0.1, 0.3)
    assert set(m.state_dict()) == set(torch.nn.LSTM(3, 5, num_layers=2).state_dict())  # no extra parameters
    with pytest.raises(ValueError, match="zoneout"):
        fusedrnn.GRU(3, 5, zoneout=(0.1, 0.3))
    with pytest.raises(ValueError, match="zoneout"):
        fusedrnn.RNN(3, 5, zoneout=1.0)
    with pytest.raises(ValueError, match="zoneout"):
        m.zoneout = -0.5
    with pytest.raises(ValueError, match="zoneout=0.2"):
        fusedrnn.unconvert(fusedrnn.GRU(3, 5, zoneout=0.2))
    g = fusedrnn.GRU(3, 5, zoneout=0.2)
    g.zoneout = 0.0  # off again: torch.nn's own forward, unconvert works
    assert type(fusedrnn.unconvert(g)) is torch.nn.GRU
    assert "zoneout" not in repr(fusedrnn.GRU(3, 5))


def test_module_on_torch_backend_refuses():
    m = fusedrnn.GRU(3, 5, zoneout=0.2, backend="torch")
    with pytest.raises(ValueError, match="zoneout"):
        m(torch.randn(4, 2, 3))


def test_functional_zoneout_and_validation():
    d, _ = make_cell_inputs("gru", 4, 2, 3, 5, torch.float64)
    zo = Zoneout(0.3, 0.3, torch.tensor([1, 2]))
    y, h = F.gru(d["x"], d["h0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"], zoneout=zo)
    want = reference.gru_reference(d["x"], d["h0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"], zoneout=zo)
    torch.testing.assert_close(y, want[0])
    with pytest.raises(ValueError, match="zoneout"):
        F.gru(d["x"], d["h0"], d["w_ih"], d["w_hh"], zoneout=0.3)
    with pytest.raises(ValueError, match="zoneout.p_h"):
        F.gru(d["x"], d["h0"], d["w_ih"], d["w_hh"], zoneout=Zoneout(1.5, 0.0))
    with pytest.raises(ValueError, match="zoneout.seeds"):
        F.gru(d["x"], d["h0"], d["w_ih"], d["w_hh"], zoneout=Zoneout(0.5, 0.0, torch.tensor([1.0, 2.0])))
    with pytest.raises(ValueError, match="zoneout"):
        F.gru(d["x"], d["h0"], d["w_ih"], d["w_hh"], zoneout=Zoneout(0.5, 0.5), backend="torch")
    # p = 0: no zoneout at all, torch's op may run it
    y0, _ = F.gru(d["x"], d["h0"], d["w_ih"], d["w_hh"], zoneout=Zoneout(0.0, 0.0), backend="torch")
    torch.testing.assert_close(y0, F.gru(d["x"], d["h0"], d["w_ih"], d["w_hh"], backend="torch")[0])


def test_module_triton_matches_reference_backend(executor):
    """The whole module on the Triton kernels equals the module on the reference: the same seeds
    (one draw of torch's generator) give the same masks; forward and every parameter gradient."""
    dev = executor_device(executor)
    torch.manual_seed(0)
    ref = fusedrnn.LSTM(4, 8, num_layers=2, zoneout=(0.3, 0.4), backend="reference").to(dev)
    tri = fusedrnn.LSTM(4, 8, num_layers=2, zoneout=(0.3, 0.4), backend="triton").to(dev)
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 4, device=dev)
    lengths = torch.tensor([6, 2, 4], device=dev)
    outs = []
    for m in (ref, tri):
        torch.manual_seed(3)
        y, (h, c) = m(x, lengths=lengths)
        (y.square().sum() + h.sum() + c.sum()).backward()
        outs.append([y, h, c] + [p.grad for p in m.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cls,zo", [(fusedrnn.GRU, 0.3), (fusedrnn.LSTM, (0.2, 0.4)), (fusedrnn.RNN, 0.3)],
                         ids=["GRU", "LSTM", "RNN"])
def test_torch_compile_fullgraph(cls, zo, training):
    """(Like torch's own RNN modules, ours need allow_rnn=True to be traced; see test_torch_compile.py.)"""
    m = cls(4, 6, num_layers=2, zoneout=zo).train(training)
    x = torch.randn(5, 2, 4, requires_grad=True)
    got, want = compiled_and_eager(m, x, seed=4)
    torch.testing.assert_close(got, want)
    (gc,) = torch.autograd.grad(got.sum(), x)
    (ge,) = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(gc, ge)
