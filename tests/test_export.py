"""Export: a model holding fusedrnn modules exports the graph torch.nn's modules export (ONNX LSTM/GRU/RNN
ops, residual adds as Add), never a time loop unrolled at the traced length. Whatever backend would
run eagerly, dispatch takes torch's op while exporting (fusedrnn/dispatch.py)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

import fusedrnn

onnx = pytest.importorskip("onnx", reason="onnx is not installed (requirements-dev.txt)")
pytest.importorskip("onnxscript", reason="onnxscript (torch.onnx's default exporter) is not installed")
from onnx.reference import ReferenceEvaluator  # noqa: E402
from onnx.reference.ops.op_rnn import RNN_14  # noqa: E402


class Head(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


MODELS = {
    "lstm-2-layers": (lambda: fusedrnn.LSTM(8, 16, num_layers=2), "LSTM", 2),
    "gru-residual-bidirectional": (lambda: fusedrnn.GRU(8, 4, num_layers=2, bidirectional=True, residual=True), "GRU", 2),
    # in evaluation DropConnect uses W_hh as it is: torch.nn's graph
    "lstm-dropconnect-eval": (lambda: fusedrnn.LSTM(8, 16, num_layers=2, dropconnect=0.3), "LSTM", 2),
}
# fusedrnn.RNN: the TorchScript exporter emits ONNX RNN nodes (activations Tanh / Relu); torch's
# default exporter has no RNN node for torch.nn.RNN itself and exports its time loop unrolled at the
# traced length, and fusedrnn.RNN exports that same graph.
RNN_MODELS = {
    "rnn-tanh-2-layers": lambda: fusedrnn.RNN(8, 16, num_layers=2),
    "rnn-relu-residual-bidirectional": lambda: fusedrnn.RNN(8, 4, num_layers=2, nonlinearity="relu",
                                                            bidirectional=True, residual=True),
}


class RNN(RNN_14):
    """onnx's reference ONNX RNN with the Relu activation, which the ONNX spec lists and onnx's
    reference evaluator leaves out (it knows Tanh and Affine)."""

    op_domain = ""

    def choose_act(self, name, alpha, beta):
        if name in ("Relu", "relu"):
            return lambda x: np.maximum(x, 0)
        return super().choose_act(name, alpha, beta)


def _run(proto, x: torch.Tensor) -> np.ndarray:
    sess = ReferenceEvaluator(proto, new_ops=[RNN])
    return sess.run(None, {proto.graph.input[0].name: x.numpy()})[0]


@pytest.mark.parametrize("name", list(MODELS))
def test_default_exporter_emits_rnn_ops(name):
    make, op, count = MODELS[name]
    torch.manual_seed(0)
    model = Head(make()).eval()
    x = torch.randn(5, 3, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    ops = [n.op_type for n in program.model_proto.graph.node]
    assert ops.count(op) == count, ops
    assert not {"Loop", "Scan", "If"} & set(ops), ops
    assert len(ops) < 30, f"{len(ops)} nodes: {ops}"
    if "residual" in name:
        assert ops.count("Add") == 2, ops
    np.testing.assert_allclose(_run(program.model_proto, x), model(x).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_torchscript_exporter_runs_at_another_length(name):
    # torch's default exporter specialises the sequence length of RNN ops (torch.export marks T
    # static for torch.nn.LSTM itself); the TorchScript exporter keeps it dynamic.
    make, op, count = MODELS[name]
    torch.manual_seed(0)
    model = Head(make()).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(5, 3, 8),), f, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "T", 1: "B"}})
    proto = onnx.load_from_string(f.getvalue())
    assert [n.op_type for n in proto.graph.node].count(op) == count
    for T, B in ((7, 3), (2, 5)):
        x = torch.randn(T, B, 8)
        np.testing.assert_allclose(_run(proto, x), model(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def _torchscript_export(model, dynamic: bool = True):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(5, 3, 8),), f, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "T", 1: "B"}} if dynamic else None)
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("name", list(RNN_MODELS))
def test_rnn_torchscript_exporter_emits_onnx_rnn_nodes(name):
    torch.manual_seed(0)
    model = Head(RNN_MODELS[name]()).eval()
    proto = _torchscript_export(model)
    rnn_nodes = [n for n in proto.graph.node if n.op_type == "RNN"]
    assert len(rnn_nodes) == 2, [n.op_type for n in proto.graph.node]  # one per layer
    act = model.rnn.nonlinearity.capitalize().encode()
    for node in rnn_nodes:
        attrs = {a.name: a for a in node.attribute}
        assert set(attrs["activations"].strings) == {act}, attrs["activations"]
    ops = [n.op_type for n in proto.graph.node]
    assert not {"Loop", "Scan"} & set(ops), ops
    assert ops.count("Add") == (2 if model.rnn.residual else 0), ops
    for T, B in ((7, 3), (2, 5)):
        x = torch.randn(T, B, 8)
        np.testing.assert_allclose(_run(proto, x), model(x).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_default_exporter_exports_torch_nn_rnns_graph(nonlinearity):
    torch.manual_seed(0)
    fused = Head(fusedrnn.RNN(8, 16, num_layers=2, nonlinearity=nonlinearity)).eval()
    plain = Head(torch.nn.RNN(8, 16, num_layers=2, nonlinearity=nonlinearity)).eval()
    plain.rnn.load_state_dict(fused.rnn.state_dict())
    x = torch.randn(5, 3, 8)
    graphs = []
    for model in (fused, plain):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
        graphs.append(program.model_proto)
    assert [n.op_type for n in graphs[0].graph.node] == [n.op_type for n in graphs[1].graph.node]
    assert nonlinearity.capitalize() in {n.op_type for n in graphs[0].graph.node}
    np.testing.assert_allclose(_run(graphs[0], x), plain(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def _check_plain_ops_export(model, x, dynamo: bool) -> None:
    """Export ``model`` at ``x`` (torch's default exporter, or the TorchScript one): no ONNX RNN node
    (the reference's plain ops), and onnx's reference evaluator reproduces the model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            proto = torch.onnx.export(model, (x,), dynamo=True, verbose=False).model_proto
        else:
            f = io.BytesIO()
            torch.onnx.export(model, (x,), f, dynamo=False, input_names=["x"])
            proto = onnx.load_from_string(f.getvalue())
    ops = {n.op_type for n in proto.graph.node}
    assert not {"RNN", "GRU", "LSTM"} & ops, ops
    np.testing.assert_allclose(_run(proto, x), model(x).detach().numpy(), rtol=1e-5, atol=1e-6)


# zoneout in evaluation (h_t = p h_{t-1} + (1 - p) h~_t) is not torch's RNN op: both exporters get
# the reference's plain ops, unrolled at the traced length.
ZONEOUT_MODELS = {
    "gru-zoneout": lambda: fusedrnn.GRU(8, 16, num_layers=2, zoneout=0.3),
    "lstm-zoneout-pair": lambda: fusedrnn.LSTM(8, 16, zoneout=(0.1, 0.4), bidirectional=True),
    "rnn-zoneout": lambda: fusedrnn.RNN(8, 16, zoneout=0.2),
}


@pytest.mark.parametrize("dynamo", [True, False], ids=["default", "torchscript"])
@pytest.mark.parametrize("name", list(ZONEOUT_MODELS))
def test_zoneout_evaluation_exports_plain_ops(name, dynamo):
    torch.manual_seed(0)
    model = Head(ZONEOUT_MODELS[name]()).eval()
    x = torch.randn(5, 3, 8)
    _check_plain_ops_export(model, x, dynamo)


# LayerNormLSTM / LayerNormGRU (evaluation) have no torch op either: the reference's plain ops, with
# the LayerNorm parameters (moved off gamma = 1, beta = 0 so that they matter) as initialisers.
LAYERNORM_MODELS = {
    "layernorm-lstm-bidirectional": lambda: fusedrnn.LayerNormLSTM(8, 16, bidirectional=True),
    "layernorm-gru-2-layers-residual-zoneout": lambda: fusedrnn.LayerNormGRU(8, 8, num_layers=2, residual=True,
                                                                             zoneout=0.2),
}


@pytest.mark.parametrize("dynamo", [True, False], ids=["default", "torchscript"])
@pytest.mark.parametrize("name", list(LAYERNORM_MODELS))
def test_layernorm_evaluation_exports_plain_ops(name, dynamo):
    torch.manual_seed(0)
    model = Head(LAYERNORM_MODELS[name]()).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "layernorm_" in n:
                p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(5, 3, 8)
    _check_plain_ops_export(model, x, dynamo)
