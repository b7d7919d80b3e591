"""LayerNorm cells (fusedrnn/layernorm.py): the oracle, the functional seam, LayerNormLSTM / LayerNormGRU.

- The oracle (fusedrnn.reference with layernorm=) against an independent hand-written loop, one
  batch row and one step at a time with torch.nn.functional.layer_norm, in float64: outputs, final
  states and every gradient (the LayerNorm parameters included), with lengths, reverse, residual.
- The invariance LayerNorm gives: scaling W_hh (or W_ih) by a positive constant leaves the outputs
  unchanged (exactly with eps = 0), which the plain cells do not.
- The fused Triton kernels (LN_hh and LN_c in the step; the interpreter on the CPU, a GPU with
  FUSEDRNN_TEST_DEVICE=cuda): forward, final states and every gradient against the fp64 oracle, in
  float64 and float32, one and several unit blocks and batch tiles, lengths, reverse, residual, no
  bias, zoneout; the modules on backend="triton" equal the reference modules.
- The modules: the 2-layer bidirectional stack is the oracle composed by hand (with zoneout and
  dropconnect too); parameters, names, init, state_dict from torch.nn; proj_size; backends that
  decline; PackedSequence; autocast; torch.compile; convert / unconvert. (ONNX export:
  tests/test_export.py; weights-only checkpoints: tests/test_serialization.py.)
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as TF
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from helpers import compiled_and_eager

import fusedrnn
import fusedrnn.functional as F
from fusedrnn import layernorm as ln_mod
from fusedrnn import reference, zoneout
from fusedrnn.layernorm import LayerNorm

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1}
DT = torch.float64


# ------------------------------------------------------------------------------------------------
# The independent loop
# ------------------------------------------------------------------------------------------------


def _ln(v, w, b):
    return TF.layer_norm(v, (v.shape[-1],), w, b, eps=1e-5)


def hand_loop(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, ln, lengths=None, reverse=False, residual=None):
    """One row, one step at a time; torch.nn.LSTMCell / GRUCell math with LayerNorm as specified."""
    T, B = x.shape[0], x.shape[1]
    H = h0.shape[1]
    out = [[x.new_zeros(H) for _ in range(B)] for _ in range(T)]
    h_fin, c_fin = [], []
    for b in range(B):
        L = T if lengths is None else int(lengths[b])
        h = h0[b]
        c = c0[b] if c0 is not None else None
        for t in (range(L - 1, -1, -1) if reverse else range(L)):
            gi = _ln(w_ih @ x[t, b], ln.ih_weight, ln.ih_bias) + (0 if b_ih is None else b_ih)
            gh = _ln(w_hh @ h, ln.hh_weight, ln.hh_bias) + (0 if b_hh is None else b_hh)
            if cell == "lstm":
                i, f, g, o = (gi + gh).chunk(4)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(_ln(c, ln.c_weight, ln.c_bias))
            elif cell == "gru":
                i_r, i_z, i_n = gi.chunk(3)
                h_r, h_z, h_n = gh.chunk(3)
                r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
                n = torch.tanh(i_n + r * h_n)
                h = (1 - z) * n + z * h
            else:
                h = torch.tanh(gi + gh)
            out[t][b] = h if residual is None else h + residual[t, b]
        h_fin.append(h)
        c_fin.append(c)
    y = torch.stack([torch.stack(row) for row in out])
    finals = [torch.stack(h_fin)] + ([torch.stack(c_fin)] if cell == "lstm" else [])
    return [y] + finals


def make_inputs(cell, T, B, I, H, bias=True, residual=False, seed=0):  # noqa: E741
    g = torch.Generator().manual_seed(seed)
    G = GATES[cell] * H

    def rnd(*shape, s=1.0):
        return torch.randn(*shape, generator=g, dtype=DT) * s

    d = dict(x=rnd(T, B, I), h0=rnd(B, H, s=0.5), w_ih=rnd(G, I, s=H**-0.5), w_hh=rnd(G, H, s=H**-0.5),
             b_ih=rnd(G, s=0.3) if bias else None, b_hh=rnd(G, s=0.3) if bias else None,
             residual=rnd(T, B, H) if residual else None,
             ln_ih_w=1 + rnd(G, s=0.3), ln_ih_b=rnd(G, s=0.2), ln_hh_w=1 + rnd(G, s=0.3), ln_hh_b=rnd(G, s=0.2))
    if cell == "lstm":
        d.update(c0=rnd(B, H, s=0.5), ln_c_w=1 + rnd(H, s=0.3), ln_c_b=rnd(H, s=0.2))
    return d


def _layernorm(a):
    return LayerNorm(a["ln_ih_w"], a["ln_ih_b"], a["ln_hh_w"], a["ln_hh_b"], a.get("ln_c_w"), a.get("ln_c_b"))


def _oracle(cell, a, lengths, reverse, zo=None):
    kw = dict(residual=a["residual"], lengths=lengths, reverse=reverse, layernorm=_layernorm(a), zoneout=zo)
    if cell == "lstm":
        return reference.lstm_reference(a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], **kw)
    if cell == "gru":
        return reference.gru_reference(a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], **kw)
    return reference.rnn_reference(a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], **kw)


def _hand(cell, a, lengths, reverse):
    return hand_loop(cell, a["x"], a["h0"], a.get("c0"), a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], _layernorm(a),
                     lengths, reverse, a["residual"])


def _with_grads(fn, cell, d, lengths, reverse):
    leaves = {k: v.clone().requires_grad_() for k, v in d.items() if v is not None}
    a = {k: leaves.get(k) for k in d}
    outs = list(fn(cell, a, lengths, reverse))
    g = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=DT).to(o.device)).sum() for o in outs)
    names = sorted(leaves)
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return [o.detach() for o in outs], dict(zip(names, grads))


ORACLE_CASES = [  # cell, lengths, reverse, residual, bias
    ("lstm", False, False, False, True),
    ("lstm", True, True, True, True),
    ("lstm", True, False, False, False),
    ("gru", False, True, False, True),
    ("gru", True, False, True, True),
    ("gru", True, True, False, False),
    ("rnn_tanh", True, True, True, True),
]


@pytest.mark.parametrize("case", ORACLE_CASES, ids=lambda c: "-".join(str(v) for v in c))
def test_oracle_matches_independent_loop(case):
    cell, has_lengths, reverse, residual, bias = case
    T, B = 6, 4
    d = make_inputs(cell, T, B, 5, 7, bias=bias, residual=residual)
    lengths = torch.tensor([6, 2, 5, 1]) if has_lengths else None
    got, g_got = _with_grads(_oracle, cell, d, lengths, reverse)
    want, g_want = _with_grads(_hand, cell, d, lengths, reverse)
    for o, w in zip(got, want):
        torch.testing.assert_close(o, w, rtol=1e-10, atol=1e-12)
    assert g_got.keys() == g_want.keys() and {"ln_ih_w", "ln_hh_b"} <= g_got.keys()
    for k in g_want:
        torch.testing.assert_close(g_got[k], g_want[k], rtol=1e-9, atol=1e-11, msg=lambda m: f"d_{k}: {m}")
        if k.startswith("ln_"):
            assert g_want[k].abs().max() > 1e-3, k  # the LayerNorm parameters do get gradients


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_oracle_low_precision_computes_in_float32(cell):
    d = make_inputs(cell, 5, 3, 4, 8)
    want = _oracle(cell, d, None, False)
    half = {k: None if v is None else v.to(torch.bfloat16) for k, v in d.items()}
    got = _oracle(cell, half, None, False)
    assert all(o.dtype == torch.bfloat16 for o in got)
    exact = _oracle(cell, {k: None if v is None else v.to(torch.bfloat16).double() for k, v in d.items()}, None, False)
    for g, e, w in zip(got, exact, want):
        assert (g.double() - e).abs().max() <= 2 * 2.0**-8 * max(1.0, e.abs().max().item())  # one bf16 rounding
        assert (w - e).abs().max() > 0  # (the inputs' rounding does change the result)


def test_lstm_cell_state_is_carried_unnormalised():
    """c_n is c_t itself, not LN_c(c_t): after one step c_1 does not depend on LN_c, h_1 does."""
    d = make_inputs("lstm", 1, 3, 4, 6)
    one = _oracle("lstm", d, None, False)
    other = _oracle("lstm", dict(d, ln_c_w=2 * d["ln_c_w"], ln_c_b=d["ln_c_b"] + 0.5), None, False)
    torch.testing.assert_close(one[2], other[2], rtol=0, atol=0)
    assert (one[1] - other[1]).abs().max() > 1e-2
    gates = (_ln(d["x"][0] @ d["w_ih"].t(), d["ln_ih_w"], d["ln_ih_b"]) + d["b_ih"]
             + _ln(d["h0"] @ d["w_hh"].t(), d["ln_hh_w"], d["ln_hh_b"]) + d["b_hh"])
    i, f, g, o = gates.chunk(4, 1)
    torch.testing.assert_close(one[2], torch.sigmoid(f) * d["c0"] + torch.sigmoid(i) * torch.tanh(g))


# ------------------------------------------------------------------------------------------------
# The invariance LayerNorm gives
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls,plain", [(fusedrnn.LayerNormLSTM, fusedrnn.LSTM), (fusedrnn.LayerNormGRU, fusedrnn.GRU)],
                         ids=["LSTM", "GRU"])
@pytest.mark.parametrize("which", ["weight_hh", "weight_ih"])
def test_scaling_a_weight_leaves_the_outputs_unchanged(cls, plain, which, monkeypatch):
    """LN(c v) = LN(v) for c > 0 (exactly when eps = 0; within eps's effect otherwise): scaling
    W_hh (or W_ih) of every layer-direction changes nothing. The plain cells do change."""
    torch.manual_seed(0)
    m = cls(4, 6, num_layers=2, bidirectional=True).double()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("layernorm_"):
                p.add_(torch.randn_like(p) * 0.3)
    p_m = plain(4, 6, num_layers=2, bidirectional=True).double()
    p_m.load_state_dict(m.state_dict(), strict=False)
    x = torch.randn(5, 3, 4, dtype=DT)
    h0 = torch.randn(4, 3, 6, dtype=DT)
    hx = (h0, torch.randn(4, 3, 6, dtype=DT)) if cls is fusedrnn.LayerNormLSTM else h0

    def run(module):
        y, h = module(x, hx)
        return [y] + (list(h) if isinstance(h, tuple) else [h])

    def scaled(module):
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name.startswith(which):
                    p.mul_(3.7)
        return module

    base, base_plain = run(m), run(p_m)
    scaled(m)
    scaled(p_m)
    got = run(m)
    for a, b in zip(got, base):
        torch.testing.assert_close(a, b, rtol=0, atol=5e-3)  # eps moves it a little
    assert max((a - b).abs().max().item() for a, b in zip(run(p_m), base_plain)) > 0.05
    assert max((a - b).abs().max().item() for a, b in zip(base, base_plain)) > 0.05  # LN changes the cell
    monkeypatch.setattr(ln_mod, "EPS", 0.0)
    with_eps0 = run(m)
    scaled(m)
    for a, b in zip(run(m), with_eps0):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# The modules
# ------------------------------------------------------------------------------------------------

CLASSES = {"lstm": fusedrnn.LayerNormLSTM, "gru": fusedrnn.LayerNormGRU}
TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def _randomise_layernorm(m):
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("layernorm_"):
                p.add_(torch.randn_like(p) * 0.3)
    return m


def composed(m, x, hx, lengths=None):
    """The module's stack composed by hand from the oracle: same dropconnect masks and zoneout seeds
    as the module draws (masks first, in _flat_weights_names order, then the seeds)."""
    cell, D, H = m._cell, 2 if m.bidirectional else 1, m.hidden_size
    weights = {n: getattr(m, n) for n in m._flat_weights_names}
    if m.training and m.dropconnect > 0:
        keep = 1 - m.dropconnect
        for n in m._flat_weights_names:
            if n.startswith("weight_hh"):
                w = weights[n]
                weights[n] = w * (torch.bernoulli(torch.full_like(w, keep)) / keep)
    p_h, p_c = m._zoneout_p
    zoned = (p_h, p_c) != (0.0, 0.0)
    seeds = zoneout.draw_seeds(m.num_layers * D, x.device) if zoned and m.training else None
    layer_input, finals = x, []
    for layer in range(m.num_layers):
        outs = []
        for d in range(D):
            idx, sfx = layer * D + d, "_reverse" if d else ""
            w = [weights.get(f"{k}_l{layer}{sfx}") for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            kinds = ("ih", "hh", "c") if cell == "lstm" else ("ih", "hh")
            ln = LayerNorm(*(getattr(m, f"layernorm_{k}_{p}_l{layer}{sfx}") for k in kinds for p in ("weight", "bias")))
            zo = Zoneout(p_h, p_c, None if seeds is None else seeds[idx]) if zoned else None
            res = layer_input[..., d * H:(d + 1) * H] if layer in m._residual_layers else None
            kw = dict(residual=res, lengths=lengths, reverse=d == 1, zoneout=zo, layernorm=ln)
            if cell == "lstm":
                y, h_n, c_n = reference.lstm_reference(layer_input, hx[0][idx], hx[1][idx], *w, **kw)
                finals.append((h_n, c_n))
            else:
                y, h_n = reference.gru_reference(layer_input, hx[idx], *w, **kw)
                finals.append((h_n,))
            outs.append(y)
        layer_input = torch.cat(outs, -1)
    h_n = torch.stack([f[0] for f in finals])
    return layer_input, ((h_n, torch.stack([f[1] for f in finals])) if cell == "lstm" else h_n)


Zoneout = zoneout.Zoneout


def _states(cell, L, B, H):
    h = torch.randn(L, B, H, dtype=DT)
    return (h, torch.randn(L, B, H, dtype=DT)) if cell == "lstm" else h


def _flat(out):
    y, h = out
    return [y] + (list(h) if isinstance(h, tuple) else [h])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("extras", [{}, dict(residual=1), dict(zoneout=0.3), dict(dropconnect=0.4, zoneout=0.2)],
                         ids=["plain", "residual", "zoneout", "dropconnect+zoneout"])
@pytest.mark.parametrize("training", [True, False])
def test_module_is_the_oracle_composed(cell, extras, training):
    torch.manual_seed(0)
    m = _randomise_layernorm(CLASSES[cell](6, 6, num_layers=2, bidirectional=True, **extras)).double().train(training)
    B = 3
    x = torch.randn(5, B, 6, dtype=DT)
    hx = _states(cell, 4, B, 6)
    lengths = torch.tensor([5, 2, 4])
    for lens in (None, lengths):
        torch.manual_seed(11)
        got = _flat(m(x, hx, lengths=lens))
        loss = sum((o * (k + 1)).sum() for k, o in enumerate(got))
        g_got = torch.autograd.grad(loss, list(m.parameters()))
        torch.manual_seed(11)
        want = _flat(composed(m, x, hx, lens))
        loss = sum((o * (k + 1)).sum() for k, o in enumerate(want))
        g_want = torch.autograd.grad(loss, list(m.parameters()))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for (n, _), a, b in zip(m.named_parameters(), g_got, g_want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda s: f"{n}: {s}")
    if extras.get("zoneout") and training:  # the random draws matter: another seed, another result
        torch.manual_seed(12)
        assert not torch.equal(_flat(m(x, hx, lengths=lengths))[0], got[0])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_parameters_names_shapes_and_init(cell):
    torch.manual_seed(3)
    t = TORCH[cell](3, 5, num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    m = CLASSES[cell](3, 5, num_layers=2, bidirectional=True)
    G = GATES[cell] * 5
    assert isinstance(m, fusedrnn.LSTM if cell == "lstm" else fusedrnn.GRU)
    assert m._flat_weights_names == t._flat_weights_names
    sd = m.state_dict()
    torch_keys = list(t.state_dict())
    assert list(sd)[: len(torch_keys)] == torch_keys
    for k in torch_keys:  # same seed, same values as torch.nn
        assert torch.equal(sd[k], t.state_dict()[k]), k
    kinds = ("ih", "hh", "c") if cell == "lstm" else ("ih", "hh")
    ln_keys = [f"layernorm_{k}_{p}_l{layer}{s}" for layer in range(2) for s in ("", "_reverse") for k in kinds
               for p in ("weight", "bias")]
    assert list(sd)[len(torch_keys):] == ln_keys
    for k in ln_keys:
        want = 5 if "_c_" in k else G
        assert sd[k].shape == (want,), k
        assert torch.equal(sd[k], torch.ones(want) if "_weight_" in k else torch.zeros(want)), k
    assert repr(m).startswith(f"{type(m).__name__}(3, 5, num_layers=2, bidirectional=True)")
    # torch.nn's checkpoint fills torch's four and reports exactly the LayerNorm parameters missing
    fresh = CLASSES[cell](3, 5, num_layers=2, bidirectional=True)
    result = fresh.load_state_dict(t.state_dict(), strict=False)
    assert sorted(result.missing_keys) == sorted(ln_keys) and result.unexpected_keys == []
    for k in torch_keys:
        assert torch.equal(fresh.state_dict()[k], t.state_dict()[k])
    # reset_parameters: torch's init for its four, gamma = 1 and beta = 0 again
    _randomise_layernorm(fresh)
    fresh.reset_parameters()
    for k in ln_keys:
        assert torch.equal(fresh.state_dict()[k], sd[k]), k
    assert not torch.equal(fresh.weight_hh_l0, t.weight_hh_l0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bias_false_keeps_the_layernorm_parameters(cell):
    m = CLASSES[cell](3, 4, bias=False).double()
    names = [n for n, _ in m.named_parameters()]
    assert not any(n.startswith("bias_") for n in names)
    assert "layernorm_ih_bias_l0" in names and "layernorm_hh_bias_l0" in names
    _randomise_layernorm(m)
    x, hx = torch.randn(4, 2, 3, dtype=DT), _states(cell, 1, 2, 4)
    torch.testing.assert_close(_flat(m(x, hx)), _flat(composed(m, x, hx)), rtol=1e-12, atol=1e-12)


def test_proj_size_is_refused():
    with pytest.raises(ValueError, match="proj_size"):
        fusedrnn.LayerNormLSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="proj_size"):
        fusedrnn.LayerNormLSTM(3, 4, 1, True, False, 0.0, False, 2)  # positional, as torch.nn.LSTM takes it
    with pytest.raises(ValueError, match="proj_size"):
        fusedrnn.LayerNormGRU(3, 4, proj_size=2)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("backend", ["torch", "cuda"])
def test_backends_without_layernorm_decline(cell, backend):
    m = CLASSES[cell](3, 4, backend=backend)
    x = torch.randn(4, 2, 3)
    with pytest.raises(ValueError) as e:
        m(x)
    assert "layernorm" in str(e.value)
    from fusedrnn import dispatch
    spec = dispatch.CallSpec(cell=cell, device=torch.device("cuda"), dtype=torch.float32, T=4, B=2, I=3, H=4,
                             P=4, has_residual=False, has_lengths=False, reverse=False, has_proj=False,
                             layernorm=True)
    reasons = dispatch.BACKENDS[backend].reasons(spec, forced=True)
    assert any("layernorm" in r.lower() for r in reasons), reasons
    assert dispatch.BACKENDS["reference"].reasons(spec, forced=True) == []


def test_auto_plans_the_reference_and_never_torchs_forward(monkeypatch):
    m = fusedrnn.LayerNormLSTM(3, 4, num_layers=2)
    called = []
    monkeypatch.setattr(torch.nn.LSTM, "forward", lambda *a, **k: called.append(1))
    y, _ = m(torch.randn(4, 2, 3))
    assert not called and y.shape == (4, 2, 4)
    plan = m._last_plan[1]
    assert [b.name for b in plan.backends] == ["reference", "reference"] and not plan.on_torch


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_functional_layernorm_and_validation(cell):
    d = make_inputs(cell, 4, 2, 3, 5)
    ln = _layernorm(d)
    fn = F.lstm if cell == "lstm" else F.gru
    states = (d["h0"], d["c0"]) if cell == "lstm" else (d["h0"],)
    args = (d["x"], *states, d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"])
    got = fn(*args, layernorm=ln)
    want = _oracle(cell, dict(d, residual=None), None, False)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (got[0] - fn(*args)[0]).abs().max() > 1e-2
    G = GATES[cell] * 5
    with pytest.raises(ValueError, match="layernorm"):
        fn(*args, layernorm=(d["ln_ih_w"],))
    with pytest.raises(ValueError, match=r"layernorm.ih_weight: expected shape"):
        fn(*args, layernorm=LayerNorm(torch.ones(G + 1, dtype=DT), *list(vars(ln).values())[1:]))
    with pytest.raises(ValueError, match=r"layernorm.hh_bias: expected dtype"):
        fn(*args, layernorm=LayerNorm(ln.ih_weight, ln.ih_bias, ln.hh_weight, ln.hh_bias.float(), ln.c_weight,
                                      ln.c_bias))
    with pytest.raises(ValueError, match=r"layernorm.ih_bias: expected device"):
        fn(*args, layernorm=LayerNorm(ln.ih_weight, ln.ih_bias.to("meta"), ln.hh_weight, ln.hh_bias, ln.c_weight,
                                      ln.c_bias))
    with pytest.raises(ValueError, match="layernorm"):
        fn(*args, layernorm=ln, backend="torch")
    if cell == "lstm":
        with pytest.raises(ValueError, match=r"layernorm.c_weight"):
            fn(*args, layernorm=LayerNorm(ln.ih_weight, ln.ih_bias, ln.hh_weight, ln.hh_bias))
        with pytest.raises(ValueError, match="layernorm"):
            fn(*args, torch.randn(5, 5, dtype=DT), layernorm=ln)  # w_hr
    else:
        with pytest.raises(ValueError, match=r"layernorm.c_weight"):
            fn(*args, layernorm=LayerNorm(ln.ih_weight, ln.ih_bias, ln.hh_weight, ln.hh_bias, torch.ones(5, dtype=DT),
                                          torch.zeros(5, dtype=DT)))


def test_backends_refuse_a_layernorm_handed_to_them_directly():
    from fusedrnn.backends import get

    d = make_inputs("gru", 3, 2, 3, 4)
    with pytest.raises(ValueError, match="layernorm"):
        get("torch").gru(d["x"], d["h0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"], None, None, False, None,
                         _layernorm(d))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_sequence_equals_padded_with_lengths(cell, batch_first):
    torch.manual_seed(0)
    m = _randomise_layernorm(CLASSES[cell](3, 4, num_layers=2, bidirectional=True, batch_first=batch_first)).double()
    x = torch.randn(3, 6, 3, dtype=DT) if batch_first else torch.randn(6, 3, 3, dtype=DT)
    lengths = torch.tensor([4, 6, 2])
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out_p, h_p = m(packed)
    y_p = pad_packed_sequence(out_p, batch_first=batch_first, total_length=6)[0]
    y_l, h_l = m(x, lengths=lengths)
    torch.testing.assert_close(y_p, y_l, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_flat((y_p, h_p))[1:], _flat((y_l, h_l))[1:], rtol=1e-12, atol=1e-12)
    # and an unbatched input is row 0 of a batch
    xu = x[0] if batch_first else x[:, 0]
    hu = m(xu)[1]
    torch.testing.assert_close(_flat((xu, hu))[1], _flat(m(xu.unsqueeze(0 if batch_first else 1)))[1].squeeze(1))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_hx_checks_are_the_modules(cell):
    m = CLASSES[cell](3, 4)
    x = torch.randn(5, 2, 3)
    bad = (torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)) if cell == "lstm" else torch.zeros(1, 3, 4)
    with pytest.raises(RuntimeError, match="Expected hidden"):
        m(x, bad)
    with pytest.raises(ValueError, match="dtype"):
        m(x, (torch.zeros(1, 2, 4, dtype=DT),) * 2 if cell == "lstm" else torch.zeros(1, 2, 4, dtype=DT))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cpu_autocast_casts_the_layernorm_parameters_with_the_weights(cell):
    torch.manual_seed(0)
    m = _randomise_layernorm(CLASSES[cell](3, 4, num_layers=2))
    x = torch.randn(5, 2, 3)
    want = m(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)[0]
    assert y.dtype == (torch.bfloat16 if cell == "lstm" else torch.float32)  # fusedrnn.LSTM/GRU's (torch's) policy
    if cell == "lstm":
        assert 0 < (y.float() - want).abs().max() <= 4 * 2.0**-8
    y.float().sum().backward()
    assert m.layernorm_hh_weight_l1.grad is not None and m.layernorm_hh_weight_l1.grad.dtype == torch.float32


def _assert_compiled_equals_eager(m, x):
    """m(x) through torch.compile(fullgraph=True) equals eager: the output and the gradients of x
    and of every parameter."""
    got, want = compiled_and_eager(m, x, seed=4)
    torch.testing.assert_close(got, want)
    params = [x] + list(m.parameters())
    gc = torch.autograd.grad(got.square().sum(), params)
    ge = torch.autograd.grad(want.square().sum(), params)
    for (n, _), a, b in zip([("x", None)] + list(m.named_parameters()), gc, ge):
        torch.testing.assert_close(a, b, msg=lambda s: f"{n}: {s}")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_compile_fullgraph(cell, training):
    torch.manual_seed(0)
    m = _randomise_layernorm(CLASSES[cell](4, 6, num_layers=2, zoneout=0.2, dropconnect=0.3)).train(training)
    x = torch.randn(5, 2, 4, requires_grad=True)
    _assert_compiled_equals_eager(m, x)


def test_convert_leaves_them_alone_and_unconvert_refuses():
    model = torch.nn.Sequential(fusedrnn.LayerNormLSTM(3, 4), torch.nn.GRU(4, 4), fusedrnn.LayerNormGRU(4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fusedrnn.convert(model)
    assert [type(m) for m in model] == [fusedrnn.LayerNormLSTM, fusedrnn.GRU, fusedrnn.LayerNormGRU]
    with pytest.raises(ValueError) as e:
        fusedrnn.unconvert(model)
    msg = str(e.value)
    assert "'0' is a fusedrnn.LayerNormLSTM" in msg and "torch.nn.LSTM cannot express" in msg
    assert "'2' is a fusedrnn.LayerNormGRU" in msg and "torch.nn.GRU cannot express" in msg
    assert type(model[1]) is fusedrnn.GRU  # nothing was changed
    with pytest.raises(ValueError, match="LayerNormLSTM"):
        fusedrnn.unconvert(fusedrnn.LayerNormLSTM(3, 4))


def test_a_replaced_layernorm_parameter_of_another_shape_is_an_error():
    m = fusedrnn.LayerNormGRU(3, 4)
    m.layernorm_hh_weight_l0 = torch.nn.Parameter(torch.ones(5))
    with pytest.raises(RuntimeError, match="layernorm_hh_weight_l0 has shape"):
        m(torch.randn(2, 1, 3))


# ------------------------------------------------------------------------------------------------
# The fused Triton kernels
# ------------------------------------------------------------------------------------------------

TRITON_CASES = [  # cell, T, B, I, H, lengths, reverse, residual, bias
    ("lstm", 4, 3, 3, 5, False, False, False, True),  # one unit block, one batch tile
    ("gru", 4, 3, 3, 5, False, False, False, True),
    ("lstm", 3, 20, 3, 70, True, True, True, True),  # two unit blocks (BH 64), two batch tiles
    ("gru", 3, 20, 3, 70, True, False, True, True),
    ("lstm", 3, 5, 4, 24, True, False, False, False),
    ("gru", 3, 5, 4, 24, False, True, False, False),
]


def _triton_executors():
    from executors import executor_params

    try:
        from fusedrnn.kernels import common
    except ImportError:  # no Triton: the executors are skipped with a reason
        return executor_params("triton", "interpreter", "Triton is not importable")
    return executor_params("triton", "interpreter", None if common.interpreter_on() else
                           "the Triton interpreter is off (FUSEDRNN_TEST_DEVICE=cuda)")


triton_executor = pytest.fixture(params=_triton_executors())(lambda request: request.param)


def _triton_call(zo=None, strategy=None):
    from fusedrnn.backends import triton as triton_ops

    def call(cell, a, lengths, reverse):
        ln = _layernorm(a)
        if cell == "lstm":
            return triton_ops.lstm(a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], None,
                                   a["residual"], lengths, reverse, zo, ln, strategy=strategy)
        return triton_ops.gru(a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["residual"], lengths,
                              reverse, zo, ln, strategy=strategy)
    return call


def _oracle_call(zo=None):
    return lambda cell, a, lengths, reverse: _oracle(cell, a, lengths, reverse, zo)


def _grads_in(fn, cell, d, lengths, reverse, dtype, device):
    """Outputs and every input's gradient (float64, on the CPU) of ``fn`` run in ``dtype`` on ``device``."""
    moved = {k: (v.to(device=device, dtype=dtype) if v is not None else None) for k, v in d.items()}
    lengths = lengths.to(device) if lengths is not None else None
    outs, grads = _with_grads(fn, cell, moved, lengths, reverse)
    return [o.double().cpu() for o in outs], {k: v.double().cpu() for k, v in grads.items()}


def _assert_matches_oracle(got, want, tol):
    (o_got, g_got), (o_want, g_want) = got, want
    from helpers import rel_err

    for k, (a, b) in enumerate(zip(o_got, o_want)):
        assert rel_err(a, b) <= tol, f"output {k}: {rel_err(a, b):.2e}"
    assert g_got.keys() == g_want.keys()
    for k in g_want:
        assert rel_err(g_got[k], g_want[k]) <= tol, f"d_{k}: {rel_err(g_got[k], g_want[k]):.2e}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: "-".join(str(v) for v in c))
def test_triton_matches_the_oracle(triton_executor, case, dtype):
    """LN_hh (and LN_c) in the Triton step: outputs, final states and the gradient of every input,
    the LayerNorm parameters included, against the fp64 oracle (fp64 within 1e-10, fp32 within the
    fp32 tolerance)."""
    from helpers import FP32_TOL

    from executors import executor_device

    cell, T, B, I, H, has_lengths, reverse, residual, bias = case  # noqa: E741
    dev = executor_device(triton_executor)
    d = make_inputs(cell, T, B, I, H, bias=bias, residual=residual, seed=3)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(5)) if has_lengths else None
    want = _grads_in(_oracle_call(), cell, d, lengths, reverse, DT, "cpu")
    got = _grads_in(_triton_call(), cell, d, lengths, reverse, dtype, dev)
    _assert_matches_oracle(got, want, 1e-10 if dtype == DT else FP32_TOL)
    assert {"ln_hh_w", "ln_hh_b"} <= got[1].keys() and (cell == "gru" or "ln_c_w" in got[1])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_triton_with_zoneout_matches_the_oracle(triton_executor, cell, training):
    """Zoneout after the LayerNorm cell (the masks the kernels generate are the oracle's)."""
    from executors import executor_device

    dev = executor_device(triton_executor)
    d = make_inputs(cell, 4, 18, 3, 70, residual=True, seed=4)
    lengths = torch.tensor([4, 1, 3] * 6)
    seeds = torch.tensor([2**40 + 7, 99], dtype=torch.int64) if training else None
    zo = zoneout.Zoneout(0.3, 0.2, seeds)
    zo_dev = zoneout.Zoneout(0.3, 0.2, seeds.to(dev) if training else None)
    want = _grads_in(_oracle_call(zo), cell, d, lengths, True, DT, "cpu")
    got = _grads_in(_triton_call(zo_dev), cell, d, lengths, True, DT, dev)
    _assert_matches_oracle(got, want, 1e-10)


def test_triton_layernorm_runs_the_batch_tile_strategy(triton_executor):
    from executors import executor_device

    d = {k: (v.to(executor_device(triton_executor)) if v is not None else None)
         for k, v in make_inputs("gru", 2, 2, 3, 5).items()}
    with pytest.raises(ValueError, match="layernorm runs the batch_tile strategy"):
        _triton_call(strategy="persistent")("gru", d, None, False)
    out = _triton_call(strategy="batch_tile")("gru", d, None, False)
    torch.testing.assert_close(out[0], _oracle_call()("gru", d, None, False)[0])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_triton_module_equals_the_reference_module(triton_executor, cell):
    """fusedrnn.LayerNormLSTM / LayerNormGRU on backend="triton" (2 layers, bidirectional, lengths,
    zoneout in training) = the same module on the reference backend: outputs and every parameter's
    gradient."""
    from executors import executor_device

    dev = executor_device(triton_executor)
    torch.manual_seed(0)
    m = _randomise_layernorm(CLASSES[cell](5, 6, num_layers=2, bidirectional=True, zoneout=0.2)).double().to(dev)
    x = torch.randn(4, 3, 5, dtype=DT, device=dev)
    lengths = torch.tensor([4, 2, 3], device=dev)
    results = []
    for backend in ("reference", "triton"):
        m.backend = backend
        torch.manual_seed(9)
        out = _flat(m(x, lengths=lengths))
        grads = torch.autograd.grad(sum((o * (k + 1)).sum() for k, o in enumerate(out)), list(m.parameters()))
        results.append((out, grads))
    assert [b.name for b in m._last_plan[1].backends] == ["triton"] * 4
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for (n, _), a, b in zip(m.named_parameters(), results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda s: f"{n}: {s}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_triton_torch_compile_fullgraph(triton_executor, cell):
    """torch.compile(fullgraph=True) through the Triton LayerNorm ops (their fakes, the LN parameter
    list, the saved x-hat and statistics): the compiled module equals eager, outputs and every
    gradient, with zoneout in training."""
    from executors import executor_device

    dev = executor_device(triton_executor)
    torch.manual_seed(0)
    m = _randomise_layernorm(CLASSES[cell](4, 6, num_layers=2, zoneout=0.2, backend="triton")).to(dev)
    x = torch.randn(5, 2, 4, device=dev, requires_grad=True)
    _assert_compiled_equals_eager(m, x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", [TRITON_CASES[2], TRITON_CASES[3]], ids=lambda c: "-".join(str(v) for v in c))
def test_triton_low_precision_within_the_baselines_error(triton_executor, case, dtype):
    """fp16/bf16 LayerNorm cells in the Triton step (operands in the dtype, statistics and gate math
    in fp32): the error of every output and gradient against the fp64 oracle is within K_LOWP x the
    larger of two baselines' errors in that dtype: the oracle itself (which computes in fp32 and
    rounds once per step, so it is stricter than any kernel with dtype operands) and torch's own op
    for the same cell without LayerNorm on the same inputs (torch has no LayerNorm RNN: this is its
    error at that precision, shape and weights; its inputs' gradients are compared with it)."""
    from fusedrnn import backends
    from helpers import K_LOWP, rel_err, run_cell_with_grads

    from executors import executor_device

    cell, T, B, I, H, has_lengths, reverse, residual, bias = case  # noqa: E741
    d = make_inputs(cell, T, B, I, H, bias=bias, residual=residual, seed=6)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(5)) if has_lengths else None
    exact = _grads_in(_oracle_call(), cell, d, lengths, reverse, DT, "cpu")
    base = _grads_in(_oracle_call(), cell, d, lengths, reverse, dtype, "cpu")
    got = _grads_in(_triton_call(), cell, d, lengths, reverse, dtype, executor_device(triton_executor))
    plain = {k: v for k, v in d.items() if not k.startswith("ln_")}
    torch_call = getattr(backends.get("torch"), cell)  # called directly: dispatch offers torch fp32/fp64 only on CPU
    t_low, t_exact = (run_cell_with_grads(cell, torch_call, plain, lengths, reverse, dtype=dt) for dt in (dtype, None))
    torch_err = {k: rel_err(t_low[k], t_exact[k]) for k in t_exact}  # out0.., d_x, d_w_hh, ... (no LN parameters)
    pairs = [(f"out{k}", g, b, e) for k, (g, b, e) in enumerate(zip(got[0], base[0], exact[0]))]
    assert got[1].keys() == exact[1].keys()
    pairs += [(f"d_{k}", got[1][k], base[1][k], exact[1][k]) for k in exact[1]]
    for name, g, b, e in pairs:
        allowed = K_LOWP * max(rel_err(b, e), torch_err.get(name, 0.0))
        assert rel_err(g, e) <= allowed, f"{cell} {dtype} {name}: {rel_err(g, e):.2e} > {K_LOWP} x {allowed / K_LOWP:.2e}"
