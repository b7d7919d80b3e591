"""Layer normalisation of the recurrent cells (Ba et al. 2016): the one place it is defined.

    LN(v) = (v - mean(v)) / sqrt(var(v) + EPS) * gamma + beta

over the whole last dimension of ``v`` (the gate vector: 4H for LSTM, 3H for GRU; H for the LSTM
cell state), with the biased variance. Where it applies (fusedrnn.reference runs it):

    LSTM: a_t = LN_ih(x_t W_ihᵀ) + LN_hh(h_{t-1} W_hhᵀ) + b_ih + b_hh       (gates i, f, g, o)
          c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g)                      (carried, returned as c_n)
          h_t = sigmoid(o) tanh(LN_c(c_t))
    GRU:  gi = LN_ih(x_t W_ihᵀ) + b_ih,  gh = LN_hh(h_{t-1} W_hhᵀ) + b_hh, then torch's GRU step.

Modules: fusedrnn.LayerNormLSTM / fusedrnn.LayerNormGRU. The Triton kernels fuse LN_hh and LN_c into
the step (kernels/README.md, "LayerNorm cells"); LN_ih is one operation over all steps before them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["EPS", "LayerNorm", "norm"]

EPS = 1e-5


@dataclass(frozen=True)
class LayerNorm:
    """The LayerNorm parameters of one layer-direction call: gamma/beta of LN_ih and LN_hh (each of
    the gate width G), and for LSTM of LN_c (width H; None for GRU)."""

    ih_weight: Tensor
    ih_bias: Tensor
    hh_weight: Tensor
    hh_bias: Tensor
    c_weight: Optional[Tensor] = None
    c_bias: Optional[Tensor] = None

    def tensors(self) -> tuple:
        """The six fields in order (None where absent); plain attribute reads, so torch.compile traces it."""
        return (self.ih_weight, self.ih_bias, self.hh_weight, self.hh_bias, self.c_weight, self.c_bias)

    def to(self, dtype: torch.dtype) -> "LayerNorm":
        """Every parameter cast to ``dtype`` (autograd flows through the casts)."""
        return LayerNorm(*(None if t is None else t.to(dtype) for t in (
            self.ih_weight, self.ih_bias, self.hh_weight, self.hh_bias, self.c_weight, self.c_bias)))


def norm(v: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """LN(v) over the last dimension, written out (plain ops: it traces, exports and differentiates
    as it is); ``weight`` / ``bias`` are gamma / beta, in ``v``'s dtype."""
    mean = v.mean(-1, keepdim=True)
    centered = v - mean
    var = centered.square().mean(-1, keepdim=True)
    return centered * torch.rsqrt(var + EPS) * weight + bias
