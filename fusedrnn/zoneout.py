"""Zoneout (Krueger et al. 2017): the one place its masks are defined.

With h~_t, c~_t the ordinary step's new states, a zoned step keeps each state element with
probability p instead of updating it:

    training:    h_t = m_h * h_{t-1} + (1 - m_h) * h~_t,  c_t = m_c * c_{t-1} + (1 - m_c) * c~_t (LSTM)
    evaluation:  m replaced by its expectation p.

m ~ Bernoulli(p), independent per element, batch row, step, layer and direction. The masks are
a counter-based random function, never a stored tensor: element (t, b, j) of a state of width W
zones out when

    uniform(seed, (t * B + b) * W + j) < p

where ``uniform`` is Philox 4x32 with 10 rounds as Triton's ``tl.rand`` computes it (the same
bits on the CPU, in the reference, and in the fused kernels, which regenerate the masks in the
backward instead of saving them), and ``seed`` is one of two int64 seeds (one for h, one for c)
per layer-direction, drawn from torch's generator of the input's device at every training
forward (``draw_seeds``): reproducible under ``torch.manual_seed``, different at every call, and
drawn on the device (no host synchronisation; a CUDA graph replay draws new seeds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["Zoneout", "check_zoneout", "draw_seeds", "uniform", "offsets", "keep_mask", "apply"]

_MASK32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57  # Philox 4x32 multipliers
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85  # Philox 4x32 key increments (Weyl constants)
_TO_UNIT = 4.6566127342e-10  # tl.rand's uint32 -> [0, 1) scale (the largest with MAX_INT * scale < 1)
SEED_HIGH = 2**62  # seeds are drawn in [0, SEED_HIGH): non-negative int64


@dataclass(frozen=True)
class Zoneout:
    """Zoneout of one layer-direction call: probabilities for h and c (c unused but for LSTM) and
    ``seeds`` (an int64 tensor (2,): h, c) in training, or None in evaluation (m = p)."""

    p_h: float
    p_c: float
    seeds: Optional[Tensor] = None

    @property
    def training(self) -> bool:
        return self.seeds is not None


def check_zoneout(value, cell: str) -> tuple[float, float]:
    """Validate a module's ``zoneout=`` -> (p_h, p_c). A float in [0, 1) sets every state; an LSTM
    also takes a pair (p_h, p_c)."""
    def one(p, what):
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise ValueError(f"zoneout: {what} should be a float in [0, 1), got {p!r} ({type(p).__name__})")
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"zoneout: {what} should be a float in [0, 1), got {p!r}")
        return float(p)

    if isinstance(value, (tuple, list)):
        if cell != "lstm":
            raise ValueError(f"zoneout: a pair (p_h, p_c) is for LSTM only; {cell.upper()} takes one float in "
                             f"[0, 1), got {value!r}")
        if len(value) != 2:
            raise ValueError(f"zoneout: expected a float or a pair (p_h, p_c), got {value!r}")
        return one(value[0], "p_h"), one(value[1], "p_c")
    p = one(value, "p")
    return p, p


def draw_seeds(n: int, device) -> Tensor:
    """(n, 2) int64 seeds (h, c per layer-direction) from torch's generator of ``device``: one draw."""
    return torch.randint(0, SEED_HIGH, (n, 2), dtype=torch.int64, device=device)


def _mul_hi_lo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(a * b) >> 32 and (a * b) mod 2**32 for a 32-bit constant a and uint32 values b held in
    int64, with 16-bit limbs so no product leaves int64."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    lo_part = b * a_lo  # < 2**48
    hi_part = b * a_hi  # < 2**48
    hi = (hi_part + (lo_part >> 16)) >> 16
    lo = ((hi_part & 0xFFFF) << 16) + lo_part
    return hi & _MASK32, lo & _MASK32


def uniform(seed: Tensor, offsets: Tensor) -> Tensor:
    """float32 in [0, 1): ``tl.rand(seed, offsets)`` bit for bit (Philox 4x32-10 of counter
    (offset_lo, offset_hi, 0, 0) and key (seed_lo, seed_hi), first word, tl.rand's float map).
    ``seed``: int64 scalar tensor (any device); ``offsets``: int64 tensor >= 0."""
    seed = seed.to(torch.int64)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    c0, c1 = offsets & _MASK32, (offsets >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = c2
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    # tl.rand: the word as int32, negative values folded (~x), times the scale, in float32
    x = torch.where(c0 >= 2**31, _MASK32 - c0, c0)
    return x.to(torch.float32) * torch.tensor(_TO_UNIT, dtype=torch.float32)


def offsets(t: int, B: int, W: int, device) -> Tensor:
    """The (B, W) counters of step t: (t * B + b) * W + j."""
    return (t * B * W) + torch.arange(B * W, dtype=torch.int64, device=device).view(B, W)


def keep_mask(seed: Tensor, p: float, t: int, B: int, W: int, device) -> Tensor:
    """(B, W) bool: the elements of step t's state (width W) that zone out (keep their old value)."""
    return uniform(seed.to(device), offsets(t, B, W, device)) < torch.tensor(p, dtype=torch.float32)


def apply(zo: Optional[Zoneout], which: int, t: int, new: Tensor, old: Tensor) -> Tensor:
    """The zoned state of step t: in training ``old`` where the mask zones out, else ``new`` (a
    selection, exact); in evaluation p * old + (1 - p) * new. ``new`` unchanged without zoneout
    or with p = 0 for this state."""
    if zo is None:
        return new
    p = zo.p_h if which == 0 else zo.p_c
    if p == 0.0:
        return new
    if zo.seeds is None:
        return p * old + (1 - p) * new
    return torch.where(keep_mask(zo.seeds[which], p, t, new.shape[0], new.shape[1], new.device), old, new)
