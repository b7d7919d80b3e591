"""torch.nn layers composed by hand into the stack a fusedrnn module with ``residual=`` computes:
one torch.nn module per layer, ``y_l = layer_l(x_l) + x_l`` on the residual layers. It is the
oracle of the residual tests and the baseline of the residual benchmark rows (a user without
fusedrnn would write exactly this)."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence


class ComposedTorch(torch.nn.Module):
    """The per-layer torch.nn stack equivalent to ``fmod`` (a fusedrnn.GRU/LSTM/RNN), holding copies of
    its weights in their dtype."""

    def __init__(self, fmod):
        super().__init__()
        cls = next(c for c in (torch.nn.LSTM, torch.nn.RNN, torch.nn.GRU) if isinstance(fmod, c))
        D = 2 if fmod.bidirectional else 1
        P = fmod.proj_size if getattr(fmod, "proj_size", 0) else fmod.hidden_size
        dtype = fmod.weight_ih_l0.dtype
        self.residual_layers = tuple(fmod._residual_layers)
        self.is_lstm = cls is torch.nn.LSTM
        self.D = D
        self.layers = torch.nn.ModuleList()
        for layer in range(fmod.num_layers):
            kw = dict(bias=fmod.bias, batch_first=fmod.batch_first, bidirectional=fmod.bidirectional, dtype=dtype,
                      device=fmod.weight_ih_l0.device)
            if self.is_lstm:
                kw["proj_size"] = fmod.proj_size
            if cls is torch.nn.RNN:
                kw["nonlinearity"] = fmod.nonlinearity
            m = cls(fmod.input_size if layer == 0 else D * P, fmod.hidden_size, **kw)
            with torch.no_grad():
                for name, p in m.named_parameters():
                    p.copy_(getattr(fmod, name.replace("_l0", f"_l{layer}")))
            self.layers.append(m)

    def forward(self, x, hx=None):
        finals = []
        for layer, m in enumerate(self.layers):
            sl = slice(layer * self.D, (layer + 1) * self.D)
            if hx is None:
                h = None
            elif self.is_lstm:
                h = (hx[0][sl], hx[1][sl])
            else:
                h = hx[sl]
            y, state = m(x, h)
            if layer in self.residual_layers:
                y = PackedSequence(y.data + x.data, *y[1:]) if isinstance(y, PackedSequence) else y + x
            finals.append(state)
            x = y
        if self.is_lstm:
            return x, (torch.cat([s[0] for s in finals], 0), torch.cat([s[1] for s in finals], 0))
        return x, torch.cat(finals, 0)

    def grads_by_fused_name(self) -> dict:
        """Each layer's parameter grads under the fused module's parameter names."""
        out = {}
        for layer, m in enumerate(self.layers):
            for name, p in m.named_parameters():
                out[name.replace("_l0", f"_l{layer}")] = p.grad
        return out
