"""The `reference` backend: the pure-PyTorch oracle (fusedrnn/reference.py) as a backend.

It serves every float dtype on every device, so `auto` always finds a backend; it is the slowest.
"""

from __future__ import annotations

from .. import reference
from . import FLOAT_DTYPES, Backend, dtype_reasons


class ReferenceBackend(Backend):
    name = "reference"
    description = "pure-PyTorch time loop (the oracle); any device and float dtype"

    def reasons(self, spec, forced):
        return dtype_reasons(spec.dtype, FLOAT_DTYPES)

    def gru(self, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None, layernorm=None):
        return reference.gru_reference(
            x, h0, w_ih, w_hh, b_ih, b_hh, residual=residual, lengths=lengths, reverse=reverse, zoneout=zoneout,
            layernorm=layernorm,
        )

    def rnn(self, cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None, layernorm=None):
        return reference.rnn_reference(
            x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity=cell.removeprefix("rnn_"), residual=residual,
            lengths=lengths, reverse=reverse, zoneout=zoneout, layernorm=layernorm,
        )

    def lstm(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse, zoneout=None,
             layernorm=None):
        return reference.lstm_reference(
            x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual=residual, lengths=lengths, reverse=reverse,
            zoneout=zoneout, layernorm=layernorm,
        )


BACKEND = ReferenceBackend()
