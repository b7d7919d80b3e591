"""Export: a model holding fusedrnn modules exports the graph torch.nn's modules export (ONNX LSTM/GRU
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


def _run(proto, x: torch.Tensor) -> np.ndarray:
    sess = ReferenceEvaluator(proto)
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
