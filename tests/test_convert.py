"""convert / unconvert: both ways in place, same Parameter objects, torch.nn's outputs bit for bit
on the CPU; what convert leaves alone it names (warning, or ValueError with strict=True)."""

import copy
import io
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import fusedrnn


class Net(nn.Module):
    def __init__(self, **lstm_kwargs):
        super().__init__()
        self.enc = nn.Linear(3, 4)
        self.lstm = nn.LSTM(4, 4, num_layers=2, **lstm_kwargs)
        self.block = nn.ModuleDict({"gru": nn.GRU(4 * (2 if lstm_kwargs.get("bidirectional") else 1)
                                                  if not lstm_kwargs.get("proj_size") else
                                                  lstm_kwargs["proj_size"] * (2 if lstm_kwargs.get("bidirectional") else 1),
                                                  5, batch_first=lstm_kwargs.get("batch_first", False))})
        self.head = nn.RNN(5, 5, nonlinearity="relu", batch_first=lstm_kwargs.get("batch_first", False),
                           bias=lstm_kwargs.get("bias", True))

    def forward(self, x):
        y, _ = self.lstm(self.enc(x))
        return self.head(self.block["gru"](y)[0])[0]


UNCONVERTIBLE_FREE = [dict(), dict(bidirectional=True), dict(proj_size=2), dict(batch_first=True), dict(bias=False),
                      dict(dropout=0.3), dict(bidirectional=True, proj_size=3, bias=False, batch_first=True)]


@pytest.mark.parametrize("kwargs", UNCONVERTIBLE_FREE, ids=str)
def test_unconvert_is_the_exact_inverse(kwargs):
    torch.manual_seed(0)
    model = Net(**kwargs).double()
    torch_dicts = {n: sorted(vars(m)) for n, m in model.named_modules()}
    params = dict(model.named_parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left alone, nothing to say
        fusedrnn.convert(model)
    assert (type(model.lstm), type(model.block["gru"]), type(model.head)) == (fusedrnn.LSTM, fusedrnn.GRU, fusedrnn.RNN)
    assert model.head.nonlinearity == "relu" and model.head._cell == "rnn_relu"
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.manual_seed(1)
    want = model(x)  # training mode: dropout draws included
    model.lstm(x[..., :1].expand(6, 2, 4).contiguous())  # a forward leaves caches on the module
    assert fusedrnn.unconvert(model) is model
    assert type(model.lstm) is nn.LSTM and type(model.block["gru"]) is nn.GRU and type(model.head) is nn.RNN
    assert {n: sorted(vars(m)) for n, m in model.named_modules()} == torch_dicts, "torch.nn's state, nothing more"
    assert all(p is params[n] for n, p in model.named_parameters()) and len(params) == len(list(model.parameters()))
    torch.manual_seed(1)
    assert torch.equal(model(x), want)


@pytest.mark.parametrize("backend", fusedrnn.dispatch.CHOICES)
def test_unconvert_drops_the_backend_choice(backend):
    m = fusedrnn.GRU(3, 3, backend=backend)
    assert type(fusedrnn.unconvert(m)) is nn.GRU and "backend" not in vars(m)
    assert "backend" not in repr(m)


def test_unconvert_refuses_residual_naming_path_and_option_and_changes_nothing():
    model = nn.Sequential(fusedrnn.LSTM(4, 4), nn.ModuleDict({"deep": fusedrnn.GRU(4, 4, 3, residual=1)}),
                          fusedrnn.LSTM(4, 4, residual=True))
    before = [type(m) for m in model.modules()]
    with pytest.raises(ValueError) as e:
        fusedrnn.unconvert(model)
    msg = str(e.value)
    assert "'1.deep'" in msg and "residual=1" in msg and "'2'" in msg and "residual=True" in msg
    assert "'0'" not in msg
    assert [type(m) for m in model.modules()] == before and model[0].backend == "auto", "nothing changed"
    with pytest.raises(ValueError, match="the model itself has residual=True"):
        fusedrnn.unconvert(fusedrnn.GRU(2, 2, residual=True))


def test_unconvert_of_residual_that_adds_nothing_is_allowed():
    with pytest.warns(UserWarning, match="no residual adds"):
        m = fusedrnn.LSTM(3, 4, residual=True)  # input width differs: residual=True adds nothing
    x = torch.randn(5, 2, 3)
    want = m(x)[0]
    assert type(fusedrnn.unconvert(m)) is nn.LSTM and torch.equal(m(x)[0], want)


def test_unconvert_refuses_subclasses_and_parametrized_modules():
    class Mine(fusedrnn.GRU):
        pass

    class MyRNN(fusedrnn.RNN):
        pass

    with pytest.raises(ValueError, match="'0' is a subclass .*Mine"):
        fusedrnn.unconvert(nn.Sequential(Mine(2, 2)))
    with pytest.raises(ValueError, match=r"the model itself is a subclass .*MyRNN of fusedrnn\.RNN "):
        fusedrnn.unconvert(MyRNN(2, 2, nonlinearity="relu"))
    p = fusedrnn.LSTM(2, 2)
    parametrize.register_parametrization(p, "weight_hh_l0", nn.Identity())
    with pytest.raises(ValueError, match="the model itself is parametrized"):
        fusedrnn.unconvert(p)


def test_round_trip_keeps_state_dict_outputs_and_optimizer():
    """convert -> unconvert -> convert between optimizer steps: the trajectory is torch.nn's,
    bit for bit (the same Parameter objects, so the optimizer's state stays attached)."""
    torch.manual_seed(0)
    ref = Net(bidirectional=True)
    model = copy.deepcopy(ref)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (ref, model)]
    x = torch.randn(7, 3, 3)

    def step(m, opt):
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()

    for i, change in enumerate([fusedrnn.convert, fusedrnn.unconvert, fusedrnn.convert, fusedrnn.unconvert]):
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        change(model)
        assert list(model.state_dict()) == list(sd) and all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
        step(ref, opts[0])
        step(model, opts[1])
        assert len(opts[1].state) == len(list(model.parameters())), "the optimizer's state follows the parameters"
        for (n, a), b in zip(ref.named_parameters(), model.parameters()):
            assert torch.equal(a, b), f"step {i}: {n}"
    assert torch.equal(ref(x), model(x))


def test_unconverted_checkpoint_loads_without_fusedrnn(tmp_path):
    model = fusedrnn.convert(nn.Sequential(nn.LSTM(3, 4, 2, bidirectional=True, proj_size=2)))
    fusedrnn.unconvert(model)
    torch.save(model, tmp_path / "m.pt")
    x = torch.randn(5, 2, 3)
    torch.save((x, model(x)[0]), tmp_path / "io.pt")
    code = f"""
        import sys, torch
        sys.modules["fusedrnn"] = None  # as if not installed: importing it raises
        with torch.serialization.safe_globals([torch.nn.Sequential, torch.nn.LSTM]):
            model = torch.load({str(tmp_path / "m.pt")!r})
        x, want = torch.load({str(tmp_path / "io.pt")!r})
        assert torch.equal(model(x)[0], want)
        print(type(model[0]).__module__)
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "torch.nn.modules.rnn"


# --- what convert leaves alone -------------------------------------------------------------------


def _mixed_model():
    class MyLSTM(nn.LSTM):
        pass

    class MyRNN(nn.RNN):
        pass

    p = nn.GRU(3, 3)
    parametrize.register_parametrization(p, "weight_hh_l0", nn.Identity())
    return nn.ModuleDict({
        "lstm": nn.LSTM(3, 3),
        "rnn": nn.RNN(3, 3, nonlinearity="relu"),
        "cells": nn.ModuleList([nn.LSTMCell(3, 3), nn.GRUCell(3, 3), nn.RNNCell(3, 3)]),
        "mine": MyLSTM(3, 3),
        "myrnn": MyRNN(3, 3),
        "param": p,
    })


def test_convert_warns_for_every_recurrent_module_it_leaves_alone():
    model = _mixed_model()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fusedrnn.convert(model)
    msgs = [str(w.message) for w in rec]
    assert type(model["lstm"]) is fusedrnn.LSTM
    expect = {"'cells.0' (LSTMCell)": "single-step cell",
              "'cells.1' (GRUCell)": "single-step cell", "'cells.2' (RNNCell)": "single-step cell",
              "'mine' (MyLSTM)": "subclass of torch.nn.LSTM", "'myrnn' (MyRNN)": "subclass of torch.nn.RNN ",
              "'param' (ParametrizedGRU)": "parametrized torch.nn.GRU"}
    assert len(msgs) == len(expect), msgs
    for path, why in expect.items():
        assert any(f"left {path} unconverted" in m and why in m for m in msgs), (path, msgs)
    assert all(w.filename == __file__ for w in rec), "the warning points at the caller's line"
    assert type(model["rnn"]) is fusedrnn.RNN and model["rnn"]._cell == "rnn_relu", "nn.RNN converts"
    assert type(model["mine"]).__name__ == "MyLSTM" and type(model["myrnn"]).__name__ == "MyRNN"
    assert parametrize.is_parametrized(model["param"]) and not isinstance(model["param"], fusedrnn.GRU)


def test_convert_strict_raises_naming_every_module_and_changes_nothing():
    model = _mixed_model()
    with pytest.raises(ValueError) as e:
        fusedrnn.convert(model, strict=True)
    for path in ("'cells.0'", "'cells.1'", "'cells.2'", "'mine'", "'myrnn'", "'param'"):
        assert path in str(e.value)
    assert "'rnn'" not in str(e.value), "nn.RNN has a twin"
    assert type(model["lstm"]) is nn.LSTM and type(model["rnn"]) is nn.RNN, "nothing converted"
    with pytest.raises(ValueError, match="the model itself"):
        fusedrnn.convert(nn.RNNCell(2, 2), strict=True)
    assert type(fusedrnn.convert(nn.RNN(2, 2), strict=True)) is fusedrnn.RNN


def test_converting_twice_changes_nothing_and_warns_nothing():
    model = Net()
    fusedrnn.convert(model, strict=True)
    model.lstm.backend = "reference"
    state = {n: dict(vars(m)) for n, m in model.named_modules()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fusedrnn.convert(model, strict=True) is model
    assert {n: dict(vars(m)) for n, m in model.named_modules()} == state
    assert model.lstm.backend == "reference", "an option set on a converted module is kept"
