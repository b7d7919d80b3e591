"""The benchmark cases: the ONE list every benchmark tool reads (bench/README.md shows it).

A case is a shape (cell, batch B, hidden H = input width, steps T, layers, directions, packed
lengths, residual adds). A measurement is a case × provider × mode × dtype; providers live in
``providers.py``, timing in ``timing.py``, floors in ``floors.py``.

Nothing here touches a GPU at import time.

A streaming case (``stream=True``) is timed as T successive calls with one step each (input
(1, B, I)), the state of one call fed to the next: what an RL policy or a streaming recognizer does
per frame. It is inference only; its ``us_per_step`` is the time per call.

FLOP and byte counts (``flops`` / ``min_bytes``) feed the roofline floor. Per layer-direction, with
N = valid tokens (B·T, or Σ lengths when packed), I = that layer's input width, G = gates·H
(gates = 3 for GRU, 4 for LSTM), W = G·I + G·H + 2G weight and bias elements, s = bytes per element:

  forward FLOPs   = 2·N·G·(I + H)        input projection x·W_ihᵀ plus recurrent h·W_hhᵀ, as
                                         multiply-adds; the element-wise gate math (~10·N·H) is left out
  backward FLOPs  = 2 × forward FLOPs    dgates·W (dx and dh) plus dgatesᵀ·[x, h] (dW)
  forward bytes   = s·(N·I + N·H + W)    read x and the weights once, write y once (states are
                                         O(B·H), included but negligible)
  fwd+bwd bytes   = forward bytes + s·(2·N·G      gate activations saved in forward, read in backward
                                     + N·H        read dy
                                     + N·I + N·H  re-read x and h for dW
                                     + N·I        write dx
                                     + 2·W)       re-read W, write dW
A streaming case reads the weights and the states once per call (T times). Zoneout changes neither
count: its masks are generated in the step (counter-based Philox, regenerated in the backward), not
stored, and its blend is element-wise gate math. LayerNorm (``layernorm=True``) leaves the FLOPs
(its normalisation is element-wise) and adds its gamma and beta to W: 2·G for LN_ih, 2·G for LN_hh,
and for LSTM 2·H for LN_c; its per-row statistics (O(B) per step, recomputable) are not counted.
These are lower bounds a fused kernel could reach in principle (every tensor touched once), not a
model of any implementation; the roofline floor is max(FLOPs / peak FLOP/s, bytes / peak bandwidth).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import torch

MODES = ("forward", "forward+backward")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
LENGTHS_SEED = 20240611  # packed-case lengths are drawn once from this seed: every run gets the same batch


@dataclass(frozen=True)
class Case:
    id: str
    cell: str  # "gru" | "lstm"
    B: int
    H: int  # hidden size; input size is H too
    T: int  # steps (the longest sequence when packed)
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False  # variable lengths in [T // 4, T], longest exactly T, fed as a PackedSequence
    residual: bool = False  # fusedrnn residual=True vs torch.nn per layer + add
    stream: bool = False  # streaming inference: T calls of one step each (T=1 input), carrying the state
    zoneout: float = 0.0  # fusedrnn zoneout=p (every state; LSTM: h and c); see providers.py for the baselines
    layernorm: bool = False  # fusedrnn.LayerNormLSTM / LayerNormGRU (fusedrnn/layernorm.py); see providers.py
    anchor: str = ""
    scaled_from: str | None = field(default=None, compare=False)  # set by scaled_down()

    @property
    def I(self) -> int:  # noqa: E743 - input width, named as in torch's docs
        return self.H

    @property
    def D(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes this case is measured in: a streaming case is inference only."""
        return ("forward",) if self.stream else MODES

    @property
    def gates(self) -> int:
        return 3 if self.cell == "gru" else 4

    def lengths(self) -> torch.Tensor | None:
        """Deterministic per-row lengths (int64, CPU, in [T // 4, T], max == T, unsorted) or None."""
        if not self.packed:
            return None
        g = torch.Generator().manual_seed(LENGTHS_SEED + self.B * 1000 + self.T)
        lo = max(1, self.T // 4)
        lens = torch.randint(lo, self.T + 1, (self.B,), generator=g, dtype=torch.int64)
        lens[int(torch.randint(0, self.B, (1,), generator=g))] = self.T  # the batch spans all T steps
        return lens

    def tokens(self) -> int:
        """Valid (row, step) pairs per layer-direction."""
        lens = self.lengths()
        return self.B * self.T if lens is None else int(lens.sum())

    def layer_inputs(self) -> list[int]:
        return [self.I if k == 0 else self.D * self.H for k in range(self.layers)]

    def flops(self, mode: str) -> float:
        """Matmul FLOPs of one call (see the module docstring)."""
        G, N = self.gates * self.H, self.tokens()
        fwd = sum(self.D * 2.0 * N * G * (i + self.H) for i in self.layer_inputs())
        return fwd if mode == "forward" else 3.0 * fwd

    def min_bytes(self, mode: str, elem_bytes: int) -> float:
        """Fewest bytes one call must move through device memory (see the module docstring)."""
        G, H, N, s = self.gates * self.H, self.H, self.tokens(), elem_bytes
        total = 0.0
        calls = self.T if self.stream else 1  # a streaming call reads the weights and states each time
        for i in self.layer_inputs():
            W = G * i + G * H + 2 * G + (4 * G + (2 * H if self.cell == "lstm" else 0) if self.layernorm else 0)
            states = (2 if self.cell == "lstm" else 1) * 2 * self.B * H  # h0(,c0) in, h_n(,c_n) out
            fwd = N * i + N * H + calls * (W + states)
            per = fwd if mode == "forward" else fwd + 2 * N * G + N * H + 2 * N * i + N * H + 2 * W + states
            total += self.D * s * per
        return total

    def describe(self) -> str:
        parts = [f"{self.cell.upper()} B={self.B} H=I={self.H} T={self.T}"]
        if self.packed:
            parts.append(f"packed lengths {self.T // 4}..{self.T} ({self.tokens()} tokens)")
        if self.layers > 1:
            parts.append(f"{self.layers} layers")
        if self.bidirectional:
            parts.append("bidirectional")
        if self.residual:
            parts.append("residual")
        if self.stream:
            parts.append(f"streaming: {self.T} calls of one step carrying the state")
        if self.zoneout:
            parts.append(f"zoneout p={self.zoneout:g}")
        if self.layernorm:
            parts.append("LayerNorm (" + ("LN_ih, LN_hh, LN_c" if self.cell == "lstm" else "LN_ih, LN_hh") + ")")
        if self.scaled_from:
            parts.append(f"scaled down from {self.scaled_from}")
        return ", ".join(parts)

    def scaled_down(self, tiny: bool = False) -> "Case":
        """A CPU-sized copy with the same structure (cell, layers, directions, packing, residual,
        streaming, zoneout, LayerNorm).

        default: B ≤ 8, H = H/8 (≥ 16), T ≤ 64;  tiny: B ≤ 4, H = 16, T ≤ 12 (for tests)."""
        if tiny:
            B, H, T = min(self.B, 4), 16, min(self.T, 12)
        else:
            B, H, T = min(self.B, 8), max(16, self.H // 8), min(self.T, 64)
        return dataclasses.replace(self, B=B, H=H, T=T, scaled_from=self.id)


CASES: tuple[Case, ...] = (
    Case("flashrnn", "lstm", B=16, H=768, T=1024,
         anchor="FlashRNN paper figure (H100, fp16): cuDNN 2.01 ms fwd / 5.19 ms fwd+bwd; "
                "FlashRNN 4.87 / 13.61 ms"),
    Case("fastrnns", "lstm", B=64, H=512, T=100, anchor="PyTorch benchmarks/fastrnns default"),
    Case("deepbench-lstm", "lstm", B=128, H=1024, T=25, anchor="DeepBench train"),
    Case("deepbench-gru", "gru", B=32, H=1024, T=1500, anchor="DeepBench train"),
    Case("stream-gru", "gru", B=1, H=512, T=1024, anchor="batch-1 streaming inference"),
    Case("small-lstm", "lstm", B=4, H=256, T=150, anchor="DeepBench device inference"),
    Case("residual-gru", "gru", B=32, H=512, T=256, layers=4, residual=True,
         anchor="fusedrnn residual=True vs torch.nn GRU per layer + add"),
    Case("packed-bilstm", "lstm", B=32, H=512, T=200, layers=2, bidirectional=True, packed=True,
         anchor="speech-style packed batch"),
    Case("lstm-stack4", "lstm", B=32, H=512, T=256, layers=4, residual=True,
         anchor="deep residual LSTM stack: fusedrnn residual=True vs torch.nn LSTM per layer + add"),
    Case("gru-stack8", "gru", B=16, H=256, T=512, layers=8, residual=True,
         anchor="deep residual GRU stack: fusedrnn residual=True vs torch.nn GRU per layer + add"),
    Case("stream-gru2-b1", "gru", B=1, H=512, T=256, layers=2, stream=True,
         anchor="streaming inference (RL policy, streaming speech): per-call us with and without CUDA graphs"),
    Case("stream-gru2-b64", "gru", B=64, H=512, T=256, layers=2, stream=True,
         anchor="batched streaming inference: per-call us with and without CUDA graphs"),
    Case("zoneout-gru", "gru", B=32, H=512, T=256, layers=2, zoneout=0.1,
         anchor="zoneout regularizer (Krueger et al. 2017) on h; baselines: the cell loop with torch masks, "
                "cuDNN without zoneout"),
    Case("layernorm-lstm", "lstm", B=32, H=512, T=256, layers=2, layernorm=True,
         anchor="layer-normalised LSTM (Ba et al. 2016); baselines: the cell loop with fusedrnn.layernorm.norm, "
                "cuDNN without LayerNorm"),
)
BY_ID = {c.id: c for c in CASES}


def get(case_id: str) -> Case:
    try:
        return BY_ID[case_id]
    except KeyError:
        raise ValueError(f"unknown case {case_id!r}; cases: {', '.join(BY_ID)}") from None


# --- inputs -------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """Everything one call needs, already on the device and in the dtype."""

    case: Case
    x: torch.Tensor  # (T, B, I) time-major, padded with zeros past each row's length when packed
    lengths: torch.Tensor | None  # int64 (B,) on CPU, or None
    dy: torch.Tensor | None  # upstream gradient for y (forward+backward mode only)
    state_dict: dict  # torch.nn.GRU/LSTM(num_layers=case.layers) weights every provider shares
    # A LayerNorm case's gammas and betas under fusedrnn.LayerNormLSTM / LayerNormGRU's names
    # (layernorm_ih_weight_l0, ...); empty otherwise. torch.nn's providers cannot take them.
    norm_dict: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=16)
def _master(case: Case, seed: int) -> tuple:
    """float32 CPU inputs, weights and upstream grad of a case, drawn once per process (drawing
    deepbench-gru's 49M-element input takes a noticeable fraction of a second). A LayerNorm case
    then draws its gammas in 1 ± 0.5 and betas in ± 0.5 (not the initial 1 and 0, so a provider that
    dropped or swapped one would compute something else)."""
    g = torch.Generator().manual_seed(seed)
    lengths = case.lengths()
    x = torch.randn(case.T, case.B, case.I, generator=g)
    if lengths is not None:
        valid = torch.arange(case.T).view(-1, 1) < lengths.view(1, -1)
        x = x * valid.unsqueeze(-1)
    ref = (torch.nn.GRU if case.cell == "gru" else torch.nn.LSTM)(
        case.I, case.H, num_layers=case.layers, bidirectional=case.bidirectional
    )
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.empty_like(p).uniform_(-1, 1, generator=g) / case.H**0.5)
    dy = torch.randn(case.T, case.B, case.D * case.H, generator=g)
    norms = {}
    if case.layernorm:
        import fusedrnn

        cls = fusedrnn.LayerNormGRU if case.cell == "gru" else fusedrnn.LayerNormLSTM
        names = [n for group in cls(1, 1, num_layers=case.layers, bidirectional=case.bidirectional)
                 ._layernorm_names() for n in group]
        width = {"ih": case.gates * case.H, "hh": case.gates * case.H, "c": case.H}
        for n in names:
            v = torch.empty(width[n.split("_")[1]]).uniform_(-0.5, 0.5, generator=g)
            norms[n] = v + 1.0 if "_weight_" in n else v
    return x, lengths, dy, {k: v.detach() for k, v in ref.state_dict().items()}, norms


def make_inputs(case: Case, dtype: torch.dtype, device, mode: str, seed: int = 0) -> Inputs:
    """Random inputs (never zeros: they hide unwritten outputs and can run faster) and one set of
    weights, drawn on the CPU in float32 so every provider, dtype and device sees the same numbers."""
    x, lengths, dy, sd, norms = _master(case, seed)
    return Inputs(
        case, x.to(device=device, dtype=dtype), lengths,
        dy.to(device=device, dtype=dtype) if mode == "forward+backward" else None,
        {k: v.to(device=device, dtype=dtype) for k, v in sd.items()},
        {k: v.to(device=device, dtype=dtype) for k, v in norms.items()},
    )
