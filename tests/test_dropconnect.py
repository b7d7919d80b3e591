"""dropconnect=p on fusedrnn.GRU / LSTM / RNN: in training each layer-direction's weight_hh is used as
weight_hh * m / (1 - p), m ~ Bernoulli(1 - p), one draw per forward call from torch's generator (in
_flat_weights_names order, before any other draw of the call); in evaluation weight_hh as is."""

import functools

import pytest
import torch
from torch import nn

import fusedrnn
from executors import CPU, params
from helpers import compiled_and_eager

CASES = [
    (fusedrnn.GRU, nn.GRU, dict()),
    (fusedrnn.LSTM, nn.LSTM, dict(bidirectional=True)),
    (fusedrnn.LSTM, nn.LSTM, dict(proj_size=3)),
    (fusedrnn.RNN, nn.RNN, dict(bidirectional=True)),
    (fusedrnn.RNN, nn.RNN, dict(nonlinearity="relu")),
]
IDS = ["gru", "lstm-bidir", "lstm-proj", "rnn-tanh-bidir", "rnn-relu"]


def _pair(cls, ref_cls, kwargs, p, backend="reference", I=3, H=5, L=2):  # noqa: E741
    torch.manual_seed(0)
    m = cls(I, H, num_layers=L, dropconnect=p, backend=backend, **kwargs).double()
    ref = ref_cls(I, H, num_layers=L, **kwargs).double()
    ref.load_state_dict(m.state_dict())
    return m, ref


def _masks(m, seed):
    """The masks a training forward of ``m`` draws right after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    keep = 1 - m.dropconnect
    return {n: torch.bernoulli(torch.full_like(w, keep)) for n, w in zip(m._flat_weights_names, m._flat_weights)
            if n.startswith("weight_hh_l")}


def _masked_params(m, masks):
    keep = 1 - m.dropconnect
    return {n: (w * masks[n] / keep if n in masks else w) for n, w in m.named_parameters()}


@pytest.mark.parametrize("cls,ref_cls,kwargs", CASES, ids=IDS)
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_eval_is_torch_nn_with_the_same_weights(cls, ref_cls, kwargs, backend):
    m, ref = _pair(cls, ref_cls, kwargs, 0.5, backend)
    m.eval(), ref.eval()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(m(x), ref(x))


@pytest.mark.parametrize("cls,ref_cls,kwargs", CASES, ids=IDS)
def test_training_with_p_zero_is_no_dropconnect(cls, ref_cls, kwargs):
    m, ref = _pair(cls, ref_cls, kwargs, 0.0)
    plain = cls(3, 5, num_layers=2, backend="reference", **kwargs).double()
    plain.load_state_dict(m.state_dict())
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(1)
    b = plain(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, ref(x))


@pytest.mark.parametrize("cls,ref_cls,kwargs", CASES, ids=IDS)
@pytest.mark.parametrize("backend", ["reference", "auto", "torch"])
def test_training_is_torch_nn_with_the_masked_weight_and_gradients_go_through_the_mask(cls, ref_cls, kwargs, backend):
    m, ref = _pair(cls, ref_cls, kwargs, 0.4, backend)
    m.train()
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    masks = _masks(m, 7)
    torch.manual_seed(7)
    out, _ = m(x)
    masked = {n: w.detach().clone().requires_grad_(n in masks) for n, w in _masked_params(m, masks).items()}
    ref_out, _ = torch.func.functional_call(ref, masked, (x,))
    torch.testing.assert_close(out, ref_out)
    # Some entries really were dropped, so the comparison above is not the eval path.
    assert any((k == 0).any() for k in masks.values())
    g = torch.randn_like(out)
    names = list(masks)
    grads = torch.autograd.grad(out, [dict(m.named_parameters())[n] for n in names], g)
    ref_grads = torch.autograd.grad(ref_out, [masked[n] for n in names], g)
    for n, got, gm in zip(names, grads, ref_grads):
        torch.testing.assert_close(got, masks[n] / (1 - m.dropconnect) * gm, msg=n)


def test_mask_rate_and_scaling():
    p = 0.3
    m = fusedrnn.LSTM(8, 64, num_layers=2, bidirectional=True, dropconnect=p)
    torch.manual_seed(0)
    out = m._dropconnect(m._flat_weights)
    hh = [i for i, n in enumerate(m._flat_weights_names) if n.startswith("weight_hh_l")]
    assert len(hh) == 4
    for i, (name, w, dw) in enumerate(zip(m._flat_weights_names, m._flat_weights, out)):
        if i not in hh:
            assert dw is w, name  # the other weights untouched
            continue
        dropped = dw == 0
        rate = dropped.double().mean().item()  # 16384 entries: std 0.0036, fixed seed
        assert abs(rate - p) < 0.02, (name, rate)
        torch.testing.assert_close(dw[~dropped], w[~dropped] / (1 - p))
    masks = [out[i] != 0 for i in hh]
    for a in range(len(masks)):  # each layer-direction draws its own mask
        for b in range(a + 1, len(masks)):
            assert not torch.equal(masks[a], masks[b])


def test_same_mask_for_every_batch_row_and_different_masks_across_calls():
    m = fusedrnn.GRU(4, 6, num_layers=2, dropconnect=0.5, backend="reference").double()
    row = torch.randn(7, 1, 4, dtype=torch.float64)
    x = row.expand(7, 5, 4).contiguous()
    torch.manual_seed(3)
    a, h = m(x)
    for b in range(1, 5):  # identical rows stay identical: one mask shared by the batch
        torch.testing.assert_close(a[:, b], a[:, 0], rtol=0, atol=1e-12)
        torch.testing.assert_close(h[:, b], h[:, 0], rtol=0, atol=1e-12)
    b_out, _ = m(x)  # next call, generator moved on: a new mask
    assert not torch.allclose(a, b_out)
    torch.manual_seed(3)  # reproducible under manual_seed
    torch.testing.assert_close(m(x)[0], a, rtol=0, atol=0)


def test_eval_draws_nothing():
    m = fusedrnn.LSTM(3, 4, dropconnect=0.5).eval()
    torch.manual_seed(0)
    m(torch.randn(3, 2, 3))
    after = torch.get_rng_state()
    torch.manual_seed(0)
    torch.randn(3, 2, 3)
    assert torch.equal(after, torch.get_rng_state())


@pytest.mark.parametrize("bad", [-0.1, 1, 1.0, 2, "0.1", None, True, float("nan")])
def test_bad_p_raises_naming_dropconnect(bad):
    for cls in (fusedrnn.GRU, fusedrnn.LSTM, fusedrnn.RNN):
        with pytest.raises(ValueError, match="dropconnect"):
            cls(3, 4, dropconnect=bad)


def test_extra_repr_and_unconvert_refuses():
    m = fusedrnn.GRU(3, 4, dropconnect=0.25)
    assert "dropconnect=0.25" in repr(m)
    assert "dropconnect" not in repr(fusedrnn.GRU(3, 4))
    model = nn.Sequential(fusedrnn.LSTM(4, 4), nn.ModuleDict({"deep": m}))
    with pytest.raises(ValueError, match=r"'1\.deep' has dropconnect=0\.25"):
        fusedrnn.unconvert(model)
    assert type(model[0]) is fusedrnn.LSTM and type(m) is fusedrnn.GRU  # nothing changed
    plain = fusedrnn.GRU(3, 4, dropconnect=0)
    assert type(fusedrnn.unconvert(plain)) is nn.GRU and "dropconnect" not in plain.__dict__


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls", [fusedrnn.GRU, fusedrnn.LSTM, functools.partial(fusedrnn.RNN, nonlinearity="relu")],
                         ids=["GRU", "LSTM", "RNN-relu"])
def test_compiles_fullgraph(cls, training):
    m = cls(3, 4, num_layers=2, dropconnect=0.3, backend="reference").train(training)
    x = torch.randn(5, 2, 3, requires_grad=True)
    out_c, out_e = compiled_and_eager(m, x, seed=11)
    torch.testing.assert_close(out_c, out_e)
    (gc,) = torch.autograd.grad(out_c.sum(), x)
    (ge,) = torch.autograd.grad(out_e.sum(), x)
    torch.testing.assert_close(gc, ge)


@pytest.mark.parametrize("cell", ["gru", "rnn_tanh"])
@pytest.mark.parametrize("executor", params(*CPU))
def test_every_cpu_executor_runs_the_masked_weight(executor, cell):
    executor.skip_unless_available(cell)
    cls, ref_cls, kw = (fusedrnn.GRU, nn.GRU, {}) if cell == "gru" else (fusedrnn.RNN, nn.RNN, {"nonlinearity": "tanh"})
    m = cls(3, 4, dropconnect=0.5, backend=executor.backend, **kw)
    ref = ref_cls(3, 4, **kw)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(3, 2, 3)
    masks = _masks(m, 5)
    torch.manual_seed(5)
    out = m(x)
    torch.testing.assert_close(out, torch.func.functional_call(ref, _masked_params(m, masks), (x,)))
