"""The drop-in contract: fusedrnn.GRU/LSTM/RNN checked against torch.nn itself (torch is the specification):
same errors and messages, parameters, initialisation, state_dict, dropout, packing, pickling, convert()."""

from __future__ import annotations

import copy
import functools
import io
import pickle
import re
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from helpers import run_with_grads

PAIRS = [(torch.nn.GRU, fusedrnn.GRU), (torch.nn.LSTM, fusedrnn.LSTM), (torch.nn.RNN, fusedrnn.RNN),
         (functools.partial(torch.nn.RNN, nonlinearity="relu"), functools.partial(fusedrnn.RNN, nonlinearity="relu"))]
IDS = ["GRU", "LSTM", "RNN-tanh", "RNN-relu"]


def same_error(fn_torch, fn_fused):
    """Both raise; same class and message. Returns the message."""
    with pytest.raises(Exception) as et:
        fn_torch()
    with pytest.raises(Exception) as ef:
        fn_fused()
    assert type(ef.value) is type(et.value), (type(ef.value), type(et.value), str(et.value))
    assert str(ef.value) == str(et.value)
    return str(et.value)


BAD_CTOR = [
    ((3, 4), dict(dropout=1.5)),
    ((3, 4), dict(dropout=True)),
    ((3, 4), dict(dropout="0.1")),
    ((3, 4), dict(bias=1)),
    ((3, 4), dict(batch_first=0)),
    ((3.0, 4), {}),
    ((3, 4.0), {}),
    ((0, 4), {}),
    ((3, 0), {}),
    ((3, 4), dict(num_layers=0)),
]


@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
@pytest.mark.parametrize("args,kwargs", BAD_CTOR)
def test_constructor_errors_match_torch(tcls, fcls, args, kwargs):
    same_error(lambda: tcls(*args, **kwargs), lambda: fcls(*args, **kwargs))


def test_constructor_errors_proj_size():
    same_error(lambda: torch.nn.GRU(3, 4, proj_size=2), lambda: fusedrnn.GRU(3, 4, proj_size=2))
    same_error(lambda: torch.nn.RNN(3, 4, proj_size=2), lambda: fusedrnn.RNN(3, 4, proj_size=2))
    same_error(lambda: torch.nn.LSTM(3, 4, proj_size=-1), lambda: fusedrnn.LSTM(3, 4, proj_size=-1))
    same_error(lambda: torch.nn.LSTM(3, 4, proj_size=4), lambda: fusedrnn.LSTM(3, 4, proj_size=4))


@pytest.mark.parametrize("args,kwargs", [((3, 4), dict(nonlinearity="sigmoid")), ((3, 4, 1, "gelu"), {}),
                                         ((3, 4), dict(nonlinearity=None))])
def test_rnn_nonlinearity_errors_match_torch(args, kwargs):
    msg = same_error(lambda: torch.nn.RNN(*args, **kwargs), lambda: fusedrnn.RNN(*args, **kwargs))
    assert msg.startswith("Unknown nonlinearity") and msg.endswith("Select from 'tanh' or 'relu'.")


def test_rnn_nonlinearity_positional_and_cell():
    f = fusedrnn.RNN(3, 4, 2, "relu", False, residual=1)  # torch's positional order: nonlinearity, then bias
    assert f.nonlinearity == "relu" and f._cell == "rnn_relu" and not f.bias and f._residual_layers == (1,)
    assert fusedrnn.RNN(3, 4)._cell == "rnn_tanh"
    assert [tuple(p.shape) for p in f.parameters()] == [(4, 3), (4, 4), (4, 4), (4, 4)]


@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_dropout_single_layer_warning_matches(tcls, fcls):
    with warnings.catch_warnings(record=True) as wt:
        warnings.simplefilter("always")
        tcls(3, 4, dropout=0.5)
    with warnings.catch_warnings(record=True) as wf:
        warnings.simplefilter("always")
        fcls(3, 4, dropout=0.5)
    assert [str(w.message) for w in wf] == [str(w.message) for w in wt]
    assert wt and "non-zero dropout expects num_layers greater than 1" in str(wt[0].message)


@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_extra_arguments_are_validated(tcls, fcls):
    with pytest.raises(ValueError, match="layer 0, whose input width 3 differs from its output width 8"):
        fcls(3, 4, num_layers=2, bidirectional=True, residual=0)
    with pytest.raises(ValueError, match=r"residual=2 is not a layer index in \[0, 1\]"):
        fcls(4, 4, num_layers=2, residual=2)
    with pytest.raises(TypeError, match="residual should be a bool or an int"):
        fcls(4, 4, residual="yes")
    with pytest.raises(ValueError, match="backend must be one of"):
        fcls(4, 4, backend="cudnn")
    with pytest.warns(UserWarning, match="no layer has equal input and output widths"):
        fcls(3, 4, residual=True)
    assert fcls(3, 4, num_layers=3, residual=True)._residual_layers == (1, 2)
    assert fcls(8, 4, num_layers=2, bidirectional=True, residual=True)._residual_layers == (0, 1)
    assert "residual=True" in repr(fcls(4, 4, residual=True))
    assert repr(fcls(3, 4, num_layers=2)) == repr(tcls(3, 4, num_layers=2))


@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_parameters_init_and_state_dict(tcls, fcls):
    kw = dict(num_layers=2, bidirectional=True)
    if tcls is torch.nn.LSTM:
        kw["proj_size"] = 2
    torch.manual_seed(5)
    t = tcls(3, 4, **kw)
    torch.manual_seed(5)
    f = fcls(3, 4, **kw)
    assert isinstance(f, getattr(tcls, "func", tcls))
    assert f.mode == t.mode
    assert [n for n, _ in f.named_parameters()] == [n for n, _ in t.named_parameters()]
    assert f._flat_weights_names == t._flat_weights_names
    for (n, a), (_, b) in zip(f.named_parameters(), t.named_parameters()):
        assert a.shape == b.shape and torch.equal(a, b), n
    assert list(f.state_dict()) == list(t.state_dict())
    # Round trips both ways.
    t2 = tcls(3, 4, **kw)
    t2.load_state_dict(f.state_dict())
    f2 = fcls(3, 4, **kw)
    f2.load_state_dict(t.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(f2(x)[0], t2(x)[0], atol=1e-6, rtol=1e-5)


def _modules(tcls, fcls, **kw):
    t = tcls(3, 4, **kw)
    f = fcls(3, 4, **kw)
    f.load_state_dict(t.state_dict())
    return t, f


@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_forward_errors_match_torch(tcls, fcls):
    t, f = _modules(tcls, fcls, num_layers=2)
    lstm = tcls is torch.nn.LSTM

    def both(*args):
        return same_error(lambda: t(*args), lambda: f(*args))

    assert re.search("Expected input to be 2D or 3D, got 4D (tensor )?instead", both(torch.randn(2, 2, 2, 3)))
    assert re.search("Expected input to be 2D or 3D, got 1D (tensor )?instead", both(torch.randn(3)))
    assert "input.size(-1) must be equal to input_size. Expected 3, got 7" == both(torch.randn(5, 2, 7))
    assert "does not match weight dtype" in both(torch.randn(5, 2, 3, dtype=torch.float64))
    assert "Expected sequence length to be larger than 0" in both(torch.randn(0, 2, 3))
    if lstm:
        good_c = torch.zeros(2, 2, 4)
        both(torch.randn(5, 2, 3), (torch.zeros(2, 4), torch.zeros(2, 4)))  # 3-D input, 2-D hx
        both(torch.randn(5, 3), (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)))  # 2-D input, 3-D hx
        assert "Expected hidden[0] size (2, 2, 4), got [2, 3, 4]" == both(torch.randn(5, 2, 3), (torch.zeros(2, 3, 4), good_c))
        assert "Expected hidden[1] size (2, 2, 4), got [2, 2, 5]" == both(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(2, 2, 5)))
    else:
        both(torch.randn(5, 2, 3), torch.zeros(2, 4))
        both(torch.randn(5, 3), torch.zeros(2, 2, 4))
        assert "Expected hidden size (2, 2, 4), got [2, 3, 4]" == both(torch.randn(5, 2, 3), torch.zeros(2, 3, 4))


def test_lstm_packed_input_size_is_checked():
    f = fusedrnn.LSTM(3, 4)
    packed = pack_padded_sequence(torch.randn(5, 2, 7), torch.tensor([5, 3]))
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size. Expected 3, got 7"):
        f(packed)


@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_hx_dtype_mismatch_is_a_clear_error(tcls, fcls):
    f = fcls(3, 4)
    h = torch.zeros(1, 2, 4, dtype=torch.float64)
    hx = (h, torch.zeros(1, 2, 4)) if tcls is torch.nn.LSTM else h
    with pytest.raises(ValueError, match=r"hx(\[0\])?: expected dtype torch.float32"):
        f(torch.randn(5, 2, 3), hx)


@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_zero_hx_equals_none_and_batch_zero(tcls, fcls):
    t, f = _modules(tcls, fcls, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    h = torch.zeros(4, 2, 4)
    hx = (h, h.clone()) if tcls is torch.nn.LSTM else h
    torch.testing.assert_close(f(x, hx)[0], f(x)[0])
    # batch 0: empty outputs of torch's shapes, and backward works
    x0 = torch.randn(5, 0, 3, requires_grad=True)
    a, b = f(x0), t(x0)
    assert a[0].shape == b[0].shape
    a[0].sum().backward()
    assert x0.grad.shape == x0.shape


@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
@pytest.mark.parametrize("p", [0.0, 0.276, 0.731, 1.0])
def test_dropout_like_torch(tcls, fcls, p):
    """Eval: no dropout. Train: inverted dropout on every layer's output but the last, drawing the same
    random numbers as torch's own op, so under the same seed the outputs are equal."""
    t, f = _modules(tcls, fcls, num_layers=3, dropout=p)
    x = torch.randn(6, 5, 3)
    f.eval()
    t.eval()
    torch.testing.assert_close(f(x)[0], t(x)[0])
    f.train()
    t.train()
    torch.manual_seed(11)
    out_f = f(x)[0]
    torch.manual_seed(11)
    out_t = t(x)[0]
    torch.testing.assert_close(out_f, out_t)
    if 0 < p:
        assert not torch.allclose(out_f, f.eval()(x)[0]), "training mode must apply dropout"


@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_dropout_is_read_at_every_call(tcls, fcls):
    t, f = _modules(tcls, fcls, num_layers=3, dropout=0.0)
    x = torch.randn(4, 2, 3)
    f.train()
    t.train()
    f.dropout = t.dropout = 0.5
    torch.manual_seed(2)
    a = f(x)[0]
    torch.manual_seed(2)
    b = t(x)[0]
    torch.testing.assert_close(a, b)
    f.dropout = 0.0
    torch.testing.assert_close(f(x)[0], f.eval()(x)[0])


@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_packed_equals_per_sequence(tcls, fcls):
    """Packed bidirectional 2-layer output, final states and all grads equal running each sequence alone."""
    f = fcls(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    lengths = [4, 6, 1]
    seqs = [torch.randn(L, 3, dtype=torch.float64, requires_grad=True) for L in lengths]
    padded = torch.nn.utils.rnn.pad_sequence(seqs)
    out, hidden = f(pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=False))
    out, _ = pad_packed_sequence(out)
    hidden = hidden if isinstance(hidden, tuple) else (hidden,)
    loss = out.sum() + sum(h.sum() for h in hidden)
    grads = torch.autograd.grad(loss, seqs + list(f.parameters()))
    total = [torch.zeros_like(p) for p in f.parameters()]
    for b, s in enumerate(seqs):
        o, h = f(s.unsqueeze(1))
        h = h if isinstance(h, tuple) else (h,)
        torch.testing.assert_close(o[:, 0], out[: lengths[b], b])
        for hh, hp in zip(h, hidden):
            torch.testing.assert_close(hh[:, 0], hp[:, b])
        loss_b = o.sum() + sum(x.sum() for x in h)
        g = torch.autograd.grad(loss_b, [s] + list(f.parameters()))
        torch.testing.assert_close(g[0], grads[b])
        total = [a + c for a, c in zip(total, g[1:])]
    for a, c in zip(total, grads[len(seqs):]):
        torch.testing.assert_close(a, c)


@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_pickle_deepcopy_save_load_and_to(tcls, fcls):
    f = fcls(3, 4, num_layers=2, residual=1, backend="reference")
    x = torch.randn(5, 2, 3)
    want = f(x)[0]
    for clone in (pickle.loads(pickle.dumps(f)), copy.deepcopy(f)):
        assert clone.residual == 1 and clone._residual_layers == (1,) and clone.backend == "reference"
        torch.testing.assert_close(clone(x)[0], want)
    buf = io.BytesIO()
    torch.save(f, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    torch.testing.assert_close(loaded(x)[0], want)
    d = copy.deepcopy(f).double()
    assert d(x.double())[0].dtype == torch.float64
    torch.testing.assert_close(d(x.double())[0].float(), want, atol=1e-5, rtol=1e-5)
    b16 = copy.deepcopy(f).bfloat16()
    assert b16(x.bfloat16())[0].dtype == torch.bfloat16


@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_weight_norm_retain_graph_and_replaced_parameters(tcls, fcls):
    t, f = _modules(tcls, fcls, num_layers=2)
    x = torch.randn(5, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # weight_norm is deprecated in favour of parametrizations
        torch.nn.utils.weight_norm(t, "weight_ih_l0")
        torch.nn.utils.weight_norm(f, "weight_ih_l0")
    torch.testing.assert_close(f(x)[0], t(x)[0])
    out = f(x)[0].sum()
    g1 = torch.autograd.grad(out, f.weight_ih_l0_g, retain_graph=True)[0]
    g2 = torch.autograd.grad(out, f.weight_ih_l0_g)[0]
    assert torch.equal(g1, g2)
    # Replacing a parameter after construction takes effect (as in torch).
    f.weight_hh_l1 = torch.nn.Parameter(torch.zeros_like(f.weight_hh_l1))
    t.weight_hh_l1 = torch.nn.Parameter(torch.zeros_like(t.weight_hh_l1))
    torch.testing.assert_close(f(x)[0], t(x)[0])


class Nested(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh())
        self.rnn = torch.nn.LSTM(6, 5, num_layers=2, batch_first=True, proj_size=3)
        self.block = torch.nn.ModuleDict({"gru": torch.nn.GRU(3, 4, bidirectional=True)})
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x):
        y, _ = self.rnn(self.enc(x))
        y, _ = self.block["gru"](y.transpose(0, 1))
        return self.head(y)


def test_convert_nested_model_same_outputs_and_grads():
    torch.manual_seed(9)
    model = Nested().double().eval()
    ref = copy.deepcopy(model)
    params_before = {n: p for n, p in model.named_parameters()}
    rng_before = torch.random.get_rng_state()
    converted = fusedrnn.convert(model)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "convert() must not draw random numbers"
    assert converted is model
    assert type(model.rnn) is fusedrnn.LSTM and type(model.block["gru"]) is fusedrnn.GRU
    assert not model.rnn.training
    for n, p in model.named_parameters():
        assert p is params_before[n], f"{n}: convert() must keep the same Parameter objects"
    x = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    a = run_with_grads(model, [x], lambda: (model(x), torch.zeros(1, dtype=torch.float64)))
    b = run_with_grads(ref, [x], lambda: (ref(x), torch.zeros(1, dtype=torch.float64)))
    torch.testing.assert_close(a[0][0], b[0][0])
    torch.testing.assert_close(a[1][0], b[1][0])
    for n in a[2]:
        torch.testing.assert_close(a[2][n], b[2][n], msg=lambda m: f"{n}: {m}")
    top = fusedrnn.convert(torch.nn.GRU(2, 3))
    assert type(top) is fusedrnn.GRU


def test_same_seed_same_weights_as_torch_with_any_extras():
    torch.manual_seed(1)
    t = torch.nn.GRU(4, 4, num_layers=3)
    torch.manual_seed(1)
    f = fusedrnn.GRU(4, 4, num_layers=3, residual=True, backend="reference")
    for a, b in zip(f.parameters(), t.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_autocast_output_dtype_and_values_like_torch(tcls, fcls, in_dtype):
    t, f = _modules(tcls, fcls, num_layers=2)
    x = torch.randn(6, 2, 3).to(in_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = f(x)
        try:
            b = t(x)
        except RuntimeError as e:  # torch's oneDNN LSTM has no bf16 primitive on some CPUs (seen on AMD EPYC)
            if "primitive descriptor" not in str(e):
                raise
            b = None
    ref = t(x.float())[0]
    ours_err = (a[0].float() - ref).abs().max()
    if b is None:  # torch cannot run it here: its documented cast (LSTM runs in bf16) and a bf16-sized error
        assert a[0].dtype == torch.bfloat16
        assert ours_err <= 4 * 2.0**-8, ours_err
        return
    assert a[0].dtype == b[0].dtype
    # Both round to bf16 somewhere: judge against fp32 torch, with torch's own bf16 error as the yardstick.
    torch_err = (b[0].float() - ref).abs().max()
    assert ours_err <= 2 * torch_err + 1e-6, (ours_err, torch_err)


@pytest.mark.gpu
@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_cuda_autocast_casts_to_float16_like_cudnn(tcls, fcls):
    t, f = _modules(tcls, fcls, num_layers=2)
    t, f = t.cuda(), f.cuda()
    x = torch.randn(6, 2, 3, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = f(x), t(x)
    assert a[0].dtype == b[0].dtype == torch.float16
    torch.testing.assert_close(a[0].float(), b[0].float(), atol=5e-3, rtol=5e-3)


def test_lstm_hx_must_be_a_pair_like_torch():
    t, f = _modules(torch.nn.LSTM, fusedrnn.LSTM)
    h = torch.zeros(1, 2, 4)
    assert same_error(lambda: t(torch.randn(5, 2, 3), (h, h, h)), lambda: f(torch.randn(5, 2, 3), (h, h, h))) == (
        "lstm expects two hidden states"
    )


@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_packed_dropout_draws_like_torch(tcls, fcls):
    """torch drops out the packed data between layers; same seed -> same output and same RNG state after."""
    t, f = _modules(tcls, fcls, num_layers=3, bidirectional=True, dropout=0.4)
    t.train()
    f.train()
    x = torch.randn(6, 4, 3)
    packed = pack_padded_sequence(x, torch.tensor([2, 6, 3, 5]), enforce_sorted=False)
    torch.manual_seed(5)
    a = f(packed)
    after_f = torch.rand(3)
    torch.manual_seed(5)
    b = t(packed)
    after_t = torch.rand(3)
    torch.testing.assert_close(a[0].data, b[0].data)
    assert torch.equal(after_f, after_t), "the global random stream must advance exactly as torch's"


def test_convert_keeps_hooks_attributes_sharing_and_skips_subclasses():
    class MyGRU(torch.nn.GRU):
        def forward(self, x, hx=None):
            return super().forward(x, hx)[0] * 0 + 7, None

    shared = torch.nn.GRU(3, 3)
    shared.my_attr = "kept"
    calls = []
    shared.register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    mine = MyGRU(3, 3)
    model = torch.nn.Sequential(shared, torch.nn.Identity(), mine)
    model.extra = shared
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        wn = torch.nn.utils.weight_norm(torch.nn.LSTM(3, 4), "weight_hh_l0")
    model.wn = wn
    x = torch.randn(4, 2, 3)
    want_wn = wn(x)[0]
    with pytest.warns(UserWarning, match=r"left .2. \(MyGRU\) unconverted: a subclass of torch.nn.GRU"):
        fusedrnn.convert(model)
    assert type(model[0]) is fusedrnn.GRU and model.extra is model[0], "a shared module stays one module"
    assert model[0].my_attr == "kept"
    model[0](x)
    assert calls == ["GRU"], "forward hooks survive"
    assert type(model[2]) is MyGRU and torch.all(model[2](x)[0] == 7)
    assert type(model.wn) is fusedrnn.LSTM
    torch.testing.assert_close(model.wn(x)[0], want_wn)


@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_outputs_final_states_and_batch_zero_grads(tcls, fcls):
    t, f = _modules(tcls, fcls, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 3)
    a, b = f(x), t(x)
    for p, q in zip([a[0]] + list(a[1] if isinstance(a[1], tuple) else (a[1],)),
                    [b[0]] + list(b[1] if isinstance(b[1], tuple) else (b[1],))):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    x0 = torch.randn(5, 0, 3, requires_grad=True)
    a0 = f(x0)
    loss = a0[0].sum() + sum(h.sum() for h in (a0[1] if isinstance(a0[1], tuple) else (a0[1],)))
    loss.backward()
    assert x0.grad.shape == x0.shape and all(p.grad is not None and p.grad.abs().sum() == 0 for p in f.parameters())
