"""Whole-model checkpoints (torch.save(model)) of fusedrnn modules load under torch.load's
weights-only default wherever torch.nn's classes are allowlisted: `import fusedrnn` registers its
classes, and everything a module pickles is of types the weights-only unpickler accepts."""

import io
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import fusedrnn

# Every option a module has; the backend is an execution choice pickled as its name.
OPTIONS = [
    (fusedrnn.LSTM, dict()),
    (fusedrnn.GRU, dict()),
    (fusedrnn.LSTM, dict(residual=True)),
    (fusedrnn.GRU, dict(residual=1)),
    (fusedrnn.LSTM, dict(proj_size=3)),
    (fusedrnn.GRU, dict(bidirectional=True)),
    (fusedrnn.LSTM, dict(bidirectional=True, proj_size=2, residual=True)),
    (fusedrnn.GRU, dict(batch_first=True)),
    (fusedrnn.LSTM, dict(bias=False, batch_first=True)),
    (fusedrnn.GRU, dict(bias=False, residual=True)),
    (fusedrnn.LSTM, dict(dropout=0.5)),
    (fusedrnn.GRU, dict(dropconnect=0.25)),
    (fusedrnn.LSTM, dict(bidirectional=True, dropconnect=0.5, residual=True)),
    (fusedrnn.RNN, dict()),
    (fusedrnn.RNN, dict(nonlinearity="relu", bidirectional=True, residual=True)),
    (fusedrnn.RNN, dict(nonlinearity="relu", bias=False, batch_first=True, dropconnect=0.25)),
    (fusedrnn.LayerNormLSTM, dict()),
    (fusedrnn.LayerNormGRU, dict(bidirectional=True, residual=True, zoneout=0.2)),
    (fusedrnn.LayerNormLSTM, dict(bias=False, batch_first=True, dropconnect=0.25, zoneout=(0.1, 0.3))),
] + [(cls, dict(backend=b)) for cls in (fusedrnn.GRU, fusedrnn.LSTM, fusedrnn.RNN) for b in fusedrnn.dispatch.CHOICES]

RUNS_ON_CPU = ("auto", "torch", "reference")


class Model(nn.Module):
    """A word_language_model-like wrapper: torch.nn modules around the recurrent one."""

    def __init__(self, cls, kwargs):
        super().__init__()
        self.rnn = cls(4, 4, num_layers=2, **kwargs)
        width = (2 if self.rnn.bidirectional else 1) * (self.rnn.proj_size or self.rnn.hidden_size)
        self.head = nn.Sequential(nn.Dropout(0.0), nn.Linear(width, 3))

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def _torch_nn_classes():
    """What a program without fusedrnn would allowlist for this model: torch.nn's classes only."""
    return [Model, nn.Sequential, nn.Dropout, nn.Linear, nn.GRU, nn.LSTM, nn.RNN]


def _reload(model, **load_kwargs):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    with torch.serialization.safe_globals(_torch_nn_classes()):
        return torch.load(buf, **load_kwargs)  # weights_only: torch's default


@pytest.mark.parametrize("cls,kwargs", OPTIONS, ids=[f"{c.__name__}-{k}" for c, k in OPTIONS])
def test_whole_model_checkpoint_loads_weights_only(cls, kwargs):
    torch.manual_seed(0)
    model = Model(cls, kwargs).double().eval()
    loaded = _reload(model)
    assert type(loaded) is Model and type(loaded.rnn) is cls
    for name in ("residual", "_residual_layers", "backend", "dropconnect", "bidirectional", "batch_first", "bias",
                 "proj_size", "num_layers", "dropout", "hidden_size", "input_size", "mode"):
        assert getattr(loaded.rnn, name) == getattr(model.rnn, name), name
    assert loaded.rnn.extra_repr() == model.rnn.extra_repr()
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert list(sd) == list(sd2)
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k
    if model.rnn.backend in RUNS_ON_CPU:
        x = torch.randn(2, 5, 4, dtype=torch.float64) if model.rnn.batch_first else torch.randn(5, 2, 4, dtype=torch.float64)
        assert torch.equal(loaded(x), model(x))


def test_checkpoint_of_a_module_that_ran_holds_no_caches():
    """A forward caches its plan on the module; the pickle leaves it out (it holds a dispatch
    object the weights-only unpickler would refuse, and is this process's decision)."""
    model = Model(fusedrnn.LSTM, dict(residual=True)).eval()
    x = torch.randn(5, 2, 4)
    want = model(x)
    assert "_last_plan" in model.rnn.__dict__
    loaded = _reload(model)
    assert "_last_plan" not in loaded.rnn.__dict__
    torch.testing.assert_close(loaded(x), want, rtol=0, atol=0)


def test_dropconnect_checkpoint_trains_the_same_and_old_checkpoints_get_the_default():
    model = Model(fusedrnn.LSTM, dict(dropconnect=0.5)).train()
    loaded = _reload(model)
    x = torch.randn(5, 2, 4)
    torch.manual_seed(0)
    want = model(x)
    torch.manual_seed(0)
    torch.testing.assert_close(loaded(x), want, rtol=0, atol=0)
    old = Model(fusedrnn.GRU, dict())
    del old.rnn.__dict__["dropconnect"]  # a checkpoint written before the option existed
    assert _reload(old).rnn.dropconnect == 0.0


def test_checkpoint_from_another_process_loads_after_import_fusedrnn(tmp_path):
    """word_language_model's flow: one process saves the whole model, a fresh one that imports
    fusedrnn (and allowlists only torch.nn's classes) loads it with a plain torch.load(f)."""
    path = tmp_path / "model.pt"
    save = f"""
        import torch, fusedrnn
        torch.manual_seed(0)
        model = torch.nn.Sequential(fusedrnn.GRU(4, 4, 2, residual=True, bidirectional=False),)
        torch.save(model, {str(path)!r})
        torch.save(model(torch.ones(3, 1, 4))[0], {str(path) + ".out"!r})
    """
    load = f"""
        import torch, fusedrnn
        with torch.serialization.safe_globals([torch.nn.Sequential, torch.nn.GRU]):
            model = torch.load({str(path)!r})
        out = torch.load({str(path) + ".out"!r})
        assert type(model[0]) is fusedrnn.GRU and model[0].residual is True, model
        assert torch.equal(model[0](torch.ones(3, 1, 4))[0], out)
        print("ok")
    """
    for code in (save, load):
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_rnn_checkpoint_from_another_process_loads_after_import_fusedrnn(tmp_path):
    """The same flow for fusedrnn.RNN: a fresh process that imports fusedrnn and allowlists only
    torch.nn's classes loads it (fusedrnn.RNN is among the registered safe globals)."""
    path = tmp_path / "rnn.pt"
    save = f"""
        import torch, fusedrnn
        torch.manual_seed(0)
        model = torch.nn.Sequential(fusedrnn.RNN(4, 4, 2, nonlinearity="relu", residual=True))
        torch.save(model, {str(path)!r})
        torch.save(model(torch.ones(3, 1, 4))[0], {str(path) + ".out"!r})
    """
    load = f"""
        import torch, fusedrnn
        assert fusedrnn.RNN in torch.serialization.get_safe_globals()
        with torch.serialization.safe_globals([torch.nn.Sequential, torch.nn.RNN]):
            model = torch.load({str(path)!r})
        out = torch.load({str(path) + ".out"!r})
        assert type(model[0]) is fusedrnn.RNN and model[0].nonlinearity == "relu" and model[0].residual is True
        assert torch.equal(model[0](torch.ones(3, 1, 4))[0], out)
        print("ok")
    """
    for code in (save, load):
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LayerNormGRU"])
def test_layernorm_checkpoint_from_another_process_loads_after_import_fusedrnn(tmp_path, cls):
    """The same flow for the LayerNorm modules (registered safe globals too), with LayerNorm
    parameters away from their initial values."""
    path = tmp_path / "ln.pt"
    base = "torch.nn.LSTM" if cls == "LayerNormLSTM" else "torch.nn.GRU"
    save = f"""
        import torch, fusedrnn
        torch.manual_seed(0)
        model = torch.nn.Sequential(fusedrnn.{cls}(4, 4, 2, residual=True))
        with torch.no_grad():
            model[0].layernorm_hh_weight_l1.mul_(3.0)
            model[0].layernorm_ih_bias_l0.add_(0.5)
        torch.save(model, {str(path)!r})
        torch.save(model(torch.ones(3, 1, 4))[0], {str(path) + ".out"!r})
    """
    load = f"""
        import torch, fusedrnn
        with torch.serialization.safe_globals([torch.nn.Sequential, {base}]):
            model = torch.load({str(path)!r})
        out = torch.load({str(path) + ".out"!r})
        assert type(model[0]) is fusedrnn.{cls} and model[0].residual is True, model
        assert torch.equal(model[0].layernorm_hh_weight_l1, torch.full_like(model[0].layernorm_hh_weight_l1, 3.0))
        assert torch.equal(model[0](torch.ones(3, 1, 4))[0], out)
        print("ok")
    """
    for code in (save, load):
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_without_import_fusedrnn_the_load_fails_with_torchs_message(tmp_path):
    """The registration is what makes it load: a process that never imports fusedrnn gets torch's
    weights-only error naming the class (and the fix torch suggests)."""
    path = tmp_path / "model.pt"
    torch.save(nn.Sequential(fusedrnn.LSTM(2, 2)), path)
    code = f"""
        import sys, torch
        try:
            with torch.serialization.safe_globals([torch.nn.Sequential, torch.nn.LSTM]):
                torch.load({str(path)!r})
        except Exception as e:
            print(type(e).__name__, "fusedrnn.modules.LSTM" in str(e))
        print("fusedrnn" in sys.modules)
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["UnpicklingError", "True", "False"]
