"""The functional seam: one layer, one direction, a whole time-major sequence.

Every backend (cuda, triton, torch, reference) plugs in here, and the modules compose layers,
directions, dropout, projection, packing and residual stacks from these calls only: gru, lstm, and
the Elman RNN cells of torch.nn.RNN, rnn_tanh and rnn_relu (h' = tanh / relu(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh)).

Shapes: T steps, B batch, I input width, H hidden width, G = 3H (GRU), 4H (LSTM) or H (RNN),
P = proj_size (LSTM with projection) or H.

Semantics (identical on every backend; fusedrnn.reference is the executable definition):
- row b is valid for its first ``lengths[b]`` steps (every step when ``lengths`` is None);
- at a valid step the state advances and ``y[t] = h[t] + residual[t]`` (no add when residual is None);
- past a row's length its output is 0 and its state is carried unchanged, so the final state is
  the state at the row's last valid step;
- ``reverse=True`` runs t = T-1 .. 0; each row starts at its own last valid step;
- ``zoneout`` (a fusedrnn.zoneout.Zoneout, or None): each new state is zoned before the output
  and the length masking (fusedrnn/zoneout.py defines the masks); torch's op cannot run it;
- ``layernorm`` (gru and lstm; a fusedrnn.layernorm.LayerNorm, or None): the layer-normalised cell
  of fusedrnn/layernorm.py; the reference and the Triton kernels run it (torch's op and the CUDA kernels decline).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backends import CELLS, CallSpec
from .dispatch import choose
from .layernorm import LayerNorm
from .zoneout import Zoneout

__all__ = ["gru", "lstm", "rnn_tanh", "rnn_relu"]


def _fail(argname: str, expected: str, got) -> None:
    raise ValueError(f"{argname}: expected {expected}, got {got}")


def _check_tensor(argname: str, t, shape: tuple, ref: Tensor) -> None:
    if not isinstance(t, Tensor):
        _fail(argname, "a Tensor", type(t).__name__)
    if tuple(t.shape) != tuple(shape):
        _fail(argname, f"shape {tuple(shape)}", tuple(t.shape))
    if t.dtype != ref.dtype:
        _fail(argname, f"dtype {ref.dtype} (the dtype of x)", t.dtype)
    if t.device != ref.device:
        _fail(argname, f"device {ref.device} (the device of x)", t.device)


def check_lengths(lengths, T: int, B: int) -> Tensor | None:
    """Validate per-row ``lengths`` for a (T, B, .) sequence and return them as int64 (same device).

    The dtype and shape are checked on the host (ValueError naming ``lengths``). The values must
    lie in [1, T]: lengths on the CPU are checked on the host (ValueError); lengths on another
    device, or any lengths while torch.compile traces, are checked where they live with
    torch._assert_async, so the check never waits for the device (a failure surfaces as a device
    assert at the next synchronisation).
    """
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        _fail("lengths", "None or a 1-D integer Tensor of shape (B,)", type(lengths).__name__)
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        _fail("lengths", "dtype torch.int64 (or another integer dtype)", lengths.dtype)
    if tuple(lengths.shape) != (B,):
        _fail("lengths", f"shape ({B},) (one length per batch row)", tuple(lengths.shape))
    if B > 0 and lengths.device.type != "meta":
        if lengths.device.type == "cpu" and not torch.compiler.is_compiling():
            lo, hi = int(lengths.min()), int(lengths.max())
            if lo < 1 or hi > T:
                _fail("lengths", f"values in [1, {T}] (1 <= length <= T)", f"min {lo}, max {hi}")
        else:
            torch._assert_async(
                ((lengths >= 1) & (lengths <= T)).all(), f"lengths: expected values in [1, {T}] (1 <= length <= T)"
            )
    return lengths if lengths.dtype == torch.int64 else lengths.long()


def _on_device(lengths: Tensor | None) -> bool:
    """lengths that live off the CPU: reading them on the host would wait for the device."""
    return lengths is not None and lengths.device.type not in ("cpu", "meta")


def _check_zoneout(zoneout, x: Tensor) -> bool:
    """Validate a functional call's ``zoneout`` -> whether any state is zoned."""
    if zoneout is None:
        return False
    if not isinstance(zoneout, Zoneout):
        _fail("zoneout", "None or a fusedrnn.zoneout.Zoneout", type(zoneout).__name__)
    for name in ("p_h", "p_c"):
        p = getattr(zoneout, name)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            _fail(f"zoneout.{name}", "a float in [0, 1)", repr(p))
    s = zoneout.seeds
    if s is not None and (not isinstance(s, Tensor) or s.dtype != torch.int64 or tuple(s.shape) != (2,)):
        _fail("zoneout.seeds", "None or an int64 tensor of shape (2,)",
              f"{s.dtype} {tuple(s.shape)}" if isinstance(s, Tensor) else type(s).__name__)
    return (zoneout.p_h, zoneout.p_c) != (0.0, 0.0)


def _check_layernorm(layernorm, cell: str, x: Tensor, G: int, H: int, w_hr) -> bool:
    """Validate a functional call's ``layernorm`` -> whether the cell is layer-normalised: gamma/beta
    of LN_ih and LN_hh of shape (G,), for LSTM also of LN_c of shape (H,) (for GRU None), each in
    x's dtype and on x's device."""
    if layernorm is None:
        return False
    if not isinstance(layernorm, LayerNorm):
        _fail("layernorm", "None or a fusedrnn.layernorm.LayerNorm", type(layernorm).__name__)
    for name in ("ih_weight", "ih_bias", "hh_weight", "hh_bias"):
        _check_tensor(f"layernorm.{name}", getattr(layernorm, name), (G,), x)
    for name in ("c_weight", "c_bias"):
        t = getattr(layernorm, name)
        if cell == "lstm":
            _check_tensor(f"layernorm.{name}", t, (H,), x)
        elif t is not None:
            _fail(f"layernorm.{name}", f"None for a {cell.upper()} (LN_c is the LSTM cell state's)",
                  type(t).__name__)
    if w_hr is not None:
        _fail("layernorm", "None with w_hr (the LayerNorm LSTM has no projection)", "a LayerNorm")
    return True


def _spec(cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, c0=None, w_hr=None, zoneout=None,
          layernorm=None):
    """Validate one call's arguments -> (its CallSpec, lengths as int64 or None)."""
    if not isinstance(x, Tensor):
        _fail("x", "a Tensor", type(x).__name__)
    if x.dim() != 3:
        _fail("x", "a 3-D time-major tensor (T, B, I)", f"{x.dim()}-D")
    if not x.is_floating_point():
        _fail("x", "a floating-point dtype", x.dtype)
    T, B, I = x.shape  # noqa: E741
    if T == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    n_gates = CELLS[cell]
    if not isinstance(w_hh, Tensor) or w_hh.dim() != 2 or w_hh.shape[0] % n_gates:
        got = tuple(w_hh.shape) if isinstance(w_hh, Tensor) else type(w_hh).__name__
        _fail("w_hh", f"a 2-D tensor ({n_gates}*H, P)", got)
    H = w_hh.shape[0] // n_gates
    P = w_hh.shape[1]
    if H < 1 or P < 1:
        _fail("w_hh", f"a non-empty ({n_gates}*H, P) tensor with H >= 1, P >= 1", tuple(w_hh.shape))
    G = n_gates * H
    if cell != "lstm" and P != H:
        _fail("w_hh", f"shape ({G}, {H}) for a{'' if cell == 'gru' else 'n'} {cell.upper()}", tuple(w_hh.shape))
    _check_tensor("w_ih", w_ih, (G, I), x)
    _check_tensor("w_hh", w_hh, (G, P), x)
    if (b_ih is None) != (b_hh is None):
        _fail("b_ih/b_hh", "both tensors or both None", f"{type(b_ih).__name__}/{type(b_hh).__name__}")
    if b_ih is not None:
        _check_tensor("b_ih", b_ih, (G,), x)
        _check_tensor("b_hh", b_hh, (G,), x)
    if cell == "lstm":
        if w_hr is not None:
            if not isinstance(w_hr, Tensor) or w_hr.dim() != 2:
                _fail("w_hr", "None or a 2-D tensor (P, H)", getattr(w_hr, "shape", type(w_hr).__name__))
            _check_tensor("w_hr", w_hr, (P, H), x)
        elif P != H:
            _fail("w_hh", f"shape ({G}, {H}) when w_hr is None", tuple(w_hh.shape))
        _check_tensor("c0", c0, (B, H), x)
    _check_tensor("h0", h0, (B, P), x)
    if residual is not None:
        _check_tensor("residual", residual, (T, B, P), x)
    lengths = check_lengths(lengths, T, B)
    if not isinstance(reverse, bool):
        _fail("reverse", "a bool", type(reverse).__name__)
    zoned = _check_zoneout(zoneout, x)
    normed = _check_layernorm(layernorm, cell, x, G, H, w_hr)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual)
    ) or (normed and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in vars(layernorm).values()))
    return CallSpec(
        cell=cell, device=x.device, dtype=x.dtype, T=T, B=B, I=I, H=H, P=P,
        has_residual=residual is not None, has_lengths=lengths is not None, reverse=reverse,
        has_proj=w_hr is not None, needs_grad=needs_grad, device_lengths=_on_device(lengths), zoneout=zoned,
        layernorm=normed,
    ), lengths


def gru(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    *,
    residual: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
    zoneout: Zoneout | None = None,
    layernorm: LayerNorm | None = None,
) -> tuple[Tensor, Tensor]:
    """One GRU layer-direction over a whole sequence.

    x (T, B, I), h0 (B, H), w_ih (3H, I), w_hh (3H, H), b_ih/b_hh (3H,) or None (gate rows r|z|n,
    torch's layout); residual None or (T, B, H); lengths None or an integer (B,) tensor on any
    device with 1 <= lengths <= T (see ``check_lengths``); zoneout None or a
    fusedrnn.zoneout.Zoneout (p_h; seeds in training, None in evaluation); layernorm None or a
    fusedrnn.layernorm.LayerNorm (ih/hh gamma and beta of shape (3H,); c_weight/c_bias None).
    Returns y (T, B, H) and h_n (B, H).
    """
    spec, lengths = _spec("gru", x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=zoneout,
                          layernorm=layernorm)
    zoneout = zoneout if spec.zoneout else None
    return choose(backend, spec).gru(x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout, layernorm)


def _rnn(cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, backend, zoneout):
    spec, lengths = _spec(cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=zoneout)
    zoneout = zoneout if spec.zoneout else None
    return choose(backend, spec).rnn(cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout)


def rnn_tanh(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    *,
    residual: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
    zoneout: Zoneout | None = None,
) -> tuple[Tensor, Tensor]:
    """One Elman RNN layer-direction with tanh (torch.nn.RNN's default cell) over a whole sequence:
    h_t = tanh(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh).

    x (T, B, I), h0 (B, H), w_ih (H, I), w_hh (H, H), b_ih/b_hh (H,) or None; residual None or
    (T, B, H); lengths None or an integer (B,) tensor (see ``check_lengths``).
    Returns y (T, B, H) and h_n (B, H).
    """
    return _rnn("rnn_tanh", x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, backend, zoneout)


def rnn_relu(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    *,
    residual: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
    zoneout: Zoneout | None = None,
) -> tuple[Tensor, Tensor]:
    """rnn_tanh with ReLU (torch.nn.RNN(nonlinearity="relu")): h_t = relu(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh)."""
    return _rnn("rnn_relu", x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, backend, zoneout)


def lstm(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    w_hr: Tensor | None = None,
    *,
    residual: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
    zoneout: Zoneout | None = None,
    layernorm: LayerNorm | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer-direction over a whole sequence.

    x (T, B, I), h0 (B, P), c0 (B, H), w_ih (4H, I), w_hh (4H, P), b_ih/b_hh (4H,) or None (gate
    rows i|f|g|o), w_hr (P, H) or None; residual None or (T, B, P); lengths None or an integer (B,) tensor;
    zoneout None or a fusedrnn.zoneout.Zoneout (p_h for h, width P; p_c for c, width H); layernorm
    None or a fusedrnn.layernorm.LayerNorm (ih/hh gamma and beta (4H,), c_weight/c_bias (H,); not
    with w_hr). Returns y (T, B, P), h_n (B, P) and c_n (B, H).
    """
    spec, lengths = _spec("lstm", x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, c0=c0, w_hr=w_hr,
                          zoneout=zoneout, layernorm=layernorm)
    zoneout = zoneout if spec.zoneout else None
    return choose(backend, spec).lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse, zoneout,
                                      layernorm)
