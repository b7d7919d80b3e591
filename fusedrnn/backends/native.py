"""The `torch` backend: torch's own RNN op (ATen/oneDNN on CPU, cuDNN on CUDA).

Two ways in:
- one layer-direction (``TorchBackend``, for fusedrnn.functional and the mixed-backend stack):
  torch's single-layer op, with variable lengths through torch's packed path, ``reverse`` as a
  per-row flip of each row's valid prefix, and the residual as one add after the op;
- one whole layer, both directions (``layer``), for module stacks that run entirely on torch but
  need residual adds between layers: torch's op over the layer, exactly as torch.nn runs it, then
  the add. (A stack with nothing to fuse runs torch.nn's own forward: fusedrnn/modules.py.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import FLOAT_DTYPES, Backend, dtype_reasons


ZONEOUT_REASON = "zoneout (torch's RNN ops have no zoneout; the reference, the Triton and the CUDA kernels run it)"
LAYERNORM_REASON = "layernorm (torch's RNN ops have no LayerNorm; the reference runs it)"


class TorchBackend(Backend):
    """torch's own single-layer RNN op (_VF.gru / _VF.lstm / _VF.rnn_tanh / _VF.rnn_relu): cuDNN on CUDA, oneDNN/ATen on CPU.

    Variable lengths go through torch's packed path (sorted internally); the reverse direction is
    a per-row flip of each row's valid prefix; the residual is one add after the op.
    """

    name = "torch"
    description = "torch's own RNN op (ATen on CPU, cuDNN on CUDA); the fast path on CPU"
    CPU_DTYPES = (torch.float32, torch.float64)

    def reasons(self, spec, forced):
        if spec.zoneout or spec.layernorm:
            return ([ZONEOUT_REASON] if spec.zoneout else []) + ([LAYERNORM_REASON] if spec.layernorm else [])
        if spec.has_lengths and spec.tracing:
            return ["lengths under torch.compile (torch's packing functions are not traceable)"]
        if spec.has_lengths and spec.device_lengths:
            return ["lengths on the GPU (torch's packed op takes them on the CPU: reading them would "
                    "synchronise with the device; pass lengths on the CPU to use torch's op)"]
        if spec.tracing and spec.cell == "lstm" and spec.device.type == "cpu":
            return ["LSTM on CPU under torch.compile (torch's mkldnn LSTM op does not trace through AOT autograd)"]
        if spec.has_proj and spec.P == spec.H:
            return ["w_hr of shape (H, H): torch's op treats P == H as no projection"]
        if spec.device.type == "cpu":
            return dtype_reasons(spec.dtype, self.CPU_DTYPES)
        if spec.device.type == "cuda":
            return dtype_reasons(spec.dtype, FLOAT_DTYPES)
        return [f"device={spec.device.type} (supported: cpu, cuda)"]

    def gru(self, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None, layernorm=None):
        self.refuse_layernorm(layernorm, LAYERNORM_REASON)
        params = [w for w in (w_ih, w_hh, b_ih, b_hh) if w is not None]
        y, (h_n,) = _run_native(
            lambda inp, hx, batch_sizes: _vf_call(torch._VF.gru, inp, hx, params, b_ih is not None, batch_sizes),
            x, (h0,), residual, lengths, reverse,
        )
        return y, h_n

    def rnn(self, cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None, layernorm=None):
        self.refuse_layernorm(layernorm, LAYERNORM_REASON)
        op = _OPS[cell]
        params = [w for w in (w_ih, w_hh, b_ih, b_hh) if w is not None]
        y, (h_n,) = _run_native(
            lambda inp, hx, batch_sizes: _vf_call(op, inp, hx, params, b_ih is not None, batch_sizes),
            x, (h0,), residual, lengths, reverse,
        )
        return y, h_n

    def lstm(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse, zoneout=None,
             layernorm=None):
        self.refuse_layernorm(layernorm, LAYERNORM_REASON)
        params = [w for w in (w_ih, w_hh, b_ih, b_hh, w_hr) if w is not None]
        y, (h_n, c_n) = _run_native(
            lambda inp, hx, batch_sizes: _vf_call(torch._VF.lstm, inp, hx, params, b_ih is not None, batch_sizes),
            x, (h0, c0), residual, lengths, reverse,
        )
        return y, h_n, c_n


def _vf_call(op, inp, states, params, has_bias, batch_sizes):
    hx = states[0].unsqueeze(0) if len(states) == 1 else tuple(s.unsqueeze(0) for s in states)
    if batch_sizes is None:
        out = op(inp, hx, params, has_bias, 1, 0.0, False, False, False)
    else:
        out = op(inp, batch_sizes, hx, params, has_bias, 1, 0.0, False, False)
    return out[0], tuple(s.squeeze(0) for s in out[1:])


def flip_valid(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each row's valid prefix along time (dim 0); steps past a row's length stay put."""
    if lengths is None:
        return x.flip(0)
    T, B = x.shape[0], x.shape[1]
    t = torch.arange(T, device=x.device).view(T, 1)
    L = lengths.to(x.device).view(1, B)
    idx = torch.where(t < L, L - 1 - t, t)
    return x.gather(0, idx.view(T, B, *([1] * (x.dim() - 2))).expand_as(x))


def _run_native(call, x, states, residual, lengths, reverse):
    if reverse:
        x = flip_valid(x, lengths)
    if lengths is None:
        y, final = call(x, states, None)
    else:
        lens = lengths.to("cpu", torch.int64)
        order = torch.argsort(lens, descending=True, stable=True)
        inverse = torch.argsort(order)
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x.index_select(1, order.to(x.device)), lens[order], enforce_sorted=True
        )
        sorted_states = tuple(s.index_select(0, order.to(s.device)) for s in states)
        data, final = call(packed.data, sorted_states, packed.batch_sizes)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(
            torch.nn.utils.rnn.PackedSequence(data, packed.batch_sizes), total_length=x.shape[0]
        )
        y = y.index_select(1, inverse.to(y.device))
        final = tuple(s.index_select(0, inverse.to(s.device)) for s in final)
    if reverse:
        y = flip_valid(y, lengths)
    if residual is not None:
        if lengths is None:
            y = y + residual
        else:
            T, B = y.shape[0], y.shape[1]
            valid = torch.arange(T, device=y.device).view(T, 1) < lengths.to(y.device).view(1, B)
            y = y + residual * valid.unsqueeze(-1).to(residual.dtype)
    return y, final


BACKEND = TorchBackend()
_OPS = {"gru": torch._VF.gru, "lstm": torch._VF.lstm, "rnn_tanh": torch._VF.rnn_tanh, "rnn_relu": torch._VF.rnn_relu}


def layer(cell: str, x: Tensor, batch_sizes: Tensor | None, hx, params: list, has_bias: bool,
          bidirectional: bool, batch_first: bool):
    """One layer (both directions when ``bidirectional``) through torch's multi-layer op with
    num_layers=1: exactly what torch.nn computes for that layer. ``x`` is dense (batch_first as
    given) or packed data with ``batch_sizes``; ``hx`` is (h,) or (h, c), each (D, B, .).
    Returns the layer's output in the same layout and its final states."""
    op = _OPS[cell]
    states = tuple(hx) if cell == "lstm" else hx[0]
    if batch_sizes is None:
        out = op(x, states, params, has_bias, 1, 0.0, False, bidirectional, batch_first)
    else:
        out = op(x, batch_sizes, states, params, has_bias, 1, 0.0, False, bidirectional)
    return out[0], tuple(out[1:])
